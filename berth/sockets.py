"""Berth's Socket.IO side: the namespaces the lesson page connects to, and the one
subscriber of the bus that forwards events to the pages' rooms.

- `/session` (auth {session, token}): the page joins its session's room and is sent
  `tasks` and `machines` at once and whenever the bus says they changed, `engine`
  ({machine}) when a machine's engine changed its images or containers, `trouble`
  ({machine, what, message}) when a machine ran out of memory, stopped, runs again or
  could not be started; in a workshop,
  also the instructor's `notice` and `help` (a raised hand, or none).
- `/terminal` (auth {session, token, machine[, shell, cols, rows, epoch, offset, mode]}):
  in: input, resize, ack; out: attached, output, notice, ended, and `size` for a watcher
  (mode "watch": the instructor token, read-only). The terminal bridge does the work; each
  connection is a Screen to it.
- `/instructor` (auth {workshop, token}, the instructor token): the dashboard joins its
  workshop's room and is sent `workshop` at once, then `learner` and `workshop` as they change.

Nothing below this layer knows Socket.IO."""

from __future__ import annotations

import logging
from typing import Any

from flask import request
from flask_socketio import ConnectionRefusedError, Namespace, SocketIO, emit, join_room

from .events import (
    Bus,
    EngineChanged,
    HandChanged,
    LearnerChanged,
    MachinesChanged,
    MachineTrouble,
    NoticeSent,
    TasksChanged,
    WorkshopChanged,
)
from .machines import MachineError
from .sessions import SessionError
from .terminal import MAX_COLS, MAX_ROWS, SHELL_NAME, TerminalError
from .web import cookie_credentials, current_berth
from .workshops import WorkshopError

log = logging.getLogger(__name__)

SESSION = "/session"
TERMINAL = "/terminal"
INSTRUCTOR = "/instructor"

# Threading is set explicitly: an installed eventlet would otherwise be picked, and
# eventlet is winding down. Each WebSocket holds a thread for its lifetime.
socketio = SocketIO(async_mode="threading")


def workshop_room(workshop_id: str) -> str:
    return f"workshop:{workshop_id}"


def relay(bus: Bus, server: SocketIO = socketio) -> None:
    """Forward what the pages show: to a session's room on /session, to a workshop's
    dashboard on /instructor."""
    def to_session(event: str, data: Any, session_id: str) -> None:
        server.emit(event, data, namespace=SESSION, to=session_id)

    def to_dashboard(event: str, data: Any, workshop_id: str) -> None:
        server.emit(event, data, namespace=INSTRUCTOR, to=workshop_room(workshop_id))

    bus.subscribe(TasksChanged, lambda event: to_session("tasks", event.tasks, event.session_id))
    bus.subscribe(MachinesChanged, lambda event: to_session("machines", event.machines, event.session_id))
    bus.subscribe(EngineChanged, lambda event: to_session("engine", {"machine": event.machine}, event.session_id))
    bus.subscribe(MachineTrouble, lambda event: to_session(
        "trouble", {"machine": event.machine, "what": event.what, "message": event.message}, event.session_id))
    bus.subscribe(NoticeSent, lambda event: to_session("notice", {"message": event.message, "at": event.at},
                                                       event.session_id))
    bus.subscribe(HandChanged, lambda event: to_session("help", {"help": event.help}, event.session_id))
    bus.subscribe(LearnerChanged, lambda event: to_dashboard("learner", event.entry, event.workshop_id))
    bus.subscribe(WorkshopChanged, lambda event: to_dashboard("workshop", event.summary, event.workshop_id))


class SessionNamespace(Namespace):
    """/session: the lesson page's task list and machine states."""

    def on_connect(self, auth=None):
        auth = auth if isinstance(auth, dict) else {}
        session_id = auth.get("session")
        token = auth.get("token") or (cookie_credentials(session_id) if isinstance(session_id, str) else None)
        if not isinstance(session_id, str) or not isinstance(token, str):
            raise ConnectionRefusedError("Send auth {session[, token]}; without a token, the lesson's cookie.")
        berth = current_berth()
        if not berth.origins(request.headers.get("Origin"), request.environ):
            raise ConnectionRefusedError("Only Berth's own pages may follow a session.")
        try:
            record = berth.sessions.authenticate(session_id, token)
        except SessionError as error:
            raise ConnectionRefusedError(error.message) from None
        join_room(record.id)
        emit("machines", berth.checker.machine_states(record.id))
        emit("tasks", berth.checker.task_list(record.id))
        log.debug("session %s: page %s connected", record.id, request.sid)  # type: ignore[attr-defined]
        berth.checker.request(record.id)


class SocketScreen:
    """One /terminal connection, as the terminal bridge sees a browser tab."""

    def __init__(self, server: SocketIO, sid: str):
        self.server = server
        self.id = sid

    def send(self, event: str, data: Any) -> None:
        try:
            self.server.emit(event, data, to=self.id, namespace=TERMINAL)
        except Exception:  # a send to a client that just left must not stop the pump
            log.debug("emit %s to %s failed", event, self.id, exc_info=True)

    def hang_up(self) -> None:
        try:
            self.server.server.disconnect(self.id, namespace=TERMINAL)
        except Exception:  # the client may be gone already
            log.debug("disconnecting %s failed", self.id, exc_info=True)

    @property
    def connected(self) -> bool:
        return self.server.server.manager.is_connected(self.id, TERMINAL)


def _size(value: object, default: int, largest: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= largest else default


def _seq(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# Refusals that only say "a moment": the page retries them while machines start.
PASSING_REFUSALS = frozenset({"machine_not_ready", "not_ready"})


def _refuse(status: int, code: str, message: str):
    """Refuse a socket's connection with Berth's error shape; said in the log (unless it
    only asks to wait), so that a page that never connects has its reason on record."""
    if code not in PASSING_REFUSALS:
        log.info("socket %s from %s refused: %s %s", request.namespace, request.remote_addr, status, code)
    raise ConnectionRefusedError(message, {"error": code, "status": status})


class TerminalNamespace(Namespace):
    """/terminal: who may connect, and the events relayed to the terminal bridge."""

    def _settled(self) -> bool:
        """True for a client that is neither connecting nor disconnecting: an event it
        names "connect" or "disconnect" is then its own invention, and ignored."""
        return self.socketio.server.manager.is_connected(request.sid, TERMINAL)  # type: ignore[attr-defined]

    def on_connect(self, auth=None):
        if self._settled():
            return
        berth = current_berth()
        if not berth.origins(request.headers.get("Origin"), request.environ):
            _refuse(403, "foreign_origin", "Terminals may only be opened from Berth's own pages.")
        if not isinstance(auth, dict):
            _refuse(401, "token_required", "Send {session, token, machine} as the connection's auth.")
        session_id, token, machine = auth.get("session"), auth.get("token"), auth.get("machine")
        if not token and isinstance(session_id, str) and auth.get("mode") != "watch":
            token = cookie_credentials(session_id)  # the lesson page's own cookie
        name = auth.get("shell", "main")
        if not all(isinstance(v, str) and 0 < len(v) <= 200 for v in (session_id, token, machine)):
            _refuse(401 if not token else 400, "token_required" if not token else "bad_request",
                    "The auth needs the strings session, token and machine.")
        if not isinstance(name, str) or not SHELL_NAME.fullmatch(name):
            _refuse(400, "bad_request", "A shell name is 1-32 of a-z, 0-9, - and _.")
        watch = auth.get("mode") == "watch"
        if auth.get("mode") not in (None, "watch"):
            _refuse(400, "bad_request", 'The only mode is "watch" (read-only, for the instructor).')
        try:
            if watch:  # the instructor, read-only
                berth.workshops.authorize_watch(session_id, token)
            else:
                berth.sessions.authenticate(session_id, token)
            if berth.state != "ready":
                _refuse(503, "not_ready", "Berth is still starting; the terminal will connect in a moment.")
            screen = SocketScreen(self.socketio, request.sid)  # type: ignore[attr-defined]
            berth.terminals.attach(screen, session_id, machine, name,
                                   _size(auth.get("cols"), 80, MAX_COLS), _size(auth.get("rows"), 24, MAX_ROWS),
                                   auth.get("epoch"), auth.get("offset"), watch)
        except (SessionError, TerminalError) as error:
            _refuse(error.status, error.code, error.message)
        except MachineError as error:
            log.warning("terminal: %s (%s)", error.message, error.detail)
            _refuse(503, "engine_unavailable", error.message)
        except ConnectionRefusedError:
            raise
        except Exception:  # an answer, whatever went wrong: never a connection left hanging
            log.exception("terminal: connecting %s/%s failed", session_id, machine)
            _refuse(503, "terminal_unavailable", "The terminal could not be opened; Berth logged why.")

    def on_disconnect(self, reason=None):
        if not self._settled():
            current_berth().terminals.detach(request.sid)  # type: ignore[attr-defined]

    # input, resize and ack are taken by quick_events (below); these serve where it cannot.

    def on_input(self, data=None, seq=None, *_):
        _input(current_berth().terminals, request.sid, data, seq)  # type: ignore[attr-defined]

    def on_resize(self, size=None, seq=None, *_):
        _resize(current_berth().terminals, request.sid, size, seq)  # type: ignore[attr-defined]

    def on_ack(self, offset=None, *_):
        _ack(current_berth().terminals, request.sid, offset)  # type: ignore[attr-defined]


class InstructorNamespace(Namespace):
    """/instructor: the workshop dashboard's live view, for the instructor token only."""

    def on_connect(self, auth=None):
        berth = current_berth()
        if not berth.origins(request.headers.get("Origin"), request.environ):
            _refuse(403, "foreign_origin", "The dashboard may only be opened from Berth's own pages.")
        auth = auth if isinstance(auth, dict) else {}
        token, workshop_id = auth.get("token"), auth.get("workshop")
        workshops = berth.workshops
        try:
            workshops.check_token(token if isinstance(token, str) else None)
            if not isinstance(workshop_id, str):
                raise WorkshopError(400, "bad_request", "Send auth {workshop, token}.")
            workshop = workshops.get(workshop_id)
        except SessionError as error:
            _refuse(error.status, error.code, error.message)
        join_room(workshop_room(workshop.id))
        emit("workshop", workshops.workshop_json(workshop))


def _input(terminals: Any, sid: str, data: object, seq: object) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    if isinstance(data, bytes) and data:
        terminals.input(sid, _seq(seq), data)


def _resize(terminals: Any, sid: str, size: object, seq: object) -> None:
    if not isinstance(size, dict):
        return
    cols, rows = _size(size.get("cols"), 0, MAX_COLS), _size(size.get("rows"), 0, MAX_ROWS)
    if cols and rows:
        terminals.resize(sid, _seq(seq), cols, rows)


def _ack(terminals: Any, sid: str, offset: object) -> None:
    if isinstance(offset, int) and not isinstance(offset, bool):
        terminals.ack(sid, offset)


QUICK = {"input": _input, "resize": _resize, "ack": _ack}  # /terminal's frequent, quick events


def quick_events(server: Any, terminals: Any) -> None:
    """Take the terminal's input, resize and ack events in the connection's own reading
    thread, in the order they came.

    They are the frequent ones (an ack per output message in a flood, an input per key)
    and each only queues or counts. Through Flask-SocketIO's usual path each one started
    a thread of its own and built a Flask request context (whose URL matching fails, with
    an exception, for /socket.io/): the largest part of Berth's own CPU time per megabyte
    of output, and two more thread hops for every keystroke (docs/performance.md). Other
    events, and connect, take the usual path. This wraps python-socketio's
    `Server._handle_event`; where that is missing, the namespace's handlers serve."""
    handle = getattr(server, "_handle_event", None)
    if handle is None:
        log.warning("python-socketio has no Server._handle_event: terminal events take the usual path")
        return

    def handle_event(eio_sid, namespace, id, data):
        quick = None
        if namespace == TERMINAL and id is None and isinstance(data, list) and data and isinstance(data[0], str):
            quick = QUICK.get(data[0])
        if quick is None:
            return handle(eio_sid, namespace, id, data)
        sid = server.manager.sid_from_eio_sid(eio_sid, TERMINAL)
        if sid is None or not server.manager.is_connected(sid, TERMINAL):
            return None
        args = (data[1:] + [None, None])[:1 if quick is _ack else 2]
        try:
            quick(terminals, sid, *args)
        except Exception:  # what a client sends must never end its connection's thread
            log.exception("terminal: %s from %s failed", data[0], sid)
        return None

    server._handle_event = handle_event


def init_app(app, bus: Bus) -> None:
    socketio.init_app(app, cors_allowed_origins=app.berth.origins, async_mode="threading",
                      max_http_buffer_size=1024 * 1024)
    quick_events(socketio.server, app.berth.terminals)
    socketio.on_namespace(SessionNamespace(SESSION))
    socketio.on_namespace(TerminalNamespace(TERMINAL))
    socketio.on_namespace(InstructorNamespace(INSTRUCTOR))
    relay(bus)
