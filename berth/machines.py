"""The machines backend: learner machines, each with a Docker engine of its own.

The contract (MachineBackend) says in Berth's own terms what the rest of Berth needs from
wherever machines run, so that a VM or a Kubernetes backend can sit behind it (chosen by
BERTH_MACHINES; docs/architecture.md). DockerMachines, the implementation Berth ships,
runs each machine as a container on a Docker engine, the local one or DOCKER_HOST's."""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker.types import IPAMConfig, IPAMPool, Mount

from .bounded import bound_engine_client
from .certs import CertificateAuthority
from .config import Config
from .images import SEED_ROLE, Mirror, split_reference, tar_of
from .isolation import Isolation, IsolationError, egress_rules
from .isolation import choose as choose_isolation
from .locks import KeyedLocks
from .owner import LABEL_DATA, owner_labels
from .packages import PACKAGES_ALIAS, PackageCache
from .ports import PublishedPort, list_published

log = logging.getLogger(__name__)

LABEL_INSTANCE = "berth.instance"
LABEL_SESSION = "berth.session"
LABEL_MACHINE = "berth.machine"
LABEL_ROLE = "berth.role"
ENGINE_PORT = 2376
FOLLOW_WINDOW = 1  # seconds of engine events read at a time: how soon a stop is heard
LOOK_EVERY = 15  # seconds between looks at every machine (how an engine restart shows)
FOLLOW_RETRY = 2  # seconds between tries while the engine does not answer
NOT_RUNNING = ("exited", "dead")
MIRROR_ALIAS = "berth-mirror"
# Docker's detach keys would swallow a key the learner types (ctrl-p by default): use a
# sequence nobody types by accident.
DETACH_KEYS = "ctrl-^,ctrl-^,ctrl-^,ctrl-^"


class MachineError(Exception):
    """Something about machines went wrong. `message` is for the learner or teacher;
    `detail` (logged) is for whoever runs Berth."""

    status = 500
    code = "machine_error"

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.message = message
        self.detail = detail


class EngineUnavailable(MachineError):
    status = 503
    code = "engine_unavailable"


class MachineStopped(MachineError):
    """The machine stopped while Berth waited for it (wait_ready): waiting longer is no use."""


@dataclass(frozen=True)
class Machine:
    """A learner machine as the backend sees it."""

    session_id: str
    name: str
    container_id: str
    address: str  # on the session's network; where Berth reaches its engine and ports
    state: str  # the container's state: running, exited, created, ...


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: bytes

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


class FileProblem(MachineError):
    """A path in a machine that cannot be read or written. `reason` names the cause in a
    word: missing, disk_full, not_a_directory, not_writable or other."""

    def __init__(self, reason: str, message: str, detail: str = ""):
        super().__init__(message, detail)
        self.reason = reason


@dataclass(frozen=True)
class PathInfo:
    """What a path in a machine is, as an archive of it says."""

    name: str
    kind: str  # file | directory | link | other
    size: int = 0
    link_target: str = ""


class Archive:
    """A tar archive of a path in a machine, streamed out of it; close it when done."""

    def __init__(self, info: PathInfo, chunks: Iterable[bytes], close=lambda: None):
        self.info = info
        self.chunks = chunks
        self.close = close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)


@dataclass(frozen=True)
class BackendReport:
    """How the backend is doing, for /healthz: which backend, how isolated its machines
    are, what it can do, and any problem of a part it runs (its registry mirror)."""

    backend: str
    isolation: str | None  # how machines are isolated here (userns, sysbox, ...); None: not known yet
    capabilities: frozenset[str] = frozenset()
    mirror: str | None = None  # the mirror's status, None: no mirror
    problems: list[str] = field(default_factory=list)
    isolation_summary: str | None = None  # the same, in a sentence
    warning: str = ""  # for the operator and every learner: a weaker isolation they asked for
    package_cache: str | None = None  # the package cache's status or what is wrong with it; None: no cache


class Stream(ABC):
    """A process in a machine with its standard streams as bytes (a terminal's shell):
    input written as is, output (stdout and stderr, in order) read as it comes."""

    @abstractmethod
    def read(self, size: int = 65536, wait: bool | float = True) -> bytes:
        """Up to `size` bytes of output; b"" at the end. With wait=False, only what has
        arrived (b"" also when nothing has); with a number, what arrives within that many
        seconds. TimeoutError when a timeout is set and a waiting read passes it."""

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def set_timeout(self, seconds: float | None) -> None:
        """How long a waiting read may wait; None: for ever (an idle terminal)."""

    @abstractmethod
    def close(self) -> None: ...

    def read_all(self) -> bytes:
        data = bytearray()
        while chunk := self.read():
            data += chunk
        return bytes(data)


class ExecStream(Stream):
    """An exec's socket on a Docker engine: output comes in the engine's frames (an 8-byte
    header each), read here without them."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buffer = bytearray()  # received, not yet returned
        self._left = 0  # bytes of the current frame still to come
        self._ended = False

    def read(self, size: int = 65536, wait: bool | float = True) -> bytes:
        """Up to `size` bytes of output; b"" at the end. With wait=False, only what has
        arrived (b"" also when nothing has: the next waiting read tells the end apart); with a
        number, what arrives within that many seconds."""
        out = bytearray()
        while True:
            while self._buffer and len(out) < size:
                if not self._left:
                    if len(self._buffer) < 8:
                        break
                    self._left = int.from_bytes(self._buffer[4:8], "big")
                    del self._buffer[:8]
                    continue
                take = min(self._left, len(self._buffer), size - len(out))
                out += self._buffer[:take]
                del self._buffer[:take]
                self._left -= take
            if out or self._ended:
                return bytes(out)
            try:
                if wait is not True and not (wait and select.select([self.sock], [], [], wait)[0]):
                    wait = False  # nothing came in time: take only what is there
                chunk = self.sock.recv(65536, 0 if wait is True else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return b""
            except TimeoutError:
                raise
            except OSError:
                chunk = b""
            if not chunk:
                self._ended = True
            self._buffer += chunk

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def set_timeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@dataclass(frozen=True)
class MachineHappening:
    """Something that happened to a machine itself, seen from where it runs: a program in
    it was killed for lack of memory (`oom`), or the machine is not running (`stopped`:
    it exited, was killed, or the engine that runs it restarted)."""

    session_id: str
    machine: str
    what: str  # oom | stopped
    detail: str = ""  # for the log: an exit code, a state


@dataclass
class Leftovers:
    """What one Berth instance has on the backend: the names of its things, and the labels
    that say which Berth made them (owner.still_running reads them)."""

    names: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


class MachineBackend(ABC):
    """What Berth needs from wherever learner machines run."""

    name = "?"  # how BERTH_MACHINES names it

    # --- the backend itself

    def prepare(self, images: list[str]) -> None:
        """Make ready to start machines whose lessons use `images` (at start-up, in the
        background); MachineError says what is missing. Called again until it succeeds."""
        self.ping()

    @abstractmethod
    def describe(self) -> BackendReport:
        """What /healthz says of the machines."""

    def close(self) -> None:  # noqa: B027 - a backend that holds nothing has nothing to close
        """Stop what the backend runs in Berth's process (threads, clients)."""

    @abstractmethod
    def remove_all(self, instance_id: str | None = None) -> list[str]:
        """Remove everything this Berth made, session or not: its machines, their disks
        and networks, and what serves them (the mirror). Given another instance's id, what
        that Berth left behind (`./run clean`). Returns the names of what it removed."""

    def instances(self) -> dict[str, Leftovers]:
        """Every Berth instance that has anything on the backend, by instance id: for
        `./run clean`, which removes what Berths that no longer run left behind."""
        return {}

    def remove_unused_shared(self) -> list[str]:
        """Remove what Berths share (the mirror's seeds) that no running Berth uses, for
        `./run clean`; returns the names removed."""
        return []

    # --- sessions' machines

    @abstractmethod
    def create_session(self, session_id: str, names: list[str]) -> list[Machine]:
        """Create a private network and the named machines on it, started. All or
        nothing: on failure everything made so far is removed and MachineError raised."""

    @abstractmethod
    def machines(self, session_id: str | None = None) -> list[Machine]:
        """Machines that exist (of one session, or all of this Berth's): for adoption."""

    @abstractmethod
    def wait_ready(self, machine: Machine, timeout: float) -> None:
        """Return when the machine's engine answers; MachineError after timeout, or
        MachineStopped as soon as the machine is seen stopped."""

    def preload(self, machine: Machine, images: list[str], timeout: float = 300) -> None:
        """Pull `images` into the machine's own engine as the learner's `docker pull` would
        (through the registry mirror), so that the first `docker run` of them starts at once:
        for machines made ahead of time (berth/pool.py). MachineError if one cannot be pulled."""
        deadline = time.monotonic() + timeout
        api = self.engine(machine).api
        for image in images:
            repository, tag = split_reference(image)
            try:
                # a stream, read here to its end: a pull's progress is long, and the machine
                # is fresh (no learner has had it), so its engine's answer is not bounded
                for line in api.pull(repository, tag=tag, stream=True, decode=True):
                    if "error" in line:
                        raise MachineError(f"{image} could not be pulled into {machine.name}.", str(line["error"]))
                    if time.monotonic() > deadline:
                        raise MachineError(f"Pulling {image} into {machine.name} took longer than {timeout:.0f} s.")
            except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
                raise MachineError(f"{image} could not be pulled into {machine.name}.", str(error)) from None

    @abstractmethod
    def start(self, machine: Machine) -> None:
        """Start a machine that stopped (after a host reboot, say); its disk is kept."""

    @abstractmethod
    def destroy_session(self, session_id: str) -> None:
        """Remove the session's machines, disks and network; nothing there is fine."""

    @abstractmethod
    def session_ids(self) -> set[str]:
        """Sessions that have anything of this Berth's on the engine."""

    @abstractmethod
    def exec(self, machine: Machine, argv: list[str], timeout: float = 30,
             stdin: bytes | None = None) -> ExecResult:
        """Run a command in the machine (not in a container inside it)."""

    @abstractmethod
    def open_stream(self, machine: Machine, argv: list[str], env: dict[str, str] | None = None) -> Stream:
        """Start a long-lived process in the machine, its input and output streamed (the
        terminal bridge's attachment to a shell)."""

    @abstractmethod
    def engine(self, machine: Machine) -> docker.DockerClient:
        """A client of the machine's own Docker engine (the learner's, reached by Berth
        alone), for checks and the preview. The Docker SDK's client because every machine
        runs a Docker engine: that is what lessons teach, whatever runs the machine."""

    @abstractmethod
    def get_archive(self, machine: Machine, path: str) -> Archive:
        """A tar archive of a file or folder of the machine, streamed; FileProblem if not."""

    @abstractmethod
    def put_archive(self, machine: Machine, directory: str, chunks: Iterable[bytes]) -> None:
        """Unpack a tar archive, streamed, into a folder of the machine; FileProblem if not."""

    def published_ports(self, machine: Machine) -> list[PublishedPort]:
        """The TCP ports that containers in the machine publish, read from its engine."""
        try:
            return list_published(self.engine(machine))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise MachineError(f"The Docker engine of {machine.name} does not answer right now; "
                               "try again in a moment.", str(error)) from None

    def reach(self, machine: Machine, port: int) -> tuple[str, int]:
        """Where Berth connects to reach a port the machine publishes (host, port)."""
        return machine.address, port

    @abstractmethod
    def ping(self) -> None:
        """Return if the engine behind the backend answers; EngineUnavailable if not."""

    def follow(self, report: Callable[[MachineHappening], None], stop: threading.Event) -> None:
        """Report what happens to this Berth's machines (out of memory, stopped) until
        `stop` is set, returning within a few seconds of it: so that Berth tells the learner
        and starts a stopped machine again. A backend that cannot tell just waits."""
        stop.wait()

    @abstractmethod
    def missing_images(self, images: list[str]) -> list[str]:
        """Which of these images the backend cannot start machines or lessons from."""

    def memory(self) -> dict[str, int | None]:
        """Memory where machines run, in bytes, for the instructor's capacity: "total"
        (None when not known) and "available" where the backend can tell."""
        return {"total": None}

    def free_disk(self) -> int | None:
        """Bytes free where machines keep their disks; None when the backend cannot tell."""
        return None


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gone(error: Exception) -> bool:
    return isinstance(error, docker.errors.NotFound)


class DockerMachines(MachineBackend):
    """Machines as containers on a Docker engine, each with its own dockerd inside."""

    name = "docker"

    def __init__(self, config: Config, instance_id: str, authority: CertificateAuthority,
                 host_client: docker.DockerClient | None = None):
        self.config = config
        self.instance_id = instance_id
        self.authority = authority
        self._host = host_client
        self._host_lock = threading.Lock()
        self._network_lock = threading.Lock()
        self._engines: dict[str, docker.DockerClient] = {}
        self._engines_lock = threading.Lock()
        self._removing = KeyedLocks()  # one remover of a session at a time
        self._profile: Isolation | None = None
        self.mirror: Mirror | None = None
        self.mirror_container: str | None = None  # the mirror's, once it runs
        self.packages: PackageCache | None = None
        self.packages_container: str | None = None  # the package cache's, once it runs
        self._self_container: str | None = self._own_container_id()

    # --- the host engine

    @property
    def host(self) -> docker.DockerClient:
        with self._host_lock:
            if self._host is None:
                try:
                    self._host = docker.from_env(timeout=self.config.engine_timeout)
                    self._host.ping()
                except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
                    self._host = None
                    raise EngineUnavailable(
                        "The Docker engine does not answer. Start it (./run serve does this on "
                        "Debian) or point DOCKER_HOST at one, then try again.", str(error)
                    ) from None
            return self._host

    def ping(self) -> None:
        try:
            self.host.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            with self._host_lock:
                self._host = None
            raise EngineUnavailable(
                "The Docker engine does not answer. Start it (./run serve does this on Debian) "
                "or point DOCKER_HOST at one.", str(error)
            ) from None

    def memory(self) -> dict[str, int | None]:
        """The engine host's total; what is available only when that host is this one."""
        try:
            total = self.host.info().get("MemTotal")
        except (MachineError, docker.errors.DockerException, requests.exceptions.RequestException):
            total = None  # an engine that does not answer: no figure, not an error
        figures: dict[str, int | None] = {"total": total}
        host = os.environ.get("DOCKER_HOST", "")
        if not host or host.startswith("unix://"):
            figures["available"] = _available_memory()
        return figures

    def free_disk(self) -> int | None:
        """Free space of the engine's data folder, when the engine runs on this host."""
        host = os.environ.get("DOCKER_HOST", "")
        if host and not host.startswith("unix://"):
            return None
        try:
            root = self.host.info().get("DockerRootDir") or ""
            found = os.statvfs(root)
        except (MachineError, docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            return None  # an engine that does not answer, or its folder is not in sight
        return found.f_bavail * found.f_frsize

    def missing_images(self, images: list[str]) -> list[str]:
        missing = []
        for image in images:
            try:
                self.host.api.inspect_image(image)
            except docker.errors.ImageNotFound:
                missing.append(image)
        return missing

    def _labels(self, session_id: str, role: str, machine: str | None = None) -> dict[str, str]:
        labels = {LABEL_INSTANCE: self.instance_id, LABEL_SESSION: session_id, LABEL_ROLE: role,
                  **owner_labels(self.config.data_dir)}
        if machine:
            labels[LABEL_MACHINE] = machine
        return labels

    def _filters(self, session_id: str | None, role: str) -> dict:
        labels = [f"{LABEL_INSTANCE}={self.instance_id}", f"{LABEL_ROLE}={role}"]
        if session_id:
            labels.append(f"{LABEL_SESSION}={session_id}")
        return {"label": labels}

    # --- how machines are isolated here (berth/isolation.py)

    def detect_profile(self) -> Isolation:
        """Choose the isolation this engine offers and prove it with a probe machine whose
        engine must answer. There is no weaker fallback: a failure is reported as is."""
        try:
            isolation = choose_isolation(self.host.info(), self.config)
        except IsolationError as error:
            raise MachineError(str(error)) from None
        probe_id = f"probe-{os.urandom(3).hex()}"
        try:
            machine = self._create_machine(probe_id, "probe", None, None, isolation)
            self.wait_ready(machine, timeout=30)
        except MachineError as error:
            raise MachineError(f"Learner machines do not start on this engine with {isolation.name} "
                               f"isolation: {error.message}", error.detail) from None
        finally:
            self.destroy_session(probe_id)
        self._profile = isolation
        if isolation.warning:
            log.warning("%s", isolation.warning)
        log.info("learner machines run with %s isolation: %s", isolation.name, isolation.summary)
        return isolation

    @property
    def profile(self) -> Isolation:
        if self._profile is None:
            self.detect_profile()
        return self._profile  # type: ignore[return-value]

    # --- sessions

    def create_session(self, session_id: str, names: list[str]) -> list[Machine]:
        try:
            network, hosts = self._create_network(f"berth-{session_id}", session_id)
            self._connect(self.mirror_container, network, hosts[1], [MIRROR_ALIAS])
            self._connect(self.packages_container, network, hosts[2], [PACKAGES_ALIAS])
            reach, reach_hosts = None, []
            if self._self_container:
                # Berth in a container reaches the machines over an internal network it
                # shares with them alone. Joining the session's own network instead would
                # make that network Berth's default gateway (the engine picks one by name)
                # and move Berth's published port onto it; internal networks never are.
                reach, reach_hosts = self._create_network(f"berth-{session_id}-reach", session_id, internal=True)
                self._connect(self._self_container, reach, reach_hosts[1], ["berth"])
            with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
                futures = [
                    pool.submit(self._create_machine, session_id, name, network, str(hosts[9 + index]),
                                self.profile, (reach, str(reach_hosts[9 + index])) if reach else None)
                    for index, name in enumerate(names)
                ]
                return [future.result() for future in futures]
        except BaseException as error:
            self.destroy_session(session_id)
            if isinstance(error, MachineError):
                raise
            if isinstance(error, (docker.errors.DockerException, requests.exceptions.RequestException)):
                raise MachineError("The machines could not be created.", str(error)) from error
            raise

    def _create_network(self, name: str, session_id: str, internal: bool = False,
                        labels: dict[str, str] | None = None):
        """A private bridge network of the session's own, with a /27 of the configured
        pool; returns the network and the subnet's host addresses (gateway first). Given
        `labels`, a network of another part (the package cache's) with those labels."""
        pool = ipaddress.ip_network(self.config.network_pool)
        refused: list[ipaddress.IPv4Network] = []  # the engine said they overlap, whatever its list says
        with self._network_lock:
            for attempt in range(8):
                used = self._host_routes() + refused
                for net in self.host.api.networks():
                    for entry in (net.get("IPAM") or {}).get("Config") or []:
                        try:
                            used.append(ipaddress.ip_network(entry.get("Subnet", ""), strict=False))
                        except ValueError:
                            pass
                subnet = next(
                    (s for s in pool.subnets(new_prefix=27)
                     if not any(s.overlaps(u) for u in used if u.version == 4)),
                    None,
                )
                if subnet is None:
                    raise MachineError(
                        "The address pool for sessions is used up; end some sessions or widen "
                        "BERTH_NETWORK_POOL.", f"no free /27 in {pool}"
                    )
                hosts = list(subnet.hosts())
                try:
                    network = self.host.networks.create(
                        name, driver="bridge", check_duplicate=True, internal=internal,
                        ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet), gateway=str(hosts[0]))]),
                        labels=labels or self._labels(session_id, "network"),
                    )
                    return network, hosts
                except docker.errors.APIError as error:
                    if "overlap" in str(error).lower() and attempt < 7:
                        # another Berth took it meanwhile, or a network just removed still
                        # holds it in the engine's allocator: the next one
                        refused.append(subnet)
                        continue
                    raise
        raise AssertionError("unreachable")

    def _host_routes(self) -> list[ipaddress.IPv4Network]:
        """Networks the host routes already, such as a bridge an earlier engine left behind:
        a session network on top of one would be unreachable ("No route to host"). Known only
        where Berth shares the engine's host and its network (a local engine, not in a
        container of its own)."""
        if self._self_container or not self.host.api.base_url.startswith("http+docker://localhost"):
            return []
        return routed_networks()

    @staticmethod
    def _connect(container: str | None, network, address, aliases: list[str]) -> None:
        if container:
            try:
                network.connect(container, ipv4_address=str(address), aliases=aliases)
            except docker.errors.APIError as error:
                log.warning("could not connect %s to %s: %s", container[:12], network.name, error)

    def _create_machine(self, session_id: str, name: str, network, address: str | None,
                        profile: Isolation, reach: tuple | None = None) -> Machine:
        try:
            return self._create_machine_unchecked(session_id, name, network, address, profile, reach)
        except docker.errors.ImageNotFound:
            raise MachineError(
                f"The machine image {self.config.machine_image} is missing; ./run builds it.",
            ) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise MachineError(f"The machine {name} could not be created.", str(error)) from None

    def _create_machine_unchecked(self, session_id: str, name: str, network, address: str | None,
                                  profile: Isolation, reach: tuple | None) -> Machine:
        api = self.host.api
        mounts = []
        if profile.engine_volume:
            disk = api.create_volume(f"berth-{session_id}-{name}-disk",
                                     labels=self._labels(session_id, "disk", name))
            mounts.append(Mount("/var/lib/berth-disk", disk["Name"], type="volume"))
        environment = {"BERTH_DISK_SIZE": self.config.machine_disk if profile.disk_bound == "loop" else ""}
        if self.mirror_container and network is not None:
            environment["BERTH_MIRROR"] = f"http://{MIRROR_ALIAS}:5000"
        if self.packages_container and self.packages and network is not None:
            environment["BERTH_PACKAGES"] = self.packages.url
        options = dict(profile.options)
        unconfined_paths = options.pop("systempaths_unconfined", False)
        host_config = api.create_host_config(
            mounts=mounts,
            mem_limit=self.config.machine_memory,
            memswap_limit=self.config.machine_memory,
            nano_cpus=int(self.config.machine_cpus * 1e9),
            pids_limit=self.config.machine_pids,
            network_mode=network.name if network is not None else "none",
            **options,
        )
        if unconfined_paths:
            # What `--security-opt systempaths=unconfined` means: the engine inside writes
            # to /proc/sys (forwarding, bridges) of its own network namespace.
            host_config["MaskedPaths"] = []
            host_config["ReadonlyPaths"] = []
        networking = None
        if network is not None:
            networking = api.create_networking_config({
                network.name: api.create_endpoint_config(ipv4_address=address, aliases=[name]),
            })
        created = api.create_container(
            self.config.machine_image, name=f"berth-{session_id}-{name}", hostname=name,
            labels=self._labels(session_id, "machine", name), environment=environment,
            host_config=host_config, networking_config=networking, detach=True,
        )
        container_id = created["Id"]
        addresses = [address] if address else []
        if reach:
            reach_network, reach_address = reach
            api.connect_container_to_network(container_id, reach_network.id, ipv4_address=reach_address)
            addresses.insert(0, reach_address)  # Berth's way in
        if addresses:
            cert = self.authority.server_certificate(name, addresses)
            api.put_archive(container_id, "/etc/berth/tls", tar_of({
                "ca.pem": cert.ca_pem, "cert.pem": cert.cert_pem, "key.pem": cert.key_pem,
            }))
        try:
            api.start(container_id)
        except docker.errors.APIError as error:
            raise MachineError(f"The machine {name} could not start.", str(error)) from None
        return Machine(session_id, name, container_id, addresses[0] if addresses else "", "running")

    def machines(self, session_id: str | None = None) -> list[Machine]:
        found = []
        for container in self.host.containers.list(all=True, filters=self._filters(session_id, "machine"), ignore_removed=True):
            labels = container.labels
            networks = container.attrs["NetworkSettings"]["Networks"] or {}
            session = labels[LABEL_SESSION]
            net = networks.get(f"berth-{session}-reach") or networks.get(f"berth-{session}") or {}
            address = (net.get("IPAMConfig") or {}).get("IPv4Address") or net.get("IPAddress") or ""
            found.append(Machine(labels[LABEL_SESSION], labels[LABEL_MACHINE], container.id,
                                 address, container.status))
        return found

    def session_ids(self) -> set[str]:
        ids = set()
        for kind in ("machine", "disk", "network"):
            filters = self._filters(None, kind)
            if kind == "machine":
                items = [c.labels for c in self.host.containers.list(all=True, filters=filters, ignore_removed=True)]
            elif kind == "disk":
                items = [v.attrs.get("Labels") or {} for v in self.host.volumes.list(filters=filters)]
            else:
                items = [n.attrs.get("Labels") or {} for n in self.host.networks.list(filters=filters)]
            ids.update(labels.get(LABEL_SESSION, "") for labels in items)
        ids.discard("")
        return ids

    def wait_ready(self, machine: Machine, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            try:
                if machine.address:
                    self.engine(machine).ping()
                else:
                    result = self.exec(machine, ["test", "-e", "/run/berth/ready"], timeout=5)
                    if result.exit_code != 0:
                        raise MachineError("not ready yet")
                return
            except (MachineError, docker.errors.DockerException,
                    requests.exceptions.RequestException) as error:
                last_error = str(error)
                state = self._state(machine)
                if state not in ("running", "created"):
                    logs = self._logs(machine)
                    raise MachineStopped(f"The machine {machine.name} stopped while starting.",
                                       f"state {state}; log: {logs}") from None
            time.sleep(0.05)
        raise MachineError(f"The machine {machine.name} did not get ready in {timeout:.0f} s.",
                           f"{last_error}; log: {self._logs(machine)}")

    def _state(self, machine: Machine) -> str:
        try:
            return self.host.api.inspect_container(machine.container_id)["State"]["Status"]
        except docker.errors.NotFound:
            return "gone"

    def _logs(self, machine: Machine) -> str:
        try:
            return self.host.api.logs(machine.container_id, tail=20).decode("utf-8", "replace")
        except docker.errors.APIError:
            return ""

    def start(self, machine: Machine) -> None:
        try:
            self.host.api.start(machine.container_id)
        except docker.errors.APIError as error:
            raise MachineError(f"The machine {machine.name} could not start again.", str(error)) from None
        self._forget_engine(machine)

    # --- following the machines

    def follow(self, report: Callable[[MachineHappening], None], stop: threading.Event) -> None:
        """The host engine's `oom` and `die` events of this Berth's machines, read in windows
        of FOLLOW_WINDOW seconds so that `stop` is heard; and every LOOK_EVERY seconds a look
        at every machine, reporting those not running. The look is how a restart of the
        engine is noticed: its events stream is cut and its containers stop with it. When
        the engine answers again after being down, the firewall goes back in (its iptables
        chains may be gone with it) and the machines are looked at at once."""
        since = int(time.time())
        next_look = 0.0
        down = False
        seen: dict[tuple, float] = {}  # windows meet at a second: an event there comes twice

        def tell(happening: MachineHappening) -> None:
            try:
                report(happening)
            except Exception:
                log.exception("reporting %s failed", happening)

        while not stop.is_set():
            try:
                if down:
                    self.ping()
                    log.warning("the Docker engine answers again; putting the machines' firewall back")
                    self.apply_firewall()
                    down, next_look, since = False, 0.0, int(time.time())
                if time.monotonic() >= next_look:
                    next_look = time.monotonic() + LOOK_EVERY
                    for machine in self.machines():
                        if machine.state in NOT_RUNNING:
                            tell(MachineHappening(machine.session_id, machine.name, "stopped",
                                                  f"found {machine.state}"))
                until = since + FOLLOW_WINDOW
                events = self.host.events(since=since, until=until, decode=True, filters={
                    "type": ["container"], "event": ["oom", "die"],
                    "label": [f"{LABEL_INSTANCE}={self.instance_id}", f"{LABEL_ROLE}=machine"]})
                for event in events:
                    key = (event.get("id"), event.get("Action"), event.get("timeNano"))
                    if key in seen:
                        continue
                    seen[key] = time.monotonic()
                    labels = (event.get("Actor") or {}).get("Attributes") or {}
                    session_id, name = labels.get(LABEL_SESSION), labels.get(LABEL_MACHINE)
                    if session_id and name:
                        action = event.get("Action")
                        tell(MachineHappening(session_id, name, "oom" if action == "oom" else "stopped",
                                              f"{action} exit code {labels.get('exitCode', '?')}"))
                since = until
                for key, at in list(seen.items()):
                    if at < time.monotonic() - 10:
                        del seen[key]
            except (MachineError, docker.errors.DockerException, requests.exceptions.RequestException) as error:
                if not down:
                    log.warning("following the machines: the engine does not answer (%s)",
                                getattr(error, "detail", "") or error)
                down = True
                stop.wait(FOLLOW_RETRY)

    def destroy_session(self, session_id: str) -> None:
        # Two removers at once (an API delete and the reaper) would each see the other's
        # "removal already in progress" and return early with the disk and network left;
        # the second waits for the first instead, and returns when all is gone.
        with self._removing.hold(session_id):
            self._destroy_session(session_id)

    def _destroy_session(self, session_id: str) -> None:
        host = self.host
        for container in host.containers.list(all=True, filters=self._filters(session_id, "machine"), ignore_removed=True):
            self._forget_engine_id(container.id)
            try:
                container.remove(force=True, v=True)
            except docker.errors.APIError as error:
                if not _gone(error):
                    log.warning("removing %s: %s", container.name, error)
        for volume in host.volumes.list(filters=self._filters(session_id, "disk")):
            try:
                volume.remove(force=True)
            except docker.errors.APIError as error:
                if not _gone(error):
                    log.warning("removing volume %s: %s", volume.name, error)
        for network in host.networks.list(filters=self._filters(session_id, "network")):
            for container in (self.mirror_container, self.packages_container, self._self_container):
                if container:
                    try:
                        network.disconnect(container, force=True)
                    except docker.errors.APIError:
                        pass
            try:
                network.remove()
            except docker.errors.APIError as error:
                if not _gone(error):
                    log.warning("removing network %s: %s", network.name, error)

    # --- inside a machine

    def exec(self, machine: Machine, argv: list[str], timeout: float = 30,
             stdin: bytes | None = None) -> ExecResult:
        api = self.host.api
        try:
            exec_id = api.exec_create(
                machine.container_id, ["timeout", "-k", "2", str(int(timeout) or 1), *argv],
                stdin=stdin is not None,
            )["Id"]
            if stdin is None:
                output = api.exec_start(exec_id)
            else:
                sock = api.exec_start(exec_id, socket=True)
                raw = getattr(sock, "_sock", sock)
                raw.sendall(stdin)
                raw.shutdown(socket.SHUT_WR)
                output = ExecStream(raw).read_all()
                sock.close()
            code = api.exec_inspect(exec_id).get("ExitCode")
        except docker.errors.NotFound:
            raise MachineError(f"The machine {machine.name} is gone.") from None
        except docker.errors.APIError as error:
            raise MachineError(f"The machine {machine.name} cannot run commands now.", str(error)) from None
        return ExecResult(code if code is not None else -1, output)

    def open_stream(self, machine: Machine, argv: list[str], env: dict[str, str] | None = None) -> Stream:
        api = self.host.api
        try:
            exec_id = api.exec_create(
                machine.container_id, argv, stdin=True, detach_keys=DETACH_KEYS,
                environment={"TERM": "xterm-256color", "LANG": "C.UTF-8", **(env or {})},
            )["Id"]
            response = api.exec_start(exec_id, socket=True)
        except docker.errors.APIError as error:
            raise MachineError(f"A terminal in {machine.name} could not be opened.", str(error)) from None
        sock = getattr(response, "_sock", response)
        sock.settimeout(None)  # the client's timeout (BERTH_ENGINE_TIMEOUT) would drop an idle terminal
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return ExecStream(sock)

    def engine(self, machine: Machine) -> docker.DockerClient:
        with self._engines_lock:
            client = self._engines.get(machine.container_id)
            if client is None:
                if not machine.address:
                    raise MachineError(f"The machine {machine.name} has no network address.")
                tls = docker.tls.TLSConfig(
                    client_cert=(str(self.authority.client_cert_path), str(self.authority.client_key_path)),
                    ca_cert=str(self.authority.ca_cert_path), verify=True,
                )
                client = docker.DockerClient(base_url=f"https://{machine.address}:{ENGINE_PORT}",
                                             tls=tls, version="1.41", timeout=20)
                # Environment settings (REQUESTS_CA_BUNDLE, proxies) must not replace the
                # machine's CA or send its engine's traffic elsewhere; and the learner, root
                # in the machine, controls that engine: no redirects, bounded answers.
                client.api.trust_env = False
                bound_engine_client(client)
                self._engines[machine.container_id] = client
            return client

    def _forget_engine(self, machine: Machine) -> None:
        self._forget_engine_id(machine.container_id)

    def _forget_engine_id(self, container_id: str) -> None:
        with self._engines_lock:
            client = self._engines.pop(container_id, None)
        if client is not None:
            client.close()

    # --- the firewall on the engine's host

    def apply_firewall(self) -> None:
        """Keep machines from the engine host's services and the networks around it
        (isolation.egress_rules). The rules go in through the engine, in a short-lived
        container in the host's network namespace, so that they land on the host that
        runs the machines, whether Berth runs there, in a container or elsewhere."""
        script = egress_rules(self.config.network_pool, self.config.allowed_networks)
        try:
            output = self.host.containers.run(
                self.config.machine_image, ["sh", "-c", script], entrypoint=[], remove=True,
                network_mode="host", userns_mode="host", cap_add=["NET_ADMIN", "NET_RAW"],
                labels={LABEL_INSTANCE: self.instance_id, LABEL_ROLE: "firewall",
                        **owner_labels(self.config.data_dir)},
                stdout=True, stderr=True,
            )
        except docker.errors.ContainerError as error:
            raise MachineError(
                "The firewall that keeps machines from the host's own network could not be set up; "
                "machines are not started without it. Does the engine manage iptables "
                "(dockerd --iptables, the default)?",
                (error.stderr or b"").decode("utf-8", "replace")[-2000:]) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise MachineError("The firewall for machines could not be set up.", str(error)) from None
        log.info("firewall for %s: %s", self.config.network_pool, output.decode().strip())

    # --- the backend itself

    def prepare(self, images: list[str]) -> None:
        """The engine answers, Berth knows its own container, the mirror serves `images`,
        the machines' isolation is chosen and proved, and their firewall is in place."""
        self.ping()
        self.check_own_container()
        if self.config.mirror_image:
            self.mirror = Mirror(self.host, self.config, self.instance_id)
            self.mirror_container = self.mirror.start(images)
        if self.config.package_cache_image:
            self.packages = PackageCache(self.host, self.config, self.instance_id, self._packages_network)
            self.packages_container = self.packages.start()
        self.detect_profile()  # proves the machine image too, which the firewall runs
        self.apply_firewall()

    def _packages_network(self, name: str):
        """The package cache's own network: a subnet of the sessions' pool, so that the
        firewall on the engine's host holds for the cache's traffic as for a machine's."""
        network, _ = self._create_network(name, "", labels={
            LABEL_INSTANCE: self.instance_id, LABEL_ROLE: "packages", **owner_labels(self.config.data_dir)})
        return network

    def describe(self) -> BackendReport:
        mirror, packages = self.mirror, self.packages
        problems = [mirror.message] if mirror is not None and mirror.status == "failed" else []
        # a cache that failed is not a problem of Berth's health: apt goes to Debian directly
        cache = None if packages is None else packages.message if packages.status == "failed" else packages.status
        isolation = self._profile
        return BackendReport(self.name, isolation.name if isolation else None,
                             frozenset({"files", "mirror", "adopt"}),
                             mirror.status if mirror is not None else None, problems,
                             isolation.summary if isolation else None, isolation.warning if isolation else "",
                             package_cache=cache)

    def close(self) -> None:
        with self._engines_lock:
            engines, self._engines = list(self._engines.values()), {}
        for client in engines:
            client.close()

    def remove_all(self, instance_id: str | None = None) -> list[str]:
        return remove_instance(self.host, instance_id or self.instance_id)

    def remove_unused_shared(self) -> list[str]:
        removed = []
        for volume in self.host.volumes.list(filters={"label": f"{LABEL_ROLE}={SEED_ROLE}"}):
            try:
                volume.remove()  # the engine refuses while a mirror mounts it
                removed.append(volume.name)
            except docker.errors.APIError:
                pass
        return removed

    def instances(self) -> dict[str, Leftovers]:
        found: dict[str, Leftovers] = {}
        filters = {"label": LABEL_INSTANCE}
        try:
            things = [(c.name, c.labels) for c in self.host.containers.list(all=True, filters=filters, ignore_removed=True)]
            things += [(n.name, n.attrs.get("Labels") or {}) for n in self.host.networks.list(filters=filters)]
            things += [(v.name, v.attrs.get("Labels") or {}) for v in self.host.volumes.list(filters=filters)]
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise EngineUnavailable("The Docker engine does not answer.", str(error)) from None
        for name, labels in things:
            leftovers = found.setdefault(labels[LABEL_INSTANCE], Leftovers())
            leftovers.names.append(name)
            if not leftovers.labels.get(LABEL_DATA):  # older things may lack the owner labels
                leftovers.labels = dict(labels)
        return found

    # --- files, through the engine's archive API

    def get_archive(self, machine: Machine, path: str) -> Archive:
        try:
            stream, stat = self.host.api.get_archive(machine.container_id, path, chunk_size=ARCHIVE_CHUNK)
        except (docker.errors.APIError, requests.exceptions.RequestException) as error:
            raise _file_problem(machine, path, error) from None
        stat = stat or {}
        mode = int(stat.get("mode", 0))
        kind = ("directory" if mode & MODE_DIR else "link" if mode & MODE_SYMLINK
                else "other" if mode & MODE_TYPE else "file")
        info = PathInfo(stat.get("name") or "", kind, int(stat.get("size", 0)), stat.get("linkTarget") or "")
        return Archive(info, stream, getattr(stream, "close", lambda: None))

    def put_archive(self, machine: Machine, directory: str, chunks: Iterable[bytes]) -> None:
        try:
            self.host.api.put_archive(machine.container_id, directory, chunks)
        except docker.errors.APIError as error:
            raise _file_problem(machine, directory, error) from None

    # --- Berth inside a container

    @staticmethod
    def _own_container_id() -> str | None:
        """When Berth itself runs in a container (not on the host network), it joins each
        session's network to reach the machines' engines and ports."""
        if not os.path.exists("/.dockerenv"):
            return None
        return socket.gethostname()

    def check_own_container(self) -> None:
        if not self._self_container:
            return
        try:
            me = self.host.api.inspect_container(self._self_container)
        except docker.errors.NotFound:
            log.info("running in a container that the engine does not know (%s); not joining "
                     "session networks", self._self_container)
            self._self_container = None
            return
        if me["HostConfig"].get("NetworkMode") == "host":
            self._self_container = None  # the host's routes reach the machines already
        else:
            self._self_container = me["Id"]


ARCHIVE_CHUNK = 256 * 1024
# Go's os.FileMode type bits, as the engine reports them in an archive's stat.
MODE_DIR = 1 << 31
MODE_SYMLINK = 1 << 27
MODE_TYPE = MODE_DIR | MODE_SYMLINK | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)


def _file_problem(machine: Machine, path: str, error: Exception) -> FileProblem:
    """The engine's complaint about a path, sorted by cause."""
    text = str(getattr(error, "explanation", "") or error)
    lower = text.lower()
    if getattr(error, "status_code", None) == 404 or "no such file" in lower or "could not find the file" in lower:
        reason = "missing"
    elif "no space left" in lower or "quota" in lower:
        reason = "disk_full"
    elif "not a directory" in lower:
        reason = "not_a_directory"
    elif "read-only" in lower or "permission denied" in lower:
        reason = "not_writable"
    else:
        reason = "other"
    return FileProblem(reason, text)


def routed_networks(table: str = "/proc/net/route") -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of this host's routing table, less the default route."""
    networks = []
    try:
        lines = Path(table).read_text().splitlines()[1:]
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        destination, mask = (ipaddress.IPv4Address(int(f, 16).to_bytes(4, "little")) for f in (fields[1], fields[7]))
        if int(mask):
            networks.append(ipaddress.IPv4Network(f"{destination}/{mask}", strict=False))
    return networks


def remove_instance(client: docker.DockerClient, instance_id: str) -> list[str]:
    """Remove everything labelled with a Berth instance: its machines, disks, networks and
    mirror; returns their names. Containers go several at a time (a class's machines
    within a stop's few seconds), then the networks they were on, then the disks."""
    label = {"label": f"{LABEL_INSTANCE}={instance_id}"}
    removed: list[str] = []

    def quietly(action, *args, **kwargs) -> bool:
        for attempt in range(2):
            try:
                action(*args, **kwargs)
                return True
            except docker.errors.NotFound:
                return False  # already gone
            except docker.errors.APIError as error:
                if error.status_code == 409:
                    return False  # "removal already in progress" is fine too
                if error.status_code != 500 or attempt:
                    raise
                time.sleep(1)  # the engine was busy (removing a snapshot); once more
        return False

    def remove_container(container) -> None:
        if quietly(container.remove, force=True, v=True):
            removed.append(container.name)

    containers = client.containers.list(all=True, filters=label, ignore_removed=True)
    if containers:
        with ThreadPoolExecutor(max_workers=min(8, len(containers))) as pool:
            list(pool.map(remove_container, containers))
    for network in client.networks.list(filters=label):
        quietly(network.reload)
        for attached in network.attrs.get("Containers") or {}:
            quietly(network.disconnect, attached, force=True)
        if quietly(network.remove):
            removed.append(network.name)
    for volume in client.volumes.list(filters=label):
        if quietly(volume.remove, force=True):
            removed.append(volume.name)
    return removed
