"""The check framework: what a check may reach in a session (its machines, their own
engines, commands in them), what it says (findings), how a kind is declared (a function
with typed parameters, registered by name) and how checks run: side by side, bounded in
time, any failure turned into a message. The kinds themselves are in checks.py."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests
import requests.exceptions
from pydantic import BaseModel, ConfigDict, ValidationError

from .locks import KeyedLocks
from .machines import ExecResult, Machine, MachineError

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 10.0  # seconds a check may take before it is reported as too slow
OWN_EXEC_MARK = "berth-check"  # last argument of the checks' own execs, to tell their events apart


@dataclass(frozen=True)
class Finding:
    """One assertion of a check and what Berth saw: ok, and a sentence for the learner. A
    tip is advice that holds nothing back (it is ok): "name it with docker tag" for an image
    committed without a name, which is a correct commit all the same."""

    ok: bool
    message: str
    tip: bool = False

    def as_json(self) -> dict[str, Any]:
        if self.tip:
            return {"ok": self.ok, "message": self.message, "tip": True}
        return {"ok": self.ok, "message": self.message}


class CheckProblem(Exception):
    """A check cannot look (a machine is gone, an engine does not answer): said as a message."""


# --- what a check may reach

class Facts:
    """What checks learn and must not forget while the session lasts: sets of values by
    kind and key. This one lives in memory; the checker's keeps them in the progress store."""

    def __init__(self):
        self._values: dict[tuple[str, str], set[str]] = {}

    def recall(self, kind: str, key: str) -> set[str]:
        return set(self._values.get((kind, key), ()))

    def remember(self, kind: str, key: str, value: str) -> None:
        self._values.setdefault((kind, key), set()).add(value)


class Context:
    """What the checks of one session may reach: each machine, its own engine, commands run
    in it, files in it and its published ports. Results fetched once per round are kept
    (`memo`); `session_cache` lives as long as the session (archive listings)."""

    def __init__(self, machine: Callable[[str], Machine], engine: Callable[[Machine], docker.DockerClient],
                 execute: Callable[..., ExecResult], session_cache: dict | None = None,
                 own_execs: set[str] | None = None, facts: Facts | None = None,
                 reach: Callable[[Machine, int], tuple[str, int]] | None = None):
        self.facts = facts if facts is not None else Facts()
        self._machine = machine
        self._reach = reach or (lambda machine, port: (machine.address, port))
        self._engine = engine
        self._execute = execute
        self.session_cache = session_cache if session_cache is not None else {}
        self.own_execs = own_execs if own_execs is not None else set()
        self._memo: dict[Any, Any] = {}
        self._making = KeyedLocks()
        self._lock = threading.Lock()
        self.http = requests.Session()
        self.http.trust_env = False  # never through a proxy: the machine is on Berth's own network

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """make() once per key and round, even when checks ask at the same time."""
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        with self._making.hold(key):
            with self._lock:
                if key in self._memo:
                    return self._memo[key]
            value = make()
            with self._lock:
                self._memo[key] = value
            return value

    def machine(self, name: str) -> Machine:
        def find() -> Machine:
            try:
                return self._machine(name)
            except KeyError:
                raise CheckProblem(f"This session has no machine {name}.") from None
        return self.memo(("machine", name), find)

    def engine(self, name: str) -> docker.DockerClient:
        return self._engine(self.machine(name))

    def reach(self, name: str, port: int) -> tuple[str, int]:
        """Where Berth connects to a port the machine publishes."""
        return self._reach(self.machine(name), port)

    def run_in_machine(self, name: str, argv: list[str], timeout: float = 8) -> ExecResult:
        return self._execute(self.machine(name), argv, timeout=timeout)

    def containers(self, machine: str) -> list[dict]:
        """Every container of the machine's engine, inspected."""
        def make() -> list[dict]:
            api = self.engine(machine).api
            found = []
            for summary in api.containers(all=True):
                try:
                    found.append(api.inspect_container(summary["Id"]))
                except docker.errors.NotFound:
                    pass  # removed meanwhile
            return found
        return self.memo(("containers", machine), make)

    def container(self, machine: str, name: str) -> dict | None:
        wanted = name.lstrip("/")
        for attrs in self.containers(machine):
            if attrs["Name"].lstrip("/") == wanted or attrs["Id"].startswith(wanted) and len(wanted) >= 12:
                return attrs
        return None

    def images(self, machine: str) -> list[dict]:
        """Every image of the machine's engine, inspected (the list lacks what commit records)."""
        def make() -> list[dict]:
            api = self.engine(machine).api
            found = []
            for summary in api.images():
                try:
                    found.append(api.inspect_image(summary["Id"]))
                except docker.errors.ImageNotFound:
                    pass
            return found
        return self.memo(("images", machine), make)

    def run_in_container(self, machine: str, container_id: str, script: str, timeout: int = 8) -> tuple[int, str]:
        """Run a shell script in a container of the machine. Its events carry OWN_EXEC_MARK
        and its exec id is remembered, so the checker does not take them for the learner's."""
        api = self.engine(machine).api
        state = api.inspect_container(container_id).get("State") or {}
        if state.get("Paused"):
            # `docker commit` pauses the container it copies; an exec into a paused container
            # waits for it, and held the learner's commit up for good when it came first
            raise CheckProblem("The container is paused (docker commit pauses it while it copies); "
                               "checking again when it runs.")
        created = api.exec_create(container_id, ["timeout", str(timeout), "sh", "-c", script, OWN_EXEC_MARK])
        self.own_execs.add(created["Id"])
        output = api.exec_start(created["Id"])
        code = api.exec_inspect(created["Id"]).get("ExitCode")
        return (code if code is not None else -1), output.decode("utf-8", "replace")

    def close(self) -> None:
        self.http.close()


# --- kinds, by name

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Kind:
    name: str
    params: type[Params]
    run: Callable[[Context, Any], list[Finding]]
    help: str


KINDS: dict[str, Kind] = {}


def kind(name: str, params: type[Params]):
    """Register a check kind: a function (context, params) -> findings."""
    def register(function: Callable[[Context, Any], list[Finding]]):
        KINDS[name] = Kind(name, params, function, (function.__doc__ or "").strip())
        return function
    return register


# --- running checks

def evaluate(ctx: Context, kind_name: str, params: dict[str, Any], kinds: dict[str, Kind] | None = None) -> list[Finding]:
    """One check, its failures said as a message: never an exception."""
    check = (KINDS if kinds is None else kinds).get(kind_name)
    if check is None:
        return [Finding(False, f"Berth has no check {kind_name!r} (a mistake in the lesson).")]
    try:
        return check.run(ctx, check.params.model_validate(params))
    except ValidationError as error:
        return [Finding(False, f"The lesson's check {kind_name!r} is wrong: {error.errors()[0]['msg']}.")]
    except CheckProblem as problem:
        return [Finding(False, str(problem))]
    except MachineError as error:
        return [Finding(False, f"Berth could not check this: {error.message}")]
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        log.info("check %s failed: %s", kind_name, error)
        return [Finding(False, f"Berth could not ask the machine's engine ({type(error).__name__}); it tries again.")]
    except Exception:  # a bug in a check must not take the checker down
        log.exception("check %s crashed", kind_name)
        return [Finding(False, f"The check {kind_name!r} failed inside Berth; it is logged.")]


class CheckRunner:
    """Runs checks side by side on threads of its own, each bounded in time. Whoever
    makes one closes it (Berth does, when it stops)."""

    def __init__(self, kinds: dict[str, Kind] | None = None, workers: int = 32):
        self.kinds = KINDS if kinds is None else kinds
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check")

    def run(self, ctx: Context, checks: list[tuple[str, dict[str, Any]]],
            timeout: float = CHECK_TIMEOUT) -> list[Finding]:
        """Each check gets `timeout` seconds, then it is reported as slow."""
        futures = [self._pool.submit(evaluate, ctx, name, params, self.kinds) for name, params in checks]
        deadline = time.monotonic() + timeout
        findings: list[Finding] = []
        for (name, _), future in zip(checks, futures, strict=True):
            try:
                findings += future.result(max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                findings.append(Finding(False, f"Checking this took longer than {timeout:.0f} s ({name}); "
                                               "Berth tries again."))
        return findings

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
