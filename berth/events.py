"""Berth's event bus: parts say what happened, once, as a typed event; whoever cares
subscribes (the checker, the workshops, the Socket.IO layer that forwards to the pages, a
webhook, a log). Nothing that publishes knows who listens.

Most events are about one learner's session (`Event`, with its `session_id`); a workshop's
own are about the workshop (`WorkshopEvent`, with its `workshop_id`)."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Happening:
    """Anything the bus carries: subscribe to it to hear every event."""


@dataclass(frozen=True)
class Event(Happening):
    """Something that happened in one learner's session."""

    session_id: str


@dataclass(frozen=True)
class SessionReady(Event):
    """Every machine of the session answers (after it was created, or adopted after a restart)."""


@dataclass(frozen=True)
class SessionEnded(Event):
    """The session ended; its machines are about to be removed."""


@dataclass(frozen=True)
class MachinesChanged(Event):
    """A machine of the session changed state (starting, ready, failed)."""

    machines: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class TasksChanged(Event):
    """A task's status or feedback changed: the whole task list, as the API shows it."""

    tasks: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class EngineChanged(Event):
    """A machine's own Docker engine changed what the engine view shows: an image pulled,
    built, committed, tagged or removed, a container created, started, stopped or removed.
    Bursts (a build) come as one event about every half second."""

    machine: str = ""


@dataclass(frozen=True)
class MachineTrouble(Event):
    """Something happened to a machine that the learner should hear of, in a line for its
    terminal: a program ran out of memory (`oom`), the machine stopped and is being started
    again (`stopped`), it runs again (`running`), or it could not be started (`failed`)."""

    machine: str = ""
    what: Literal["oom", "stopped", "running", "failed"] = "oom"
    message: str = ""


@dataclass(frozen=True)
class LearnerActivity(Event):
    """The learner did something in a machine: pressed Enter, a command returned to the
    prompt, or files were put into it."""

    machine: str = ""
    what: Literal["enter", "command", "files"] = "command"


@dataclass(frozen=True)
class TerminalOpened(Event):
    machine: str = ""
    shell: str = "main"


@dataclass(frozen=True)
class TerminalClosed(Event):
    machine: str = ""
    shell: str = "main"
    reason: str = "exit"  # exit | linger | session


# --- workshops (berth/workshops.py publishes them; the Socket.IO layer forwards them)


@dataclass(frozen=True)
class NoticeSent(Event):
    """The instructor's message for one learner's page (a broadcast, the workshop's end)."""

    message: str = ""
    at: str | None = None  # ISO 8601, as the API writes times


@dataclass(frozen=True)
class HandChanged(Event):
    """A learner raised their hand (`help`: its message and time) or it was lowered (None)."""

    help: dict[str, Any] | None = None


@dataclass(frozen=True)
class WorkshopEvent(Happening):
    """Something that happened in a workshop, for its dashboard."""

    workshop_id: str


@dataclass(frozen=True)
class LearnerChanged(WorkshopEvent):
    """A learner's entry on the dashboard changed: tasks, activity, stuck, hand, machines."""

    entry: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkshopChanged(WorkshopEvent):
    """The workshop itself changed (a broadcast, its end): its summary, as the API shows it."""

    summary: dict[str, Any] = field(default_factory=dict)


E = TypeVar("E", bound=Happening)


class Bus:
    """Delivers each event to the subscribers of its type, in the publisher's thread, in the
    order they subscribed. A subscriber that fails is logged; the others still hear it."""

    def __init__(self) -> None:
        self._subscribers: dict[type[Happening], list[Callable[[Any], None]]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, kind: type[E], callback: Callable[[E], None]) -> None:
        with self._lock:
            self._subscribers[kind].append(callback)

    def publish(self, event: Happening) -> None:
        with self._lock:
            callbacks = [c for kind, cs in self._subscribers.items() if isinstance(event, kind) for c in cs]
        for callback in callbacks:
            try:
                callback(event)
            except Exception:
                log.exception("%s subscriber %r failed", type(event).__name__, callback)
