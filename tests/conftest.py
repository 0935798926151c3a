"""Fixtures over mocks: a real Docker engine, real Berth servers on free ports, real
sessions. Everything a test run creates is labelled with its Berth instance and removed
at the end."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
import requests
from playwright.sync_api import Browser, sync_playwright

from berth.config import PROJECT_DIR, Config
from berth.machines import remove_instance

# No sessions made ahead of time unless a test asks (tests/test_pool.py): each Berth a test
# starts, in its process or as a server, makes only the machines its test asks for.
os.environ.setdefault("BERTH_POOL", "0")

READY_TIMEOUT = 120
# Berth removes its machines when it stops; a test that restarts it and expects the
# learner's machines and shells back keeps them, as an operator would for a restart.
KEEP = {"BERTH_KEEP_ON_STOP": "1"}
STOP_WAIT = 30  # seconds a stopping Berth may take: it ends its sessions and removes their machines
__all__ = ["KEEP", "BerthServer", "remove_instance"]  # remove_instance: for the tests that import it from here

# Debian's Chromium, headless as root: no sandbox, and no background connections, which
# this machine's closed network refuses and Chromium then waits on.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# The text of a machine's terminal on the lesson page, as xterm.js holds it (scrollback too).
SCREEN_TEXT_JS = """(machine) => {
  const buffer = window.BerthPage.terminals[machine].terminal.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
  return lines.join("\\n");
}"""


# The slowest files first (the per-file seconds of a CI run at abb4b6f, docs/performance.md,
# "The test suite"). Two workers take whole files in collection order (--dist loadfile
# --no-loadscope-reorder: xdist's own order, by number of tests, handed out one-test files
# such as the chapter's last, and a long one taken last left one worker alone for minutes);
# longest first, the quick files fill the gaps at the end. Files not named here follow.
SLOWEST_FIRST = ("test_machines", "test_browser_terminal", "test_terminal", "test_server", "test_pool",
                 "test_selftest", "test_workshops", "test_checks", "test_chapter", "test_isolation",
                 "test_browser_lesson", "test_api", "test_container", "test_packages", "test_checker",
                 "test_class", "test_browser_preview", "test_checks_chapter", "test_browser_workshop",
                 "test_preview", "test_web_guard", "test_faults", "test_files")


def pytest_collection_modifyitems(config, items) -> None:
    """Order the files slowest first (SLOWEST_FIRST); a file's own tests keep their order."""
    rank = {name: place for place, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.path)).stem, len(rank)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class BerthServer:
    """A Berth server process (`python app.py`) with its own data folder and port."""

    data_dir: Path
    env_overrides: dict = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env.update(BERTH_DATA_DIR=str(self.data_dir), BERTH_PORT=str(self.port), BERTH_HOST="127.0.0.1",
                   PYTHONUNBUFFERED="1",
                   BERTH_SESSIONS_PER_CLIENT="0")  # every test is the same client; test_web_guard tests the limit
        env.update(self.env_overrides)
        return env

    def start(self, wait: bool = True) -> BerthServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "server.log"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, str(PROJECT_DIR / "app.py")], env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_DIR)
        if wait:
            try:
                self.wait_healthy()
            except BaseException:
                self.stop()  # a server that never got healthy is not left running,
                self.remove_leftovers()  # nor what it made on the engine (its mirror)
                raise
        return self

    def remove_leftovers(self) -> None:
        try:
            instance_id = self.instance_id
        except (sqlite3.Error, TypeError):
            return  # it never got as far as its data folder
        remove_instance(docker.from_env(timeout=120), instance_id)

    def wait_healthy(self, timeout: float = READY_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"Berth exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                try:  # the operator's view, which says why Berth is not healthy
                    headers = {"Authorization": f"Bearer {self.instructor_token}"}
                except FileNotFoundError:  # no instructor token made yet
                    headers = {}
                response = requests.get(self.url + "/healthz", headers=headers, timeout=5)
                last = response.json()
                if response.status_code == 200:
                    return last
            except requests.RequestException as error:
                last = str(error)
            time.sleep(0.2)
        raise RuntimeError(f"Berth did not get healthy: {last}\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def serving_pid(self) -> int:
        """The process that serves and holds Berth's memory: gunicorn's worker (it holds the
        data folder's lock and wrote its pid there), not the master that `process` is."""
        return int((self.data_dir / "berth.lock").read_text().split()[0])

    @property
    def instance_id(self) -> str:
        db = sqlite3.connect(self.data_dir / "berth.sqlite3")
        try:
            return db.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()[0]
        finally:
            db.close()

    # --- the API

    def fact(self, session_id: str, kind: str, key: str) -> set[str]:
        """What the store keeps about a session (say, that it was taken from the pool)."""
        db = sqlite3.connect(self.data_dir / "berth.sqlite3")
        try:
            rows = db.execute("SELECT value FROM session_facts WHERE session_id = ? AND kind = ? AND key = ?",
                              (session_id, kind, key)).fetchall()
            return {row[0] for row in rows}
        finally:
            db.close()

    def create_session(self, lesson: str = "docker-images", wait: bool = True) -> dict:
        response = requests.post(self.url + "/api/sessions", json={"lesson": lesson, "wait": wait}, timeout=120)
        assert response.status_code == 201, response.text
        data = response.json()
        if wait:
            assert all(m["status"] == "ready" for m in data["machines"]), data
        return data

    @property
    def instructor_token(self) -> str:
        """The instructor token this Berth uses: the one it was given, or the one it made."""
        return (self.env_overrides.get("BERTH_INSTRUCTOR_TOKEN")
                or (self.data_dir / "instructor-token").read_text().strip())

    def health(self) -> requests.Response:
        """/healthz as the operator sees it (with the instructor token: the details)."""
        return self.get("/healthz", self.instructor_token)

    def get(self, path: str, token: str | None = None, **kwargs) -> requests.Response:
        headers = {**kwargs.pop("headers", {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        return requests.get(self.url + path, headers=headers, timeout=60, **kwargs)

    def delete_session(self, session: dict) -> requests.Response:
        return requests.delete(f"{self.url}/api/sessions/{session['id']}",
                               headers={"Authorization": f"Bearer {session['token']}"}, timeout=120)


# What a browser sends when the learner opens a page by its address or a link on Berth's own
# pages (Sec-Fetch-*): the lesson page then starts the lesson's machines by itself.
NAVIGATE = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}


def page_session(page) -> dict:
    """The session a lesson page in the browser runs, from its cookie (the page itself
    holds no token)."""
    for cookie in page.context.cookies():
        if cookie["name"].startswith("berth_") and ":" in cookie["value"]:
            session_id, token = cookie["value"].split(":", 1)
            if page.eval_on_selector("#lesson", "el => el.dataset.session") == session_id:
                return {"id": session_id, "token": token}
    raise AssertionError("the page's session cookie is missing")


# What a page shows of its own state, for a failure's message: which of Berth's scripts ran,
# each terminal's state, and the status line.
PAGE_STATE_JS = """() => ({
  url: location.href, ready: document.readyState, title: document.title,
  scripts: {io: typeof window.io, xterm: typeof window.Terminal, terminal: typeof window.BerthTerminal,
            page: typeof window.BerthPage},
  terminals: window.BerthPage ? Object.fromEntries(Object.entries(window.BerthPage.terminals).map(
    ([machine, t]) => [machine, t.state])) : null,
  connection: (document.getElementById("connection") || {}).textContent || null,
  text: document.body ? document.body.innerText.slice(0, 400) : null,
})"""


def journal(page) -> list[str]:
    """Record what goes wrong in a page from now on (its errors, console warnings, failed
    and refused requests), for the message of a test that fails on it."""
    lines: list[str] = []
    stamp = lambda: time.strftime("%H:%M:%S")  # noqa: E731
    page.on("pageerror", lambda error: lines.append(f"{stamp()} page error: {error}"))
    page.on("console", lambda message: message.type in ("error", "warning")
            and lines.append(f"{stamp()} console {message.type}: {message.text}"))
    page.on("requestfailed", lambda request: lines.append(
        f"{stamp()} request failed: {request.method} {request.url} ({request.failure})"))
    page.on("response", lambda response: response.status >= 400 and lines.append(
        f"{stamp()} {response.status} for {response.request.method} {response.url}"))
    return lines


def page_diagnosis(page, lines: list[str] | None = None, server: BerthServer | None = None) -> str:
    """The page's state, what its journal recorded and the server's last log lines."""
    try:
        state = page.evaluate(PAGE_STATE_JS)
    except Exception as error:  # noqa: BLE001 - a crashed or closed page says so
        state = f"(the page does not answer: {error})"
    parts = [f"page: {state}", "journal:", *(lines or ["(nothing)"])]
    if server is not None:
        parts += ["server log:", server.log_tail(30)]
    return "\n".join(str(part) for part in parts)


def wait_until(condition, timeout: float, message=lambda: "", interval: float = 0.2):
    """Poll `condition` until it returns something true, and return that; fail with
    message() when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, message()
        time.sleep(interval)
    return result


def wait_until_ready(berth, timeout: float = READY_TIMEOUT) -> None:
    """Wait for an in-process Berth (create_app's) to have its engine side prepared."""
    wait_until(lambda: berth.state == "ready", timeout, lambda: berth.problem)


def labelled(client: docker.DockerClient, instance_id: str, role: str | None = None) -> list[str]:
    """Names of everything on the engine labelled for this instance (and role)."""
    labels = [f"berth.instance={instance_id}"] + ([f"berth.role={role}"] if role else [])
    filters = {"label": labels}
    return ([c.name for c in client.containers.list(all=True, filters=filters, ignore_removed=True)]
            + [n.name for n in client.networks.list(filters=filters)]
            + [v.name for v in client.volumes.list(filters=filters)])


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    """The host's Docker engine. Its absence is a failure, not a skip: run ./run test."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as error:  # noqa: BLE001 - any failure here means the same thing
        pytest.fail(f"no Docker engine answers ({error}); ./run test starts one", pytrace=False)
    return client


@pytest.fixture(scope="module")
def browser() -> Browser:
    """A headless Chromium (Debian's) for the browser tests of one module. (With one browser
    for all modules, a page once never loaded its scripts; the cause was not found, and a
    browser per module is how these tests had run clean.)"""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def server(engine, tmp_path_factory) -> BerthServer:
    """One Berth server for the whole test run."""
    berth = BerthServer(tmp_path_factory.mktemp("berth-server")).start()
    yield berth
    berth.stop()
    remove_instance(engine, berth.instance_id)


@pytest.fixture
def lesson_session(server) -> dict:
    """A fresh session of the docker-images lesson, its machines ready; ended afterwards."""
    session = server.create_session("docker-images")
    yield session
    server.delete_session(session)


@pytest.fixture
def config(tmp_path) -> Config:
    """Settings from the environment, with a data folder of the test's own."""
    return Config.from_env({**os.environ, "BERTH_DATA_DIR": str(tmp_path / "data")})


def machine_container(client: docker.DockerClient, session: dict, name: str):
    """The container of a session's machine on the host engine."""
    return client.containers.get(f"berth-{session['id']}-{name}")


def in_machine(client: docker.DockerClient, session: dict, name: str, command: str,
               timeout: int = 60) -> tuple[int, str]:
    """Run a shell command in a machine as a learner would; (exit code, output)."""
    container = machine_container(client, session, name)
    result = container.exec_run(["timeout", str(timeout), "bash", "-lc", command])
    return result.exit_code, result.output.decode("utf-8", "replace")
