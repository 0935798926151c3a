"""The checker from outside, against a real server: the page's /session namespace is told
about tasks and machines, the checker follows the engine by itself, and a task once done
stays done (with its completed_at) after the setup is undone and after a restart."""

from __future__ import annotations

import threading
import time

import pytest
import requests
import socketio as socketio_client

from .conftest import KEEP, BerthServer, in_machine, remove_instance

pytestmark = pytest.mark.engine

RUN = ("docker run -dit --name ubuntu001 -e VAR1=ubuntu -e VAR2=webserver -p 3000:3000 "
       "$BASE bash >/dev/null")


class Page:
    """What the lesson page hears on /session."""

    def __init__(self, url: str, session: dict, token: str | None = None):
        self.tasks: list[list[dict]] = []
        self.machines: list[list[dict]] = []
        self.changed = threading.Event()
        self.sio = socketio_client.Client(reconnection=False)
        self.sio.on("tasks", self._on_tasks, namespace="/session")
        self.sio.on("machines", self._on_machines, namespace="/session")
        self.sio.connect(url, namespaces=["/session"], transports=["websocket"], wait_timeout=20,
                         auth={"session": session["id"], "token": token or session["token"]})

    def _on_tasks(self, tasks):
        self.tasks.append(tasks)
        self.changed.set()

    def _on_machines(self, machines):
        self.machines.append(machines)

    def wait_for(self, predicate, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.tasks and predicate({t["id"]: t for t in self.tasks[-1]}):
                return self.tasks[-1]
            self.changed.wait(0.2)
            self.changed.clear()
        raise AssertionError(f"not seen in {timeout} s; last: {self.tasks[-1:]}")

    def close(self):
        self.sio.disconnect()


def base_image(server) -> str:
    return server.health().json()["base_image"]


def test_session_namespace_needs_the_token(server, lesson_session):
    with pytest.raises(socketio_client.exceptions.ConnectionError):
        Page(server.url, lesson_session, token="not-the-token")


def test_tasks_and_machines_are_pushed_as_the_engine_changes(server, lesson_session, engine):
    page = Page(server.url, lesson_session)
    try:
        first = page.wait_for(lambda tasks: tasks["run"]["feedback"], timeout=20)
        assert [t["id"] for t in first] == ["run", "customize", "commit", "save", "load"]
        assert first[0] == {"id": "run", "title": "Run a configured container", "status": "pending",
                            "completed_at": None, "feedback": [
                                {"ok": False, "message": "There is no container named ubuntu001 on workstation yet."}]}
        assert page.machines and all(m["status"] == "ready" for m in page.machines[0])

        # A wrong first attempt, from outside any terminal: engine events alone bring it.
        code, out = in_machine(engine, lesson_session, "workstation",
                               f"docker run -dit --name ubuntu001 -e VAR1=ubuntu -p 3000:80 {base_image(server)} bash")
        assert code == 0, out
        wrong = page.wait_for(lambda tasks: len(tasks["run"]["feedback"]) > 1, timeout=10)[0]
        assert wrong["status"] == "pending"
        assert {"ok": False, "message": "VAR2 is not set in ubuntu001 (docker run -e VAR2=webserver ...)."} in wrong["feedback"]
        assert any("Port 3000 leads to the container's port 80" in f["message"] for f in wrong["feedback"])

        code, out = in_machine(engine, lesson_session, "workstation",
                               "docker rm -f ubuntu001 >/dev/null && " + RUN.replace("$BASE", base_image(server)))
        assert code == 0, out
        done = page.wait_for(lambda tasks: tasks["run"]["status"] == "done", timeout=10)
        assert done[0]["completed_at"] and all(f["ok"] for f in done[0]["feedback"])
        # the next task is checked in the same round, and says what it misses
        following = page.wait_for(lambda tasks: tasks["customize"]["feedback"], timeout=10)[1]
        assert {"ok": False, "message": "vim is not installed in ubuntu001 yet."} in following["feedback"]
    finally:
        page.close()
    api = server.get(f"/api/sessions/{lesson_session['id']}", lesson_session["token"]).json()
    assert api["tasks"][0]["status"] == "done" and api["tasks"][0]["completed_at"] == done[0]["completed_at"]


def test_done_stays_done_when_undone_and_after_a_restart(engine, tmp_path):
    server = BerthServer(tmp_path / "data", KEEP).start()
    try:
        session = server.create_session()
        code, out = in_machine(engine, session, "workstation", RUN.replace("$BASE", base_image(server)))
        assert code == 0, out
        check = f"{server.url}/api/sessions/{session['id']}/check"
        auth = {"Authorization": f"Bearer {session['token']}"}
        run = requests.post(check, headers=auth, timeout=60).json()["tasks"][0]
        assert run["status"] == "done", run

        code, out = in_machine(engine, session, "workstation", "docker rm -f ubuntu001")
        assert code == 0, out
        again = requests.post(check, headers=auth, timeout=60).json()["tasks"][0]
        assert again["status"] == "done" and again["completed_at"] == run["completed_at"]

        server.stop()
        server.start()
        after = server.get(f"/api/sessions/{session['id']}", session["token"]).json()["tasks"][0]
        assert after == again
        page = Page(server.url, session)
        try:
            assert page.wait_for(lambda tasks: True, timeout=20)[0]["status"] == "done"
        finally:
            page.close()
    finally:
        server.stop()
        remove_instance(engine, server.instance_id)
