"""A small client of Berth's /terminal for tests and the benchmark: Socket.IO 5 over
Engine.IO 4 on one WebSocket, read by one thread, so output arrives in order (the
python-socketio client handles each message in a thread of its own, which reorders the
two frames of a binary event under load). It acknowledges output as xterm.js does."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable

import websocket

NAMESPACE = "/terminal"
PREFIX = f"{NAMESPACE},"


class Refused(Exception):
    """The server refused the connection; args[0] is what it said."""


class TerminalClient:
    """Connects on construction. Without `start()` the caller reads with `poll()`
    (the benchmark does, to time echoes without a thread hop); with it, a reader
    thread collects output into `data`, optionally "processing" it at `rate` bytes/s
    before acknowledging it, as a slow browser would."""

    def __init__(self, url: str, auth: dict, origin: str | None = None, rate: float | None = None):
        self.data = bytearray()
        self.start_offset = 0
        self.end = 0  # offset after the last byte received
        self.attached: dict | None = None
        self.ended: dict | None = None
        self.events: list[tuple[str, list]] = []
        self.rate = rate
        self.seq = 0
        self.closed = False
        self.lock = threading.Condition()
        self._send_lock = threading.Lock()
        self._binary_head: list | None = None
        self._unprocessed: list[tuple[int, bytes]] = []
        self.on_output: Callable[[bytes, int], None] | None = None
        ws_url = re.sub(r"^http", "ws", url.rstrip("/")) + "/socket.io/?EIO=4&transport=websocket"
        try:
            self.ws = websocket.create_connection(ws_url, origin=origin or url.rstrip("/"), timeout=30,
                                                  enable_multithread=True)
        except websocket.WebSocketBadStatusException as error:
            raise Refused({"message": f"handshake refused: {error.status_code}"}) from None
        self.ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        opening = self.ws.recv()
        assert opening.startswith("0{"), opening
        self.ws.send("40" + PREFIX + json.dumps(auth))
        while True:
            opcode, frame = self.ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_TEXT and frame.startswith(b"44" + PREFIX.encode()):
                self.ws.close()
                raise Refused(json.loads(frame[len(b"44" + PREFIX.encode()):]))
            connected = opcode == websocket.ABNF.OPCODE_TEXT and frame.startswith(b"40" + PREFIX.encode())
            if not connected:
                self._frame(opcode, frame)  # events sent before the connect reply
            else:
                break
        self.ws.settimeout(None)

    # --- reading

    def poll(self) -> None:
        """Read and handle one frame (blocks)."""
        opcode, frame = self.ws.recv_data()
        self._frame(opcode, frame)

    def _frame(self, opcode: int, frame: bytes) -> None:
        if opcode == websocket.ABNF.OPCODE_BINARY:
            head, self._binary_head = self._binary_head, None
            if head is not None and head[0] == "output":
                self._output(bytes(frame), head[2])
            return
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.closed = True
            return
        text = frame.decode()
        if text == "2":  # Engine.IO ping
            self._send_text("3")
        elif text.startswith("42" + PREFIX):
            event = json.loads(text[len("42" + PREFIX):])
            self._event(event[0], event[1:])
        elif text.startswith("451-" + PREFIX):
            self._binary_head = json.loads(text[len("451-" + PREFIX):])
        elif text.startswith("41" + PREFIX) or text == "1":
            self.closed = True

    def _event(self, name: str, args: list) -> None:
        with self.lock:
            if name == "attached":
                self.attached = args[0]
                self.start_offset = self.end = args[0]["offset"]
            elif name == "ended":
                self.ended = args[0]
            self.events.append((name, args))
            self.lock.notify_all()

    def _output(self, chunk: bytes, offset: int) -> None:
        assert offset == self.end, f"output at {offset}, expected {self.end}"
        self.end = offset + len(chunk)
        if self.on_output is not None:
            self.on_output(chunk, offset)
        if self.rate:
            with self.lock:
                self._unprocessed.append((offset, chunk))
                self.lock.notify_all()
            return
        with self.lock:
            self.data += chunk
            self.lock.notify_all()
        self.ack(self.end)

    def _process(self) -> None:
        """Play a browser that takes `rate` bytes per second to show output."""
        while not self.closed:
            with self.lock:
                while not self._unprocessed and not self.closed:
                    self.lock.wait(0.5)
                if self.closed:
                    return
                offset, chunk = self._unprocessed.pop(0)
            time.sleep(len(chunk) / self.rate)
            with self.lock:
                self.data += chunk
                self.lock.notify_all()
            self.ack(offset + len(chunk))

    def start(self) -> TerminalClient:
        """Read in a thread of its own from now on."""
        def read():
            while not self.closed:
                try:
                    self.poll()
                except (websocket.WebSocketException, OSError):
                    self.closed = True
            with self.lock:
                self.lock.notify_all()
        threading.Thread(target=read, daemon=True).start()
        if self.rate:
            threading.Thread(target=self._process, daemon=True).start()
        return self

    # --- writing

    def _send_text(self, text: str) -> None:
        with self._send_lock:
            self.ws.send(text)

    def emit(self, name: str, *args) -> None:
        self._send_text("42" + PREFIX + json.dumps([name, *args]))

    def send(self, data: str | bytes) -> None:
        """Input, numbered so that the server applies it in order."""
        if isinstance(data, str):
            self.emit("input", data, self.seq)
        else:
            head = "451-" + PREFIX + json.dumps(["input", {"_placeholder": True, "num": 0}, self.seq])
            with self._send_lock:
                self.ws.send(head)
                self.ws.send_binary(data)
        self.seq += 1

    def resize(self, cols: int, rows: int) -> None:
        self.emit("resize", {"cols": cols, "rows": rows}, self.seq)
        self.seq += 1

    def ack(self, offset: int) -> None:
        if not self.closed:
            try:
                self.emit("ack", offset)
            except (websocket.WebSocketException, OSError):
                self.closed = True

    # --- for tests

    def text(self) -> str:
        with self.lock:
            return self.data.decode("utf-8", "replace")

    def wait_for(self, pattern: bytes | re.Pattern, timeout: float = 15, after: int = 0) -> re.Match:
        regex = re.compile(pattern) if isinstance(pattern, bytes) else pattern
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                match = regex.search(self.data, after)
                if match:
                    return match
                left = deadline - time.monotonic()
                assert left > 0, f"no {regex.pattern!r} in {self.text()[-2000:]!r}"
                self.lock.wait(min(left, 0.2))

    def close(self) -> None:
        self.closed = True
        try:
            self._send_text("41" + PREFIX)
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass
