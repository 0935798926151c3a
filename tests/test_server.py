"""Berth as an operator runs it: on gunicorn, behind a reverse proxy (a real nginx), and
stopped: SIGTERM removes what it made unless told to keep it, a SIGKILL leaves it for
`./run clean`, and a slow client neither blocks others nor stays for ever."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from berth.certs import CertificateAuthority
from berth.config import PROJECT_DIR, Config
from berth.machines import DockerMachines

from .conftest import (
    KEEP,
    BerthServer,
    free_port,
    in_machine,
    labelled,
    machine_container,
    remove_instance,
    wait_until,
)
from .terminal_client import TerminalClient

pytestmark = pytest.mark.engine

TOKEN = "instructor-token-for-the-server-tests"
NO_MIRROR = {"BERTH_MIRROR_IMAGE": ""}  # these tests pull nothing: they start quicker without one
FORWARDED = {"X-Forwarded-For": "10.213.0.9", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "berth.example.org"}


def shell(berth: BerthServer, session: dict) -> TerminalClient:
    """A terminal on the session's workstation that has answered a command."""
    term = TerminalClient(berth.url, {"session": session["id"], "token": session["token"],
                                      "machine": "workstation"}).start()
    term.send("echo ready-$((6*7))\r")
    wait_until(lambda: b"ready-42" in bytes(term.data), 30, lambda: bytes(term.data)[-300:])
    return term


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has ended; it only waits for its parent to read its status
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


# --- stopping

def test_sigterm_ends_sessions_and_removes_everything(engine, tmp_path):
    berth = BerthServer(tmp_path / "stop").start()
    try:
        session = berth.create_session()
        term = shell(berth, session)
        assert labelled(engine, berth.instance_id, "machine") and labelled(engine, berth.instance_id, "mirror")
        worker = berth.serving_pid
        started = time.monotonic()
        berth.process.send_signal(signal.SIGTERM)
        code = berth.process.wait(30)
        took = time.monotonic() - started
        print(f"stopped in {took:.1f} s")
        assert code == 0 and took < 15, (code, took, berth.log_tail())
        assert not alive(worker)
        assert labelled(engine, berth.instance_id) == [], berth.log_tail()
        wait_until(lambda: term.closed or term.ended, 10, lambda: "the terminal was left open")
        assert "session(s) ended; removed" in berth.log_tail()
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)


def test_keep_on_stop_leaves_the_machines_and_a_restart_adopts_them(engine, tmp_path):
    berth = BerthServer(tmp_path / "keep", {**KEEP, **NO_MIRROR}).start()
    try:
        session = berth.create_session()
        before = machine_container(engine, session, "workstation").id
        berth.stop()
        assert machine_container(engine, session, "workstation").status == "running"
        berth.start()
        response = wait_until(
            lambda: (r := berth.get(f"/api/sessions/{session['id']}", session["token"])).ok
            and all(m["status"] == "ready" for m in r.json()["machines"]) and r, 60)
        assert [m["status"] for m in response.json()["machines"]] == ["ready", "ready"]
        assert machine_container(engine, session, "workstation").id == before
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)


def test_clean_removes_what_a_killed_berth_left_and_keeps_a_running_ones(engine, tmp_path):
    running = BerthServer(tmp_path / "running", NO_MIRROR).start()
    killed = BerthServer(tmp_path / "killed").start()
    try:
        session = killed.create_session()
        worker = killed.serving_pid
        killed.process.kill()  # SIGKILL: the master cleans nothing up
        killed.process.wait(10)
        wait_until(lambda: not alive(worker), 5, lambda: f"worker {worker} outlived its killed master")
        left = labelled(engine, killed.instance_id)
        assert any(session["id"] in name for name in left) and f"berth-mirror-{killed.instance_id}" in left
        running.create_session(wait=False)  # its machines are kept, even while they start

        # named: the other worker's tests may have a Berth stopped for a moment, whose kept
        # things a clean of every instance would remove
        result = subprocess.run([sys.executable, "-m", "berth.clean", killed.instance_id, running.instance_id],
                                cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
        print(result.stdout)
        assert result.returncode == 0, result.stderr
        assert f"berth clean: {killed.instance_id}: removed" in result.stdout
        assert f"berth clean: {running.instance_id}: kept, its Berth is running" in result.stdout
        assert labelled(engine, killed.instance_id) == []
        assert labelled(engine, running.instance_id, "machine")

        again = subprocess.run([sys.executable, "-m", "berth.clean", killed.instance_id], cwd=PROJECT_DIR,
                               capture_output=True, text=True, timeout=60)
        assert f"{killed.instance_id}: nothing on the engine" in again.stdout
    finally:
        killed.stop()
        running.stop()
        remove_instance(engine, killed.instance_id)
        remove_instance(engine, running.instance_id)


SEED_LESSON = """\
title: Seed
machines: [{name: workstation}]
images: ["%s"]
tasks:
  - id: anything
    title: Anything
    checks: [{kind: image, machine: workstation, name: "%s"}]
"""


def test_berths_serving_the_same_images_share_one_mirror_seed_filled_once(engine, tmp_path):
    """The mirror's content is filled by the first Berth that serves a set of images and
    mounted read-only by the next ones, whose machines pull from it; `./run clean` keeps it
    while a Berth uses it and removes it after. An image of this test's own makes the set
    (and so the seed) this test's alone. `./run clean`'s part for shared things is called
    alone: the whole of it would also remove the things of another test's Berth that is
    stopped for a moment with BERTH_KEEP_ON_STOP (a restart test on the other worker)."""
    image = f"berthlab/seed-test-{os.urandom(3).hex()}:1"
    engine.images.get(os.environ.get("BERTH_BASE_IMAGE", "debian:bookworm")).tag(image)
    lessons = tmp_path / "lessons"
    (lessons / "seed").mkdir(parents=True)
    (lessons / "seed" / "lesson.yaml").write_text(SEED_LESSON % (image, image))
    settings = {"BERTH_LESSONS_DIR": str(lessons)}
    first, second = BerthServer(tmp_path / "first", settings), BerthServer(tmp_path / "second", settings)
    try:
        first.start()
        second.start()
        assert f"mirror: {image} is served as" in first.log_tail(100)
        assert "is served as" not in second.log_tail(100)  # nothing pushed: the seed was filled
        seeds = {mount["Name"] for berth in (first, second)
                 for mount in engine.containers.get(f"berth-mirror-{berth.instance_id}").attrs["Mounts"]}
        assert len(seeds) == 1 and next(iter(seeds)).startswith("berth-mirror-seed-"), seeds
        seed = seeds.pop()
        session = second.create_session("seed")
        code, out = in_machine(engine, session, "workstation", f"docker pull {image}")
        assert code == 0 and "Downloaded newer image" in out, out  # from the seed, through the mirror

        cleaner = DockerMachines(Config.from_env(), "", CertificateAuthority(tmp_path / "clean"))
        first.stop()
        kept = cleaner.remove_unused_shared()
        assert seed not in kept and engine.volumes.get(seed), kept  # the second Berth's mirror still mounts it
        second.stop()
        removed = cleaner.remove_unused_shared()
        assert seed in removed, removed
        assert seed not in [v.name for v in engine.volumes.list()]
    finally:
        for berth in (first, second):
            berth.stop()
            berth.remove_leftovers()
        engine.images.remove(image)


def test_a_second_berth_on_the_same_data_folder_is_refused_in_one_line(engine, tmp_path):
    first = BerthServer(tmp_path / "one", NO_MIRROR).start(wait=False)
    try:
        wait_until(lambda: (tmp_path / "one" / "berth.lock").exists() and (tmp_path / "one" / "berth.lock").read_text(),
                   30, first.log_tail)
        second = subprocess.run([sys.executable, "app.py"], cwd=PROJECT_DIR, capture_output=True, text=True,
                                timeout=30, env={**first.env, "BERTH_PORT": str(free_port())})
        assert second.returncode != 0
        assert second.stderr.strip().splitlines() == [
            f"berth: another Berth is running on the data folder {tmp_path / 'one'} "
            f"(it holds {tmp_path / 'one' / 'berth.lock'}); stop it or set BERTH_DATA_DIR"]
    finally:
        first.stop()
        first.remove_leftovers()


def test_a_bad_setting_is_one_clear_line():
    result = subprocess.run([sys.executable, "app.py"], cwd=PROJECT_DIR, capture_output=True, text=True,
                            timeout=30, env={**os.environ, "BERTH_THREADS": "2"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["berth: BERTH_THREADS='2': Input should be greater than or equal to 4"]


# --- slow clients

@pytest.fixture(scope="module")
def plain(engine, tmp_path_factory):
    """A Berth that trusts no proxy, with a short deadline for request heads."""
    server = BerthServer(tmp_path_factory.mktemp("plain"), {
        **NO_MIRROR, "BERTH_INSTRUCTOR_TOKEN": TOKEN, "BERTH_CLIENT_TIMEOUT": "3s"}).start()
    yield server
    server.stop()
    remove_instance(engine, server.instance_id)


def test_a_slow_client_neither_blocks_others_nor_stays(plain):
    host, port = "127.0.0.1", plain.port
    slow = [socket.create_connection((host, port)) for _ in range(3)]
    for connection in slow:  # half a request each, then nothing
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow")
    started = time.monotonic()
    for _ in range(10):
        assert requests.get(plain.url + "/api/lessons", timeout=2).status_code == 200
    assert time.monotonic() - started < 2, "others waited for the slow clients"
    for connection in slow:
        connection.settimeout(10)
        assert connection.recv(1024) == b"", "a slow client was answered instead of dropped"
        connection.close()
    waited = time.monotonic() - started
    print(f"slow clients dropped after {waited:.1f} s")
    assert 2.5 < waited < 8


# --- behind a proxy

@pytest.fixture(scope="module")
def proxied(engine, tmp_path_factory):
    """A Berth behind one proxy (BERTH_BEHIND_PROXY=1), learners opening https://berth.example.org."""
    server = BerthServer(tmp_path_factory.mktemp("proxied"), {
        **NO_MIRROR, "BERTH_INSTRUCTOR_TOKEN": TOKEN, "BERTH_BEHIND_PROXY": "1",
        "BERTH_PUBLIC_URL": "https://berth.example.org"}).start()
    yield server
    server.stop()
    remove_instance(engine, server.instance_id)


def join_url(berth: BerthServer, url: str | None = None, headers: dict | None = None) -> str:
    response = requests.post((url or berth.url) + "/api/workshops", json={"lesson": "docker-images"},
                             headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["join_url"]


def test_without_the_setting_forwarded_headers_count_for_nothing(plain):
    # X-Forwarded-For from a machine's address: not believed, so not refused
    assert requests.get(plain.url + "/api/lessons", headers=FORWARDED, timeout=10).status_code == 200
    assert join_url(plain, headers=FORWARDED).startswith(f"{plain.url}/join/")
    # nor does a forged host make a foreign page Berth's own origin
    refused = requests.post(plain.url + "/api/workshops", json={"lesson": "docker-images"}, timeout=10,
                            headers={"Authorization": f"Bearer {TOKEN}", "Origin": "https://berth.example.org",
                                     **FORWARDED})
    assert refused.status_code == 403 and refused.json()["error"] == "foreign_origin"


def test_behind_a_proxy_the_forwarded_headers_are_believed(proxied):
    assert join_url(proxied, headers={**FORWARDED, "X-Forwarded-For": "192.0.2.7"}).startswith(
        "https://berth.example.org/join/")
    refused = requests.get(proxied.url + "/api/lessons", headers=FORWARDED, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"] == "from_machine"
    # the proxy adds its hop: only the last address counts, so a client cannot pose as another
    posing = requests.get(proxied.url + "/api/lessons", timeout=10,
                          headers={"X-Forwarded-For": "10.213.0.9, 192.0.2.7"})
    assert posing.status_code == 200


NGINX_CONF = """
daemon off;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{site}
}}
"""


@pytest.fixture
def nginx(proxied, tmp_path):
    """nginx on a loopback port with docs/deploy.md's site configuration, in front of `proxied`."""
    if not Path("/usr/sbin/nginx").exists():
        pytest.fail("nginx is missing: ./run test installs Debian's nginx-light", pytrace=False)
    deploy = (PROJECT_DIR / "docs" / "deploy.md").read_text()
    site = deploy.split("```nginx\n", 1)[1].split("```", 1)[0]
    port = free_port()
    # the documented site, on plain HTTP on a loopback port (TLS is the proxy's own business)
    site = (site.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};")
                .replace("127.0.0.1:5000", f"127.0.0.1:{proxied.port}"))
    site = "\n".join(line for line in site.splitlines() if not line.strip().startswith("ssl_"))
    (tmp_path / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp_path, site=site))
    process = subprocess.Popen(["/usr/sbin/nginx", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), 10, lambda: (tmp_path / "error.log").read_text())
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=2).status_code in (200, 503)
    except requests.ConnectionError:
        return False


def test_through_nginx_a_lesson_page_and_a_terminal(proxied, nginx):
    page = requests.get(nginx + "/lessons/docker-images", timeout=30)  # no Sec-Fetch-*: its start page
    assert page.status_code == 200 and "Start the lesson" in page.text
    assert join_url(proxied, url=nginx).startswith(nginx + "/join/")  # the proxy's Host and scheme
    session = requests.post(nginx + "/api/sessions", json={"lesson": "docker-images", "wait": True},
                            timeout=120).json()
    try:
        term = TerminalClient(nginx, {"session": session["id"], "token": session["token"],
                                      "machine": "workstation"}).start()
        term.send("echo through-$((6*7))\r")
        wait_until(lambda: b"through-42" in bytes(term.data), 30, lambda: bytes(term.data)[-300:])
        time.sleep(1)  # keystrokes keep coming through: the WebSocket stays up
        term.send("echo still-$((6*7))\r")
        wait_until(lambda: b"still-42" in bytes(term.data), 30, lambda: bytes(term.data)[-300:])
        assert not term.closed
        term.close()
    finally:
        requests.delete(f"{nginx}/api/sessions/{session['id']}",
                        headers={"Authorization": f"Bearer {session['token']}"}, timeout=120)
