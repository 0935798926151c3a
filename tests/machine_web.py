"""Helpers for tests that need web servers inside a learner machine: commands run in the
machine through the host engine, and a small image (Debian + nginx + python3-minimal)
built once per session inside the machine, as a learner would."""

from __future__ import annotations

import io
import tarfile
import time

import docker

WEB_IMAGE = "berth-test-web"

# A server for the proxy's own tests (python3-minimal: no json, no http.server): plain
# requests get their request line, headers and body digest back as text; WebSocket
# upgrades get an echo of each text frame.
ECHO_SERVER = r'''
import base64, hashlib, socket, threading
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def read_head(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest

def serve(conn):
    head, rest = read_head(conn)
    if head is None:
        return conn.close()
    lines = head.split("\r\n")
    headers = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    if headers.get("upgrade", "").lower() == "websocket":
        accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Set-Cookie: berth_docker_images=stolen; Path=/\r\nX-Echo: yes\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        buffer = rest
        while True:
            while len(buffer) < 6:
                chunk = conn.recv(65536)
                if not chunk:
                    return conn.close()
                buffer += chunk
            opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
            if opcode == 8 or size > 125:
                return conn.close()
            while len(buffer) < 6 + size:
                buffer += conn.recv(65536)
            mask, payload, buffer = buffer[2:6], buffer[6:6 + size], buffer[6 + size:]
            reply = b"echo: " + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            conn.sendall(bytes([0x81, len(reply)]) + reply)
    digest, size = hashlib.sha256(), 0
    remaining = int(headers.get("content-length", "0"))
    body = rest
    while True:
        digest.update(body[:remaining] if remaining else b"")
        size += min(len(body), remaining)
        remaining -= min(len(body), remaining)
        if remaining <= 0:
            break
        body = conn.recv(1 << 20)
        if not body:
            break
    text = head + "\r\n\r\nbody-size: %d\r\nbody-sha256: %s\r\n" % (size, digest.hexdigest())
    out = text.encode("latin-1")
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: berth_docker_images=stolen; Path=/\r\n"
                 b"Set-Cookie: learner=kept; Path=/\r\nStrict-Transport-Security: max-age=600\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(out) + out)
    conn.close()

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 8765))
server.listen(16)
while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
'''


def machine_container(engine: docker.DockerClient, session_id: str, machine: str):
    return engine.containers.get(f"berth-{session_id}-{machine}")


def sh(engine: docker.DockerClient, session_id: str, machine: str, script: str, check: bool = True) -> str:
    """Run a shell script in the machine (as its terminal would) and return its output."""
    code, output = machine_container(engine, session_id, machine).exec_run(["bash", "-c", script])
    text = output.decode("utf-8", "replace")
    if check:
        assert code == 0, f"in {machine}: {script}\n-> {code}: {text}"
    return text


def put_file(engine: docker.DockerClient, session_id: str, machine: str, path: str, data: bytes) -> None:
    directory, name = path.rsplit("/", 1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(data), int(time.time())
        archive.addfile(info, io.BytesIO(data))
    machine_container(engine, session_id, machine).put_archive(directory or "/", buffer.getvalue())


def build_web_image(engine: docker.DockerClient, session_id: str, machine: str = "workstation") -> None:
    """Debian with nginx and python3-minimal, built inside the machine's own engine."""
    sh(engine, session_id, machine, f"""
        docker image inspect {WEB_IMAGE} >/dev/null 2>&1 && exit 0
        docker rm -f webbuild >/dev/null 2>&1
        docker run --name webbuild debian:bookworm sh -c 'apt-get update -q >/dev/null &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light python3-minimal >/dev/null &&
          rm -rf /var/lib/apt/lists/*' &&
        docker commit webbuild {WEB_IMAGE} >/dev/null && docker rm webbuild >/dev/null""")


def run_nginx(engine: docker.DockerClient, session_id: str, name: str, publish: str, page: str,
              machine: str = "workstation") -> None:
    """A container named `name` running nginx (listening on 80) with `page` as index.html,
    published as `publish` (e.g. 3000:80)."""
    put_file(engine, session_id, machine, f"/root/{name}.html", page.encode())
    sh(engine, session_id, machine, f"""
        docker rm -f {name} >/dev/null 2>&1
        docker create --name {name} -p {publish} {WEB_IMAGE} nginx -g 'daemon off;' >/dev/null
        docker cp /root/{name}.html {name}:/var/www/html/index.html
        docker start {name} >/dev/null""")


def wait_for(condition, timeout: float = 20, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
