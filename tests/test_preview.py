"""The port preview against real machines: a page served by nginx in a nested container
through /s/<session>/<machine>/port/<n>/, the refusals that keep it from being an open
proxy, and the diagnosis for each way a port can fail to answer."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest
import requests
import simple_websocket

from .machine_web import ECHO_SERVER, build_web_image, put_file, run_nginx, sh, wait_for

pytestmark = pytest.mark.engine

PAGE = ('<h1>Hello from ubuntu001</h1><p>The customized page.</p>'
        '<a href="/about.html">About</a> <img src="/logo.png"> <a href="https://example.org/x">out</a>')


@pytest.fixture(scope="module")
def web(server, engine):
    """A session whose workstation runs the lesson's web server on port 3000 (nginx on 80
    in the container `ubuntu001`, `-p 3000:80`) and an echo server on 8765."""
    session = server.create_session("docker-images")
    sid = session["id"]
    build_web_image(engine, sid)
    run_nginx(engine, sid, "ubuntu001", "3000:80", PAGE)
    sh(engine, sid, "workstation", """docker exec ubuntu001 sh -c 'echo about-page > /var/www/html/about.html;
        mkdir -p /var/www/html/docs && echo docs-page > /var/www/html/docs/index.html'""")
    put_file(engine, sid, "workstation", "/root/echo.py", ECHO_SERVER.encode())
    sh(engine, sid, "workstation",
       "docker run -d --name echo -p 8765:8765 -v /root/echo.py:/echo.py berth-test-web python3 /echo.py")
    yield session
    server.delete_session(session)


BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8", "Sec-Fetch-Dest": "document",
           "Accept-Encoding": "gzip, deflate"}


def get(server, session, path, token=True, **kwargs):
    headers = kwargs.pop("headers", dict(BROWSER))
    if token:
        headers["Authorization"] = f"Bearer {session['token'] if token is True else token}"
    return requests.request(kwargs.pop("method", "GET"), server.url + path, headers=headers, timeout=60,
                            allow_redirects=False, **kwargs)


def ports_of(server, session, machine="workstation"):
    data = get(server, session, f"/api/sessions/{session['id']}/ports").json()
    return {p["port"]: p for m in data["machines"] if m["name"] == machine for p in m["ports"]}


def test_serves_the_page_of_the_nested_nginx(server, web):
    sid = web["id"]
    response = get(server, web, f"/s/{sid}/workstation/port/3000/")
    assert response.status_code == 200, response.text
    assert "Hello from ubuntu001" in response.text
    csp = response.headers["Content-Security-Policy"]
    assert "sandbox allow-scripts" in csp and "allow-same-origin" not in csp, csp
    # Root-relative links stay under the prefix; other sites' links are left alone.
    assert f'href="/s/{sid}/workstation/port/3000/about.html"' in response.text
    assert f'src="/s/{sid}/workstation/port/3000/logo.png"' in response.text
    assert 'href="https://example.org/x"' in response.text
    assert get(server, web, f"/s/{sid}/workstation/port/3000/about.html").text.strip() == "about-page"
    # nginx redirects /docs to http://localhost/docs/ (its own port, 80): kept under the prefix.
    moved = get(server, web, f"/s/{sid}/workstation/port/3000/docs")
    assert moved.status_code == 301
    assert moved.headers["Location"] == f"/s/{sid}/workstation/port/3000/docs/"
    assert get(server, web, moved.headers["Location"]).text.strip() == "docs-page"
    # Without the trailing slash the page's relative links would resolve wrongly.
    bare = get(server, web, f"/s/{sid}/workstation/port/3000")
    assert bare.status_code == 308 and bare.headers["Location"].endswith("/port/3000/")


def test_ports_are_listed_with_a_preview_address(server, web):
    ports = ports_of(server, web)
    assert ports[3000]["container"] == "ubuntu001" and ports[3000]["container_port"] == 80
    url = ports[3000]["url"]
    assert url.startswith(f"/s/{web['id']}.") and url.endswith("/workstation/port/3000/")
    # The address works without a token or cookie (a sandboxed page's requests carry none),
    # and links inside the page keep its key.
    page = requests.get(server.url + url, headers=BROWSER, timeout=30)
    assert page.status_code == 200 and "Hello from ubuntu001" in page.text
    assert f'href="{url}about.html"' in page.text
    assert requests.get(server.url + url + "about.html", timeout=30).text.strip() == "about-page"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    # A page opened with the lesson cookie continues at the keyed address.
    opened = get(server, web, f"/s/{web['id']}/workstation/port/3000/about.html?a=1", token=False,
                 headers={**BROWSER, "Cookie": f"berth_docker_images={web['id']}:{web['token']}"})
    assert opened.status_code == 302 and opened.headers["Location"] == url + "about.html?a=1"
    colleague = get(server, web, f"/api/sessions/{web['id']}/ports").json()["machines"][1]
    assert colleague["name"] == "colleague" and colleague["ports"] == []


def test_requests_reach_the_learner_server_without_berth_credentials(server, web):
    sid = web["id"]
    body = os.urandom(3 * 1024 * 1024 + 17)
    response = get(server, web, f"/s/{sid}/workstation/port/8765/form?x=1%2F2", method="POST", data=body,
                   headers={"Cookie": f"berth_docker_images={sid}:{web['token']}; learner=1",
                            "Host": "127.0.0.2:80", "X-Forwarded-Host": "evil.example"})
    assert response.status_code == 200, response.text
    seen = response.text
    assert seen.startswith("POST /form?x=1%2F2 HTTP/1.1")
    lines = seen.lower().splitlines()
    assert "host: localhost:8765" in lines
    assert "cookie: learner=1" in lines
    assert web["token"].lower() not in seen.lower()
    assert "evil.example" not in seen and "127.0.0.2" not in seen
    assert f"x-forwarded-prefix: /s/{sid}/workstation/port/8765" in lines
    assert f"body-size: {len(body)}" in lines
    assert f"body-sha256: {hashlib.sha256(body).hexdigest()}" in lines
    # What the learner's server says about Berth's own origin is not passed on: previews
    # share Berth's origin, so no cookie of theirs is set there (not even one of their own).
    assert "Set-Cookie" not in response.headers
    assert "Strict-Transport-Security" not in response.headers


def test_websocket_upgrades_are_relayed(server, web):
    url = ports_of(server, web)[8765]["url"]
    ws = simple_websocket.Client(server.url.replace("http", "ws") + url + "chat")
    try:
        ws.send("hello")
        assert ws.receive(timeout=10) == "echo: hello"
        ws.send("again")
        assert ws.receive(timeout=10) == "echo: again"
    finally:
        ws.close()


def test_the_upgrade_answer_is_filtered_like_any_other(server, web):
    """The learner's server answers the WebSocket upgrade with a cookie for Berth's origin:
    the browser gets the upgrade without it."""
    url = ports_of(server, web)[8765]["url"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall((f"GET {url}chat HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            assert data, head
            head += data
    lines = head.decode("latin-1").lower().split("\r\n")
    assert lines[0].startswith("http/1.1 101"), head
    assert "x-echo: yes" in lines  # the server's own answer, relayed
    assert "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in lines
    assert not any(line.startswith("set-cookie") for line in lines), head


def test_refuses_foreign_tokens_other_ports_and_targets_outside_the_session(server, web, lesson_session):
    sid, other = web["id"], lesson_session
    path = f"/s/{sid}/workstation/port/3000/"
    assert get(server, web, path, token=False).status_code == 401
    assert get(server, web, path, token=other["token"]).status_code == 403  # another session's token
    assert get(server, web, path, token="made-up").status_code == 403
    assert requests.get(f"{server.url}/s/{sid}.{'0' * 32}/workstation/port/3000/", timeout=30).status_code == 403
    # My token on another session's machines, and its preview key on mine.
    assert get(server, web, f"/s/{other['id']}/workstation/port/3000/").status_code == 403
    my_key = ports_of(server, web)[3000]["url"].split("/")[2].split(".")[1]
    assert requests.get(f"{server.url}/s/{other['id']}.{my_key}/workstation/port/3000/", timeout=30).status_code == 403
    # Names that are not machines of the session, and ports nothing publishes.
    for name in ("berth", "berth-mirror", "localhost", "127.0.0.1"):
        assert get(server, web, f"/s/{sid}/{name}/port/3000/").status_code == 404
    for port in (2376, 22, 80, 5000, 65536, 0):
        response = get(server, web, f"/s/{sid}/workstation/port/{port}/")
        assert response.status_code == 404, (port, response.text[:200])
    # The request's Host (or an absolute URI) never decides what is dialled.
    response = requests.get(server.url + path, headers={"Host": "127.0.0.1:2376",
                                                        "Authorization": f"Bearer {web['token']}"}, timeout=30)
    assert response.status_code == 200 and "Hello from ubuntu001" in response.text


def diagnosis(server, web, port, json=False):
    headers = {"Accept": "application/json"} if json else dict(BROWSER)
    response = get(server, web, f"/s/{web['id']}/workstation/port/{port}/", headers=headers)
    return response.status_code, response.headers.get("X-Berth-Diagnosis"), response.text


def test_diagnoses_each_way_a_port_can_fail(server, engine, web):
    sid = web["id"]
    sh(engine, sid, "workstation", """
        docker run --name gone -p 3002:80 berth-test-web true
        docker run -d --name idle -p 3003:3003 berth-test-web sleep infinity >/dev/null
        docker run -d --name ubuntu002 -p 3004:3004 berth-test-web nginx -g 'daemon off;' >/dev/null""")
    status, reason, text = diagnosis(server, web, 3001)
    assert (status, reason) == (404, "not_published")
    assert "Nothing is published on port 3001" in text and "3000 (ubuntu001)" in text
    assert 'http-equiv="refresh"' in text  # it tries again while the learner fixes things

    status, reason, text = diagnosis(server, web, 3002)
    assert (status, reason) == (502, "container_exited")
    assert "The container gone has exited" in text and "docker start gone" in text

    status, reason, text = diagnosis(server, web, 3003)
    assert (status, reason) == (502, "nothing_listens")
    assert "nothing listens there inside the container" in text

    status, reason, text = diagnosis(server, web, 3004)
    assert (status, reason) == (502, "wrong_port")
    assert "nginx still listens on port 80" in text and "docker run -p 3004:80" in text

    status, reason, text = diagnosis(server, web, 3004, json=True)
    assert status == 502 and '"error":"wrong_port"' in text.replace(" ", "")

    # Fixed in the machine, the same address serves the page.
    sh(engine, sid, "workstation", """docker exec ubuntu002 sh -c "sed -i 's/listen 80 default_server/listen 3004 default_server/' /etc/nginx/sites-enabled/default && nginx -s reload" """)
    assert wait_for(lambda: get(server, web, f"/s/{sid}/workstation/port/3004/").status_code == 200, timeout=10)
