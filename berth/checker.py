"""The checker: evaluates each session's tasks against the learner's own machines when
something may have changed (an engine event, a command returned, Enter pressed, a slow
timer), keeps the results in the progress store (a task once done stays done) and
publishes every change of a session's task list (and of its machines' states) on the bus."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import requests.exceptions

from .check_framework import OWN_EXEC_MARK, CheckRunner, Context, Facts
from .config import Config
from .events import Bus, EngineChanged, LearnerActivity, MachinesChanged, TasksChanged
from .lessons import Lesson, Library
from .machines import Machine, MachineBackend, MachineError
from .store import SessionRecord, Store, TaskResult, iso

log = logging.getLogger(__name__)

TICK = 0.2  # seconds between looks at timers
SYNC_EVERY = 1.0  # seconds between looks at sessions and machine states in the store
ENTER_DELAYS = (1.0, 3.0)  # after Enter, look again: a command in a container's shell sends no prompt mark
# Engine events that change nothing a check looks at (reads); the checks cause these too.
QUIET_ACTIONS = {"archive-path", "top", "resize", "export"}
# Engine events that change what the engine view shows (EngineChanged), and how long a
# burst of them (a build: a container and an image per step) is gathered into one.
VIEW_CONTAINER_ACTIONS = {"create", "start", "die", "destroy", "rename", "pause", "unpause", "commit"}
VIEW_IMAGE_SKIP = {"save", "push"}
ENGINE_GATHER = 0.4


class StoredFacts(Facts):
    """Facts of one session in the progress store, so that a restart forgets nothing."""

    def __init__(self, store: Store, session_id: str):
        super().__init__()
        self.store, self.session_id = store, session_id

    def recall(self, kind: str, key: str) -> set[str]:
        return self.store.facts(self.session_id, kind, key)

    def remember(self, kind: str, key: str, value: str) -> None:
        self.store.add_fact(self.session_id, kind, key, value)


@dataclass
class Watch:
    """What the checker keeps about one session while it lasts."""

    session_id: str
    machines: dict[str, Machine] = field(default_factory=dict)
    streams: dict[str, Any] = field(default_factory=dict)
    own_execs: set[str] = field(default_factory=set)
    cache: dict = field(default_factory=dict)
    wanted: bool = False
    running: bool = False
    stopped: bool = False
    last_round: float = 0.0
    last_sent: list | None = None
    state: threading.Lock = field(default_factory=threading.Lock)
    round_lock: threading.Lock = field(default_factory=threading.Lock)


class Checker:
    """One per Berth. `request(session_id)` asks for a round soon (requests that come while
    a round runs are folded into one more round); `check_now` runs one and waits."""

    def __init__(self, config: Config, store: Store, library: Library, backend: MachineBackend,
                 runner: CheckRunner, bus: Bus):
        self.config = config
        self.store = store
        self.library = library
        self.backend = backend
        self.runner = runner
        self.bus = bus
        self._watches: dict[str, Watch] = {}
        self._lock = threading.Lock()
        self._rounds = ThreadPoolExecutor(max_workers=8, thread_name_prefix="checker")
        self._later: list[tuple[float, str]] = []
        self._machine_states: dict[str, list] = {}
        self._engine_due: dict[tuple[str, str], float] = {}  # (session, machine): when to say EngineChanged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the task list, as the API and the page see it

    def task_list(self, session_id: str) -> list[dict[str, Any]]:
        record = self.store.session(session_id)
        lesson: Lesson | None = self.library.get(record.lesson) if record else None
        results = self.store.task_results(session_id)
        tasks = []
        for task in lesson.tasks if lesson else ():
            result = results.get(task.id)
            tasks.append({
                "id": task.id, "title": task.title,
                "status": result.status if result else "pending",
                "completed_at": iso(result.completed_at) if result else None,
                "feedback": result.feedback if result else [],
            })
        return tasks

    def machine_states(self, session_id: str) -> list[dict[str, str]]:
        return machine_states(self.store.session(session_id))

    # --- when to check

    def on_activity(self, event: LearnerActivity) -> None:
        """A command returned or files arrived: check now. After Enter, look again a little
        later: a command in a container's shell sends no prompt mark when it returns."""
        if event.what == "enter":
            for delay in ENTER_DELAYS:
                self.request_later(event.session_id, delay)
        else:
            self.request(event.session_id)

    def request(self, session_id: str) -> None:
        """Check the session's tasks soon, in the background."""
        watch = self._watches.get(session_id) or self.watch(session_id)
        if watch is None:
            return
        with watch.state:
            watch.wanted = True
            # Rounds run in the background only once Berth runs the checker: a Berth that
            # is only prepared (the check tests, the self-test) checks when asked to.
            if watch.running or watch.stopped or self._thread is None or self._stop.is_set():
                return
            watch.running = True
        self._rounds.submit(self._rounds_while_wanted, watch)

    def request_later(self, session_id: str, delay: float) -> None:
        with self._lock:
            heapq.heappush(self._later, (time.monotonic() + delay, session_id))

    def check_now(self, session_id: str) -> None:
        """Run a round and return when it is done (the API's POST .../check)."""
        watch = self._watches.get(session_id) or self.watch(session_id)
        if watch is not None:
            self._round(watch)

    def _rounds_while_wanted(self, watch: Watch) -> None:
        while True:
            with watch.state:
                if not watch.wanted or watch.stopped:
                    watch.running = False
                    return
                watch.wanted = False
            try:
                self._round(watch)
            except Exception:
                log.exception("checking session %s failed", watch.session_id)

    # --- sessions coming and going

    def watch(self, session_id: str) -> Watch | None:
        """Start watching a session whose machines are ready (on "ready" from sessions).
        The store and the engine are asked outside the checker's lock: a class arriving
        together had each session's start wait for the others' engine calls in turn."""
        with self._lock:
            existing = self._watches.get(session_id)
        if existing is not None:
            return existing
        record = self.store.session(session_id)
        if record is None or record.ended_at is not None or not record.machines \
                or any(m.status != "ready" for m in record.machines):
            return None
        try:
            found = {m.name: m for m in self.backend.machines(session_id)}
        except MachineError as error:
            log.warning("cannot watch session %s: %s", session_id, error.message)
            return None
        with self._lock:
            existing = self._watches.get(session_id)
            if existing is not None:  # watched by another caller meanwhile
                return existing
            watch = Watch(session_id, machines=found)
            self._watches[session_id] = watch
        # Ended while the engine was asked? The store says so before SessionEnded is sent,
        # so a forget() that came before the watch was added is made up for here.
        record = self.store.session(session_id)
        if record is None or record.ended_at is not None:
            self.forget(session_id)
            return None
        for name in found:
            threading.Thread(target=self._follow_events, args=(watch, name), daemon=True,
                             name=f"events-{session_id}-{name}").start()
        self.request(session_id)
        return watch

    def forget(self, session_id: str) -> None:
        """Stop watching a session that ended (on "ended" from sessions)."""
        with self._lock:
            watch = self._watches.pop(session_id, None)
            self._machine_states.pop(session_id, None)
        if watch is None:
            return
        with watch.state:
            watch.stopped = True
        for stream in list(watch.streams.values()):
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing a dead stream may fail in many ways
                pass

    # --- engine events

    def caused_by_checks(self, watch: Watch, event: dict) -> bool:
        """Whether an engine event tells nothing new: reads, and the checks' own execs."""
        action = event.get("Action") or event.get("status") or ""
        if action in QUIET_ACTIONS:
            return True
        if action.startswith(("exec_create", "exec_start")):
            return OWN_EXEC_MARK in action
        if action == "exec_die":
            exec_id = ((event.get("Actor") or {}).get("Attributes") or {}).get("execID", "")
            if exec_id in watch.own_execs:
                watch.own_execs.discard(exec_id)
                return True
        return False

    def _follow_events(self, watch: Watch, name: str) -> None:
        """One events stream per machine engine, for the life of the session."""
        failures = 0
        while not watch.stopped and not self._stop.is_set():
            try:
                machine = watch.machines[name]
                stream = self.backend.engine(machine).events(decode=True)
                watch.streams[name] = stream
                if watch.stopped:
                    stream.close()
                    return
                if failures:
                    self.request(watch.session_id)  # events may have been missed meanwhile
                failures = 0
                for event in stream:
                    if watch.stopped:
                        break
                    if not self.caused_by_checks(watch, event):
                        self.request(watch.session_id)
                    if changes_view(event):
                        self._engine_changed(watch.session_id, name)
            except (MachineError, docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
                log.debug("events of %s/%s: %s", watch.session_id, name, error)
            failures += 1
            if self._stop.wait(min(10, 0.5 * failures)):
                return
            self._refresh_machines(watch)

    def _engine_changed(self, session_id: str, machine: str) -> None:
        """Say EngineChanged soon, once for a burst (published by the timer)."""
        with self._lock:
            self._engine_due.setdefault((session_id, machine), time.monotonic() + ENGINE_GATHER)

    def _say_engine_changes(self, now: float) -> None:
        with self._lock:
            due = [key for key, at in self._engine_due.items() if at <= now]
            for key in due:
                del self._engine_due[key]
        for session_id, machine in due:
            if session_id in self._watches:
                self.bus.publish(EngineChanged(session_id, machine))

    def _refresh_machines(self, watch: Watch) -> None:
        try:
            watch.machines.update({m.name: m for m in self.backend.machines(watch.session_id)})
        except MachineError:
            pass

    # --- a round

    def context(self, watch: Watch) -> Context:
        """What the session's checks may reach: its machines (an unknown name is said as a
        message by the context), their engines and commands in them."""
        return Context(watch.machines.__getitem__, self.backend.engine, self.backend.exec,
                       watch.cache, watch.own_execs, StoredFacts(self.store, watch.session_id), self.backend.reach)

    def _round(self, watch: Watch) -> None:
        with watch.round_lock:
            store = self.store
            record = store.session(watch.session_id)
            if record is None or record.ended_at is not None:
                self.forget(watch.session_id)
                return
            lesson = self.library.get(record.lesson)
            if lesson is None:
                return
            results = store.task_results(watch.session_id)
            done = {task_id for task_id, result in results.items() if result.status == "done"}
            ctx = self.context(watch)
            try:
                for task in lesson.tasks:
                    if task.id in done:
                        continue
                    if not all(need in done for need in task.needs):
                        new = TaskResult(task.id, "pending", None, [])
                    else:
                        findings = self.runner.run(ctx, [(c.kind, c.params) for c in task.checks])
                        ok = all(f.ok for f in findings)
                        new = TaskResult(task.id, "done" if ok else "pending", time.time() if ok else None,
                                         [f.as_json() for f in findings])
                    with watch.state:
                        if watch.stopped:
                            # the session ended while this round looked: what it saw is its
                            # machines going away, not the learner's work
                            return
                    old = results.get(task.id)
                    if old is None or (old.status, old.feedback) != (new.status, new.feedback):
                        store.save_task_result(watch.session_id, new)
                    if new.status == "done":
                        done.add(task.id)
                        self._push(watch)  # the tick shows while later tasks are checked
            finally:
                ctx.close()
                watch.last_round = time.monotonic()
            self._push(watch)

    def _push(self, watch: Watch) -> None:
        tasks = self.task_list(watch.session_id)
        if tasks != watch.last_sent:
            watch.last_sent = tasks
            self.bus.publish(TasksChanged(watch.session_id, tasks))

    # --- the timer

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick_forever, name="checker-timer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the timer, every session's event streams and the rounds."""
        self._stop.set()
        for session_id in list(self._watches):
            self.forget(session_id)
        self._rounds.shutdown(wait=False, cancel_futures=True)
        if self._thread is not None:
            self._thread.join(10)

    def _tick_forever(self) -> None:
        last_sync = 0.0
        while not self._stop.wait(TICK):
            try:
                now = time.monotonic()
                due = []
                with self._lock:
                    while self._later and self._later[0][0] <= now:
                        due.append(heapq.heappop(self._later)[1])
                for session_id in dict.fromkeys(due):
                    self.request(session_id)
                self._say_engine_changes(now)
                interval = self.config.check_interval
                for watch in list(self._watches.values()):
                    if now - watch.last_round >= interval and not watch.running:
                        self.request(watch.session_id)
                if now - last_sync >= SYNC_EVERY:
                    last_sync = now
                    self._sync()
            except Exception:
                log.exception("checker timer")

    def _sync(self) -> None:
        """Follow the store: watch sessions that became ready (also after a restart), forget
        ended ones, and tell pages when a machine's state changes."""
        active = {record.id: record for record in self.store.sessions()}
        for session_id in list(self._watches):
            if session_id not in active:
                self.forget(session_id)
        for session_id, record in active.items():
            states = machine_states(record)
            if self._machine_states.get(session_id) != states:
                self._machine_states[session_id] = states
                self.bus.publish(MachinesChanged(session_id, states))
            if session_id not in self._watches and record.machines and all(m.status == "ready" for m in record.machines):
                self.watch(session_id)


def changes_view(event: dict) -> bool:
    """Whether an engine event changes the engine view's images or containers."""
    kind, action = event.get("Type") or "", (event.get("Action") or event.get("status") or "").split(":")[0]
    if kind == "image":
        return action not in VIEW_IMAGE_SKIP
    return kind == "container" and action in VIEW_CONTAINER_ACTIONS


def machine_states(record: SessionRecord | None) -> list[dict[str, str]]:
    """A session's machines as the page's `machines` event carries them."""
    return [{"name": m.name, "status": m.status, "message": m.message} for m in (record.machines if record else [])]
