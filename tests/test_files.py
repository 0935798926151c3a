"""Files between the learner's computer and real machines: a 400 MB upload and download
byte for byte with the server's memory flat, sending a saved image to the colleague who
loads it, and the errors a learner can run into."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
import requests

from .machine_web import put_file, sh

pytestmark = pytest.mark.engine

BIG = 400 * 1024 * 1024


@pytest.fixture(scope="module")
def session(server):
    session = server.create_session("docker-images")
    yield session
    server.delete_session(session)


def files_url(server, session, machine="workstation", suffix=""):
    return f"{server.url}/api/sessions/{session['id']}/machines/{machine}/files{suffix}"


def auth(session):
    return {"Authorization": f"Bearer {session['token']}"}


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


class RssSampler(threading.Thread):
    """The highest RSS of a process, sampled every 50 ms while a transfer runs."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.samples = pid, 0, 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, memory_kib(self.pid)["VmRSS"])
            self.samples += 1

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join()


def test_400_mb_round_trip_byte_for_byte_in_flat_memory(server, engine, session, tmp_path):
    source = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(source, "wb") as out:
        for _ in range(BIG // (4 * 1024 * 1024)):
            block = os.urandom(4 * 1024 * 1024)
            digest.update(block)
            out.write(block)
    expected = digest.hexdigest()
    pid = server.serving_pid
    before = memory_kib(pid)

    with RssSampler(pid) as upload_rss, open(source, "rb") as body:
        started = time.monotonic()
        response = requests.put(files_url(server, session), params={"path": "big.bin"}, data=body,
                                headers=auth(session), timeout=300)
        upload_seconds = time.monotonic() - started
    assert response.status_code == 201, response.text
    assert response.json() == {"machine": "workstation", "path": "/root/big.bin", "size": BIG}
    assert sh(engine, session["id"], "workstation", "sha256sum /root/big.bin").split()[0] == expected
    source.unlink()

    with RssSampler(pid) as download_rss:
        started = time.monotonic()
        response = requests.get(files_url(server, session), params={"path": "/root/big.bin"},
                                headers=auth(session), stream=True, timeout=300)
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == BIG
        assert 'filename="big.bin"' in response.headers["Content-Disposition"]
        received, digest = 0, hashlib.sha256()
        for chunk in response.iter_content(1024 * 1024):
            received += len(chunk)
            digest.update(chunk)
        download_seconds = time.monotonic() - started
    assert received == BIG and digest.hexdigest() == expected

    after = memory_kib(pid)
    growth_mib = (max(upload_rss.peak, download_rss.peak, after["VmHWM"]) - max(before["VmRSS"], before["VmHWM"])) / 1024
    print(f"\nRSS before {before['VmRSS'] // 1024} MiB (peak {before['VmHWM'] // 1024} MiB); during upload "
          f"{upload_rss.peak // 1024} MiB ({upload_rss.samples} samples, {upload_seconds:.1f} s), download "
          f"{download_rss.peak // 1024} MiB ({download_rss.samples} samples, {download_seconds:.1f} s); "
          f"peak after {after['VmHWM'] // 1024} MiB")
    assert upload_rss.samples > 5 and download_rss.samples > 5
    assert growth_mib < 48, f"the server grew by {growth_mib:.0f} MiB moving {BIG >> 20} MiB"
    sh(engine, session["id"], "workstation", "rm -f /root/big.bin")


def test_a_saved_image_goes_to_the_colleague_who_loads_it(server, engine, session):
    sid = session["id"]
    sh(engine, sid, "workstation", "docker pull -q debian:bookworm >/dev/null && docker save -o /root/base.tar debian:bookworm")
    size = int(sh(engine, sid, "workstation", "stat -c %s /root/base.tar"))
    response = requests.post(files_url(server, session, suffix="/copy"), headers=auth(session),
                             json={"path": "base.tar", "to": "colleague"}, timeout=300)
    assert response.status_code == 201, response.text
    assert response.json()["path"] == "/root/base.tar" and response.json()["size"] == size
    digests = [sh(engine, sid, machine, "sha256sum /root/base.tar").split()[0] for machine in ("workstation", "colleague")]
    assert digests[0] == digests[1]
    assert "Loaded image: debian:bookworm" in sh(engine, sid, "colleague", "docker load -i /root/base.tar")
    # Into a chosen folder (made if missing), under another name.
    response = requests.post(files_url(server, session, suffix="/copy"), headers=auth(session),
                             json={"path": "/root/base.tar", "to": "colleague", "to_path": "/srv/images/"}, timeout=300)
    assert response.status_code == 201 and response.json()["path"] == "/srv/images/base.tar"
    response = requests.post(files_url(server, session, machine="colleague", suffix="/copy"), headers=auth(session),
                             json={"path": "/srv/images/base.tar", "to": "workstation", "to_path": "back.tar"},
                             timeout=300)
    assert response.status_code == 201 and response.json()["path"] == "/root/back.tar"
    sh(engine, sid, "workstation", "cmp /root/base.tar /root/back.tar && rm /root/back.tar /root/base.tar")


def test_upload_goes_to_the_working_directory_or_a_chosen_path(server, engine, session):
    sid = session["id"]
    page = b"<h1>My own page</h1>\n"
    response = requests.put(files_url(server, session), params={"name": "index.html"}, data=page,
                            headers=auth(session), timeout=60)
    assert response.status_code == 201 and response.json()["path"] == "/root/index.html"
    response = requests.put(files_url(server, session), params={"path": "/var/www/site/", "name": "index.html"},
                            data=page, headers=auth(session), timeout=60)
    assert response.status_code == 201 and response.json()["path"] == "/var/www/site/index.html"
    response = requests.put(files_url(server, session), params={"path": "~/pages/about.html"}, data=b"about",
                            headers=auth(session), timeout=60)
    assert response.status_code == 201 and response.json()["path"] == "/root/pages/about.html"
    assert sh(engine, sid, "workstation", "cat /root/index.html /var/www/site/index.html /root/pages/about.html") \
        == page.decode() * 2 + "about"
    # Replacing a file keeps no half-written leftovers beside it.
    requests.put(files_url(server, session), params={"name": "index.html"}, data=b"v2", headers=auth(session), timeout=60)
    assert sh(engine, sid, "workstation", "cat /root/index.html; ls -A /root | grep -c berth- || true") == "v20\n"
    # Downloads follow links, as cat would, and a folder comes as a tar archive.
    sh(engine, sid, "workstation", "ln -sf /root/index.html /root/link.html")
    response = requests.get(files_url(server, session), params={"path": "link.html"}, headers=auth(session), timeout=60)
    assert response.status_code == 200 and response.content == b"v2"
    response = requests.get(files_url(server, session), params={"path": "/root/pages"}, headers=auth(session), timeout=60)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/x-tar"
    assert b"about.html" in response.content
    # ".." cannot leave the machine: it is the machine's own /etc/hostname.
    response = requests.get(files_url(server, session), params={"path": "../../../../etc/hostname"},
                            headers=auth(session), timeout=60)
    assert response.status_code == 200 and response.text.strip() == "workstation"


def test_clear_errors(server, engine, session):
    put_file(engine, session["id"], "workstation", "/root/small.txt", b"small")

    def error(response, status, code):
        assert response.status_code == status, response.text
        assert response.json()["error"] == code, response.json()
        assert response.json()["message"]

    error(requests.get(files_url(server, session), params={"path": "/root/missing.tar"}, headers=auth(session),
                       timeout=60), 404, "no_such_file")
    error(requests.get(files_url(server, session), headers=auth(session), timeout=60), 400, "bad_path")
    error(requests.put(files_url(server, session), params={"path": "/root"}, data=b"x", headers=auth(session),
                       timeout=60), 400, "name_required")
    error(requests.put(files_url(server, session), params={"path": "/proc/sysrq-trigger"}, data=b"x",
                       headers=auth(session), timeout=60), 403, "not_writable")
    error(requests.put(files_url(server, session), params={"name": "../x"}, data=b"x", headers=auth(session),
                       timeout=60), 400, "bad_name")
    error(requests.put(files_url(server, session), params={"path": "/root/small.txt/inside"}, data=b"x",
                       headers=auth(session), timeout=60), 409, "not_a_directory")
    # Larger than BERTH_UPLOAD_LIMIT (1 GiB by default): refused before a byte is read.
    huge = requests.Request("PUT", files_url(server, session), params={"name": "huge.bin"}, data=b"x" * 10,
                            headers=auth(session)).prepare()
    huge.headers["Content-Length"] = str(5 * 1024**3)
    with requests.Session() as client:
        error(client.send(huge, timeout=60), 413, "too_large")
    error(requests.put(files_url(server, session), params={"name": "stream.bin"}, data=iter([b"abc"]),
                       headers=auth(session), timeout=60), 411, "length_required")
    copy = files_url(server, session, suffix="/copy")
    error(requests.post(copy, json={"path": "/root", "to": "colleague"}, headers=auth(session), timeout=60),
          400, "not_a_file")
    error(requests.post(copy, json={"path": "small.txt", "to": "berth"}, headers=auth(session), timeout=60),
          404, "unknown_machine")
    error(requests.post(copy, json={"path": "small.txt"}, headers=auth(session), timeout=60), 400, "bad_request")
    # Only with the session's token; the cookie only from Berth's own pages.
    error(requests.get(files_url(server, session), params={"path": "small.txt"}, timeout=60), 401, "token_required")
    error(requests.get(files_url(server, session), params={"path": "small.txt"},
                       headers={"Authorization": "Bearer not-this-one"}, timeout=60), 403, "wrong_token")
    cookie = {"Cookie": f"berth_docker_images={session['id']}:{session['token']}"}
    assert requests.get(files_url(server, session), params={"path": "small.txt"}, headers=cookie,
                        timeout=60).content == b"small"
    error(requests.put(files_url(server, session), params={"name": "x"}, data=b"x",
                       headers={**cookie, "Origin": "http://evil.example"}, timeout=60), 403, "foreign_origin")
    error(requests.get(files_url(server, session, machine="nobody"), params={"path": "x"}, headers=auth(session),
                       timeout=60), 404, "unknown_machine")
