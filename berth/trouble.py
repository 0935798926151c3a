"""Machine trouble: what happens to a machine itself (a program killed for lack of memory,
the machine stopped, the engine that runs it restarted), told to the learner's terminal and
mended where Berth can: a stopped machine of a live session is started again, its disk kept.

The backend reports happenings (`MachineBackend.follow`, run on a thread of Berth's); this
part decides what they mean for the session and says it on the bus as `MachineTrouble`."""

from __future__ import annotations

import logging
import threading
import time

from .config import Config
from .events import Bus, MachineTrouble, SessionReady
from .machines import MachineBackend, MachineError, MachineHappening
from .sessions import READY_TIMEOUT, Sessions
from .store import Store

log = logging.getLogger(__name__)

OOM_QUIET = 10.0  # seconds: a machine's out-of-memory notice at most this often


def size_words(size: int) -> str:
    """1073741824 -> "1 GiB", 402653184 -> "384 MiB": a memory limit as a learner reads it."""
    for unit, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if size >= unit:
            amount = size / unit
            return f"{amount:.0f} {name}" if amount == int(amount) else f"{amount:.1f} {name}"
    return f"{size} bytes"


class MachineCare:
    """Hears the backend's happenings; says them to the session's page and starts a stopped
    machine again. Only machines of live sessions that were ready count: a machine that
    stops because its session ends, or while it is being made, is none of its business."""

    def __init__(self, config: Config, store: Store, backend: MachineBackend, sessions: Sessions, bus: Bus):
        self.config = config
        self.store = store
        self.backend = backend
        self.sessions = sessions
        self.bus = bus
        self._lock = threading.Lock()
        self._mending: set[tuple[str, str]] = set()  # (session, machine) being started again
        self._last_oom: dict[tuple[str, str], float] = {}
        self._threads: list[threading.Thread] = []

    def run(self, stop: threading.Event) -> None:
        """Follow the machines until `stop` is set (Berth's thread)."""
        self.backend.follow(self.on_happening, stop)

    def join(self, timeout: float) -> None:
        for thread in list(self._threads):
            thread.join(timeout)

    def on_happening(self, happening: MachineHappening) -> None:
        session_id, name = happening.session_id, happening.machine
        if not self._ready(session_id, name):
            return
        key = (session_id, name)
        if happening.what == "oom":
            now = time.monotonic()
            with self._lock:
                if now - self._last_oom.get(key, -OOM_QUIET) < OOM_QUIET:
                    return
                self._last_oom[key] = now
            log.info("session %s: a program in %s ran out of memory", session_id, name)
            self.bus.publish(MachineTrouble(
                session_id, name, "oom",
                f"A program in {name} ran out of memory (limit {size_words(self.config.machine_memory)}) "
                "and was stopped by the kernel."))
        elif happening.what == "stopped":
            with self._lock:
                if key in self._mending:
                    return
                self._mending.add(key)
                self._threads = [t for t in self._threads if t.is_alive()]
                thread = threading.Thread(target=self._start_again, args=(session_id, name, happening.detail),
                                          name=f"mend-{session_id}-{name}", daemon=True)
                self._threads.append(thread)
            thread.start()

    def _ready(self, session_id: str, name: str) -> bool:
        """A machine of a live session, ready as far as Berth knew."""
        if session_id in self.sessions.ending:
            return False
        record = self.store.session(session_id)
        if record is None or record.ended_at is not None:
            return False
        return any(m.name == name and m.status == "ready" for m in record.machines)

    def _start_again(self, session_id: str, name: str, detail: str) -> None:
        """Start the machine's own container again (its disk and files kept), wait for its
        engine, and say so; if it cannot start, mark it failed and say what to do."""
        try:
            log.warning("session %s: machine %s stopped (%s); starting it again", session_id, name, detail)
            self.store.set_machine(session_id, name, "starting", f"{name} stopped; Berth is starting it again.")
            self.bus.publish(MachineTrouble(session_id, name, "stopped",
                                            f"{name} stopped; Berth is starting it again…"))
            try:
                machine = next((m for m in self.backend.machines(session_id) if m.name == name), None)
                if machine is None:
                    raise MachineError(f"The machine {name} is gone.")
                if machine.state != "running":
                    self.backend.start(machine)
                self.backend.wait_ready(machine, READY_TIMEOUT)
            except MachineError as error:
                if not self._live(session_id):
                    return
                log.error("session %s: machine %s could not start again: %s (%s)",
                          session_id, name, error.message, error.detail)
                message = (f"{name} stopped and Berth could not start it again ({error.message}). "
                           "End this session (End session) and start a new one.")
                self.store.set_machine(session_id, name, "failed", message)
                self.bus.publish(MachineTrouble(session_id, name, "failed", message))
                return
            if not self._live(session_id):
                return
            self.store.set_machine(session_id, name, "ready")
            log.info("session %s: machine %s runs again", session_id, name)
            self.bus.publish(MachineTrouble(session_id, name, "running", f"{name} is running again."))
            record = self.store.session(session_id)
            if record is not None and all(m.status == "ready" for m in record.machines):
                self.bus.publish(SessionReady(session_id))  # checks resume
        except Exception:
            log.exception("session %s: starting %s again failed", session_id, name)
        finally:
            with self._lock:
                self._mending.discard((session_id, name))

    def _live(self, session_id: str) -> bool:
        record = self.store.session(session_id)
        return record is not None and record.ended_at is None and session_id not in self.sessions.ending
