"""How soon a task ticks: from the moment the command that completes it returns in the
learner's terminal to the `tasks` event that marks it done (docs/performance.md, "Checks").

    ./run bench checks [--sessions N] [--url URL]

Starts a Berth of its own (unless --url names one), and in each of N fresh sessions types
every task's solution into the real terminals over Socket.IO, as the page does. The
command's return is the shell's prompt mark arriving at this client; the tick is the first
`tasks` event with the task done, on the same client clock."""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker
import requests
import socketio

from berth.config import PROJECT_DIR
from berth.lessons import load_lesson
from berth.machines import remove_instance

PROMPT = b"\x1b]7771;prompt\x07"
SLUG = "docker-images"


class Terminal:
    """A /terminal client: sends input, keeps the output in order, acknowledges it."""

    def __init__(self, url: str, session: dict, machine: str):
        self.data = bytearray()
        self.pending: dict[int, bytes] = {}
        self.position: int | None = None
        self.seq = 0
        self.lock = threading.Condition()
        self.prompts: list[tuple[int, float]] = []  # (offset after the mark, when it arrived)
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("attached", self._attached, namespace="/terminal")
        self.sio.on("output", self._output, namespace="/terminal")
        self.sio.connect(url, namespaces=["/terminal"], transports=["websocket"], wait_timeout=30,
                         auth={"session": session["id"], "token": session["token"], "machine": machine,
                               "cols": 120, "rows": 40})

    def _attached(self, info):
        with self.lock:
            self.position = info["offset"]
            self.lock.notify_all()

    def _output(self, chunk, offset):
        now = time.monotonic()
        with self.lock:
            self.pending[offset] = chunk
            while self.position is not None and self.position in self.pending:
                piece = self.pending.pop(self.position)
                before = len(self.data)
                self.data += piece
                self.position += len(piece)
                start = max(0, before - len(PROMPT) + 1)
                for match in re.finditer(re.escape(PROMPT), bytes(self.data[start:])):
                    self.prompts.append((start + match.end(), now))
            position = self.position
            self.lock.notify_all()
        try:
            self.sio.emit("ack", position, namespace="/terminal")
        except socketio.exceptions.BadNamespaceError:
            pass  # output still arriving while the client closes

    def wait_prompt(self, after: int, timeout: float) -> float:
        """When the first prompt mark after `after` bytes of output arrived."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                found = [when for end, when in self.prompts if end > after]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no prompt; output ends {bytes(self.data[-300:])!r}")
                self.lock.wait(left)

    def run(self, command: str, timeout: float = 600) -> float:
        """Type a command and Enter; return when its prompt came back (monotonic time)."""
        with self.lock:
            mark = len(self.data)
        self.sio.emit("input", ((command + "\r").encode(), self.seq), namespace="/terminal")
        self.seq += 1
        return self.wait_prompt(mark, timeout)

    def close(self) -> None:
        self.sio.disconnect()


class Page:
    """The /session client: when each task was first seen done."""

    def __init__(self, url: str, session: dict):
        self.done_at: dict[str, float] = {}
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("tasks", self._tasks, namespace="/session")
        self.sio.connect(url, namespaces=["/session"], transports=["websocket"], wait_timeout=30,
                         auth={"session": session["id"], "token": session["token"]})

    def _tasks(self, tasks):
        now = time.monotonic()
        for task in tasks:
            if task["status"] == "done":
                self.done_at.setdefault(task["id"], now)

    def wait_done(self, task_id: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while task_id not in self.done_at:
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} not done in {timeout} s")
            time.sleep(0.01)
        return self.done_at[task_id]

    def close(self) -> None:
        self.sio.disconnect()


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "BERTH_DATA_DIR": str(data_dir), "BERTH_PORT": str(port), "BERTH_HOST": "127.0.0.1"}
    log = open(data_dir / "server.log", "ab")
    process = subprocess.Popen([sys.executable, str(PROJECT_DIR / "app.py")], env=env, cwd=PROJECT_DIR,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=5).status_code == 200:
                return process, url
        except requests.RequestException:
            pass
        time.sleep(0.3)
    process.terminate()
    raise SystemExit(f"Berth did not get healthy; see {data_dir / 'server.log'}")


def one_session(url: str, lesson) -> list[tuple[str, float]]:
    session = requests.post(url + "/api/sessions", json={"lesson": SLUG, "wait": True}, timeout=180).json()
    auth = {"Authorization": f"Bearer {session['token']}"}
    terminals = {m: Terminal(url, session, m) for m in lesson.machines}
    page = Page(url, session)
    samples = []
    try:
        for terminal in terminals.values():
            terminal.wait_prompt(-1, 30)  # the first prompt: the shell is ready
        for task in lesson.tasks:
            returned = 0.0
            for step in task.solution:
                returned = terminals[step.machine].run(step.run)
            ticked = page.wait_done(task.id, 60)
            samples.append((task.id, ticked - returned))
            print(f"  {task.id:<10} {1000 * (ticked - returned):7.0f} ms", flush=True)
    finally:
        page.close()
        for terminal in terminals.values():
            terminal.close()
        requests.delete(f"{url}/api/sessions/{session['id']}", headers=auth, timeout=120)
    return samples


def percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least `share` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="./run bench checks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4, help="fresh sessions to run the lesson in (default 4)")
    parser.add_argument("--url", help="a running Berth to measure (default: start one)")
    args = parser.parse_args(argv)
    lesson = load_lesson(PROJECT_DIR / "lessons" / SLUG, {"BERTH_BASE_IMAGE": os.environ.get("BERTH_BASE_IMAGE", "")})
    process = None
    data_dir = Path(tempfile.mkdtemp(prefix="berth-bench-checks-"))
    url = args.url
    if url is None:
        process, url = start_server(data_dir)
    samples: list[tuple[str, float]] = []
    try:
        for number in range(args.sessions):
            print(f"session {number + 1} of {args.sessions}", flush=True)
            samples += one_session(url, lesson)
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
            remove_berth(data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)
    values = [max(0.0, latency) for _, latency in samples]
    early = sum(1 for _, latency in samples if latency < 0)
    print(f"\n{len(values)} ticks: median {1000 * statistics.median(values):.0f} ms, "
          f"p95 {1000 * percentile(values, 0.95):.0f} ms, max {1000 * max(values):.0f} ms "
          f"({early} ticked before the prompt returned, counted as 0)")
    for task in lesson.tasks:
        mine = [max(0.0, v) for t, v in samples if t == task.id]
        print(f"  {task.id:<10} median {1000 * statistics.median(mine):6.0f} ms  max {1000 * max(mine):6.0f} ms")


def remove_berth(data_dir: Path) -> None:
    """Remove what the benchmark's own Berth left on the engine (its mirror), by its label."""
    db = sqlite3.connect(data_dir / "berth.sqlite3")
    try:
        instance = db.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()[0]
    finally:
        db.close()
    remove_instance(docker.from_env(), instance)
