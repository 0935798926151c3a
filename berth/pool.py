"""The pool: sessions made ahead of time, so that a learner's machines are ready the moment
they ask. A kit is everything a session of one lesson needs (its network, its machines with
their certificates, the lesson's images already pulled into each machine's engine), made
under a session id chosen in advance; taking a kit means the new session gets that id.

A kit is never anybody's before: it is made fresh, handed out once, and a session that ends
removes its machines as any other does. Kits are made with the same backend call and the
same isolation as a cold start, so taking one weakens nothing. They count against
BERTH_MAX_SESSIONS and give way to learners: a cold session that would go over the limit
removes a kit first. Unclaimed kits are removed when Berth stops (also with
BERTH_KEEP_ON_STOP: they are nobody's sessions), and those of an earlier run that did not
stop cleanly are removed at start-up as leftovers."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .config import Config
from .lessons import Library
from .machines import Machine, MachineBackend, MachineError, MachineStopped
from .store import Store

log = logging.getLogger(__name__)

FILLS_AT_ONCE = 2  # kits made side by side (a host of 2 cores; learners' cold starts come first)
READY_TIMEOUT = 60  # seconds a kit's machine may take to answer
PRELOAD_TIMEOUT = 300  # seconds to pull a lesson's images into one machine
LOOK_EVERY = 2.0  # seconds between looks at what is missing, when nothing wakes the pool sooner
RETRY_AFTER = 30.0  # seconds before a lesson whose kit failed is tried again
STOP_WAIT = 8.0  # seconds stopping waits for kits being made to stop by themselves
# A class arriving takes many kits within a second. Refilling behind each take would make
# machines (engine calls, certificates) on the same two cores while the rest of the class
# is still being answered, so the refill waits until takes pause for SETTLE seconds, and
# no longer than SETTLE_AT_MOST in all (takes that never pause would starve the pool).
SETTLE = 0.5
SETTLE_AT_MOST = 3.0


@dataclass
class Kit:
    """A session made ahead of time for one lesson: `filling` while it is made, `warm` when
    its machines answer and hold the lesson's images."""

    session_id: str
    lesson: str
    machines: list[Machine] = field(default_factory=list)
    state: str = "filling"  # filling | warm
    cancelled: bool = False  # given way to a learner, or Berth stops: removed once made
    made_at: float = field(default_factory=time.monotonic)


class Pool:
    """Keeps the wanted number of warm kits per lesson (BERTH_POOL, plus workshops' open
    seats), within capacity; hands them to Sessions; removes what nobody took."""

    def __init__(self, config: Config, store: Store, backend: MachineBackend, library: Library,
                 *, starts: threading.Semaphore, room_problem: Callable[[], str | None] = lambda: None):
        self.config = config
        self.starts = starts  # turns to make machines (BERTH_STARTS_AT_ONCE), shared with learners' cold starts
        self.store = store
        self.backend = backend
        self.library = library
        self.room_problem = room_problem  # why no more machines fit now (disk, memory), or None
        self.extra: Callable[[], dict[str, int]] = dict  # open workshop seats by lesson (root wires it)
        self._kits: dict[str, Kit] = {}
        self._handing: set[str] = set()  # taken, the session's record not yet stored
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fills = ThreadPoolExecutor(max_workers=FILLS_AT_ONCE, thread_name_prefix="pool-fill")
        self._failed: dict[str, tuple[float, str]] = {}  # lesson -> (when, why) of its last failed kit
        self.taken = 0  # kits handed to sessions since start
        self._taken_at = 0.0  # monotonic time of the last take

    # --- what is wanted

    def size_for(self, slug: str) -> int:
        """The lesson's own pool size (BERTH_POOL), without workshops."""
        sizes = self.config.pool
        return sizes.get(slug, sizes.get("*", 0))

    @property
    def enabled(self) -> bool:
        """BERTH_POOL=0 turns the pool off, workshops' seats included: every start is cold."""
        return any(size > 0 for size in self.config.pool.values())

    def wanted(self) -> dict[str, int]:
        """Warm kits wanted per lesson: BERTH_POOL's size plus the workshops' open seats."""
        if not self.enabled:
            return {}
        try:
            extra = self.extra()
        except Exception:  # noqa: BLE001 - the pool still serves BERTH_POOL's sizes
            log.exception("pool: could not read the workshops' open seats")
            extra = {}
        return {slug: self.size_for(slug) + extra.get(slug, 0) for slug in self.library.lessons}

    def owned(self) -> set[str]:
        """Session ids the pool holds on the backend (the reaper leaves them alone)."""
        with self._lock:
            return set(self._kits) | set(self._handing)

    def counted(self) -> int:
        """Kits that count against BERTH_MAX_SESSIONS: those not giving way, and those being
        handed to a session whose record is not stored yet (counted twice for a moment rather
        than not at all)."""
        with self._lock:
            return sum(1 for kit in self._kits.values() if not kit.cancelled) + len(self._handing)

    def report(self) -> dict[str, dict[str, int]]:
        """Per lesson: warm and filling kits, and how many are wanted (/healthz)."""
        wanted = self.wanted()
        with self._lock:
            kits = [k for k in self._kits.values() if not k.cancelled]
        found = {}
        for slug in self.library.lessons:
            mine = [k for k in kits if k.lesson == slug]
            if wanted.get(slug) or mine:
                found[slug] = {"warm": sum(k.state == "warm" for k in mine),
                               "filling": sum(k.state == "filling" for k in mine),
                               "wanted": wanted.get(slug, 0)}
        return found

    def problems(self) -> dict[str, str]:
        """Lessons whose last kit failed, and why (logged too)."""
        return {slug: why for slug, (_, why) in self._failed.items()}

    # --- taking and giving way

    def take(self, slug: str) -> Kit | None:
        """A warm kit of the lesson, no longer the pool's, or None. The caller stores the
        session under the kit's id and then calls `handed`; until then the reaper sees the id
        as the pool's."""
        with self._lock:
            warm = [k for k in self._kits.values() if k.lesson == slug and k.state == "warm" and not k.cancelled]
            if not warm:
                return None
            kit = min(warm, key=lambda k: k.made_at)  # oldest first
            del self._kits[kit.session_id]
            self._handing.add(kit.session_id)
            self.taken += 1
            self._taken_at = time.monotonic()
        self._wake.set()  # refill behind it, once the takes pause (SETTLE)
        return kit

    def handed(self, session_id: str) -> None:
        with self._lock:
            self._handing.discard(session_id)

    def give_way(self, sessions: int) -> list[str]:
        """With `sessions` learners' sessions, kits beyond BERTH_MAX_SESSIONS give way: the
        ids of warm kits to remove now (the caller removes them before making its machines);
        kits still being made are cancelled and removed when made."""
        remove = []
        with self._lock:
            over = sessions + sum(1 for k in self._kits.values() if not k.cancelled) - self.config.max_sessions
            # warm kits first (removed at once), the lessons with the most kits first
            candidates = sorted((k for k in self._kits.values() if not k.cancelled),
                                key=lambda k: (k.state != "warm", -sum(o.lesson == k.lesson for o in self._kits.values()),
                                               -k.made_at))
            for kit in candidates[:max(0, over)]:
                kit.cancelled = True
                if kit.state == "warm":
                    del self._kits[kit.session_id]
                    self._handing.add(kit.session_id)  # the reaper leaves it to the caller
                    remove.append(kit.session_id)
        if remove:
            log.info("pool: %d kit(s) give way to a learner's session", len(remove))
        return remove

    def remove(self, session_ids: list[str]) -> None:
        """Remove kits that gave way (in the new session's own thread)."""
        for session_id in session_ids:
            try:
                self.backend.destroy_session(session_id)
            finally:
                self.handed(session_id)

    # --- running

    def start(self) -> None:
        """Fill in the background until `stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pool", daemon=True)
            self._thread.start()

    def nudge(self) -> None:
        """Something changed (a workshop, a session ended): look at once."""
        self._wake.set()

    def stop(self, timeout: float = 30) -> list[str]:
        """Stop filling, wait for kits being made, and remove every unclaimed kit (drain).
        Returns the removed kits' session ids."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for kit in self._kits.values():
                kit.cancelled = True
        self._fills.shutdown(wait=False, cancel_futures=True)
        # Kits being made stop at their next step (a machine being created finishes first);
        # what is left after STOP_WAIT is removed here, and again by its fill when it ends.
        deadline = time.monotonic() + min(timeout, STOP_WAIT)
        while time.monotonic() < deadline:
            with self._lock:
                if not any(k.state == "filling" for k in self._kits.values()):
                    break
            time.sleep(0.1)
        with self._lock:
            left = list(self._kits)
        for session_id in left:
            try:
                self.backend.destroy_session(session_id)
            except MachineError as error:
                log.warning("pool: could not remove kit %s: %s", session_id, error.message)
            except Exception:  # noqa: BLE001 - draining goes on with the next kit
                log.exception("pool: could not remove kit %s", session_id)
            with self._lock:
                self._kits.pop(session_id, None)
        if left:
            log.info("pool: removed %d unclaimed kit(s)", len(left))
        return left

    def _run(self) -> None:
        while not self._stop.is_set():
            self._settle()
            try:
                self._look()
            except Exception:  # noqa: BLE001 - the pool must keep going
                log.exception("pool: looking at what is missing failed")
            self._wake.wait(LOOK_EVERY)
            self._wake.clear()

    def _settle(self) -> None:
        """Wait while kits are being taken (a class arriving), SETTLE_AT_MOST at most."""
        give_up = time.monotonic() + SETTLE_AT_MOST
        while not self._stop.is_set():
            with self._lock:
                quiet_at = self._taken_at + SETTLE
            now = time.monotonic()
            if now >= quiet_at or now >= give_up:
                return
            self._stop.wait(min(quiet_at, give_up) - now)

    def _look(self) -> None:
        """Start making the kits that are missing (within capacity), and remove warm kits
        beyond what is wanted (a workshop ended)."""
        wanted = self.wanted()
        surplus: list[str] = []
        with self._lock:
            for slug, count in self._counts().items():
                extra = count - wanted.get(slug, 0)
                warm = [k for k in self._kits.values() if k.lesson == slug and k.state == "warm" and not k.cancelled]
                for kit in sorted(warm, key=lambda k: -k.made_at)[:max(0, extra)]:
                    del self._kits[kit.session_id]
                    self._handing.add(kit.session_id)
                    surplus.append(kit.session_id)
        if surplus:
            log.info("pool: removing %d kit(s) no longer wanted", len(surplus))
            self.remove(surplus)
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                counts = self._counts()
                filling = sum(1 for k in self._kits.values() if k.state == "filling")
            missing = {slug: n - counts.get(slug, 0) for slug, n in wanted.items()
                       if n > counts.get(slug, 0) and now - self._failed.get(slug, (-RETRY_AFTER, ""))[0] >= RETRY_AFTER}
            if not missing or filling >= FILLS_AT_ONCE:
                return
            if self.store.count_active() + self.counted() >= self.config.max_sessions:
                return  # learners' sessions first
            if self.room_problem() is not None:
                return  # low on disk or memory: no more machines
            slug = max(missing, key=lambda s: missing[s])
            kit = Kit(secrets.token_hex(6), slug)
            with self._lock:
                if self._stop.is_set():
                    return
                self._kits[kit.session_id] = kit
            try:
                self._fills.submit(self._fill, kit)
            except RuntimeError:  # shut down meanwhile
                with self._lock:
                    self._kits.pop(kit.session_id, None)
                return

    def _counts(self) -> dict[str, int]:
        """Kits per lesson that count (not giving way); with the lock held."""
        counts: dict[str, int] = {}
        for kit in self._kits.values():
            if not kit.cancelled:
                counts[kit.lesson] = counts.get(kit.lesson, 0) + 1
        return counts

    def _fill(self, kit: Kit) -> None:
        """Make one kit: the session's network and machines, each machine's engine
        answering, the lesson's images pulled into it."""
        lesson = self.library.get(kit.lesson)
        started = time.monotonic()
        try:
            if lesson is None:
                raise MachineError(f"There is no lesson {kit.lesson!r}.")

            def ready(machine: Machine) -> None:
                self._wait_ready(kit, machine)
                for image in lesson.preload:
                    if self._cancelled(kit):
                        return
                    self.backend.preload(machine, [image], PRELOAD_TIMEOUT)

            with self.starts:
                machines = self.backend.create_session(kit.session_id, list(lesson.machines))
                kit.machines = machines
                if not self._cancelled(kit):
                    with ThreadPoolExecutor(max_workers=len(machines)) as each:
                        list(each.map(ready, machines))
        except Exception as error:  # noqa: BLE001 - a failed kit is removed and tried again later
            why = error.message if isinstance(error, MachineError) else f"{type(error).__name__}: {error}"
            detail = getattr(error, "detail", "")
            if not (kit.cancelled or self._stop.is_set()):
                log.error("pool: a kit of %s failed: %s %s", kit.lesson, why, detail)
                self._failed[kit.lesson] = (time.monotonic(), why)
            self._discard(kit)
            return
        if kit.cancelled or self._stop.is_set():
            self._discard(kit)
            return
        self._failed.pop(kit.lesson, None)
        with self._lock:
            kit.state = "warm"
        log.info("pool: a kit of %s is warm (session id %s) in %.1f s", kit.lesson, kit.session_id,
                 time.monotonic() - started)

    def _cancelled(self, kit: Kit) -> bool:
        return kit.cancelled or self._stop.is_set()

    def _wait_ready(self, kit: Kit, machine: Machine) -> None:
        """The machine's engine answers, waited for a second at a time so that a kit given
        up (Berth stopping) stops waiting; a machine that stopped fails at once."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._cancelled(kit):
            try:
                self.backend.wait_ready(machine, 1)
                return
            except MachineStopped:
                raise
            except MachineError:
                if time.monotonic() > deadline:
                    raise

    def _discard(self, kit: Kit) -> None:
        try:
            self.backend.destroy_session(kit.session_id)
        except Exception:  # noqa: BLE001 - the reaper or the next start removes what is left
            log.exception("pool: could not remove kit %s", kit.session_id)
        with self._lock:
            self._kits.pop(kit.session_id, None)
        self._wake.set()
