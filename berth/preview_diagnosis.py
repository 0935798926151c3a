"""Why a preview cannot answer, in the learner's words: looked up in the machine's own
engine (is the port published, is the container running, does anything listen inside it,
on which address) and said with hints that name the commands to run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import docker.errors
import requests.exceptions

from .machines import Machine, MachineBackend, MachineError
from .ports import PortWatch, PublishedPort, port_bindings

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 30  # seconds for the learner's server to start answering (the proxy waits this long)


@dataclass
class Diagnosis:
    """Why a preview cannot answer, for the learner."""

    status: int
    reason: str
    title: str
    message: str
    hints: list[str] = field(default_factory=list)


def diagnose(backend: MachineBackend, ports: PortWatch, machine: Machine, number: int,
             published: PublishedPort | None, error: str = "") -> Diagnosis:
    """Look through the machine's engine for why port `number` does not answer. Hints
    write commands between backticks."""
    try:
        return _diagnose(backend, ports, machine, number, published, error)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as problem:
        raise MachineError(f"The Docker engine of {machine.name} does not answer right now; try again in "
                           "a moment.", str(problem)) from None


def _diagnose(backend: MachineBackend, ports: PortWatch, machine: Machine, number: int,
              published: PublishedPort | None, error: str) -> Diagnosis:
    engine = backend.engine(machine)
    where = f"on {machine.name}"
    if published is None:
        stopped = _stopped_publisher(engine, number)
        if stopped is not None:
            name, state, code = stopped
            if state == "created":
                return Diagnosis(502, "container_not_started", f"The container {name} has not started",
                                 f"Port {number} {where} belongs to the container {name}, which was created "
                                 "but never started.", [f"Start it: `docker start {name}`"])
            return Diagnosis(502, "container_exited", f"The container {name} has exited",
                             f"Port {number} {where} was published by the container {name}, but it has "
                             f"exited{f' (exit code {code})' if code is not None else ''}, so nothing "
                             "answers there any more.",
                             [f"See what it printed before it stopped: `docker logs {name}`",
                              f"Start it again: `docker start {name}`",
                              "A container stops when its main command ends; `docker run -dit ...` keeps "
                              "a shell open in it."])
        others = [p for p in ports.ports(machine) if p.port != number]
        hints = [f"Publish it when you start a container: `docker run -d -p {number}:80 IMAGE` "
                 f"(port {number} of the machine to port 80 of the container)",
                 "See what is published: `docker ps` (the PORTS column)"]
        if others:
            hints.insert(0, f"Published {where} now: " + ", ".join(f"{p.port} ({p.container})" for p in others))
        return Diagnosis(404, "not_published", f"Nothing is published on port {number}",
                         f"No running container {where} publishes port {number}, so there is nothing to "
                         "show here yet.", hints)
    name, inside = published.container, published.container_port
    if published.state == "paused":
        return Diagnosis(502, "container_paused", f"The container {name} is paused",
                         f"Port {number} {where} leads to the container {name}, which is paused.",
                         [f"Unpause it: `docker unpause {name}`"])
    if published.loopback_only:
        return Diagnosis(502, "loopback_only", f"Port {number} is published only inside {machine.name}",
                         f"The container {name} publishes port {number} on {published.host_ip} only, an "
                         "address that nothing outside the machine can reach.",
                         [f"Publish it on every address instead: `docker run -p {number}:{inside} ...`"])
    listening, processes = _inside(backend, machine, engine, published.container_id)
    servers = [n for n in ("nginx", "apache2", "httpd", "python", "node", "caddy") if any(n in p for p in processes)]
    server = servers[0] if servers else "a server"
    if listening is not None:
        ports_inside = sorted({port for port, _ in listening})
        if inside not in ports_inside and ports_inside:
            listed = ", ".join(str(p) for p in ports_inside)
            title = (f"{server} still listens on port{'s' if len(ports_inside) > 1 else ''} {listed}" if servers
                     else f"Something listens on {listed}, not on {inside}")
            hints = [f"Or publish the port the server uses: `docker run -p {number}:{ports_inside[0]} ...`"]
            if "nginx" in servers:
                hints.insert(0, f"Make nginx listen on {inside}: in the container, change `listen "
                             f"{ports_inside[0]}` to `listen {inside}` in /etc/nginx/sites-enabled/default, "
                             "then reload it: `nginx -s reload`")
            return Diagnosis(502, "wrong_port", title,
                             f"Port {number} {where} leads to port {inside} of the container {name}, but "
                             f"{server} in it listens on {listed}, not on {inside}.", hints)
        if inside not in ports_inside:
            return Diagnosis(502, "nothing_listens", f"Nothing listens on port {inside} in {name}",
                             f"Port {number} {where} leads to port {inside} of the container {name}, but "
                             "nothing listens there inside the container: no web server runs in it (yet).",
                             [f"Start the web server in the container, for nginx: `docker exec {name} "
                              "service nginx start`",
                              f"See what runs in it: `docker top {name}`"])
        if all(address.startswith("127.") or address == "::1" for port, address in listening if port == inside):
            return Diagnosis(502, "listens_on_loopback", f"The server in {name} listens only on 127.0.0.1",
                             f"Port {number} {where} leads to port {inside} of {name}, where {server} "
                             "listens on 127.0.0.1 only; connections from outside the container cannot "
                             "reach it.", [f"Make the server listen on 0.0.0.0:{inside} (every address)."])
    if "timed out" in error:
        return Diagnosis(504, "no_answer", f"Port {number} does not answer",
                         f"The server behind port {number} {where} ({name}) did not answer within "
                         f"{ANSWER_TIMEOUT} seconds.", [f"Look at its log: `docker logs {name}`"])
    return Diagnosis(502, "no_answer", f"Port {number} does not answer",
                     f"Port {number} {where} leads to port {inside} of {name}, but the connection failed"
                     f"{f' ({error})' if error else ''}.", [f"Look at its log: `docker logs {name}`"])


def _stopped_publisher(engine, number: int) -> tuple[str, str, int | None] | None:
    """A stopped container that would publish `number`: (name, state, exit code)."""
    for summary in engine.api.containers(all=True, filters={"status": ["exited", "created", "dead"]})[:50]:
        try:
            info = engine.api.inspect_container(summary["Id"])
        except docker.errors.NotFound:
            continue
        if any(port == number for published in port_bindings(info).values() for _, port in published):
            state = info.get("State") or {}
            code = state.get("ExitCode") if state.get("Status") != "created" else None
            return info["Name"].lstrip("/"), state.get("Status", "exited"), code
    return None


def _inside(backend: MachineBackend, machine: Machine, engine, container_id: str) -> tuple[list[tuple[int, str]] | None, list[str]]:
    """What listens inside a container (port, address) and which processes run there.
    Read from the machine (the container's /proc/PID/net), so it works for any image."""
    try:
        info = engine.api.inspect_container(container_id)
        pid = int((info.get("State") or {}).get("Pid") or 0)
        processes = [" ".join(map(str, row)) for row in (engine.api.top(container_id).get("Processes") or [])]
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        log.info("cannot look into %s: %s", container_id[:12], error)
        return None, []
    if not pid:
        return None, processes
    result = backend.exec(machine, ["cat", f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"], timeout=10)
    if result.exit_code != 0 and not result.output:
        return None, processes
    return parse_listening(result.text), processes


def parse_listening(text: str) -> list[tuple[int, str]]:
    """(port, address) of each listening socket in /proc/net/tcp{,6} text."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A" or ":" not in fields[1]:
            continue
        address, port = fields[1].rsplit(":", 1)
        found.append((int(port, 16), _proc_address(address)))
    return found


def _proc_address(hex_address: str) -> str:
    if len(hex_address) == 8:  # IPv4, little-endian
        return ".".join(str(int(hex_address[i:i + 2], 16)) for i in (6, 4, 2, 0))
    if hex_address.strip("0") == "":
        return "::"
    if hex_address == "00000000000000000000000001000000":
        return "::1"
    if hex_address.startswith("0000000000000000FFFF0000"):  # ::ffff:a.b.c.d
        return _proc_address(hex_address[24:])
    return "::x"
