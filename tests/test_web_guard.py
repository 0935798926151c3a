"""The web side against someone who is not the learner: another site that makes its name
point at Berth (DNS rebinding), pages and link previews that would start machines, one
address filling the room, a learner machine calling Berth by a mapped address, anonymous
health checks, and the data folder's permissions. Each attack is sent and its refusal
asserted."""

from __future__ import annotations

import os
import stat
import time

import pytest
import requests

from berth import create_app
from berth.config import Config
from berth.sessions import SessionError

from .conftest import NAVIGATE, BerthServer, labelled, remove_instance

INSTRUCTOR = "instructor-token-for-the-guard-tests"


def quiet_app(tmp_path, **settings):
    """Berth in this process, not started (no engine needed): enough for refusals."""
    environ = {**os.environ, "BERTH_DATA_DIR": str(tmp_path / "data"), "BERTH_INSTRUCTOR_TOKEN": INSTRUCTOR,
               **{f"BERTH_{key.upper()}": value for key, value in settings.items()}}
    return create_app(Config.from_env(environ), start=False)


# --- in this process, no engine

def test_other_sites_names_are_refused_everywhere(tmp_path):
    client = quiet_app(tmp_path).test_client()
    for path in ("/", "/api/lessons", "/lessons/docker-images", "/healthz", "/socket.io/?EIO=4&transport=polling"):
        refused = client.get(path, headers={"Host": "rebound.example:5000"})
        assert refused.status_code == 403 and refused.json["error"] == "unknown_host", path
        assert "BERTH_PUBLIC_URL" in refused.json["message"]
    for host in ("localhost:5000", "127.0.0.1:5000", "[::1]:5000", "10.1.2.3", "app.localhost:5000"):
        assert client.get("/api/lessons", headers={"Host": host}).status_code == 200, host
    assert client.get("/api/lessons", headers={"Host": ""}).status_code == 403


def test_the_public_name_is_berths_own(tmp_path):
    client = quiet_app(tmp_path, public_url="https://berth.school.example").test_client()
    assert client.get("/api/lessons", headers={"Host": "berth.school.example"}).status_code == 200
    assert client.get("/api/lessons", headers={"Host": "rebound.example"}).status_code == 403
    # behind its TLS proxy, Berth sees http://berth.school.example; the page's origin is https
    ended = client.post("/lessons/docker-images/end", headers={"Host": "berth.school.example",
                                                                "Origin": "https://berth.school.example"})
    assert ended.status_code == 302
    foreign = client.post("/lessons/docker-images/end", headers={"Host": "berth.school.example",
                                                                  "Origin": "https://rebound.example"})
    assert foreign.status_code == 403


def test_a_bad_public_url_is_a_clear_error():
    with pytest.raises(ValueError, match="BERTH_PUBLIC_URL"):
        Config.from_env({"BERTH_PUBLIC_URL": "berth.school.example"})


@pytest.mark.parametrize("address", ["10.213.0.5", "::ffff:10.213.0.5", "::ffff:ad5:5"])
def test_learner_machines_are_refused_by_any_spelling_of_their_address(tmp_path, address):
    client = quiet_app(tmp_path).test_client()
    refused = client.get("/api/lessons", environ_base={"REMOTE_ADDR": address})
    assert refused.status_code == 403 and refused.json["error"] == "from_machine"
    assert client.get("/api/lessons", environ_base={"REMOTE_ADDR": "::ffff:127.0.0.1"}).status_code == 200


def test_health_tells_anonymous_callers_the_status_alone(tmp_path):
    client = quiet_app(tmp_path).test_client()
    anonymous = client.get("/healthz")
    assert anonymous.status_code == 503 and anonymous.json == {"status": "unavailable",
                                                                "detail": "with the instructor token"}
    learner_token = client.get("/healthz", headers={"Authorization": "Bearer not-the-instructor"})
    assert learner_token.json == anonymous.json
    operator = client.get("/healthz", headers={"Authorization": f"Bearer {INSTRUCTOR}"})
    assert operator.status_code == 503 and "reason" in operator.json and "sessions" in operator.json


def test_a_link_preview_or_another_site_starts_no_machines(tmp_path):
    app = quiet_app(tmp_path)
    client = app.test_client()
    cross_site = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    for headers in ({}, cross_site, {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}):
        page = client.get("/lessons/docker-images", headers=headers)
        assert page.status_code == 200 and "Start the lesson" in page.text, headers
        assert "Set-Cookie" not in page.headers and page.headers["Cache-Control"] == "no-store"
    assert app.berth.store.count_active() == 0
    # the learner's own page load would start the lesson, but this Berth is still starting
    waiting = client.get("/lessons/docker-images", headers=NAVIGATE)
    assert waiting.status_code == 503 and "still starting" in waiting.text
    # the start button, pressed from another site's page
    refused = client.post("/lessons/docker-images/start", headers={"Origin": "https://elsewhere.example"})
    assert refused.status_code == 403 and app.berth.store.count_active() == 0


def test_the_data_folder_is_private(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "secret-from-before").write_text("x")
    (data / "secret-from-before").chmod(0o644)
    quiet_app(tmp_path)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "secret-from-before").stat().st_mode) == 0o600


# --- against a real Berth and engine

@pytest.mark.engine
def test_the_start_button_starts_the_lesson_and_a_page_load_from_elsewhere_does_not(server, engine):
    before = len(labelled(engine, server.instance_id, "machine"))
    preview = requests.get(server.url + "/lessons/docker-images", timeout=30)  # a link preview: no Sec-Fetch
    assert preview.status_code == 200 and "Start the lesson" in preview.text and "berth_" not in preview.headers.get(
        "Set-Cookie", "")
    time.sleep(1)
    assert len(labelled(engine, server.instance_id, "machine")) <= before
    browser = requests.Session()
    started = browser.post(server.url + "/lessons/docker-images/start", headers={"Origin": server.url},
                           allow_redirects=False, timeout=60)
    assert started.status_code == 303 and started.headers["Location"].endswith("/lessons/docker-images")
    session_id, token = browser.cookies["berth_docker_images"].split(":")
    page = browser.get(server.url + "/lessons/docker-images", timeout=30)
    assert page.status_code == 200 and f'data-session="{session_id}"' in page.text
    assert token not in page.text and page.headers["Cache-Control"] == "no-store"
    again = browser.post(server.url + "/lessons/docker-images/start", headers={"Origin": server.url},
                         allow_redirects=False, timeout=60)
    assert again.status_code == 303 and browser.cookies["berth_docker_images"].split(":")[0] == session_id
    assert requests.delete(f"{server.url}/api/sessions/{session_id}", headers={"Authorization": f"Bearer {token}"},
                           timeout=60).status_code == 204


@pytest.mark.engine
def test_one_address_cannot_fill_the_room(engine, tmp_path):
    berth = BerthServer(tmp_path / "limited", {"BERTH_SESSIONS_PER_CLIENT": "2"}).start()
    try:
        first, second = berth.create_session(wait=False), berth.create_session(wait=False)
        refused = requests.post(berth.url + "/api/sessions", json={"lesson": "docker-images"}, timeout=30)
        assert refused.status_code == 429 and refused.json()["error"] == "too_many_sessions"
        assert "BERTH_SESSIONS_PER_CLIENT" in refused.json()["message"]
        page = requests.get(berth.url + "/lessons/docker-images", headers=NAVIGATE, timeout=30)
        assert page.status_code == 429 and "2 sessions are already running from your address" in page.text
        assert berth.delete_session(first).status_code == 204
        third = berth.create_session(wait=False)
        for session in (second, third):
            berth.delete_session(session)
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)


@pytest.mark.engine
@pytest.mark.parametrize("setting, code, says", [
    ("min_free_disk", "low_disk", "low on disk"), ("min_free_memory", "low_memory", "low on memory")])
def test_a_host_low_on_disk_or_memory_refuses_new_sessions_clearly(tmp_path, engine, setting, code, says):
    """The watermark is set above what this host has (filling the host's disk for real would
    endanger it): the free space Berth measures on the engine's host is below it."""
    app = quiet_app(tmp_path, **{setting: "1000t"})
    with pytest.raises(SessionError) as refused:
        app.berth.sessions.create("docker-images")
    assert refused.value.status == 503 and refused.value.code == code and says in refused.value.message
    assert "BERTH_MIN_FREE_" in refused.value.message and app.berth.store.count_active() == 0
    assert app.berth.backend.free_disk() > 0 and app.berth.backend.memory()["available"] > 0
