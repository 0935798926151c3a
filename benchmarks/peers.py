"""Berth's terminal beside its peers, in one run, in the same learner machine:
`./run bench peers [--keys N] [--bytes N] [--rounds N]`.

Paths, each a shell `bash -l` (TERM=xterm-256color, LANG=C.UTF-8, 120x40) in the
workstation machine of one Berth session:

- raw: a TTY exec through the host engine's API, read and written on the hijacked
  socket (as in `./run bench terminal`): the limit;
- cli: `docker exec -it ... bash -l` (the docker CLI) in a pseudo-terminal of the host,
  read by this process: the hop that every peer below goes through, measured on its own;
- terminado (PyPI; Jupyter's terminal server, on Tornado): benchmarks/_terminado.py, a
  UniqueTermManager whose shell command is that `docker exec -it` line; its protocol is
  JSON arrays in WebSocket text frames (["stdin", text], ["stdout", text]);
- WeTTY (npm; Node, node-pty, Socket.IO 4): `wetty --command "docker exec -it ..."` (as
  root on localhost WeTTY runs the command itself, not ssh); events `input`, `resize`,
  `data` (text), and its flow control `commit` (acknowledged bytes), sent by this client
  after every message (WeTTY's page commits in batches, after xterm.js has written them);
- pyxtermjs (PyPI; Flask-SocketIO on Werkzeug): `pyxtermjs --command docker --cmd-args
  "exec -it ..."`; namespace /pty, events `pty-input`, `pty-output` ({"output": text});
- Berth: `/terminal` (tests/terminal_client.py), on Berth's own server (gunicorn).

The peers are installed into .bench/ (git-ignored; installed on first use): a venv with
terminado, pyxtermjs and simple-websocket (without it Flask-SocketIO's threading mode has
no WebSocket transport, and pyxtermjs would fall back to long-polling), and WeTTY with
`npm install` in its own prefix. They listen on 127.0.0.1 only, and are stopped by the
process id (and group) this benchmark started them with.

The same client code measures every path: echo (type one key, wait for its echo; the
line is cleared every 50 keys, untimed; the keys are typed in blocks of 50, the paths
taking turns) and throughput (`head -c BYTES /dev/zero | base64`, from Enter to the line
printed after it, the best of ROUNDS, the rounds interleaved between the paths). Every
client lives in this one Python process: the path being measured is read in the main
thread, each other path by a thread of its own that answers its server's pings meanwhile.
The load average is printed before and after: the host may be shared."""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import websocket

from benchmarks.terminal import PROMPT, BerthTty, RawTty, drain, echo_once, load, read_until, throughput, turns
from tests.conftest import BerthServer, free_port, remove_instance

PROJECT = Path(__file__).resolve().parent.parent
BENCH = PROJECT / ".bench"
VENV = BENCH / "venv"
WETTY = BENCH / "wetty"
PYPI = ["terminado==0.18.1", "pyxtermjs==0.5.0.2", "simple-websocket==1.1.0"]
NPM = "wetty@3.2.0"
COLS, ROWS = 120, 40
ENV = {"TERM": "xterm-256color", "LANG": "C.UTF-8"}


def exec_command(container: str) -> list[str]:
    """The shell every peer runs: the same bash in the same machine as the raw path."""
    return ["docker", "exec", "-it", "--detach-keys", "ctrl-^,ctrl-^", "-e", "TERM=xterm-256color",
            "-e", "LANG=C.UTF-8", container, "bash", "-l"]


# --- installing the peers


def install() -> None:
    """Install what is missing into .bench/ (never committed)."""
    BENCH.mkdir(exist_ok=True)
    python = VENV / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import terminado, pyxtermjs, simple_websocket"],
                                             capture_output=True).returncode:
        print("installing terminado and pyxtermjs into .bench/venv ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PYPI], check=True)
    if not (WETTY / "node_modules" / "wetty" / "build" / "main.js").exists():
        print("installing WeTTY into .bench/wetty ...", flush=True)
        WETTY.mkdir(exist_ok=True)
        # A package.json of its own, or npm would install into Berth's; node-pty builds
        # its native part in an install script, which npm 11 runs only when allowed.
        (WETTY / "package.json").write_text(json.dumps(
            {"name": "berth-bench-wetty", "private": True, "allowScripts": {"node-pty": True}}))
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", NPM], cwd=WETTY, check=True)


def versions() -> dict[str, str]:
    python = str(VENV / "bin" / "python")
    found = {}
    for name in ("terminado", "pyxtermjs", "flask-socketio", "python-engineio", "tornado", "werkzeug"):
        found[name] = subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version('{name}'))"],
                                     capture_output=True, text=True).stdout.strip()
    for name in ("wetty", "socket.io", "node-pty"):
        package = WETTY / "node_modules" / name / "package.json"
        found[name] = json.loads(package.read_text())["version"]
    found["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    found["docker CLI"] = subprocess.run(["docker", "version", "--format", "{{.Client.Version}}"],
                                         capture_output=True, text=True).stdout.strip()
    return found


# --- the peers' servers


class Peer:
    """A peer's server process, started in a process group of its own and stopped by it."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path, env: dict | None = None):
        self.name, self.port = name, port
        self.log = log
        self.process = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=PROJECT,
                                        start_new_session=True, env={**os.environ, **ENV, **(env or {})})

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM to the group this benchmark made (the server and what it forked in it),
        then SIGKILL if it has not gone in 5 s."""
        if self.process.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    continue


def start_peers(container: str, logs: Path) -> dict[str, Peer]:
    command = exec_command(container)
    peers = {}
    port = free_port()
    peers["terminado"] = Peer("terminado", [str(VENV / "bin" / "python"), str(PROJECT / "benchmarks" / "_terminado.py"),
                                            str(port), *command], port, logs / "terminado.log")
    port = free_port()
    peers["wetty"] = Peer("wetty", ["node", str(WETTY / "node_modules" / "wetty" / "build" / "main.js"),
                                    "--host", "127.0.0.1", "--port", str(port), "--command", shlex.join(command),
                                    "--log-level", "warn"], port, logs / "wetty.log")
    port = free_port()
    peers["pyxtermjs"] = Peer("pyxtermjs", [str(VENV / "bin" / "python"), "-m", "pyxtermjs", "--host", "127.0.0.1",
                                            "--port", str(port), "--command", command[0],
                                            "--cmd-args", shlex.join(command[1:])], port, logs / "pyxtermjs.log")
    for peer in peers.values():
        peer.wait_listening()
    return peers


# --- clients: each has buffer, write(bytes), read() -> bytes received, timeout(seconds), close()


class CliTty:
    """`docker exec -it` in a pseudo-terminal of the host, read here: the peers' common hop."""

    def __init__(self, container: str):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execvp("docker", exec_command(container))
        import fcntl
        import struct
        import termios
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.buffer = bytearray()
        self._timeout: float | None = None

    def timeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read(self) -> int:
        if self._timeout is not None and not select.select([self.fd], [], [], self._timeout)[0]:
            raise TimeoutError
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            raise EOFError("the shell ended")
        self.buffer += chunk
        return len(chunk)

    def close(self) -> None:
        try:
            self.write(b"exit\r")
            time.sleep(0.2)
            os.close(self.fd)
        except OSError:
            pass
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)


class WebSocketTty:
    """A WebSocket client read in this thread, with TCP_NODELAY as Berth's client has."""

    def __init__(self, port: int, path: str):
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", origin=f"http://127.0.0.1:{port}",
                                              timeout=30)
        self.ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ws.settimeout(None)
        self.buffer = bytearray()

    def timeout(self, seconds: float | None) -> None:
        self.ws.settimeout(seconds)

    def read(self) -> int:
        opcode, frame = self.ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise EOFError("the connection closed")
        data = self.handle(opcode, frame)
        self.buffer += data
        return len(data)

    def handle(self, opcode: int, frame: bytes) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self.write(b"exit\r")
            time.sleep(0.2)
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass


class TerminadoTty(WebSocketTty):
    """terminado: JSON arrays in text frames."""

    def __init__(self, port: int):
        super().__init__(port, "/websocket")
        self.ws.send(json.dumps(["set_size", ROWS, COLS]))

    def write(self, data: bytes) -> None:
        self.ws.send(json.dumps(["stdin", data.decode()]))

    def handle(self, opcode: int, frame: bytes) -> bytes:
        message = json.loads(frame)
        return message[1].encode() if message[0] == "stdout" else b""


class SocketIOTty(WebSocketTty):
    """Socket.IO 5 over Engine.IO 4 on one WebSocket, text events only (both peers send text)."""

    def __init__(self, port: int, namespace: str):
        super().__init__(port, "/socket.io/?EIO=4&transport=websocket")
        self.prefix = "" if namespace == "/" else namespace + ","
        assert self.ws.recv().startswith("0{")
        self.ws.send("40" + self.prefix)
        while not (reply := self.ws.recv()).startswith("40" + self.prefix):
            if reply.startswith("44"):
                raise RuntimeError(f"refused: {reply}")

    def emit(self, *args) -> None:
        self.ws.send("42" + self.prefix + json.dumps(args))

    def handle(self, opcode: int, frame: bytes) -> bytes:
        text = frame.decode()
        if text == "2":
            self.ws.send("3")
        elif text.startswith("42" + self.prefix):
            event = json.loads(text[2 + len(self.prefix):])
            return self.event(event[0], event[1:])
        return b""

    def event(self, name: str, args: list) -> bytes:
        raise NotImplementedError


class WettyTty(SocketIOTty):
    def __init__(self, port: int):
        super().__init__(port, "/")
        self.emit("resize", {"cols": COLS, "rows": ROWS})

    def write(self, data: bytes) -> None:
        self.emit("input", data.decode())

    def event(self, name: str, args: list) -> bytes:
        if name != "data":
            return b""
        self.emit("commit", len(args[0]))  # WeTTY's flow control: what the page has written
        return args[0].encode()


class PyxtermTty(SocketIOTty):
    def __init__(self, port: int):
        super().__init__(port, "/pty")
        self.emit("resize", {"cols": COLS, "rows": ROWS})

    def write(self, data: bytes) -> None:
        self.emit("pty-input", {"input": data.decode()})

    def event(self, name: str, args: list) -> bytes:
        return args[0]["output"].encode() if name == "pty-output" else b""


# --- measuring


def echo_block(tty, keys: int) -> list[float]:
    """`keys` echoes of one key on a cleared line."""
    tty.write(b"\x15")
    drain(tty)
    samples = [echo_once(tty) for _ in range(keys)]
    tty.write(b"\x15")
    drain(tty)
    return samples


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="./run bench peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=300, help="keystrokes timed per path (in blocks of 50)")
    parser.add_argument("--bytes", type=int, default=20_000_000, help="bytes of zeros base64 encodes")
    parser.add_argument("--rounds", type=int, default=3, help="throughput runs per path (the best counts)")
    parser.add_argument("--only", default="", help="comma-separated paths to run (default: all)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still clean up when stopped
    install()
    found = versions()
    print("versions: " + ", ".join(f"{name} {version}" for name, version in found.items()))
    print(f"before: {load()} (a shared host: other work's load counts too)")
    engine = docker.from_env(timeout=120)
    server = BerthServer(Path(tempfile.mkdtemp(prefix="berth-bench-")))
    logs = server.data_dir
    peers: dict[str, Peer] = {}
    ttys: dict = {}
    echo: dict[str, list[float]] = {}
    best: dict[str, float] = {}
    print("starting a Berth server and a session ...", flush=True)
    server.start()
    try:
        session = server.create_session("docker-images")
        container = f"berth-{session['id']}-workstation"
        print(f"machine: {container} ({engine.containers.get(container).image.tags})")
        peers = start_peers(container, logs)
        makers = {
            "raw": lambda: RawTty(engine.api, container),
            "cli": lambda: CliTty(container),
            "terminado": lambda: TerminadoTty(peers["terminado"].port),
            "wetty": lambda: WettyTty(peers["wetty"].port),
            "pyxtermjs": lambda: PyxtermTty(peers["pyxtermjs"].port),
            "berth": lambda: BerthTty(server.url, {"session": session["id"], "token": session["token"],
                                                   "machine": "workstation", "cols": COLS, "rows": ROWS}),
        }
        only = [name for name in args.only.split(",") if name] or list(makers)
        for name in only:
            tty = makers[name]()
            read_until(tty, PROMPT)
            ttys[name] = tty
        print("keystroke echo (blocks of 50 keys, the paths taking turns):", flush=True)
        for _ in range(max(1, args.keys // 50)):
            turns(ttys, lambda name, tty: echo.setdefault(name, []).extend(echo_block(tty, 50)))
        for name in ttys:
            median, p99 = percentiles(echo[name])
            print(f"  {name:10} median {median:7.2f} ms, p99 {p99:7.2f} ms ({len(echo[name])} keys)", flush=True)
        print(f"output throughput of head -c {args.bytes} /dev/zero | base64:", flush=True)
        for round_ in range(args.rounds):
            def measure(name: str, tty, round_: int = round_) -> None:
                rate, total = throughput(tty, args.bytes)
                best[name] = max(best.get(name, 0.0), rate)
                print(f"  round {round_ + 1} {name:10} {rate / 1e6:6.1f} MB/s ({total} bytes)", flush=True)
            turns(ttys, measure)
        for tty in ttys.values():
            tty.close()
        server.delete_session(session)
    finally:
        for peer in peers.values():
            peer.stop()
        server.stop()
        remove_instance(engine, server.instance_id)
        shutil.rmtree(server.data_dir, ignore_errors=True)
    print(f"after: {load()}")
    print(f"\n| path | echo median | echo p99 | throughput (best of {args.rounds}) | share of raw |")
    print("| --- | --- | --- | --- | --- |")
    for name in ttys:
        median, p99 = percentiles(echo[name])
        share = f"{best[name] / best['raw']:.0%}" if "raw" in best else "-"
        print(f"| {name} | {median:.2f} ms | {p99:.2f} ms | {best[name] / 1e6:.1f} MB/s | {share} |")
    if "berth" in best:
        berth_median = percentiles(echo["berth"])[0]
        for name in ("terminado", "wetty", "pyxtermjs"):
            if name in best:
                median = percentiles(echo[name])[0]
                print(f"Berth against {name}: echo median {berth_median:.2f} vs {median:.2f} ms "
                      f"({'ahead' if berth_median < median else 'NOT ahead'}), throughput "
                      f"{best['berth'] / 1e6:.1f} vs {best[name] / 1e6:.1f} MB/s "
                      f"({'ahead' if best['berth'] > best[name] else 'NOT ahead'})")

