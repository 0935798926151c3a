"""Workshops: an instructor runs a room of learners from one page. A workshop is one lesson,
a short join code, a number of seats and an end; each learner who joins gets an ordinary
session of that lesson. The instructor sees every learner's tasks as they change, who is
stuck and why, and raised hands; broadcasts to the room; ends it and keeps the results.

Nothing here knows Flask or Socket.IO: Berth (root.py) builds the part and wires what it
hears (TasksChanged, LearnerActivity, SessionReady/Ended); what changes goes out on the bus
as LearnerChanged, WorkshopChanged, NoticeSent and HandChanged, which the Socket.IO layer
(berth/sockets.py) forwards to the dashboard and the learners' pages."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
import unicodedata
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config
from .events import (
    Bus,
    HandChanged,
    LearnerActivity,
    LearnerChanged,
    NoticeSent,
    WorkshopChanged,
)
from .lessons import Library
from .sessions import SessionError, Sessions
from .store import LearnerRecord, SessionRecord, Store, WorkshopRecord, iso

log = logging.getLogger(__name__)

# Letters and digits that are not mistaken for each other when read aloud or off a
# projector (no 0/O, 1/I/L, 2/Z, 5/S, 6/G, 8/B, U/V, Q).
CODE_ALPHABET = "ACDEFHJKMNPRTWXY3479"
CODE_LENGTH = 6
NAME_LIMIT = 40
TITLE_LIMIT = 120
MESSAGE_LIMIT = 500
DEFAULT_SEATS = 30
MOST_SEATS = 500
DEFAULT_DURATION = 2 * 3600
LONGEST_DURATION = 7 * 86400
TOKEN_FILE = "instructor-token"
FLUSH_EVERY = 1.0  # seconds between pushes of activity-only changes
SWEEP_EVERY = 10.0  # seconds between looks at every learner (stuck by time, machines)
JOIN_FAILURES = 30  # wrong join codes one address may try per minute (a room shares one address)


class WorkshopError(SessionError):
    """A request about workshops that cannot be served: an HTTP status, a code, a message."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def load_instructor_token(config: Config) -> tuple[str, bool]:
    """The instructor token and whether Berth made it (then it lives in the data folder,
    readable by its owner only, and survives restarts)."""
    if config.instructor_token:
        return config.instructor_token, False
    path = Path(config.data_dir) / TOKEN_FILE
    try:
        token = path.read_text().strip()
        if token:
            return token, True
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(token + "\n")
    return token, True


def normalize_code(text: str) -> str:
    """What a learner types ('k7m-rx4', 'K7M RX4') -> the stored code ('K7MRX4')."""
    return "".join(ch for ch in text.upper() if ch.isalnum())


def display_code(code: str) -> str:
    return f"{code[:3]}-{code[3:]}"


def clean_text(value: object, field_name: str, limit: int, required: bool = True) -> str | None:
    """A learner's or instructor's text: a string, trimmed, without control characters."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise WorkshopError(400, "bad_request", f'The field "{field_name}" must be text.')
    text = " ".join("".join(ch for ch in value if unicodedata.category(ch)[0] != "C" or ch in " \t\n").split())
    if not text:
        if required:
            raise WorkshopError(400, "bad_request", f'The field "{field_name}" may not be empty.')
        return None
    if len(text) > limit:
        raise WorkshopError(400, "bad_request", f'The field "{field_name}" may have at most {limit} characters.')
    return text


class JoinLimiter:
    """Wrong join codes per address and minute: codes are short, so guessing is slowed down.
    Only failures count: a whole room often shares one address."""

    def __init__(self, limit: int = JOIN_FAILURES, window: float = 60.0):
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        with self._lock:
            failures = self._failures.get(address)
            now = time.monotonic()
            while failures and failures[0] < now - self.window:
                failures.popleft()
            if failures is not None and not failures:
                del self._failures[address]
            elif failures and len(failures) >= self.limit:
                raise WorkshopError(429, "too_many_tries",
                                    "Too many wrong join codes from here; wait a minute and check the code.")

    def failed(self, address: str) -> None:
        with self._lock:
            self._failures[address].append(time.monotonic())


@dataclass
class Progress:
    """What the dashboard knows of a learner beyond the store, kept while Berth runs."""

    last_active: float = 0.0
    changed_at: float = 0.0  # a task done, or a change in what the checks say
    failure: tuple | None = None  # (task id, the messages of its unmet checks)
    tries: int = 0  # commands run while that failure stayed the same
    signature: Any = None


@dataclass
class Workshops:
    """The workshops part: Berth builds it with what it needs (the checker's task lists, the
    bus it publishes on, the instructor token) and wires what it hears in root.py."""

    config: Config
    store: Store
    sessions: Sessions
    library: Library
    task_list: Callable[[str], list[dict[str, Any]]]
    bus: Bus
    token: str = ""
    token_made: bool = False  # Berth made the token (app.py then prints the instructor link)
    _progress: dict[str, Progress] = field(default_factory=dict)
    _workshop_of: dict[str, str | None] = field(default_factory=dict)
    _sent: dict[str, dict] = field(default_factory=dict)
    _dirty: set[str] = field(default_factory=set)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    # --- the instructor

    def check_token(self, token: str | None) -> None:
        """401 without a token, 403 with any other (a learner's included); compared in
        constant time."""
        if not token:
            raise WorkshopError(401, "token_required",
                                "This needs the instructor token: send 'Authorization: Bearer TOKEN'.")
        if not hmac.compare_digest(_digest(token), _digest(self.token)):
            raise WorkshopError(403, "wrong_token", "That is not the instructor token.")

    def is_instructor(self, token: object) -> bool:
        return isinstance(token, str) and bool(token) and hmac.compare_digest(_digest(token), _digest(self.token))

    def authorize_watch(self, session_id: str, token: str | None) -> None:
        """The terminal's watch mode: the instructor token, and a live session of a workshop
        learner (404 when it ended, 403 for a session outside workshops)."""
        self.check_token(token)
        self.sessions.get(session_id)
        if self.workshop_of(session_id) is None:
            raise WorkshopError(403, "not_in_workshop", "Only the terminals of workshop learners can be watched.")

    # --- workshops

    def create(self, lesson: str, title: str | None = None, seats: int = DEFAULT_SEATS,
               expires_in: int = DEFAULT_DURATION) -> WorkshopRecord:
        found = self.library.get(lesson)
        if found is None:
            raise WorkshopError(404, "unknown_lesson", f"There is no lesson {lesson!r}.")
        now = time.time()
        for _ in range(20):
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            if self.store.workshop_by_code(code) is None:
                break
        else:  # pragma: no cover - 64 million codes
            raise WorkshopError(503, "no_code", "Berth could not find a free join code; try again.")
        record = WorkshopRecord(id=secrets.token_hex(6), code=code, lesson=lesson, title=title or found.title,
                                seats=seats, created_at=now, expires_at=now + expires_in)
        self.store.add_workshop(record)
        log.info("workshop %s (%s) created: %s, %d seats", record.id, code, lesson, seats)
        self.bus.publish(WorkshopChanged(record.id, self.summary_json(record)))  # the pool makes its seats
        return record

    def get(self, workshop_id: str) -> WorkshopRecord:
        record = self.store.workshop(workshop_id) if isinstance(workshop_id, str) else None
        if record is None:
            raise WorkshopError(404, "unknown_workshop", "There is no such workshop.")
        return record

    def by_code(self, code: str) -> WorkshopRecord:
        record = self.store.workshop_by_code(normalize_code(code)) if isinstance(code, str) else None
        if record is None:
            raise WorkshopError(404, "unknown_workshop",
                                "There is no workshop with that code; check it with your instructor.")
        return record

    def seated(self, workshop_id: str) -> list[tuple[LearnerRecord, SessionRecord]]:
        """The learners whose sessions are still running: they hold a seat."""
        seated = []
        for learner in self.store.learners(workshop_id):
            session = self.store.session(learner.session_id)
            if session is not None and session.ended_at is None:
                seated.append((learner, session))
        return seated

    def join(self, code: str, name: object) -> tuple[WorkshopRecord, SessionRecord, str]:
        """A learner takes a seat: a new session of the workshop's lesson, which ends when
        the workshop does."""
        workshop = self.by_code(code)
        clean = clean_text(name, "name", NAME_LIMIT)
        assert clean is not None
        with self._lock:
            workshop = self.get(workshop.id)
            if workshop.over():
                raise WorkshopError(409, "workshop_ended", f"The workshop “{workshop.title}” has ended.")
            seated = self.seated(workshop.id)
            if len(seated) >= workshop.seats:
                raise WorkshopError(409, "workshop_full",
                                    f"The workshop “{workshop.title}” is full: all {workshop.seats} seats are "
                                    "taken. Ask the instructor to make room.")
            if clean.casefold() in {learner.name.casefold() for learner, _ in seated}:
                raise WorkshopError(409, "name_taken",
                                    f"Someone in this workshop is already called {clean}; add an initial or "
                                    "a surname.")
            session, token = self.sessions.create(workshop.lesson)
            self.store.set_expiry(session.id, workshop.expires_at)
            now = time.time()
            self.store.add_learner(LearnerRecord(session.id, workshop.id, clean, now))
            self._workshop_of[session.id] = workshop.id
            self._progress[session.id] = Progress(last_active=now, changed_at=now)
        log.info("workshop %s: %s joined as session %s", workshop.id, clean, session.id)
        self.push(session.id)
        return workshop, self.store.session(session.id) or session, token

    def open_seats(self) -> dict[str, int]:
        """Seats nobody holds yet in running workshops, by lesson: the pool makes them ahead
        of time, so that a class joining at once waits no longer than its first learner."""
        seats: dict[str, int] = {}
        now = time.time()
        for workshop in self.store.workshops():
            if workshop.over(now):
                continue
            free = workshop.seats - len(self.seated(workshop.id))
            if free > 0:
                seats[workshop.lesson] = seats.get(workshop.lesson, 0) + free
        return seats

    def learner_of(self, session_id: str) -> tuple[LearnerRecord, WorkshopRecord] | None:
        learner = self.store.learner(session_id)
        if learner is None:
            return None
        workshop = self.store.workshop(learner.workshop_id)
        return (learner, workshop) if workshop else None

    def broadcast(self, workshop_id: str, message: object) -> int:
        """Show a message on every seated learner's page; returns how many it reached."""
        workshop = self.get(workshop_id)
        if workshop.over():
            raise WorkshopError(409, "workshop_ended", "This workshop has ended; nobody is left to tell.")
        text = clean_text(message, "message", MESSAGE_LIMIT)
        self.store.set_notice(workshop.id, text or "")
        seated = self.seated(workshop.id)
        for learner, _ in seated:
            self.bus.publish(NoticeSent(learner.session_id, text or "", iso(time.time())))
        self.bus.publish(WorkshopChanged(workshop.id, self.summary_json(self.get(workshop.id))))
        log.info("workshop %s: broadcast to %d learners", workshop.id, len(seated))
        return len(seated)

    def raise_hand(self, session_id: str, message: object = None) -> dict[str, Any]:
        found = self.learner_of(session_id)
        if found is None:
            raise WorkshopError(409, "not_in_workshop",
                                "This session is not part of a workshop: there is no instructor to ask.")
        _, workshop = found
        if workshop.over():
            raise WorkshopError(409, "workshop_ended", "The workshop has ended.")
        text = clean_text(message, "message", MESSAGE_LIMIT, required=False)
        now = time.time()
        self.store.set_help(session_id, text or "", now)
        self.touch(session_id)
        help_json = {"message": text or "", "at": iso(now)}
        self.bus.publish(HandChanged(session_id, help_json))
        self.push(session_id)
        return help_json

    def lower_hand(self, session_id: str) -> None:
        if self.store.learner(session_id) is None:
            raise WorkshopError(409, "not_in_workshop", "This session is not part of a workshop.")
        self.store.set_help(session_id, None, None)
        self.bus.publish(HandChanged(session_id, None))
        self.push(session_id)

    def end(self, workshop_id: str) -> None:
        """End the workshop and every learner's session; the results stay."""
        workshop = self.get(workshop_id)
        self.store.end_workshop(workshop.id)
        seated = self.seated(workshop.id)
        for learner, _ in seated:
            self.bus.publish(NoticeSent(learner.session_id,
                                        "The workshop has ended; your machines are being removed. Thank you!",
                                        iso(time.time())))
        if seated:
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="workshop-end") as pool:
                list(pool.map(self._end_session, [learner.session_id for learner, _ in seated]))
        self.bus.publish(WorkshopChanged(workshop.id, self.summary_json(self.get(workshop.id))))
        log.info("workshop %s ended (%d sessions)", workshop.id, len(seated))

    def _end_session(self, session_id: str) -> None:
        try:
            self.sessions.end(session_id)
        except Exception:  # one machine that will not go must not keep the others
            log.exception("ending session %s of a workshop failed", session_id)

    # --- what the dashboard shows

    def summary_json(self, workshop: WorkshopRecord) -> dict[str, Any]:
        now = time.time()
        return {
            "id": workshop.id, "code": workshop.code, "display_code": display_code(workshop.code),
            "join_url": f"/join/{workshop.code}", "lesson": workshop.lesson, "title": workshop.title,
            "seats": workshop.seats, "created_at": iso(workshop.created_at),
            "expires_at": iso(workshop.expires_at), "ended_at": iso(workshop.ended_at or (
                workshop.expires_at if workshop.expires_at <= now else None)),
            "notice": {"message": workshop.notice, "at": iso(workshop.notice_at)} if workshop.notice else None,
        }

    def workshop_json(self, workshop: WorkshopRecord) -> dict[str, Any]:
        data = self.summary_json(workshop)
        learners = [self.learner_json(learner) for learner in self.store.learners(workshop.id)]
        lesson = self.library.get(workshop.lesson)
        data["tasks"] = [{"id": task.id, "title": task.title,
                          "done": sum(1 for entry in learners
                                      for t in entry["tasks"] if t["id"] == task.id and t["status"] == "done")}
                         for task in (lesson.tasks if lesson else ())]
        data["seated"] = sum(1 for entry in learners if entry["active"])
        data["learners"] = learners
        return data

    def learner_json(self, learner: LearnerRecord) -> dict[str, Any]:
        session = self.store.session(learner.session_id)
        tasks = self.task_list(learner.session_id)
        progress = self._progress.get(learner.session_id)
        last_active = max(session.last_seen_at if session else learner.joined_at,
                          progress.last_active if progress else 0)
        active = session is not None and session.ended_at is None
        reason = self.stuck_reason(learner, tasks) if active else None
        return {
            "session": learner.session_id, "name": learner.name, "joined_at": iso(learner.joined_at),
            "last_active": iso(last_active),
            "machines": [{"name": m.name, "status": m.status, **({"message": m.message} if m.message else {})}
                         for m in (session.machines if session else [])],
            "tasks": tasks,
            "help": {"message": learner.help_message or "", "at": iso(learner.help_at)}
            if learner.help_at is not None else None,
            "stuck": reason is not None, "stuck_reason": reason,
            "done": sum(1 for t in tasks if t["status"] == "done"),
            "active": active, "ended_at": iso(session.ended_at) if session and session.ended_at else None,
        }

    def stuck_reason(self, learner: LearnerRecord, tasks: list[dict[str, Any]]) -> str | None:
        """Why a learner looks stuck, or None. Stuck is (a) the same unmet checks through
        BERTH_STUCK_TRIES commands in a row, or (b) no progress (a task done, or a change
        in what the checks say) for BERTH_STUCK_AFTER. A learner with every task done is
        never stuck."""
        if not tasks or all(t["status"] == "done" for t in tasks):
            return None
        progress = self._progress.get(learner.session_id)
        if progress and progress.failure and progress.tries >= self.config.stuck_tries:
            return f"“{progress.failure[1][0]}” through {progress.tries} commands in a row"
        done_times = [r.completed_at for r in self.store.task_results(learner.session_id).values() if r.completed_at]
        since = max([learner.joined_at, *done_times, progress.changed_at if progress else 0])
        idle = time.time() - since
        if idle >= self.config.stuck_after:
            task = next((t for t in tasks if t["status"] != "done"), None)
            where = f" on “{task['title']}”" if task else ""
            return f"No progress for {_minutes(idle)}{where}"
        return None

    def results(self, workshop_id: str) -> list[list[str]]:
        """The results table: a row per learner and task."""
        workshop = self.get(workshop_id)
        rows = [["learner", "session", "task", "task_title", "done", "when", "last_feedback"]]
        for learner in self.store.learners(workshop.id):
            for task in self.task_list(learner.session_id):
                unmet = [item["message"] for item in task["feedback"] if not item.get("ok")]
                rows.append([learner.name, learner.session_id, task["id"], task["title"],
                             "yes" if task["status"] == "done" else "no", task["completed_at"] or "",
                             "; ".join(unmet)])
        return rows

    # --- following what happens (Berth subscribes these to its bus)

    def workshop_of(self, session_id: str) -> str | None:
        if session_id not in self._workshop_of:
            learner = self.store.learner(session_id)
            self._workshop_of[session_id] = learner.workshop_id if learner else None
        return self._workshop_of[session_id]

    def _progress_of(self, session_id: str) -> Progress:
        progress = self._progress.get(session_id)
        if progress is None:
            now = time.time()
            progress = self._progress[session_id] = Progress(last_active=now, changed_at=now)
        return progress

    def on_tasks(self, session_id: str, tasks: list[dict[str, Any]]) -> None:
        """The checker has a new task list for a session."""
        if self.workshop_of(session_id) is None:
            return
        with self._lock:
            progress = self._progress_of(session_id)
            signature = [(t["status"], [(f.get("ok"), f.get("message")) for f in t["feedback"]]) for t in tasks]
            failure = None
            for task in tasks:
                unmet = tuple(f["message"] for f in task["feedback"] if not f.get("ok"))
                if task["status"] != "done" and unmet:
                    failure = (task["id"], unmet)
                    break
            if progress.signature is not None and signature != progress.signature:
                progress.changed_at = time.time()
            progress.signature = signature
            if failure != progress.failure:
                progress.failure, progress.tries = failure, 0
        self.push(session_id)

    def on_command(self, session_id: str, machine: str | None = None) -> None:
        """A command returned in a learner's terminal: one more try at the current failure."""
        if self.workshop_of(session_id) is None:
            return
        with self._lock:
            progress = self._progress_of(session_id)
            progress.last_active = time.time()
            if progress.failure:
                progress.tries += 1
            self._dirty.add(session_id)

    def on_activity(self, event: LearnerActivity) -> None:
        """A command returned (one more try), or Enter, or files arrived (activity)."""
        if event.what == "command":
            self.on_command(event.session_id, event.machine)
        else:
            self.touch(event.session_id, event.machine)

    def touch(self, session_id: str, machine: str | None = None) -> None:
        """The learner did something (Enter, an API call)."""
        if self.workshop_of(session_id) is None:
            return
        with self._lock:
            self._progress_of(session_id).last_active = time.time()
            self._dirty.add(session_id)

    def on_session(self, session_id: str) -> None:
        """A session became ready or ended."""
        if self.workshop_of(session_id) is not None:
            self.push(session_id)

    def push(self, session_id: str) -> None:
        """Send the learner's entry to the dashboard if it changed."""
        workshop_id = self.workshop_of(session_id)
        learner = self.store.learner(session_id)
        if workshop_id is None or learner is None:
            return
        entry = self.learner_json(learner)
        with self._lock:
            if self._sent.get(session_id) == entry:
                return
            self._sent[session_id] = entry
        self.bus.publish(LearnerChanged(workshop_id, entry))

    # --- the timer

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick_forever, name="workshops", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the timer and wait for it (Berth's stop)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _tick_forever(self) -> None:
        last_sweep = 0.0
        while not self._stop.wait(FLUSH_EVERY):
            try:
                with self._lock:
                    dirty, self._dirty = self._dirty, set()
                now = time.monotonic()
                if now - last_sweep >= SWEEP_EVERY:
                    last_sweep = now
                    for workshop in self.store.workshops():
                        if not workshop.over() or (workshop.ended_at or workshop.expires_at) > time.time() - 60:
                            dirty.update(learner.session_id for learner in self.store.learners(workshop.id))
                for session_id in dirty:
                    self.push(session_id)
            except Exception:
                log.exception("workshops timer")


def _minutes(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"
