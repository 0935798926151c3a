"""The sessions API from outside, as classroom tooling would use it: the happy path and
every kind of bad input and failure, each a JSON error with a fitting status."""

from __future__ import annotations

import datetime
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import pytest
import requests

from berth.certs import CertificateAuthority
from berth.machines import DockerMachines, MachineError

from .conftest import NAVIGATE, BerthServer, labelled, remove_instance, wait_until

pytestmark = pytest.mark.engine


def test_lessons_and_health(server):
    health = requests.get(server.url + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert server.health().json()["engine"] == "ok"
    lessons = requests.get(server.url + "/api/lessons", timeout=10).json()["lessons"]
    lesson = next(lesson for lesson in lessons if lesson["slug"] == "docker-images")
    assert [t["id"] for t in lesson["tasks"]] == ["run", "customize", "commit", "save", "load"]
    assert all(t["title"] for t in lesson["tasks"])


def test_session_lifecycle(server):
    response = requests.post(server.url + "/api/sessions", json={"lesson": "docker-images"}, timeout=30)
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) >= {"id", "token", "lesson", "machines", "expires_at"}
    assert [m["name"] for m in created["machines"]] == ["workstation", "colleague"]
    assert all(m["status"] in ("starting", "ready") for m in created["machines"])
    assert response.headers["Location"] == f"/api/sessions/{created['id']}"
    def session() -> dict:
        return server.get(f"/api/sessions/{created['id']}", created["token"]).json()

    def ready() -> dict | None:
        got = session()
        return got if all(m["status"] == "ready" for m in got["machines"]) else None

    got = wait_until(ready, 60, lambda: session()["machines"])
    assert [m["status"] for m in got["machines"]] == ["ready", "ready"]
    assert "token" not in got
    assert [t["id"] for t in got["tasks"]] == ["run", "customize", "commit", "save", "load"]
    assert all(set(t) >= {"id", "title", "status", "completed_at", "feedback"} for t in got["tasks"])
    checked = requests.post(f"{server.url}/api/sessions/{created['id']}/check",
                            headers={"Authorization": f"Bearer {created['token']}"}, timeout=60)
    assert checked.status_code == 200 and checked.json()["id"] == created["id"]
    assert server.delete_session(created).status_code == 204
    assert server.get(f"/api/sessions/{created['id']}", created["token"]).status_code == 404
    assert server.delete_session(created).status_code == 404


@pytest.mark.parametrize("body, content_type", [
    ("{not json", "application/json"),
    ("[1, 2]", "application/json"),
    ('{"lesson": 7}', "application/json"),
    ("{}", "application/json"),
    ('{"lesson": "docker-images", "wait": "yes"}', "application/json"),
    ("lesson=docker-images", "application/x-www-form-urlencoded"),
])
def test_malformed_requests_are_400(server, body, content_type):
    response = requests.post(server.url + "/api/sessions", data=body, headers={"Content-Type": content_type}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request" and response.json()["message"]


def test_unknown_lesson_is_404(server):
    response = requests.post(server.url + "/api/sessions", json={"lesson": "no-such-lesson"}, timeout=10)
    assert response.status_code == 404 and response.json()["error"] == "unknown_lesson"


def test_tokens(server, lesson_session):
    path = f"/api/sessions/{lesson_session['id']}"
    missing = server.get(path)
    assert missing.status_code == 401 and missing.json()["error"] == "token_required"
    wrong = server.get(path, "not-the-token")
    assert wrong.status_code == 403 and wrong.json()["error"] == "wrong_token"
    malformed = requests.get(server.url + path, headers={"Authorization": "Basic abc"}, timeout=10)
    assert malformed.status_code == 401
    unknown = server.get("/api/sessions/000000000000", lesson_session["token"])
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_session"
    other = server.create_session(wait=False)
    try:
        # one session's token never opens another session
        crossed = server.get(path, other["token"])
        assert crossed.status_code == 403
        deleted = requests.delete(server.url + path, headers={"Authorization": f"Bearer {other['token']}"}, timeout=10)
        assert deleted.status_code == 403
    finally:
        server.delete_session(other)


def test_unknown_routes_are_json_404(server):
    response = requests.get(server.url + "/api/nothing-here", timeout=10)
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_cookie_from_a_foreign_origin_cannot_end_a_session(server):
    browser = requests.Session()
    page = browser.get(server.url + "/lessons/docker-images", headers=NAVIGATE, timeout=60)
    assert page.status_code == 200
    cookie = browser.cookies.get("berth_docker_images")
    session_id = cookie.split(":")[0]
    refused = browser.delete(f"{server.url}/api/sessions/{session_id}",
                             headers={"Origin": "https://evil.example"}, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"] == "foreign_origin"
    # the page itself may
    assert browser.get(f"{server.url}/api/sessions/{session_id}", timeout=10).status_code == 200
    ended = browser.delete(f"{server.url}/api/sessions/{session_id}", headers={"Origin": server.url}, timeout=60)
    assert ended.status_code == 204


def test_engine_down_is_503_with_what_to_do(tmp_path):
    berth = BerthServer(tmp_path / "down", {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}).start(wait=False)
    try:
        def answer() -> tuple[requests.Response] | None:  # a tuple: a 503 response is falsy itself
            try:
                return (berth.health(),)
            except (requests.ConnectionError, FileNotFoundError):  # not listening, or no token made yet
                return None

        (health,) = wait_until(answer, 30, lambda: berth.log_tail())
        assert health.status_code == 503
        assert "engine does not answer" in health.json()["reason"]
        anonymous = requests.get(berth.url + "/healthz", timeout=5)  # monitoring: the status alone
        assert anonymous.status_code == 503 and anonymous.json() == {"status": "unavailable",
                                                                      "detail": "with the instructor token"}
        created = requests.post(berth.url + "/api/sessions", json={"lesson": "docker-images"}, timeout=10)
        assert created.status_code == 503 and "engine" in created.json()["message"].lower()
        assert created.headers.get("Retry-After")
        assert requests.get(berth.url + "/api/lessons", timeout=10).status_code == 200  # lessons need no engine
    finally:
        berth.stop()


def test_capacity_is_503_with_a_clear_message(engine, tmp_path):
    berth = BerthServer(tmp_path / "full", {"BERTH_MAX_SESSIONS": "1"}).start()
    try:
        first = berth.create_session(wait=False)
        refused = requests.post(berth.url + "/api/sessions", json={"lesson": "docker-images"}, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"] == "capacity"
        assert "BERTH_MAX_SESSIONS" in refused.json()["message"]
        assert berth.delete_session(first).status_code == 204
        berth.delete_session(berth.create_session(wait=False))
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)


def moment(stamp: str) -> float:
    """An engine's time stamp (RFC 3339, up to nanoseconds, trailing zeros dropped) in seconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.datetime.fromisoformat(whole).timestamp() + float("0." + (fraction or "0"))


def test_a_class_arriving_at_once_is_started_in_turns(engine, tmp_path):
    # BERTH_STARTS_AT_ONCE=1: three sessions asked for together are all ready, one after
    # another: each machine is created only after the one before it started, and each
    # `wait` request waits for its turn as well as for its own start.
    berth = BerthServer(tmp_path / "turns", {"BERTH_STARTS_AT_ONCE": "1"}).start()
    try:
        with ThreadPoolExecutor(3) as each:
            sessions = list(each.map(lambda _: berth.create_session("image-basics"), range(3)))
        machines = sorted((engine.containers.get(f"berth-{s['id']}-workstation").attrs for s in sessions),
                          key=lambda attrs: moment(attrs["Created"]))
        for earlier, later in pairwise(machines):
            assert moment(later["Created"]) > moment(earlier["State"]["StartedAt"]), (earlier["State"], later["Created"])
        for session in sessions:
            assert berth.delete_session(session).status_code == 204
        # a session ended while it waits for its turn never gets machines: none is ever made
        since = int(time.time()) - 1
        first, queued = berth.create_session("image-basics", wait=False), berth.create_session("image-basics", wait=False)
        assert berth.delete_session(queued).status_code == 204
        wait_until(lambda: berth.get(f"/api/sessions/{first['id']}", first["token"]).json()["machines"][0]["status"]
                   == "ready", 60)
        time.sleep(2)  # the queued start has had its turn
        made = list(engine.events(since=since, until=int(time.time()) + 1, decode=True, filters={
            "type": "container", "event": "create", "label": f"berth.session={queued['id']}"}))
        assert made == [], made
        assert berth.delete_session(first).status_code == 204
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)


def test_an_unusable_machine_image_is_a_clear_503(engine, tmp_path):
    # The base image is no machine image: its containers exit at once, so the probe machine
    # fails and Berth says so, instead of creating sessions that cannot work.
    berth = BerthServer(tmp_path / "unusable", {"BERTH_MACHINE_IMAGE": os.environ.get("BERTH_BASE_IMAGE", "debian:bookworm")})
    berth.start(wait=False)
    try:
        def says_the_image_does_not_start() -> bool:
            try:
                health = berth.health().json()
            except (requests.ConnectionError, FileNotFoundError):  # not listening, or no token made yet
                return False
            return health.get("engine") == "ok" and "do not start" in health.get("reason", "")

        wait_until(says_the_image_does_not_start, 60, lambda: berth.log_tail(), interval=0.3)
        response = requests.post(berth.url + "/api/sessions", json={"lesson": "docker-images"}, timeout=30)
        assert response.status_code == 503 and "do not start on this engine" in response.json()["message"]
        assert [n for n in labelled(engine, berth.instance_id) if "mirror" not in n and "packages" not in n] == []
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)


def test_a_creation_failing_midway_leaves_nothing(engine, config, tmp_path):
    backend = DockerMachines(config, "t" + secrets.token_hex(4), CertificateAuthority(tmp_path / "certs"))
    try:
        with pytest.raises(MachineError):
            # the first machine is made; the second's name is refused by the engine
            backend.create_session("midway", ["workstation", "not a name"])
        assert labelled(engine, backend.instance_id) == []
    finally:
        remove_instance(engine, backend.instance_id)


def test_the_index_shows_the_chapter_with_this_browsers_progress(server):
    browser = requests.Session()
    assert "tasks done" not in browser.get(server.url + "/", timeout=30).text
    page = browser.get(server.url + "/lessons/docker-images", headers=NAVIGATE, timeout=60)
    assert page.status_code == 200 and 'class="next-lesson"' in page.text
    session_id, token = browser.cookies["berth_docker_images"].split(":")
    try:
        index = browser.get(server.url + "/", timeout=30)
        entry = index.text.split('data-lesson="docker-images"')[1].split("</li>")[0]
        assert "0 of 5 tasks done" in entry and index.headers["Cache-Control"] == "no-store"
        assert "tasks done" not in requests.get(server.url + "/", timeout=30).text  # another browser
    finally:
        requests.delete(f"{server.url}/api/sessions/{session_id}", headers={"Authorization": f"Bearer {token}"},
                        timeout=60)
