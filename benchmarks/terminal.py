"""Terminal benchmark: keystroke echo latency and output throughput through Berth's
Socket.IO path, against the raw exec socket of the same machine (the physical limit),
in one run. `./run bench terminal [--keys N] [--bytes N] [--rounds N]`.

Method: a Berth server (`python app.py`, WebSocket transport, as the browser uses) with
one session. Raw: a TTY exec of `bash -l` in the workstation machine through the host
engine's API, read and written on the hijacked socket. Kept: a shell under berth-shell,
the keeper that lets Berth's shells outlive Berth, attached straight through the engine
(as Berth attaches), to show what the keeper costs by itself. Berth: a /terminal client on one
WebSocket (tests/terminal_client.py), acknowledging output as it arrives. Echo: type
one character, wait for its echo, N times (the line is cleared every 50 keys, not
timed). Throughput: run `head -c BYTES /dev/zero | base64` and time from Enter to the
line printed after it, counting every byte received. For each throughput round it also
prints the CPU time Berth's server process (gunicorn's master and worker) and this client
process spent per MB: on a shared host the rate varies with the load, the CPU cost much
less. The load average is printed before and after."""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker
import websocket

from berth.certs import CertificateAuthority
from berth.config import Config
from berth.machines import DockerMachines, Machine
from berth.terminal import SHELL_DIR, ShellLink
from tests.conftest import BerthServer, remove_instance
from tests.terminal_client import TerminalClient

PROMPT = re.compile(rb"# $")
DONE = b"\r\nDONE-2\r\n"  # printed by `echo DONE-$((1+1))`, which the echoed command line does not contain


class RawTty:
    """bash in the machine on a raw exec socket, as Docker hands it out."""

    def __init__(self, api: docker.APIClient, container: str):
        command = ["sh", "-c", "stty cols 120 rows 40; exec bash -l"]
        exec_id = api.exec_create(container, command, stdin=True, tty=True, detach_keys="ctrl-^,ctrl-^",
                                  environment={"TERM": "xterm-256color", "LANG": "C.UTF-8"})["Id"]
        response = api.exec_start(exec_id, tty=True, socket=True)
        self.sock = getattr(response, "_sock", response)
        self.sock.settimeout(None)
        self.buffer = bytearray()

    def _receive(self) -> bytes:
        return self.sock.recv(65536)

    def _end(self) -> None:
        self.sock.close()

    def timeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> int:
        chunk = self._receive()
        if not chunk:
            raise EOFError("the shell ended")
        self.buffer += chunk
        return len(chunk)

    def close(self) -> None:
        self.write(b"exit\r")
        self._end()


class KeptTty(RawTty):
    """A shell under berth-shell, attached through the engine as Berth attaches to it."""

    def __init__(self, backend: DockerMachines, machine: Machine):
        argv = ["berth-shell", "attach", SHELL_DIR, "bench", "8", "120", "40"]
        self.link = ShellLink(backend.open_stream(machine, argv))
        self.buffer = bytearray()

    def _receive(self) -> bytes:
        return self.link.read(65536)

    def _end(self) -> None:
        self.link.close()

    def timeout(self, seconds: float | None) -> None:
        self.link.stream.set_timeout(seconds)

    def write(self, data: bytes) -> None:
        self.link.write(data)


class BerthTty:
    """The same shell through Berth: Socket.IO over one WebSocket, read in this thread."""

    def __init__(self, url: str, auth: dict):
        self.client = TerminalClient(url, auth)
        self.buffer = bytearray(self.client.data)  # what came with the connection
        self.received = len(self.buffer)
        self.client.on_output = self._output

    def _output(self, chunk: bytes, offset: int) -> None:
        self.buffer += chunk
        self.received += len(chunk)

    def write(self, data: bytes) -> None:
        self.client.send(data)

    def timeout(self, seconds: float | None) -> None:
        self.client.ws.settimeout(seconds)

    def read(self) -> int:
        before = self.received
        self.client.poll()
        return self.received - before

    def close(self) -> None:
        self.client.close()


def read_until(tty, pattern: re.Pattern | bytes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    regex = re.compile(re.escape(pattern)) if isinstance(pattern, bytes) else pattern
    while not regex.search(tty.buffer[-4096:]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited for {regex.pattern!r}; got {bytes(tty.buffer[-300:])!r}")
        tty.read()


def echo_once(tty) -> float:
    """Seconds from writing one key to reading its echo."""
    tty.buffer.clear()
    started = time.perf_counter()
    tty.write(b"a")
    while b"a" not in tty.buffer:
        tty.read()
    return time.perf_counter() - started


def echo_latency(tty, keys: int) -> list[float]:
    """Seconds from writing a key to reading its echo, `keys` times."""
    samples = []
    for index in range(keys):
        if index % 50 == 0:
            tty.write(b"\x15")  # clear the line: readline redraws long ones
            drain(tty)
        samples.append(echo_once(tty))
    tty.write(b"\x15")
    return samples


def drain(tty, quiet: float = 0.2) -> None:
    """Read until nothing has come for `quiet` seconds."""
    tty.timeout(quiet)
    try:
        while True:
            tty.read()
    except (TimeoutError, websocket.WebSocketTimeoutException):
        pass
    finally:
        tty.timeout(None)


def throughput(tty, size: int) -> tuple[float, int]:
    """(bytes per second, bytes) of `head -c size /dev/zero | base64` on the terminal."""
    tty.buffer.clear()
    tty.write(f"head -c {size} /dev/zero | base64; echo DONE-$((1+1))".encode())
    time.sleep(0.3)
    read_until(tty, b"DONE-$((1+1))")
    tty.buffer.clear()
    started = time.perf_counter()
    tty.write(b"\r")
    total = 0
    while DONE not in tty.buffer[-4096:]:
        total += tty.read()
        if len(tty.buffer) > 1 << 20:
            del tty.buffer[:-4096]
    took = time.perf_counter() - started
    read_until(tty, PROMPT)
    return total / took, total


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system) a process and its children have used so far."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            total += sum(process_cpu(int(child)) for child in children.read().split())
    except (OSError, ValueError, IndexError):
        pass  # it ended meanwhile
    return total


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def idle(tty):
    """Keep reading a path while the others are measured (its server's pings answered, as
    a page would: Berth drops a client that has not answered within 45 s, WeTTY within
    10 s); returns the function that stops this before the path is measured again."""
    stop = threading.Event()

    def run() -> None:
        tty.timeout(0.2)
        try:
            while not stop.is_set():
                try:
                    tty.read()
                except (TimeoutError, websocket.WebSocketTimeoutException):
                    pass
        except (EOFError, OSError, websocket.WebSocketException):
            pass
        finally:
            tty.timeout(None)

    thread = threading.Thread(target=run, name="idle", daemon=True)
    thread.start()

    def resume() -> None:
        stop.set()
        thread.join()
    return resume


def turns(ttys: dict, measure) -> None:
    """Measure each path in turn, the others read meanwhile."""
    waiting = {name: idle(tty) for name, tty in ttys.items()}
    for name, tty in ttys.items():
        waiting.pop(name)()
        measure(name, tty)
        waiting[name] = idle(tty)
    for resume in waiting.values():
        resume()


def summary(name: str, samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    median = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(f"  {name:6} echo: median {median:.2f} ms, p99 {p99:.2f} ms ({len(samples)} keys)")
    return median, p99


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="./run bench terminal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=500, help="keystrokes timed per path")
    parser.add_argument("--bytes", type=int, default=50_000_000, help="bytes of zeros base64 encodes")
    parser.add_argument("--rounds", type=int, default=3, help="throughput runs per path (the best counts)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still clean up when stopped
    engine = docker.from_env(timeout=120)
    server = BerthServer(Path(tempfile.mkdtemp(prefix="berth-bench-")))
    print(f"before: {load()} (a shared host: other work's load counts too)")
    print("starting a Berth server and a session ...", flush=True)
    server.start()
    try:
        session = server.create_session("docker-images")
        container = f"berth-{session['id']}-workstation"
        raw = RawTty(engine.api, container)
        read_until(raw, PROMPT)
        backend = DockerMachines(Config.from_env(), server.instance_id, CertificateAuthority(server.data_dir / "certs"), engine)
        kept = KeptTty(backend, next(m for m in backend.machines(session["id"]) if m.name == "workstation"))
        read_until(kept, PROMPT)
        berth = BerthTty(server.url, {"session": session["id"], "token": session["token"],
                                      "machine": "workstation", "cols": 120, "rows": 40})
        read_until(berth, PROMPT)
        print("keystroke echo:")
        raw_echo = summary("raw", echo_latency(raw, args.keys))
        kept_echo = summary("kept", echo_latency(kept, args.keys))  # the keeper's hop, without Berth's web side
        berth_echo = summary("berth", echo_latency(berth, args.keys))
        print(f"output throughput of head -c {args.bytes} /dev/zero | base64:")
        best: dict[str, float] = {}
        cpu: dict[str, list[float]] = {"server": [], "client": []}
        for round_ in range(args.rounds):
            def measure(name: str, tty, round_: int = round_) -> None:
                server_before, client_before = process_cpu(server.process.pid), own_cpu()
                rate, total = throughput(tty, args.bytes)
                server_ms = (process_cpu(server.process.pid) - server_before) * 1e9 / total
                client_ms = (own_cpu() - client_before) * 1e9 / total
                best[name] = max(best.get(name, 0.0), rate)
                if name == "berth":
                    cpu["server"].append(server_ms)
                    cpu["client"].append(client_ms)
                print(f"  round {round_ + 1} {name:6} {rate / 1e6:6.1f} MB/s ({total} bytes); CPU per MB: "
                      f"Berth's server {server_ms:.1f} ms, this client {client_ms:.1f} ms", flush=True)
            turns({"raw": raw, "kept": kept, "berth": berth}, measure)
        for tty in (raw, kept, berth):
            tty.close()
        server.delete_session(session)
    finally:
        server.stop()
        remove_instance(engine, server.instance_id)
        shutil.rmtree(server.data_dir, ignore_errors=True)
    ratio = best["berth"] / best["raw"]
    extra = berth_echo[0] - raw_echo[0]
    print("result:")
    print(f"  echo median: raw {raw_echo[0]:.2f} ms, Berth {berth_echo[0]:.2f} ms (+{extra:.2f} ms; target +2 ms or less): "
          + ("met" if extra <= 2 else "NOT met"))
    print(f"  echo p99:    raw {raw_echo[1]:.2f} ms, Berth {berth_echo[1]:.2f} ms")
    print(f"  throughput:  raw {best['raw'] / 1e6:.1f} MB/s, Berth {best['berth'] / 1e6:.1f} MB/s "
          f"({ratio:.0%} of raw; target 75% or more): " + ("met" if ratio >= 0.75 else "NOT met"))
    print(f"  CPU per MB through Berth (median of the rounds): Berth's server {statistics.median(cpu['server']):.1f} ms, "
          f"the client {statistics.median(cpu['client']):.1f} ms")
    print(f"  echo median through the keeper alone (berth-shell through the engine): {kept_echo[0]:.2f} ms "
          f"(+{kept_echo[0] - raw_echo[0]:.2f} ms on raw); Berth's web side adds {berth_echo[0] - kept_echo[0]:.2f} ms")
    print(f"  the keeper alone (berth-shell through the engine): {best['kept'] / 1e6:.1f} MB/s "
          f"({best['kept'] / best['raw']:.0%} of raw); Berth is {best['berth'] / best['kept']:.0%} of that")
    print(f"after: {load()}")
