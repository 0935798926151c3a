"""The terminal bridge: a shell in a learner machine <-> the browser tabs showing it.

Each shell lives in its machine under a keeper (`berth-shell`, in the machine image; its
socket is `/run/berth/shells/NAME.sock`), so a page reload, a dropped network and a
restart of Berth all reattach to the same bash. Berth keeps one attachment per shell (a
stream from the machines backend, spoken to in berth-shell's frames), keeps the recent
output in a ring buffer addressed by absolute byte offsets, and fans it out to every
browser tab showing that shell, each within a credit window that the browser opens by
acknowledging what xterm.js has processed. The protocol is documented in docs/api.md.

The bridge knows no Socket.IO: each browser tab is a Screen that the web layer hands in
(berth/sockets.py), and what the learner does is published on the bus.
"""

from __future__ import annotations

import logging
import queue
import re
import secrets
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import Config
from .events import Bus, LearnerActivity, TerminalClosed, TerminalOpened
from .locks import KeyedLocks
from .machines import Machine, MachineBackend, MachineError, Stream
from .sessions import Sessions

log = logging.getLogger(__name__)

WINDOW = 256 * 1024  # bytes a viewer may have unacknowledged (HOST-FACTS: keeps Ctrl-C quick)
CHUNK = 64 * 1024  # largest `output` message and largest read from the TTY
FLOOD, FLOOD_WAIT = 4000, 0.001  # this much output at hand means more is coming: wait 1 ms for it
RING = 256 * 1024  # recent output kept for replay on reattach
INPUT_LIMIT = 4 * 1024 * 1024  # input queued for a shell that is not reading it
EARLY_LIMIT = 256  # out-of-order input messages held per viewer
OPEN_TIMEOUT = 20  # seconds for a shell to come up
SHELL_DIR = "/run/berth/shells"
SHELL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
PROMPT_MARKER = b"\x1b]7771;prompt\x07"  # printed by the machine's bashrc after each command
STATE_MARKER = re.compile(rb"\x1b\]7771;shell=([a-z]+)\x07")
MAX_COLS, MAX_ROWS = 1000, 500


class Screen(Protocol):
    """Where one browser tab shows a shell: the web layer's connection to it."""

    id: str

    def send(self, event: str, data: Any) -> None:
        """Queue an event for the tab (attached, output, notice, ended); never blocks."""

    def hang_up(self) -> None:
        """End the connection (after `ended`)."""

    @property
    def connected(self) -> bool: ...


class ShellLink:
    """Berth's attachment to a shell kept by `berth-shell` in the machine: the terminal's
    output comes as it is; input and sizes go in berth-shell's frames (type, length, body)."""

    def __init__(self, stream: Stream):
        self.stream = stream

    def read(self, size: int, wait: bool | float = True) -> bytes:
        return self.stream.read(size, wait)

    def write(self, data: bytes) -> None:
        self.stream.write(b"i" + len(data).to_bytes(4, "big") + data)

    def resize(self, cols: int, rows: int) -> None:
        self.stream.write(b"r" + (4).to_bytes(4, "big") + struct.pack(">HH", cols, rows))

    def close(self) -> None:
        self.stream.close()


class TerminalError(Exception):
    """A terminal that cannot be opened: an HTTP-like status, a code, a learner-facing message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Viewer:
    """One browser tab attached to a shell, and how far its output has got."""

    screen: Screen
    sent: int  # offset of the next byte to send
    acked: int  # offset up to which the browser has processed output
    next_seq: int = 0  # the input/resize sequence number expected next
    since: float = field(default_factory=time.monotonic)
    early: dict[int, tuple] = field(default_factory=dict)  # messages that overtook others
    watch: bool = False  # an instructor looking over the learner's shoulder: output only


class Shell:
    """A shell in a machine with Berth's one attachment to it: a pump from its TTY into a
    ring buffer and out to the viewers, and a writer for their input."""

    def __init__(self, terminals: Terminals, key: tuple[str, str, str], machine: Machine,
                 tty: ShellLink, state: str, initial: bytes, cols: int, rows: int):
        self.terminals = terminals
        self.key = key
        self.machine = machine
        self.tty = tty
        self.state = state  # "new": created by this attachment; "existing": it was running
        self.epoch = secrets.token_hex(6)
        self.size = (cols, rows)
        self.cond = threading.Condition()
        self.ring = bytearray()
        self.ring_start = 0  # offset of ring[0]
        self.end = 0  # offset after the last byte read
        self.viewers: dict[str, Viewer] = {}
        self.idle_since: float | None = time.monotonic()
        self.closed = False
        self.reason = "exit"
        self._inputs: deque[tuple] = deque()
        self._input_bytes = 0
        self._tail = b""
        self._append(STATE_MARKER.sub(b"", initial))
        self._reader = threading.Thread(target=self._pump, name=f"tty-read-{key[0]}-{key[1]}", daemon=True)
        self._writer = threading.Thread(target=self._write, name=f"tty-write-{key[0]}-{key[1]}", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    @property
    def session_id(self) -> str:
        return self.key[0]

    # --- output: TTY -> ring -> viewers

    def _pump(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.closed and not self._has_room():
                        self.cond.wait(1.0)
                    if self.closed:
                        break
                data = self.tty.read(CHUNK)
                if not data:
                    break
                data += self._more(CHUNK - len(data), len(data))
                self._publish(STATE_MARKER.sub(b"", data))  # "ended": the end comes next
        except Exception:  # the pump must end through _finish, whatever happened
            log.exception("terminal %s: output pump failed", self.key)
        finally:
            self.terminals._finish(self)

    def _more(self, size: int, have: int) -> bytes:
        """What else is already waiting: fewer, larger messages in a flood. Once a flood is
        seen (FLOOD bytes at hand), wait a moment for the rest of a message: the engine
        copies output in pieces of 32 KiB, and each piece sent alone costs a message."""
        more = b""
        while size > 0:
            chunk = self.tty.read(size, wait=FLOOD_WAIT if have + len(more) >= FLOOD else False)
            if not chunk:
                break  # nothing more now, or the end: the next read says so
            more += chunk
            size -= len(chunk)
        return more

    def _has_room(self) -> bool:
        """Read more only when some viewer can take it (or none is attached: then the ring
        just keeps the latest). The fastest viewer sets the pace: a tab in the background
        never slows the one in front; slower tabs skip what fell out of the ring."""
        if not self.viewers:
            return True
        return any(v.acked + WINDOW > self.end for v in self.viewers.values())

    def _publish(self, data: bytes) -> None:
        seen = self._tail + data
        self._tail = seen[-(len(PROMPT_MARKER) - 1):]
        with self.cond:
            self._append(data)
            for viewer in self.viewers.values():
                self._send(viewer)
        if PROMPT_MARKER in seen:
            self.terminals.notify("command", self.key[0], self.key[1])

    def _append(self, data: bytes) -> None:
        self.ring += data
        self.end += len(data)
        excess = len(self.ring) - RING
        if excess > CHUNK:  # trim in steps, not on every read
            del self.ring[:excess]
            self.ring_start += excess

    def _send(self, viewer: Viewer) -> None:
        """Send a viewer what it has credit for. Called with the lock held, so every
        viewer's output goes out in order (emit only queues)."""
        if viewer.sent < self.ring_start and viewer.acked >= viewer.sent:
            viewer.sent = viewer.acked = self.ring_start  # it fell behind the ring: skip ahead
        start = max(viewer.sent, self.ring_start)
        stop = min(self.end, viewer.acked + WINDOW)
        if stop < self.end and stop - start < CHUNK and viewer.sent > viewer.acked:
            return  # held back by the window: wait until an ack opens a whole message's worth
        while start < stop:
            size = min(CHUNK, stop - start)
            index = start - self.ring_start
            viewer.screen.send("output", (bytes(self.ring[index:index + size]), start))
            start += size
        viewer.sent = max(viewer.sent, start)

    def replay_start(self, epoch: object, offset: object) -> int:
        """Where a (re)attaching viewer starts: where it left off if it saw this shell
        before and that is still in the ring, else the start of the recent output (from
        a line start, so it does not begin mid escape sequence)."""
        if epoch == self.epoch and isinstance(offset, int) and self.ring_start <= offset <= self.end:
            return offset
        if self.ring_start == 0:
            return 0
        newline = self.ring.find(b"\n", 0, 4096)
        return self.ring_start + newline + 1 if newline >= 0 else self.ring_start

    def add_viewer(self, screen: Screen, cols: int, rows: int, epoch: object, offset: object,
                   watch: bool = False) -> dict:
        with self.cond:
            if self.closed:
                raise TerminalError(503, "shell_ended", "The shell has just ended; connect again for a new one.")
            start = self.replay_start(epoch, offset)
            resumed = start == offset and epoch == self.epoch
            viewer = Viewer(screen, sent=start, acked=start, watch=watch)
            self.viewers[screen.id] = viewer
            self.idle_since = None
            attached = {"epoch": self.epoch, "offset": start, "shell": self.state, "resumed": resumed,
                        "name": self.key[2]}
            if watch:  # a watcher shows the shell at the learner's size and never changes it
                attached.update(watch=True, cols=self.size[0], rows=self.size[1])
            screen.send("attached", attached)
            self._send(viewer)
            self.cond.notify_all()
        if not watch:
            self.enqueue(("resize", cols, rows))
        return attached

    def remove_viewer(self, sid: str) -> None:
        with self.cond:
            if self.viewers.pop(sid, None) is not None and not self.viewers:
                self.idle_since = time.monotonic()
            self.cond.notify_all()

    def ack(self, sid: str, offset: int) -> None:
        with self.cond:
            viewer = self.viewers.get(sid)
            if viewer is None or offset <= viewer.acked:
                return
            viewer.acked = min(offset, viewer.sent)
            self._send(viewer)
            self.cond.notify_all()

    # --- input: viewers -> TTY, in the order each viewer sent it

    def receive(self, sid: str, seq: int | None, item: tuple) -> bool:
        """Messages handled in threads of their own can overtake each other (Socket.IO's
        usual way; berth/sockets.py takes input in the connection's reading thread, but
        nothing should depend on that): clients number them and they are put back in
        order here. False when the viewer may not type (it left, or it is a watcher)."""
        with self.cond:
            viewer = self.viewers.get(sid)
            if viewer is None or viewer.watch:
                return False  # a watcher's input is never accepted
            if seq is None or seq < viewer.next_seq:
                ready = [item]
            else:
                viewer.early[seq] = item
                ready = []
                while viewer.next_seq in viewer.early:
                    ready.append(viewer.early.pop(viewer.next_seq))
                    viewer.next_seq += 1
                if len(viewer.early) > EARLY_LIMIT:  # a gap that never fills: give up waiting
                    viewer.next_seq = max(viewer.early) + 1
                    ready += [viewer.early.pop(number) for number in sorted(viewer.early)]
            for ready_item in ready:
                if not self.enqueue(ready_item):
                    viewer.screen.send("notice", {"message": "Input was dropped: the shell is not reading it."})
        return True

    def enqueue(self, item: tuple) -> bool:
        with self.cond:
            if item[0] == "resize":
                cols, rows = item[1:]
                if self._inputs and self._inputs[-1][0] == "resize":
                    self._inputs[-1] = item  # only the latest size matters
                elif self.size != (cols, rows) or any(i[0] == "resize" for i in self._inputs):
                    self._inputs.append(item)
            else:
                if self._input_bytes + len(item[1]) > INPUT_LIMIT:
                    return False
                self._input_bytes += len(item[1])
                self._inputs.append(item)
            self.cond.notify_all()
        return True

    def _write(self) -> None:
        while True:
            with self.cond:
                while not self._inputs and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                item = self._inputs.popleft()
                if item[0] == "input":
                    self._input_bytes -= len(item[1])
                else:
                    self.size = (item[1], item[2])
            try:
                if item[0] == "input":
                    self.tty.write(item[1])
                else:
                    self.tty.resize(item[1], item[2])
                    self._tell_watchers(item[1], item[2])
            except OSError as error:
                log.info("terminal %s: the shell stopped taking input: %s", self.key, error)
                self.close("exit")
                return

    def _tell_watchers(self, cols: int, rows: int) -> None:
        with self.cond:
            watchers = [v.screen for v in self.viewers.values() if v.watch]
        for screen in watchers:
            screen.send("size", {"cols": cols, "rows": rows})

    def close(self, reason: str) -> None:
        """Stop relaying; the pump then ends and tells the viewers why."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.reason = reason
            self.cond.notify_all()
        self.tty.close()


ENDED_MESSAGES = {
    "exit": "The shell ended.",
    "linger": "The shell was ended after no browser had been attached for a while.",
    "session": "The session ended; its machines are gone.",
}
STOPPING = "stopping"  # Berth stops: the attachment ends, the shell lives on in its machine


class Terminals:
    """All shells of this Berth process, keyed by (session, machine, shell name)."""

    def __init__(self, config: Config, sessions: Sessions, backend: MachineBackend, bus: Bus):
        self.config = config
        self.sessions = sessions
        self.backend = backend
        self.bus = bus
        self.shells: dict[tuple[str, str, str], Shell] = {}
        self._by_sid: dict[str, Shell] = {}
        self._lock = threading.Lock()
        self._opening = KeyedLocks()  # one opener per shell
        self._events: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._pending: set[tuple[str, str, str]] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._notify_forever, name="terminal-events", daemon=True),
                         threading.Thread(target=self._reap_forever, name="terminal-reaper", daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End every attachment (the shells live on in their machines) and the threads."""
        self._stop.set()
        self._events.put(None)
        with self._lock:
            shells = list(self.shells.values())
        for shell in shells:
            shell.close(STOPPING)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(10)

    # --- connections

    def attach(self, screen: Screen, session_id: str, machine_name: str, name: str, cols: int, rows: int,
               epoch: object = None, offset: object = None, watch: bool = False) -> dict:
        """Show the shell `name` of a machine on a screen, opening it if needed. A watcher
        (`watch`: the instructor) sees it at the learner's size; its input is never taken."""
        machine = self.sessions.machine(session_id, machine_name)  # SessionError if not there or not ready
        key = (session_id, machine_name, name)
        with self._opening.hold(key):
            with self._lock:
                shell = self.shells.get(key)
                if shell is not None and shell.closed:
                    shell = None
                others = sum(1 for k, s in self.shells.items() if k[:2] == key[:2] and not s.closed)
            if shell is None:
                limit = self.config.shells_per_machine
                if others >= limit:
                    raise TerminalError(429, "too_many_shells",
                                        f"The machine {machine_name} has {limit} shells open, the most "
                                        "allowed (BERTH_SHELLS_PER_MACHINE); close one first.")
                shell = self._open(key, machine, cols, rows)
                with self._lock:
                    self.shells[key] = shell
                shell.start()
                self.bus.publish(TerminalOpened(session_id, machine_name, name))
        with self._lock:
            self._by_sid[screen.id] = shell
        return shell.add_viewer(screen, cols, rows, epoch, offset, watch)

    def _open(self, key: tuple[str, str, str], machine: Machine, cols: int, rows: int) -> Shell:
        backend = self.backend
        limit = self.config.shells_per_machine
        argv = ["berth-shell", "attach", SHELL_DIR, key[2], str(limit), str(cols), str(rows)]
        try:
            tty = ShellLink(backend.open_stream(machine, argv))
        except MachineError as error:
            log.warning("terminal %s: %s (%s)", key, error.message, error.detail)
            raise TerminalError(503, "terminal_unavailable", error.message) from None
        state, initial = _handshake(tty)
        if state == "existing":
            # Running since before this Berth: make its programs repaint (the prompt line,
            # a full-screen editor). They do on a change of size, and only then.
            tty.resize(cols, max(1, rows - 1))
            time.sleep(0.05)
            tty.resize(cols, rows)
        if state in ("new", "existing"):
            log.info("terminal %s: %s shell attached", key, state)
            return Shell(self, key, machine, tty, state, initial, cols, rows)
        tty.close()
        if state == "full":
            raise TerminalError(429, "too_many_shells",
                                f"The machine {key[1]} has the most shells open that it may have; close one first.")
        log.warning("terminal %s: shell did not start (%s): %r", key, state, initial[-200:])
        raise TerminalError(503, "terminal_unavailable", f"A shell in {key[1]} could not be started.")

    def detach(self, sid: str) -> None:
        with self._lock:
            shell = self._by_sid.pop(sid, None)
        if shell is not None:
            shell.remove_viewer(sid)

    def shell_of(self, sid: str) -> Shell | None:
        with self._lock:
            return self._by_sid.get(sid)

    def input(self, sid: str, seq: int | None, data: bytes) -> None:
        """Keys typed in a tab; Enter tells the bus the learner did something."""
        shell = self.shell_of(sid)
        if shell is None:
            return  # input before (or without) a successful connect is dropped
        if shell.receive(sid, seq, ("input", data)) and (b"\r" in data or b"\n" in data):
            self.notify("enter", shell.key[0], shell.key[1])

    def resize(self, sid: str, seq: int | None, cols: int, rows: int) -> None:
        shell = self.shell_of(sid)
        if shell is not None:
            shell.receive(sid, seq, ("resize", cols, rows))

    def ack(self, sid: str, offset: int) -> None:
        shell = self.shell_of(sid)
        if shell is not None:
            shell.ack(sid, offset)

    # --- ends

    def _finish(self, shell: Shell) -> None:
        """The shell's attachment is over (the shell exited, or Berth ended it)."""
        if not shell.closed:
            shell.close("exit")
        with shell.cond:
            viewers = list(shell.viewers.values())
            shell.viewers.clear()
        with self._lock:
            if self.shells.get(shell.key) is shell:
                del self.shells[shell.key]
            for viewer in viewers:
                self._by_sid.pop(viewer.screen.id, None)
        log.info("terminal %s: ended (%s)", shell.key, shell.reason)
        self.bus.publish(TerminalClosed(shell.key[0], shell.key[1], shell.key[2], shell.reason))
        if shell.reason == STOPPING:
            return  # the pages reconnect to the same shell when Berth is back
        message = ENDED_MESSAGES.get(shell.reason, "The shell ended.")
        for viewer in viewers:
            viewer.screen.send("ended", {"reason": shell.reason, "message": message})
            viewer.screen.hang_up()

    def end_shell(self, shell: Shell, reason: str) -> None:
        """End the shell itself in its machine (its bash and jobs get a hangup)."""
        try:
            self.backend.exec(shell.machine, ["berth-shell", "end", SHELL_DIR, shell.key[2]], timeout=10)
        except MachineError as error:
            log.info("terminal %s: could not end the shell: %s", shell.key, error.message)
        shell.close(reason)

    def end_session(self, session_id: str) -> None:
        """The session ended: its machines are about to go, and their shells with them."""
        with self._lock:
            shells = [s for k, s in self.shells.items() if k[0] == session_id]
        for shell in shells:
            shell.close("session")

    def _reap_forever(self) -> None:
        linger = self.config.shell_linger
        while not self._stop.wait(max(0.5, min(30.0, linger / 4))):
            now = time.monotonic()
            with self._lock:
                shells = list(self.shells.values())
            for shell in shells:
                self._forget_gone_viewers(shell, now)
                idle = shell.idle_since
                if idle is not None and now - idle >= linger and not shell.closed:
                    log.info("terminal %s: no browser for %d s, ending the shell", shell.key, linger)
                    try:
                        self.end_shell(shell, "linger")
                    except Exception:
                        log.exception("terminal %s: ending failed", shell.key)

    def _forget_gone_viewers(self, shell: Shell, now: float) -> None:
        """A viewer whose connection went without a disconnect event would keep its shell
        from ever lingering out."""
        with shell.cond:
            gone = [v.screen.id for v in shell.viewers.values() if now - v.since > 60 and not v.screen.connected]
        for sid in gone:
            log.info("terminal %s: forgetting viewer %s, its connection is gone", shell.key, sid)
            self.detach(sid)
            shell.remove_viewer(sid)

    # --- out of the pump's way

    def notify(self, event: str, session_id: str, machine: str) -> None:
        """Tell the bus (the checker hears it) without holding up the terminal; repeats of
        an event still waiting are merged."""
        item = (event, session_id, machine)
        with self._lock:
            if item in self._pending:
                return
            self._pending.add(item)
        self._events.put(item)

    def _notify_forever(self) -> None:
        while (item := self._events.get()) is not None:
            with self._lock:
                self._pending.discard(item)
            what, session_id, machine = item
            self.bus.publish(LearnerActivity(session_id, machine, what))  # type: ignore[arg-type]


def _handshake(tty: ShellLink) -> tuple[str, bytes]:
    """Read berth-shell's state marker; return it and any output after it."""
    data = b""
    deadline = time.monotonic() + OPEN_TIMEOUT
    tty.stream.set_timeout(1.0)
    try:
        while time.monotonic() < deadline:
            try:
                chunk = tty.read(CHUNK)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            data += chunk
            match = STATE_MARKER.search(data)
            if match:
                return match.group(1).decode(), data[match.end():]
            if len(data) > CHUNK:
                break
    finally:
        tty.stream.set_timeout(None)  # an idle terminal must never time out
    return "failed", data
