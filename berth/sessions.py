"""Sessions: a learner's lesson plus the machines it declares, on a private network of
their own; an id, a secret token and an expiry, kept in the progress store so that a
server restart loses nothing."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .config import Config
from .events import Bus, SessionEnded, SessionReady
from .lessons import Library
from .machines import Machine, MachineBackend, MachineError
from .store import MachineRecord, SessionRecord, Store

if TYPE_CHECKING:
    from .pool import Kit, Pool

log = logging.getLogger(__name__)

READY_TIMEOUT = 60
TURN_TIMEOUT = 600  # seconds a `wait` request waits for its session's turn to start (BERTH_STARTS_AT_ONCE)
# seconds a `wait` request then waits for its machines to be made and answer (or fail): making
# them has no deadline of its own but the engine's calls', so this is a bound on a stuck start,
# not READY_TIMEOUT (on a loaded host making two machines took longer than the 70 s once used
# here, and the answer said "starting")
START_TIMEOUT = 600
KIT_READY_TIMEOUT = 5  # seconds a kit's machines may take to answer again when taken (else a cold start)
TOUCH_EVERY = 30  # seconds between writes of last_seen_at


class SessionError(Exception):
    """A request about sessions that cannot be served: an HTTP status, a code, a message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Sessions come and go here; each one's machines come from the machines backend. Tells
    the bus SessionReady when a session's machines answer, and SessionEnded before they go."""

    def __init__(self, config: Config, store: Store, backend: MachineBackend, library: Library, bus: Bus,
                 *, starts: threading.Semaphore, pool: Pool | None = None):
        self.config = config
        self.starts = starts  # turns to make machines (BERTH_STARTS_AT_ONCE), shared with the pool
        self.pool = pool  # sessions made ahead of time (berth/pool.py); None: every start is cold
        self.store = store
        self.backend = backend
        self.library = library
        self._create_lock = threading.Lock()
        self._starting: dict[str, threading.Thread] = {}
        self._ending: set[str] = set()  # ended in the store, machines still being removed
        self._touched: dict[str, float] = {}
        self.bus = bus
        self.closed = False  # Berth is stopping: no new sessions

    # --- create, find, end

    def create(self, slug: str, wait: bool = False, client: str | None = None) -> tuple[SessionRecord, str]:
        """A new session of a lesson, its machines starting. `client` (the address the
        request came from) counts against BERTH_SESSIONS_PER_CLIENT, so that nobody fills
        the room from outside; sessions a workshop hands out pass no client."""
        lesson = self.library.get(slug)
        if lesson is None:
            raise SessionError(404, "unknown_lesson", f"There is no lesson {slug!r}.")
        limit = self.config.sessions_per_client
        with self._create_lock:
            if self.closed:
                raise SessionError(503, "stopping", "Berth is stopping; try again when it is back.")
            if self.store.count_active() >= self.config.max_sessions:
                raise SessionError(
                    503, "capacity",
                    f"Berth is full: {self.config.max_sessions} sessions are running, the most "
                    "this server allows (BERTH_MAX_SESSIONS). Try again when one has ended.",
                )
            if client and limit and self.store.count_active_from(client) >= limit:
                raise SessionError(
                    429, "too_many_sessions",
                    f"{limit} sessions are already running from your address, the most Berth "
                    "allows one address (BERTH_SESSIONS_PER_CLIENT). End one (its page's End "
                    "session button) and try again.",
                )
            kit = self.pool.take(slug) if self.pool is not None else None
            if kit is None:
                self._check_room()  # a kit is made already: it needs no more room
            session_id = kit.session_id if kit is not None else secrets.token_hex(6)
            token = secrets.token_urlsafe(32)
            now = time.time()
            record = SessionRecord(
                id=session_id, token_hash=hash_token(token), lesson=slug, created_at=now,
                expires_at=now + self.config.session_ttl, last_seen_at=now,
                machines=[MachineRecord(name, "starting") for name in lesson.machines],
            )
            try:
                self.store.add_session(record)
                if client:
                    self.store.add_fact(session_id, "client", "address", client)
                if kit is not None:
                    self.store.add_fact(session_id, "start", "from", "pool")
            finally:
                if kit is not None:  # stored, or not: either way the reaper may judge it now
                    self.pool.handed(session_id)  # type: ignore[union-attr]
            give_way: list[str] = []
            if kit is None and self.pool is not None:
                give_way = self.pool.give_way(self.store.count_active())
        turn = threading.Event()  # set when this session's machines are being made
        done = threading.Event()  # set when they answer (or failed), before SessionReady is told
        thread = threading.Thread(target=self._start_machines,
                                  args=(session_id, list(lesson.machines), turn, done, kit, give_way),
                                  name=f"start-{session_id}", daemon=True)
        self._starting[session_id] = thread
        thread.start()
        if wait:
            turn.wait(TURN_TIMEOUT)  # its place in the queue, then its own start
            done.wait(START_TIMEOUT)
        return self.store.session(session_id), token  # type: ignore[return-value]

    def _check_room(self) -> None:
        """Refuse a new session while the host is low on disk or memory (BERTH_MIN_FREE_*):
        a clear 503 now, rather than machines that break halfway through a lesson."""
        problem = self.room_problem()
        if problem is not None:
            raise problem

    def room_problem(self) -> SessionError | None:
        """Why no more machines fit on the host now (low disk or memory), or None: new
        sessions are refused, and the pool makes no kits."""
        disk, memory = self.backend.free_disk(), self.backend.memory().get("available")
        need_disk, need_memory = self.config.min_free_disk, self.config.min_free_memory
        if disk is not None and need_disk and disk < need_disk:
            return SessionError(503, "low_disk",
                                f"The server is low on disk ({disk / 2**30:.1f} GiB free, Berth keeps "
                                f"{need_disk / 2**30:.1f} GiB free: BERTH_MIN_FREE_DISK); no new session "
                                "starts until space is freed. Tell whoever runs Berth.")
        if memory is not None and need_memory and memory < need_memory:
            return SessionError(503, "low_memory",
                                f"The server is low on memory ({memory / 2**30:.1f} GiB available, Berth "
                                f"keeps {need_memory / 2**30:.1f} GiB: BERTH_MIN_FREE_MEMORY); no new session "
                                "starts until some ends. Tell whoever runs Berth.")
        return None

    def _start_machines(self, session_id: str, names: list[str], turn: threading.Event, done: threading.Event,
                        kit: Kit | None = None, give_way: list[str] | None = None) -> None:
        """Make the session's machines (or take a kit's, made ahead of time) and wait until
        each machine's engine answers; SessionReady then. Machines are made in turns
        (BERTH_STARTS_AT_ONCE): a start waits for one, and its deadline runs from then.
        `done` is set before SessionReady is told, so that a request waiting for the machines
        answers without waiting for its listeners (the checker's watch): a class arriving at
        once had each answer wait for its own watch, on the same two cores as the others."""
        started = time.monotonic()
        try:
            machines = self._kit_machines(session_id, kit) if kit is not None else None
            if machines is not None:  # a kit's, whose engines have just answered
                turn.set()
                for machine in machines:
                    self.store.set_machine(session_id, machine.name, "ready")
            else:
                if give_way and self.pool is not None:
                    self.pool.remove(give_way)  # kits over the limit go before this session's machines come
                with self.starts:
                    turn.set()
                    if self._ended(session_id):  # ended (or Berth stopping) while it waited its turn
                        return
                    machines = self.backend.create_session(session_id, names)
                    self._wait_all(session_id, machines)
        except Exception as error:  # never leave a session "starting" forever
            if isinstance(error, MachineError):
                log.error("session %s: machines failed: %s (%s)", session_id, error.message, error.detail)
                message = error.message
            else:
                log.exception("session %s: machines failed", session_id)
                message = f"Berth could not start the machines ({type(error).__name__})."
            self.backend.destroy_session(session_id)  # nothing half-made stays behind
            for name in names:
                self.store.set_machine(session_id, name, "failed", message)
            return
        finally:
            turn.set()
            self._starting.pop(session_id, None)
            done.set()
        log.info("session %s ready in %.2f s%s", session_id, time.monotonic() - started,
                 " (taken from the pool)" if kit is not None else "")
        self.bus.publish(SessionReady(session_id))

    def _kit_machines(self, session_id: str, kit: Kit) -> list[Machine] | None:
        """A kit's machines if their engines still answer; else None, the kit removed, and
        the session started cold under the same id."""
        try:
            for machine in kit.machines:
                self.backend.wait_ready(machine, KIT_READY_TIMEOUT)
            return kit.machines
        except MachineError as error:
            log.warning("session %s: the kit taken from the pool does not answer (%s %s); starting cold",
                        session_id, error.message, error.detail)
            self.backend.destroy_session(session_id)
            return None

    def _ended(self, session_id: str) -> bool:
        record = self.store.session(session_id)
        return self.closed or record is None or record.ended_at is not None

    def _wait_all(self, session_id: str, machines: list[Machine]) -> None:
        with ThreadPoolExecutor(max_workers=len(machines)) as each:
            list(each.map(lambda m: self._wait_ready(session_id, m), machines))

    def _wait_ready(self, session_id: str, machine: Machine) -> None:
        self.backend.wait_ready(machine, READY_TIMEOUT)
        self.store.set_machine(session_id, machine.name, "ready")

    def get(self, session_id: str) -> SessionRecord:
        record = self.store.session(session_id)
        if record is None or record.ended_at is not None:
            raise SessionError(404, "unknown_session",
                               "There is no such session (it may have ended or expired).")
        return record

    def authenticate(self, session_id: str, token: str | None) -> SessionRecord:
        """The session if the token is its own; 401 without a token, 403 with a wrong one."""
        if not token:
            raise SessionError(401, "token_required",
                               "This needs the session's token: send 'Authorization: Bearer TOKEN'.")
        record = self.get(session_id)
        if not hmac.compare_digest(record.token_hash, hash_token(token)):
            raise SessionError(403, "wrong_token", "That token does not belong to this session.")
        self.touch(session_id)
        return record

    @property
    def ending(self) -> frozenset[str]:
        """Sessions being ended: their machines stop because Berth removes them."""
        return frozenset(self._ending)

    def touch(self, session_id: str) -> None:
        """The learner is active (an API call, a command typed): the session is not idle.
        Written at most every TOUCH_EVERY seconds (more often if sessions idle out sooner)."""
        now = time.time()
        if now - self._touched.get(session_id, 0) > min(TOUCH_EVERY, self.config.session_idle / 4):
            self._touched[session_id] = now
            self.store.touch(session_id, now)

    def end(self, session_id: str) -> None:
        self._ending.add(session_id)
        try:
            self.store.end_session(session_id)
            self._touched.pop(session_id, None)
            thread = self._starting.get(session_id)
            if thread is not None:
                thread.join(READY_TIMEOUT)
            self.bus.publish(SessionEnded(session_id))
            self.backend.destroy_session(session_id)
        finally:
            self._ending.discard(session_id)
        log.info("session %s ended", session_id)

    def end_all(self, wait: float = 5) -> list[str]:
        """Berth stops and removes every machine at once: take no new sessions, end every
        active one (in the store, and on the bus, so terminals and pages hear it) and give
        machines still starting `wait` seconds to be made, so that the removal finds them."""
        with self._create_lock:
            self.closed = True
        ended = [record.id for record in self.store.sessions()]
        for session_id in ended:
            self.store.end_session(session_id)
            self._touched.pop(session_id, None)
            self.bus.publish(SessionEnded(session_id))
        deadline = time.monotonic() + wait
        for thread in list(self._starting.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        return ended

    def machine(self, session_id: str, name: str) -> Machine:
        """The running machine `name` of a session, for terminals, checks and previews."""
        record = self.get(session_id)
        status = next((m for m in record.machines if m.name == name), None)
        if status is None:
            raise SessionError(404, "unknown_machine", f"This session has no machine {name!r}.")
        if status.status != "ready":
            raise SessionError(409, "machine_not_ready",
                               f"The machine {name} is {status.status}" + (f": {status.message}" if status.message else "."))
        for machine in self.backend.machines(session_id):
            if machine.name == name:
                return machine
        raise SessionError(503, "machine_gone", f"The machine {name} is gone; start a new session.")

    # --- after a restart, and over time

    def adopt(self) -> None:
        """Take over the machines of every active session after a (re)start."""
        for record in self.store.sessions():
            try:
                found = {m.name: m for m in self.backend.machines(record.id)}
            except MachineError as error:
                log.error("cannot adopt sessions: %s", error.message)
                return
            names = [m.name for m in record.machines]
            if not all(name in found for name in names):
                missing = ", ".join(n for n in names if n not in found)
                log.warning("session %s lost machine(s) %s; its machines are marked failed", record.id, missing)
                self.backend.destroy_session(record.id)
                for name in names:
                    self.store.set_machine(record.id, name, "failed",
                                           f"The machine {name} was lost while Berth was down; start a new session.")
                continue
            thread = threading.Thread(target=self._resume, args=(record.id, [found[n] for n in names]),
                                      name=f"adopt-{record.id}", daemon=True)
            self._starting[record.id] = thread
            thread.start()

    def _resume(self, session_id: str, machines: list[Machine]) -> None:
        try:
            for machine in machines:
                if machine.state != "running":
                    self.store.set_machine(session_id, machine.name, "starting")
                    self.backend.start(machine)
            with ThreadPoolExecutor(max_workers=len(machines)) as pool:
                list(pool.map(lambda m: self._wait_ready(session_id, m), machines))
        except MachineError as error:
            log.error("session %s: could not resume: %s (%s)", session_id, error.message, error.detail)
            for machine in machines:
                self.store.set_machine(session_id, machine.name, "failed", error.message)
            return
        finally:
            self._starting.pop(session_id, None)
        log.info("session %s adopted", session_id)
        self.bus.publish(SessionReady(session_id))

    def reap(self) -> list[str]:
        """End expired and idle sessions, and remove anything labelled for a session this
        Berth no longer has. Returns the ids of the sessions it ended."""
        now = time.time()
        ended = []
        for record in self.store.sessions():
            if record.expires_at < now or record.last_seen_at + self.config.session_idle < now:
                reason = "expired" if record.expires_at < now else "idle"
                log.info("reaping %s session %s", reason, record.id)
                self.end(record.id)
                ended.append(record.id)
        self.remove_leftovers()
        return ended

    def remove_leftovers(self) -> list[str]:
        """Remove anything on the backend of a session this Berth neither has nor is
        making (an earlier run's, the pool's unclaimed kits of a Berth that did not stop)."""
        # List what the engine has before what the store has: a session gets its row
        # before anything of it is created, so nothing being created looks orphaned. The
        # pool's kits are read before the store too: a kit leaves the pool only after its
        # session's row is stored.
        labelled = self.backend.session_ids()
        kits = self.pool.owned() if self.pool is not None else set()
        active = kits | {r.id for r in self.store.sessions()} | set(self._starting) | set(self._ending)
        orphans = sorted(labelled - active)
        for orphan in orphans:
            log.info("removing leftovers of session %s", orphan)
            self.backend.destroy_session(orphan)
        return orphans
