"""Workshops from outside, as an instructor's tooling and learners' browsers use them: the
instructor token, creating a workshop, joining, seats and capacity, raised hands, the
dashboard's live namespace, broadcasts, watching a terminal, results and ending; every
error a JSON error with a fitting status."""

from __future__ import annotations

import csv
import io
import re
import threading
import time

import pytest
import requests
import socketio

from .conftest import BerthServer, remove_instance, wait_until
from .terminal_client import Refused, TerminalClient

pytestmark = pytest.mark.engine

TOKEN = "instructor-test-token-4b1d"
LESSON = "docker-images"
PROMPT = rb"\x1b\]7771;prompt\x07"  # the machine's bashrc marks each prompt


@pytest.fixture(scope="module")
def berth(engine, tmp_path_factory):
    """A Berth of its own: a known instructor token, room for three sessions at once."""
    server = BerthServer(tmp_path_factory.mktemp("workshops"), {
        "BERTH_INSTRUCTOR_TOKEN": TOKEN, "BERTH_MAX_SESSIONS": "3", "BERTH_STUCK_TRIES": "3",
    }).start()
    yield server
    server.stop()
    remove_instance(engine, server.instance_id)


def call(server: BerthServer, method: str, path: str, token: str | None = TOKEN, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, server.url + path, headers=headers, timeout=120, **kwargs)


def create(server: BerthServer, **fields) -> dict:
    response = call(server, "POST", "/api/workshops", json={"lesson": LESSON, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def join(server: BerthServer, code: str, name: str) -> dict:
    response = requests.post(f"{server.url}/api/workshops/{code}/join", json={"name": name}, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()


def error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code and response.json()["message"], response.text


def wait_ready(server: BerthServer, learner: dict, timeout: float = 90) -> None:
    def session() -> dict:
        return server.get(f"/api/sessions/{learner['id']}", learner["token"]).json()

    wait_until(lambda: all(m["status"] == "ready" for m in session()["machines"]), timeout, session, interval=0.3)


def listen(server: BerthServer, namespace: str, auth: dict, events: list[str]) -> tuple[socketio.Client, dict]:
    """A Socket.IO client that records what it is sent: {event: [payloads]}."""
    got: dict[str, list] = {name: [] for name in events}
    client = socketio.Client(reconnection=False)
    for name in events:
        client.on(name, (lambda n: lambda data=None: got[n].append(data))(name), namespace=namespace)
    client.connect(server.url, namespaces=[namespace], auth=auth, transports=["websocket"], wait_timeout=10)
    return client, got


def refused(server: BerthServer, namespace: str, auth: dict, headers: dict | None = None) -> str:
    """What the server said when it refused a connection (a refused handshake says nothing)."""
    client = socketio.Client(reconnection=False)
    said: list = []
    client.on("connect_error", lambda data=None: said.append(data), namespace=namespace)
    try:
        client.connect(server.url, namespaces=[namespace], auth=auth, transports=["websocket"],
                       headers=headers or {}, wait_timeout=10)
    except socketio.exceptions.ConnectionError as failure:
        return str(said[0]) if said else str(failure)
    finally:
        client.disconnect()
    raise AssertionError(f"{namespace} accepted {auth}")


def until(predicate, timeout: float = 10, what: str = "") -> None:
    wait_until(predicate, timeout, lambda: what, interval=0.1)


# --- the instructor token


def test_every_instructor_endpoint_wants_the_instructor_token(berth):
    workshop = create(berth)
    solo = berth.create_session(wait=False)  # a learner's token
    learner = join(berth, workshop["code"], "Token Tester")
    try:
        endpoints = [
            ("POST", "/api/workshops", {"lesson": LESSON}),
            ("GET", "/api/workshops", None),
            ("GET", f"/api/workshops/{workshop['id']}", None),
            ("GET", f"/api/workshops/{workshop['id']}/results.csv", None),
            ("POST", f"/api/workshops/{workshop['id']}/broadcast", {"message": "hi"}),
            ("DELETE", f"/api/workshops/{workshop['id']}/learners/{learner['id']}/help", None),
            ("GET", "/api/capacity", None),
            ("DELETE", f"/api/workshops/{workshop['id']}", None),
        ]
        for method, path, body in endpoints:
            error(call(berth, method, path, None, json=body), 401, "token_required")
            for token in (solo["token"], learner["token"], TOKEN + "x", "a"):
                error(call(berth, method, path, token, json=body), 403, "wrong_token")
            error(call(berth, method, path, None, json=body, headers={"Authorization": "Basic abc"}), 401,
                  "token_required")
            # the right token, from a page of another site: refused however it is sent
            error(call(berth, method, path, json=body, headers={"Origin": "https://evil.example"}), 403,
                  "foreign_origin")
            error(call(berth, method, path, None, json=body, headers={"Origin": "https://evil.example"},
                       cookies={"berth-instructor": TOKEN}), 403, "foreign_origin")
        # the instructor page with a learner's token, and the namespace
        assert requests.get(berth.url + f"/instructor?token={learner['token']}", timeout=10).status_code == 403
        assert requests.get(berth.url + "/instructor", cookies={"berth-instructor": learner["token"]},
                            timeout=10).status_code == 401
        page = requests.get(berth.url + f"/instructor/workshops/{workshop['id']}", allow_redirects=False,
                            cookies={"berth-instructor": learner["token"]}, timeout=10)
        assert page.status_code == 302 and TOKEN not in page.text
        assert "That is not the instructor token" in refused(berth, "/instructor",
                                                             {"workshop": workshop["id"], "token": learner["token"]})
        assert "instructor token" in refused(berth, "/instructor", {"workshop": workshop["id"]})
        assert refused(berth, "/instructor", {"workshop": workshop["id"], "token": TOKEN},
                       headers={"Origin": "https://evil.example"})
        # ... and the instructor token never shows on a learner's page or in their API
        lesson_page = requests.get(berth.url + "/lessons/docker-images", timeout=60,
                                   cookies={"berth_docker_images": f"{learner['id']}:{learner['token']}"})
        assert lesson_page.status_code == 200 and learner["id"] in lesson_page.text
        assert learner["token"] not in lesson_page.text  # the HttpOnly cookie is the page's credential
        assert TOKEN not in lesson_page.text
        assert TOKEN not in berth.get(f"/api/sessions/{learner['id']}", learner["token"]).text
    finally:
        berth.delete_session(solo)
        call(berth, "DELETE", f"/api/workshops/{workshop['id']}")


def test_the_instructor_link_sets_the_cookie(berth):
    browser = requests.Session()
    link = browser.get(f"{berth.url}/instructor?token={TOKEN}", allow_redirects=False, timeout=10)
    assert link.status_code == 302 and link.headers["Location"].endswith("/instructor")  # token out of the URL
    cookie = link.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    home = browser.get(f"{berth.url}/instructor", timeout=10)
    assert home.status_code == 200 and "New workshop" in home.text and "sessions" in home.text
    assert browser.get(f"{berth.url}/api/capacity", timeout=10).status_code == 200  # the cookie works for the API


def test_a_token_berth_made_is_kept_and_printed(engine, tmp_path):
    server = BerthServer(tmp_path / "made", {"BERTH_INSTRUCTOR_TOKEN": ""}).start()
    try:
        token = (tmp_path / "made" / "instructor-token").read_text().strip()
        assert len(token) >= 24 and (tmp_path / "made" / "instructor-token").stat().st_mode & 0o077 == 0
        assert f"/instructor?token={token}" in server.log_path.read_text()
        assert call(server, "GET", "/api/workshops", token).status_code == 200
        server.stop()
        server.start()  # the same token after a restart
        assert call(server, "GET", "/api/workshops", token).status_code == 200
    finally:
        server.stop()
        remove_instance(engine, server.instance_id)


# --- creating and joining


@pytest.mark.parametrize("body, content_type", [
    ("{not json", "application/json"),
    ("[1]", "application/json"),
    ("{}", "application/json"),
    ('{"lesson": 7}', "application/json"),
    ('{"lesson": "docker-images", "seats": 0}', "application/json"),
    ('{"lesson": "docker-images", "seats": 100000}', "application/json"),
    ('{"lesson": "docker-images", "seats": "many"}', "application/json"),
    ('{"lesson": "docker-images", "seats": true}', "application/json"),
    ('{"lesson": "docker-images", "expires_in": 5}', "application/json"),
    ('{"lesson": "docker-images", "expires_in": "forever"}', "application/json"),
    ('{"lesson": "docker-images", "title": 12}', "application/json"),
    ('{"lesson": "docker-images", "title": "' + "x" * 200 + '"}', "application/json"),
    ("lesson=docker-images", "application/x-www-form-urlencoded"),
])
def test_bad_workshops_are_400(berth, body, content_type):
    response = call(berth, "POST", "/api/workshops", data=body, headers={"Content-Type": content_type})
    error(response, 400, "bad_request")


def test_unknown_things_are_404(berth):
    error(call(berth, "POST", "/api/workshops", json={"lesson": "no-such-lesson"}), 404, "unknown_lesson")
    for method, path in (("GET", "/api/workshops/000000000000"), ("GET", "/api/workshops/nope/results.csv"),
                         ("POST", "/api/workshops/nope/broadcast"), ("DELETE", "/api/workshops/nope")):
        error(call(berth, method, path, json={"message": "hi"}), 404, "unknown_workshop")
    error(requests.post(berth.url + "/api/workshops/ZZZZZZ/join", json={"name": "A"}, timeout=10), 404,
          "unknown_workshop")
    page = requests.get(berth.url + "/join/ZZZZZZ", timeout=10)
    assert page.status_code == 404 and "no workshop with that code" in page.text


def test_join_seats_names_and_the_dashboard(berth):
    workshop = create(berth, title="Tuesday group", seats=2, expires_in="90m")
    assert set(workshop) >= {"id", "code", "join_url", "lesson", "title", "expires_at"}
    assert workshop["title"] == "Tuesday group" and workshop["lesson"] == LESSON
    assert workshop["join_url"].endswith(f"/join/{workshop['code']}") and len(workshop["code"]) == 6
    assert not set(workshop["code"]) & set("0O1IL5S2Z8B")  # nothing to mistake when read aloud
    try:
        ada = join(berth, workshop["code"], "  Ada   Lovelace ")
        assert set(ada) >= {"id", "token", "lesson", "machines", "expires_at", "workshop"}
        assert ada["workshop"]["id"] == workshop["id"] and ada["lesson"] == LESSON
        assert ada["expires_at"] == workshop["expires_at"]  # a learner's session lasts as long as the workshop
        # the code as people type it: lower case, with a dash
        typed = workshop["code"][:3].lower() + "-" + workshop["code"][3:].lower()
        for name, status, code in ((None, 400, "bad_request"), ("", 400, "bad_request"), ("   ", 400, "bad_request"),
                                   (7, 400, "bad_request"), ("x" * 41, 400, "bad_request"),
                                   ("ada lovelace", 409, "name_taken")):
            error(requests.post(f"{berth.url}/api/workshops/{typed}/join", json={"name": name}, timeout=10),
                  status, code)
        error(requests.post(f"{berth.url}/api/workshops/{typed}/join", data="nope", timeout=10), 400, "bad_request")
        grace = join(berth, typed, "Grace\x00\x07\u200b Hopper")
        full = requests.post(f"{berth.url}/api/workshops/{workshop['code']}/join", json={"name": "Linus"}, timeout=10)
        error(full, 409, "workshop_full")
        assert "full" in full.json()["message"] and "2 seats" in full.json()["message"]
        assert "full" in requests.get(f"{berth.url}/join/{workshop['code']}", timeout=10).text

        got = call(berth, "GET", f"/api/workshops/{workshop['id']}").json()
        assert set(got) >= {"id", "code", "lesson", "title", "expires_at", "learners"}
        assert [learner["name"] for learner in got["learners"]] == ["Ada Lovelace", "Grace Hopper"]
        entry = got["learners"][0]
        assert set(entry) >= {"session", "name", "joined_at", "last_active", "machines", "tasks", "help", "stuck"}
        assert entry["session"] == ada["id"] and entry["help"] is None and entry["stuck"] is False
        assert [t["id"] for t in entry["tasks"]] == ["run", "customize", "commit", "save", "load"]
        assert all(set(t) >= {"id", "title", "status", "completed_at", "feedback"} for t in entry["tasks"])
        assert [m["name"] for m in entry["machines"]] == ["workstation", "colleague"]
        assert [t["done"] for t in got["tasks"]] == [0, 0, 0, 0, 0]
        assert "token" not in got["learners"][0]
        # the learner's token works as for any session; one leaving frees a seat
        assert berth.get(f"/api/sessions/{ada['id']}", ada["token"]).status_code == 200
        assert berth.delete_session(grace).status_code == 204
        linus = join(berth, workshop["code"], "Linus")
        assert berth.get(f"/api/sessions/{linus['id']}", linus["token"]).status_code == 200
        listed = call(berth, "GET", "/api/workshops").json()["workshops"]
        assert workshop["id"] in [w["id"] for w in listed]
    finally:
        assert call(berth, "DELETE", f"/api/workshops/{workshop['id']}").status_code == 204


def test_learners_count_against_the_servers_capacity(berth):
    workshop = create(berth, seats=10)
    solo = berth.create_session(wait=False)
    try:
        join(berth, workshop["code"], "One")
        join(berth, workshop["code"], "Two")
        capacity = call(berth, "GET", "/api/capacity").json()
        assert capacity["sessions"] == 3 and capacity["max_sessions"] == 3
        assert capacity["machines"] == 6 and capacity["memory"]["total"] > 0
        assert capacity["memory"]["available"] > 0 and capacity["memory"]["per_machine_limit"] > 0
        refused_join = requests.post(f"{berth.url}/api/workshops/{workshop['code']}/join", json={"name": "Three"},
                                     timeout=10)
        error(refused_join, 503, "capacity")
        assert "BERTH_MAX_SESSIONS" in refused_join.json()["message"]
    finally:
        berth.delete_session(solo)
        assert call(berth, "DELETE", f"/api/workshops/{workshop['id']}").status_code == 204


# --- the room: hands, the live dashboard, broadcasts, watching


def test_hands_broadcasts_and_the_live_dashboard(berth):
    workshop = create(berth, seats=5)
    solo = berth.create_session(wait=False)
    ada = join(berth, workshop["code"], "Ada")
    clients = []
    try:
        dashboard, seen = listen(berth, "/instructor", {"workshop": workshop["id"], "token": TOKEN},
                                 ["workshop", "learner"])
        clients.append(dashboard)
        until(lambda: seen["workshop"], what="the workshop on connect")
        assert [entry["name"] for entry in seen["workshop"][0]["learners"]] == ["Ada"]
        page, notices = listen(berth, "/session", {"session": ada["id"], "token": ada["token"]}, ["notice", "help"])
        clients.append(page)

        # a raised hand: the learner's token only, a message optional, the dashboard told at once
        help_path = f"/api/sessions/{ada['id']}/help"
        error(call(berth, "POST", help_path, None, json={}), 401, "token_required")
        error(call(berth, "POST", help_path, solo["token"], json={}), 403, "wrong_token")
        error(call(berth, "POST", help_path, TOKEN, json={}), 403, "wrong_token")
        error(call(berth, "POST", help_path, ada["token"], json={"message": 5}), 400, "bad_request")
        error(call(berth, "POST", help_path, ada["token"], json={"message": "x" * 501}), 400, "bad_request")
        error(call(berth, "POST", help_path, ada["token"], data="[", headers={"Content-Type": "application/json"}),
              400, "bad_request")
        error(call(berth, "POST", f"/api/sessions/{solo['id']}/help", solo["token"], json={}), 409, "not_in_workshop")
        raised = call(berth, "POST", help_path, ada["token"], json={"message": "port 3000 says nothing"})
        assert raised.status_code == 201 and raised.json()["help"]["message"] == "port 3000 says nothing"
        until(lambda: any(e["help"] for e in seen["learner"]), what="the raised hand on the dashboard")
        hand = [e for e in seen["learner"] if e["help"]][-1]["help"]
        assert hand["message"] == "port 3000 says nothing" and hand["at"]
        assert call(berth, "POST", help_path, ada["token"]).status_code == 201  # no body: a hand without words
        # the instructor lowers it; the learner's page hears
        error(call(berth, "DELETE", f"/api/workshops/{workshop['id']}/learners/{solo['id']}/help"), 404,
              "unknown_learner")
        assert call(berth, "DELETE", f"/api/workshops/{workshop['id']}/learners/{ada['id']}/help").status_code == 204
        until(lambda: seen["learner"][-1]["help"] is None, what="the cleared hand")
        until(lambda: notices["help"] and notices["help"][-1] == {"help": None}, what="the page told")
        assert call(berth, "GET", f"/api/workshops/{workshop['id']}").json()["learners"][0]["help"] is None

        # a broadcast reaches every learner's page, not others
        solo_page, solo_notices = listen(berth, "/session", {"session": solo["id"], "token": solo["token"]},
                                         ["notice"])
        clients.append(solo_page)
        for body in ({}, {"message": ""}, {"message": "  "}, {"message": ["x"]}, {"message": "x" * 501}):
            error(call(berth, "POST", f"/api/workshops/{workshop['id']}/broadcast", json=body), 400, "bad_request")
        sent = call(berth, "POST", f"/api/workshops/{workshop['id']}/broadcast", json={"message": "Break: 10 minutes"})
        assert sent.status_code == 200 and sent.json() == {"reached": 1}
        until(lambda: notices["notice"], what="the notice on the learner's page")
        assert notices["notice"][0]["message"] == "Break: 10 minutes"
        time.sleep(0.5)
        assert solo_notices["notice"] == []
        assert call(berth, "GET", f"/api/workshops/{workshop['id']}").json()["notice"]["message"] == "Break: 10 minutes"
    finally:
        for client in clients:
            client.disconnect()
        berth.delete_session(solo)
        call(berth, "DELETE", f"/api/workshops/{workshop['id']}")


def test_stuck_is_the_same_failure_again_and_again_and_says_why(berth):
    workshop = create(berth)
    ada = join(berth, workshop["code"], "Ada")
    try:
        wait_ready(berth, ada)
        shell = TerminalClient(berth.url, {"session": ada["id"], "token": ada["token"], "machine": "workstation"}).start()
        try:
            shell.wait_for(PROMPT, timeout=30)
            # a container without VAR2 and the wrong port: the same unmet checks through three commands
            shell.send("docker run -dit --name ubuntu001 -e VAR1=ubuntu -p 3000:80 debian:bookworm bash\r")
            shell.wait_for(rb"\n[0-9a-f]{64}", timeout=60)

            def entry() -> dict:
                return call(berth, "GET", f"/api/workshops/{workshop['id']}").json()["learners"][0]

            until(lambda: any("VAR2" in f["message"] for f in entry()["tasks"][0]["feedback"]), timeout=20,
                  what="the run task's feedback")
            assert entry()["stuck"] is False
            for _ in range(3):
                mark = len(shell.data)
                shell.send("docker ps\r")
                shell.wait_for(PROMPT, after=mark, timeout=20)
            until(lambda: entry()["stuck"], timeout=10, what="stuck after three commands")
            # three or four: the docker run's own prompt may come after its check
            assert re.fullmatch(r"“VAR2 is not set in ubuntu001.*” through [34] commands in a row",
                                entry()["stuck_reason"]), entry()["stuck_reason"]
            # progress (a different failure) is not stuck
            shell.send("docker rm -f ubuntu001 && docker run -dit --name ubuntu001 -e VAR1=ubuntu -e VAR2=webserver "
                       "-p 3000:3000 debian:bookworm bash\r")
            until(lambda: entry()["tasks"][0]["status"] == "done", timeout=30, what="the run task done")
            assert entry()["stuck"] is False
        finally:
            shell.close()
    finally:
        call(berth, "DELETE", f"/api/workshops/{workshop['id']}")


def test_watching_a_terminal_is_read_only_and_for_the_instructor_only(berth):
    workshop = create(berth)
    ada = join(berth, workshop["code"], "Ada")
    solo = berth.create_session(wait=True)
    try:
        wait_ready(berth, ada)
        learner = TerminalClient(berth.url, {"session": ada["id"], "token": ada["token"],
                                             "machine": "workstation"}).start()
        try:
            learner.wait_for(PROMPT, timeout=30)
            learner.send("echo before-$((6*7))\r")
            learner.wait_for(rb"before-42")
            watch = {"session": ada["id"], "token": TOKEN, "machine": "workstation", "mode": "watch"}
            watcher = TerminalClient(berth.url, watch).start()
            try:
                assert watcher.attached["watch"] is True and watcher.attached["cols"] > 0
                watcher.wait_for(rb"before-42")  # the scrollback
                learner.send("echo live-$((7*7))\r")
                watcher.wait_for(rb"live-49")  # live
                watcher.send("echo typed-by-watcher-$((3*3))\r")
                watcher.resize(20, 5)
                learner.send("echo after-$((8*8))\r")
                learner.wait_for(rb"after-64")
                watcher.wait_for(rb"after-64")
                time.sleep(0.5)
                assert "typed-by-watcher-9" not in learner.text() and "typed-by-watcher" not in learner.text()
            finally:
                watcher.close()
            # refused: a learner's token, the instructor token without watch mode, a solo session,
            # another mode, a foreign page
            for auth, status in (({**watch, "token": ada["token"]}, 403),
                                 ({**watch, "mode": None}, 403),
                                 ({**watch, "token": ""}, 401),
                                 ({**watch, "session": solo["id"]}, 403),
                                 ({**watch, "session": "000000000000"}, 404),
                                 ({**watch, "mode": "write"}, 400)):
                auth = {k: v for k, v in auth.items() if v is not None}
                with pytest.raises(Refused) as refusal:
                    TerminalClient(berth.url, auth)
                assert refusal.value.args[0]["data"]["status"] == status, (auth, refusal.value.args)
            with pytest.raises(Refused):
                TerminalClient(berth.url, watch, origin="https://evil.example")
        finally:
            learner.close()
    finally:
        berth.delete_session(solo)
        call(berth, "DELETE", f"/api/workshops/{workshop['id']}")


# --- results and the end


def test_results_and_ending_keep_what_was_done(berth, engine):
    workshop = create(berth, title="Friday")
    ada = join(berth, workshop["code"], "=HYPERLINK(\"x\")")
    bob = join(berth, workshop["code"], "Bob")
    wait_ready(berth, ada)
    from .conftest import in_machine

    code, output = in_machine(engine, ada, "workstation",
                              "docker run -dit --name ubuntu001 -e VAR1=ubuntu -e VAR2=webserver -p 3000:3000 "
                              "debian:bookworm")
    assert code == 0, output
    checked = call(berth, "POST", f"/api/sessions/{ada['id']}/check", ada["token"]).json()
    assert checked["tasks"][0]["status"] == "done"

    response = call(berth, "GET", f"/api/workshops/{workshop['id']}/results.csv")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv")
    assert f"workshop-{workshop['code']}-results.csv" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 10  # two learners by five tasks
    assert set(rows[0]) >= {"learner", "task", "done", "when", "last_feedback"}
    first = rows[0]
    assert first["learner"] == "'=HYPERLINK(\"x\")"  # stays text in a spreadsheet
    assert (first["task"], first["done"]) == ("run", "yes") and first["when"]
    assert [(r["learner"], r["task"], r["done"]) for r in rows[5:7]] == [("Bob", "run", "no"), ("Bob", "customize", "no")]

    ended = {}

    def end():
        ended["response"] = call(berth, "DELETE", f"/api/workshops/{workshop['id']}")

    ending = threading.Thread(target=end)
    ending.start()
    ending.join(120)
    assert ended["response"].status_code == 204
    for learner in (ada, bob):
        error(berth.get(f"/api/sessions/{learner['id']}", learner["token"]), 404, "unknown_session")
    after = call(berth, "GET", f"/api/workshops/{workshop['id']}").json()
    assert after["ended_at"] and [e["active"] for e in after["learners"]] == [False, False]
    assert after["learners"][0]["tasks"][0]["status"] == "done"  # the results are kept
    assert call(berth, "GET", f"/api/workshops/{workshop['id']}/results.csv").text == response.text
    error(requests.post(f"{berth.url}/api/workshops/{workshop['code']}/join", json={"name": "Late"}, timeout=10),
          409, "workshop_ended")
    assert "has ended" in requests.get(f"{berth.url}/join/{workshop['code']}", timeout=10).text
    error(call(berth, "POST", f"/api/workshops/{workshop['id']}/broadcast", json={"message": "hi"}), 409,
          "workshop_ended")
    assert call(berth, "DELETE", f"/api/workshops/{workshop['id']}").status_code == 204  # ending twice: no harm


def test_guessing_join_codes_is_slowed_down(berth):
    """Last in this module: it leaves 127.0.0.1 out of wrong guesses for a minute."""
    workshop = create(berth)
    try:
        statuses = [requests.post(f"{berth.url}/api/workshops/AAAAA{i % 10}/join", json={"name": "G"},
                                  timeout=10).status_code for i in range(31)]
        # 30 wrong codes a minute from one address: test_unknown_things_are_404 tried 2 (by
        # the API and the join page), and they count too when they were less than a minute ago
        refused = statuses.index(429) if 429 in statuses else len(statuses)
        assert 28 <= refused <= 30, statuses
        assert statuses[:refused] == [404] * refused and statuses[refused:] == [429] * (31 - refused)
        error(requests.post(f"{berth.url}/api/workshops/AAAAAA/join", json={"name": "G"}, timeout=10), 429,
              "too_many_tries")
        # even the right code, from there, until the minute is over
        error(requests.post(f"{berth.url}/api/workshops/{workshop['code']}/join", json={"name": "G"}, timeout=10),
              429, "too_many_tries")
    finally:
        call(berth, "DELETE", f"/api/workshops/{workshop['id']}")
