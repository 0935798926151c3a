"""What Berth reads from a learner's machine is bounded: the learner is root there and
controls its engine and its servers. Servers on loopback, started here, play the learner's
server and the learner's engine answering without end, a byte at a time, or with a
redirect; the checks and the engine client must give up in time, read a bounded amount, and
follow nowhere."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import docker
import pytest
import requests

from berth.bounded import TooMuch, bound_engine_client
from berth.check_framework import CheckRunner, Context
from berth.checks import HTTP_TIME, READ_LIMIT
from berth.machines import Machine


class Learner(BaseHTTPRequestHandler):
    """The learner's server: /endless, /drip, /page, and /redirect to the bystander."""

    bystander = 0
    sent: dict[str, int] = {}

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        if path.endswith("/redirect"):
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{Learner.bystander}/v1.41/stolen")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if path.startswith("/v1.41") else "text/html")
        self.send_header("Server", "nginx")
        self.end_headers()
        sent = 0
        try:
            if path.endswith("/page"):
                self.wfile.write(b"<h1>Hello</h1>")
            elif path.endswith("/drip"):
                while sent < 10_000:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    sent += 1
                    time.sleep(0.1)
            else:  # endless, as fast as the socket takes it
                chunk = b"[" + b'{"Id": "x"},' * 5000
                while sent < 1024 ** 3:
                    self.wfile.write(chunk)
                    sent += len(chunk)
        except OSError:
            pass  # Berth stopped reading: what it should do
        finally:
            Learner.sent[path] = sent


class Bystander(BaseHTTPRequestHandler):
    """Where a redirect would send Berth: it must hear nothing."""

    heard: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        Bystander.heard.append(self.path)
        self.send_response(200)
        self.end_headers()


@pytest.fixture(scope="module")
def servers():
    learner = ThreadingHTTPServer(("127.0.0.1", 0), Learner)
    bystander = ThreadingHTTPServer(("127.0.0.1", 0), Bystander)
    learner.daemon_threads = bystander.daemon_threads = True
    Learner.bystander = bystander.server_address[1]
    for server in (learner, bystander):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield learner.server_address[1]
    for server in (learner, bystander):
        server.shutdown()
        server.server_close()


def context(port: int, path: str) -> tuple[Context, list]:
    machine = Machine(session_id="s" * 12, name="workstation", container_id="c" * 12, address="127.0.0.1",
                      state="running")
    ctx = Context(machine=lambda name: machine, engine=lambda m: None, execute=lambda *a, **k: None,
                  reach=lambda m, p: ("127.0.0.1", port))
    return ctx, [("http", {"machine": "workstation", "port": 3000, "path": path, "server": "nginx"})]


def test_a_page_without_end_is_read_a_page_at_most(servers):
    runner = CheckRunner()
    try:
        ctx, checks = context(servers, "/endless")
        started = time.monotonic()
        findings = runner.run(ctx, checks)
        assert time.monotonic() - started < HTTP_TIME
        assert findings[0].ok and "nginx answers" in findings[0].message, findings
        time.sleep(0.5)
        assert Learner.sent["/endless"] > READ_LIMIT  # the server really sent more ...
        assert Learner.sent["/endless"] < 1024 ** 3  # ... and gave up when Berth stopped reading
    finally:
        runner.close()


def test_a_dripping_page_is_given_up_in_time_and_others_are_not_held_up(servers):
    runner = CheckRunner()
    try:
        slow_ctx, slow_checks = context(servers, "/drip")
        results: dict[str, object] = {}

        def slow():
            started = time.monotonic()
            results["findings"] = runner.run(slow_ctx, slow_checks * 3, timeout=HTTP_TIME + 5)
            results["took"] = time.monotonic() - started
        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.5)
        fast_ctx, fast_checks = context(servers, "/page")
        started = time.monotonic()
        fast = runner.run(fast_ctx, fast_checks)
        assert time.monotonic() - started < 1.0, "another learner's check waited for the slow one"
        assert fast[0].ok, fast
        thread.join(HTTP_TIME + 10)
        assert HTTP_TIME <= results["took"] < HTTP_TIME + 2, results
        assert all(f"did not arrive within {HTTP_TIME:.0f} s" in f.message for f in results["findings"]), results
    finally:
        runner.close()


def test_the_learners_engine_cannot_flood_berth_or_send_it_elsewhere(servers):
    client = bound_engine_client(docker.DockerClient(base_url=f"tcp://127.0.0.1:{servers}", version="1.41",
                                                     timeout=5), limit=1024 * 1024, seconds=3)
    try:
        started = time.monotonic()
        with pytest.raises(TooMuch, match="larger than 1 MiB"):
            client.api.containers()  # GET /v1.41/containers/json: the endless answer
        assert time.monotonic() - started < 3
        with pytest.raises(requests.exceptions.TooManyRedirects):
            client.api._result(client.api._get(client.api._url("/redirect")), json=True)
        assert Bystander.heard == []
    finally:
        client.close()
