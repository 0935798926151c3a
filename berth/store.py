"""The progress store: sessions, their machines and task results in SQLite, so that a
server restart loses nothing."""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    lesson TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS machines (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (session_id, name)
);
CREATE TABLE IF NOT EXISTS session_facts (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (session_id, kind, key, value)
);
CREATE TABLE IF NOT EXISTS task_results (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    task_id TEXT NOT NULL,
    status TEXT NOT NULL,
    completed_at REAL,
    feedback TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (session_id, task_id)
);
CREATE TABLE IF NOT EXISTS workshops (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    lesson TEXT NOT NULL,
    title TEXT NOT NULL,
    seats INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    ended_at REAL,
    notice TEXT,
    notice_at REAL
);
CREATE TABLE IF NOT EXISTS workshop_learners (
    session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    workshop_id TEXT NOT NULL REFERENCES workshops(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    joined_at REAL NOT NULL,
    help_message TEXT,
    help_at REAL
);
CREATE INDEX IF NOT EXISTS workshop_learners_by_workshop ON workshop_learners (workshop_id, joined_at);
"""


def iso(timestamp: float | None) -> str | None:
    """A stored time as the API and pages write it: ISO 8601 in UTC, to the second."""
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class MachineRecord:
    name: str
    status: str  # starting | ready | failed | stopped
    message: str = ""


@dataclass
class SessionRecord:
    id: str
    token_hash: str
    lesson: str
    created_at: float
    expires_at: float
    last_seen_at: float
    ended_at: float | None = None
    machines: list[MachineRecord] = field(default_factory=list)


@dataclass
class WorkshopRecord:
    id: str
    code: str
    lesson: str
    title: str
    seats: int
    created_at: float
    expires_at: float
    ended_at: float | None = None
    notice: str | None = None
    notice_at: float | None = None

    def over(self, now: float | None = None) -> bool:
        """Ended by the instructor, or past its time."""
        return self.ended_at is not None or self.expires_at <= (now or time.time())


@dataclass
class LearnerRecord:
    session_id: str
    workshop_id: str
    name: str
    joined_at: float
    help_message: str | None = None
    help_at: float | None = None


@dataclass
class TaskResult:
    task_id: str
    status: str  # done | pending
    completed_at: float | None = None
    feedback: list[dict] = field(default_factory=list)


class Store:
    """One SQLite connection shared by the server's threads behind a lock; WAL keeps
    readers from waiting on a writer."""

    def __init__(self, path: Path, wait: float = 30):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=wait)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # meta

    def meta(self, key: str, make) -> str:
        """The value stored under key, made (and stored) by make() the first time."""
        with self._lock:
            rows = self._run("SELECT value FROM meta WHERE key = ?", (key,))
            if rows:
                return rows[0]["value"]
            value = make()
            self._run("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            return value

    # sessions

    def add_session(self, record: SessionRecord) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT INTO sessions (id, token_hash, lesson, created_at, expires_at, last_seen_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (record.id, record.token_hash, record.lesson, record.created_at,
                     record.expires_at, record.last_seen_at),
                )
                for machine in record.machines:
                    self._db.execute(
                        "INSERT INTO machines (session_id, name, status, message) VALUES (?, ?, ?, ?)",
                        (record.id, machine.name, machine.status, machine.message),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def session(self, session_id: str) -> SessionRecord | None:
        rows = self._run("SELECT * FROM sessions WHERE id = ?", (session_id,))
        if not rows:
            return None
        return self._with_machines(rows[0])

    def sessions(self) -> list[SessionRecord]:
        """The sessions that have not ended, oldest first."""
        rows = self._run("SELECT * FROM sessions WHERE ended_at IS NULL ORDER BY created_at")
        return [self._with_machines(row) for row in rows]

    def count_active(self) -> int:
        """Sessions that hold machines: not ended, and not every machine failed."""
        return self._run(
            "SELECT COUNT(*) AS n FROM sessions s WHERE ended_at IS NULL AND EXISTS"
            " (SELECT 1 FROM machines m WHERE m.session_id = s.id AND m.status != 'failed')"
        )[0]["n"]

    def count_active_from(self, client: str) -> int:
        """Sessions that hold machines and were started from this client address."""
        return self._run(
            "SELECT COUNT(*) AS n FROM sessions s JOIN session_facts f ON f.session_id = s.id"
            " AND f.kind = 'client' AND f.key = 'address' AND f.value = ? WHERE s.ended_at IS NULL AND EXISTS"
            " (SELECT 1 FROM machines m WHERE m.session_id = s.id AND m.status != 'failed')", (client,)
        )[0]["n"]

    def _with_machines(self, row: sqlite3.Row) -> SessionRecord:
        machines = [
            MachineRecord(m["name"], m["status"], m["message"])
            for m in self._run(
                "SELECT name, status, message FROM machines WHERE session_id = ? ORDER BY rowid",
                (row["id"],),
            )
        ]
        return SessionRecord(
            id=row["id"], token_hash=row["token_hash"], lesson=row["lesson"],
            created_at=row["created_at"], expires_at=row["expires_at"],
            last_seen_at=row["last_seen_at"], ended_at=row["ended_at"], machines=machines,
        )

    def set_machine(self, session_id: str, name: str, status: str, message: str = "") -> None:
        self._run(
            "UPDATE machines SET status = ?, message = ? WHERE session_id = ? AND name = ?",
            (status, message, session_id, name),
        )

    def touch(self, session_id: str, when: float | None = None) -> None:
        self._run("UPDATE sessions SET last_seen_at = ? WHERE id = ?", (when or time.time(), session_id))

    def end_session(self, session_id: str) -> None:
        self._run(
            "UPDATE sessions SET ended_at = ? WHERE id = ? AND ended_at IS NULL",
            (time.time(), session_id),
        )

    # facts the checks learn along the way (say, which container ids a name had), kept so
    # that a restart forgets nothing the learner did

    def facts(self, session_id: str, kind: str, key: str) -> set[str]:
        rows = self._run("SELECT value FROM session_facts WHERE session_id = ? AND kind = ? AND key = ?",
                         (session_id, kind, key))
        return {row["value"] for row in rows}

    def add_fact(self, session_id: str, kind: str, key: str, value: str) -> None:
        self._run("INSERT OR IGNORE INTO session_facts (session_id, kind, key, value) VALUES (?, ?, ?, ?)",
                  (session_id, kind, key, value))

    # task results

    def task_results(self, session_id: str) -> dict[str, TaskResult]:
        rows = self._run("SELECT * FROM task_results WHERE session_id = ?", (session_id,))
        return {
            row["task_id"]: TaskResult(row["task_id"], row["status"], row["completed_at"],
                                       json.loads(row["feedback"]))
            for row in rows
        }

    def save_task_result(self, session_id: str, result: TaskResult) -> None:
        """Store a result; a task once done stays done (its completed_at is kept)."""
        self._run(
            "INSERT INTO task_results (session_id, task_id, status, completed_at, feedback)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (session_id, task_id) DO UPDATE SET"
            "  status = CASE WHEN status = 'done' THEN 'done' ELSE excluded.status END,"
            "  completed_at = COALESCE(completed_at, excluded.completed_at),"
            "  feedback = excluded.feedback",
            (session_id, result.task_id, result.status, result.completed_at,
             json.dumps(result.feedback)),
        )

    def set_expiry(self, session_id: str, expires_at: float) -> None:
        self._run("UPDATE sessions SET expires_at = ? WHERE id = ?", (expires_at, session_id))

    # workshops and their learners

    def add_workshop(self, record: WorkshopRecord) -> None:
        self._run(
            "INSERT INTO workshops (id, code, lesson, title, seats, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (record.id, record.code, record.lesson, record.title, record.seats, record.created_at,
             record.expires_at),
        )

    def workshop(self, workshop_id: str) -> WorkshopRecord | None:
        rows = self._run("SELECT * FROM workshops WHERE id = ?", (workshop_id,))
        return WorkshopRecord(**dict(rows[0])) if rows else None

    def workshop_by_code(self, code: str) -> WorkshopRecord | None:
        rows = self._run("SELECT * FROM workshops WHERE code = ?", (code,))
        return WorkshopRecord(**dict(rows[0])) if rows else None

    def workshops(self) -> list[WorkshopRecord]:
        """Every workshop, newest first (ended ones too: their results are kept)."""
        return [WorkshopRecord(**dict(row)) for row in self._run("SELECT * FROM workshops ORDER BY created_at DESC")]

    def end_workshop(self, workshop_id: str) -> None:
        self._run("UPDATE workshops SET ended_at = ? WHERE id = ? AND ended_at IS NULL", (time.time(), workshop_id))

    def set_notice(self, workshop_id: str, message: str) -> None:
        self._run("UPDATE workshops SET notice = ?, notice_at = ? WHERE id = ?", (message, time.time(), workshop_id))

    def add_learner(self, record: LearnerRecord) -> None:
        self._run("INSERT INTO workshop_learners (session_id, workshop_id, name, joined_at) VALUES (?, ?, ?, ?)",
                  (record.session_id, record.workshop_id, record.name, record.joined_at))

    def learner(self, session_id: str) -> LearnerRecord | None:
        rows = self._run("SELECT * FROM workshop_learners WHERE session_id = ?", (session_id,))
        return LearnerRecord(**dict(rows[0])) if rows else None

    def learners(self, workshop_id: str) -> list[LearnerRecord]:
        """A workshop's learners in the order they joined, those whose session ended too."""
        rows = self._run("SELECT * FROM workshop_learners WHERE workshop_id = ? ORDER BY joined_at, rowid",
                         (workshop_id,))
        return [LearnerRecord(**dict(row)) for row in rows]

    def set_help(self, session_id: str, message: str | None, at: float | None) -> None:
        self._run("UPDATE workshop_learners SET help_message = ?, help_at = ? WHERE session_id = ?",
                  (message, at, session_id))
