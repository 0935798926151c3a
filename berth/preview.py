"""Port preview: `/s/<session>/<machine>/port/<n>/...` reaches a port that the learner
published inside their machine, so "open http://localhost:3000" works from the browser.

It is never an open proxy: it only dials the session's own machines (their address comes
from the backend, never from the request), only ports that a container in that machine
publishes, and only for the session's token. Proxied pages are served with a sandboxing
CSP, so a learner's page never acts as Berth's origin. When the port cannot answer, a
diagnosis page says why in the learner's words (preview_diagnosis.py); links and redirects
in the learner's pages are kept under the preview's address (preview_rewrite.py)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

from flask import Blueprint, Flask, Response, jsonify, redirect, render_template, request
from werkzeug.datastructures import Headers

from .machines import Machine, MachineError
from .ports import PortWatch, PublishedPort
from .preview_diagnosis import ANSWER_TIMEOUT, Diagnosis, diagnose
from .preview_rewrite import rewrite_html, rewrite_location
from .store import SessionRecord, iso
from .web import ApiError, authenticated, current_berth

log = logging.getLogger(__name__)

bp = Blueprint("preview", __name__)

CHUNK = 64 * 1024
CONNECT_TIMEOUT = 5  # seconds to open a connection to the machine's port
IDLE_TIMEOUT = 600  # seconds a streamed answer (or a WebSocket) may stay silent

# What a learner's page may do: run its scripts and forms in an origin of its own (no
# allow-same-origin), so it can never read Berth's pages or act with the learner's cookie.
SANDBOX = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads; frame-ancestors 'self'"
PROBLEM_CSP = ("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
               "sandbox allow-scripts")  # no script may run (default-src); Chromium's meta refresh needs the flag

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
              "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
# Request headers that are Berth's business, not the learner's server's.
DROP_REQUEST = HOP_BY_HOP | {"host", "cookie", "content-length", "expect", "forwarded", "x-forwarded-for",
                             "x-forwarded-host", "x-forwarded-proto", "x-forwarded-prefix", "x-real-ip"}
# Response headers that would act on Berth's whole origin rather than on the one page.
DROP_RESPONSE = HOP_BY_HOP | {"server", "date", "strict-transport-security", "clear-site-data", "alt-svc",
                              "nel", "report-to", "reporting-endpoints", "service-worker-allowed",
                              "public-key-pins", "expect-ct", "referrer-policy", "set-cookie"}


def watch() -> PortWatch:
    return current_berth().ports


def explain(machine: Machine, number: int, published: PublishedPort | None, error: str = "") -> Diagnosis:
    """Why the port does not answer (the diagnosis of this Berth's backend)."""
    return diagnose(current_berth().backend, watch(), machine, number, published, error)


# --- who may preview

def preview_key(record: SessionRecord) -> str:
    """A key that lets a URL reach this session's previews and nothing else. Previews need
    it because a sandboxed page's own requests (its images, its links) carry no cookies."""
    message = f"preview:{record.id}:{record.token_hash}".encode()
    return hmac.new(current_berth().secret_key.encode(), message, hashlib.sha256).hexdigest()[:32]


def preview_prefix(record: SessionRecord, machine: str, port: int) -> str:
    return f"/s/{record.id}.{preview_key(record)}/{quote(machine, safe='')}/port/{port}"


def authorize(segment: str) -> tuple[SessionRecord, bool]:
    """The session named by the URL's session segment (`ID` or `ID.KEY`), if the request
    may use it; and whether Berth's bearer token came in the Authorization header."""
    session_id, dot, key = segment.partition(".")
    if dot:
        record = current_berth().sessions.get(session_id)
        if not hmac.compare_digest(key.encode(), preview_key(record).encode()):
            raise ApiError(403, "wrong_key", "That preview address does not belong to this session.")
        current_berth().sessions.touch(record.id)
        return record, False
    record = authenticated(session_id)
    return record, bool(request.headers.get("Authorization"))


def problem_response(machine_name: str, number: int, diagnosis: Diagnosis) -> Response:
    """The diagnosis as a page (a browser) or as JSON (a client that asks for JSON)."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    if best == "application/json":
        response = jsonify(error=diagnosis.reason, message=f"{diagnosis.title}. {diagnosis.message}",
                           hints=diagnosis.hints)
    else:
        response = Response(render_template("preview_problem.html", machine=machine_name, port=number,
                                            diagnosis=diagnosis), mimetype="text/html")
        response.headers["Content-Security-Policy"] = PROBLEM_CSP
    response.status_code = diagnosis.status
    response.headers["X-Berth-Diagnosis"] = diagnosis.reason
    response.headers["Cache-Control"] = "no-store"
    return response


# --- the proxy

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@bp.route("/s/<session>/<machine_name>/port/<int:port>/", defaults={"path": ""}, methods=ALL_METHODS,
          provide_automatic_options=False)
@bp.route("/s/<session>/<machine_name>/port/<int:port>/<path:path>", methods=ALL_METHODS,
          provide_automatic_options=False)
# Werkzeug routes WebSocket upgrades only to rules that say they take them.
@bp.route("/s/<session>/<machine_name>/port/<int:port>/", defaults={"path": ""}, methods=["GET"], websocket=True)
@bp.route("/s/<session>/<machine_name>/port/<int:port>/<path:path>", methods=["GET"], websocket=True)
def proxy(session: str, machine_name: str, port: int, path: str):
    record, bearer = authorize(session)
    if not 1 <= port <= 65535:
        raise ApiError(404, "not_found", "A port is a number from 1 to 65535.")
    machine = current_berth().sessions.machine(record.id, machine_name)
    if "." not in session and not bearer and request.method == "GET" and _navigating() and not _is_websocket():
        # The browser came with the cookie, which the sandboxed page's own requests will not
        # carry: continue at the keyed address, where its images and links work too.
        query = request.query_string.decode("latin-1")
        return redirect(preview_prefix(record, machine.name, port) + _upstream_path(path)
                        + (f"?{query}" if query else ""), code=302)
    published = watch().port(machine, port)
    if published is None:
        watch().ports(machine, fresh=True)  # a container may have started a moment ago
        published = watch().port(machine, port)
    if published is None or published.state != "running" or published.loopback_only:
        return problem_response(machine.name, port, explain(machine, port, published))
    prefix = f"/s/{quote(session, safe='.')}/{quote(machine_name, safe='')}/port/{port}"
    target = Target(record.id, machine, published, prefix, _upstream_path(path), bearer)
    if _is_websocket():
        return websocket(target)
    return forward(target)


@bp.route("/s/<session>/<machine_name>/port/<int:port>", methods=ALL_METHODS, provide_automatic_options=False)
def proxy_root(session: str, machine_name: str, port: int):
    """`.../port/3000` -> `.../port/3000/`, so that the page's relative links resolve."""
    authorize(session)
    query = request.query_string.decode("latin-1")
    return redirect(f"{request.path}/" + (f"?{query}" if query else ""), code=308)


@dataclass(frozen=True)
class Target:
    session_id: str
    machine: Machine
    published: PublishedPort
    prefix: str  # where the port appears under Berth, without the trailing slash
    path: str  # the path to ask the learner's server for, raw (percent-encoded as sent)
    bearer: bool  # the Authorization header was Berth's; the learner's server must not see it

    @property
    def request_uri(self) -> str:
        query = request.query_string.decode("latin-1")
        return self.path + (f"?{query}" if query else "")

    @property
    def host_header(self) -> str:
        # What the learner's own browser would send for http://localhost:3000.
        return f"localhost:{self.published.port}"


def _upstream_path(decoded: str) -> str:
    """The request's path below the port, as the browser sent it (percent-encoding kept)."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if raw and raw.startswith("/"):
        parts = raw.split("?", 1)[0].split("/", 6)  # '', 's', session, machine, 'port', n, rest
        if len(parts) == 7 and parts[4] == "port":
            return "/" + parts[6]
        if len(parts) == 6:
            return "/"
    return "/" + quote(decoded, safe="/:@!$&'()*+,;=-._~")


def _navigating() -> bool:
    """Whether the browser is loading a page (not an image, a script or an API call)."""
    return request.headers.get("Sec-Fetch-Dest", "") in ("document", "iframe", "frame") or (
        "Sec-Fetch-Dest" not in request.headers and "text/html" in request.headers.get("Accept", ""))


def _is_websocket() -> bool:
    return (request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("Connection", "").lower())


def _request_headers(target: Target) -> list[tuple[str, str]]:
    """The browser's headers as the learner's server should see them: without Berth's
    cookie or token, with Host as if the browser were inside the machine."""
    headers = [("Host", target.host_header)]
    connection_tokens = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in DROP_REQUEST or lower in connection_tokens:
            continue
        if lower == "authorization" and target.bearer:
            continue
        headers.append((name, value))
    cookies = _learner_cookies(request.headers.get("Cookie", ""))
    if cookies:
        headers.append(("Cookie", cookies))
    headers.append(("X-Forwarded-Prefix", target.prefix))
    return headers


def _learner_cookies(header: str) -> str:
    """The browser's cookies minus Berth's own (which hold the session's token)."""
    kept = [part.strip() for part in header.split(";")
            if part.strip() and not part.strip().lower().startswith("berth_")]
    return "; ".join(kept)


def _body_chunks() -> Iterator[bytes] | None:
    """The request body, streamed; None when there is none."""
    if request.content_length is None and "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
        return None
    request.max_content_length = current_berth().config.upload_limit
    stream = request.stream

    def chunks():
        while chunk := stream.read(CHUNK):
            yield chunk
    return chunks()


def forward(target: Target) -> Response:
    """One HTTP exchange with the learner's server, streamed both ways."""
    machine, published = target.machine, target.published
    headers = _request_headers(target)
    if _navigating():
        # Pages come back uncompressed so their root-relative links can be kept under the prefix.
        headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"] + [("Accept-Encoding", "identity")]
    body = _body_chunks()
    connection = http.client.HTTPConnection(*current_berth().backend.reach(machine, published.port),
                                            timeout=CONNECT_TIMEOUT)
    try:
        connection.connect()
        sock = connection.sock
        sock.settimeout(ANSWER_TIMEOUT)
        connection.putrequest(request.method, target.request_uri, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body is not None and request.content_length is not None:
            connection.putheader("Content-Length", str(request.content_length))
            connection.endheaders()
            for chunk in body:
                connection.send(chunk)
        elif body is not None:
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            for chunk in body:
                connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            connection.send(b"0\r\n\r\n")
        else:
            connection.endheaders()
        answer = connection.getresponse()
    except (OSError, http.client.HTTPException) as error:
        connection.close()
        watch().ports(machine, fresh=True)  # the container may have stopped meanwhile
        fresh = watch().port(machine, published.port)
        reason = "timed out" if isinstance(error, TimeoutError) else (str(error) or type(error).__name__)
        return problem_response(machine.name, published.port, explain(machine, published.port, fresh, reason))
    sock.settimeout(IDLE_TIMEOUT)  # the answer reads from this socket even when the connection let go of it
    return _relay(answer, connection, target)


def _relay(answer: http.client.HTTPResponse, connection: http.client.HTTPConnection, target: Target) -> Response:
    headers = Headers()
    connection_tokens = {t.strip().lower() for t in (answer.getheader("Connection") or "").split(",")}
    for name, value in answer.getheaders():
        lower = name.lower()
        if lower in DROP_RESPONSE or lower in connection_tokens:
            continue
        if lower in ("location", "content-location"):
            value = rewrite_location(value, target.prefix, target.machine, target.published)
        headers.add(name, value)
    content_type = answer.getheader("Content-Type") or ""
    chunks: Iterable[bytes] = _read(answer, connection)
    if (content_type.lower().startswith("text/html") and not answer.getheader("Content-Encoding")
            and not re.search(r"charset=\S*(16|32)", content_type, re.I)):
        chunks = rewrite_html(chunks, target.prefix.encode(), target.session_id.encode())
        headers.remove("Content-Length")
    headers.add("Content-Security-Policy", SANDBOX)  # besides (not replacing) the page's own policy
    headers.set("Referrer-Policy", "no-referrer")  # the URL holds the preview key
    headers.setdefault("X-Content-Type-Options", "nosniff")
    response = Response(chunks, status=f"{answer.status} {answer.reason}", headers=headers,
                        direct_passthrough=True)
    if not content_type:
        response.headers.remove("Content-Type")  # not Flask's default text/html
    return response


def _read(answer: http.client.HTTPResponse, connection: http.client.HTTPConnection) -> Iterator[bytes]:
    try:
        while chunk := answer.read1(CHUNK):
            yield chunk
    except (OSError, http.client.HTTPException) as error:
        log.info("preview answer cut short: %s", error)
    finally:
        connection.close()


# --- WebSocket upgrades

class _Spliced(Response):
    """The answer to an upgrade: the learner's server's own bytes, relayed both ways on
    the browser's connection. The server (Werkzeug) must not write a response after it."""

    def __init__(self, client: socket.socket, upstream: socket.socket, head: bytes, mode: str):
        super().__init__()
        self.client, self.upstream, self.head, self.mode = client, upstream, head, mode

    def __call__(self, environ, start_response):  # type: ignore[override]
        try:
            self.client.settimeout(IDLE_TIMEOUT)
            self.upstream.settimeout(IDLE_TIMEOUT)
            self.client.sendall(self.head)
            pump = threading.Thread(target=_pump, args=(self.upstream, self.client), daemon=True,
                                    name="preview-ws")
            pump.start()
            _pump(self.client, self.upstream)
            pump.join(IDLE_TIMEOUT)
        except OSError:
            pass
        finally:
            self.upstream.close()
        # Werkzeug takes a ConnectionError as "the connection is gone": it writes nothing more.
        if self.mode == "gunicorn":
            raise StopIteration()
        raise ConnectionError("WebSocket closed")


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    for sock in (sink, source):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def websocket(target: Target):
    environ = request.environ
    client = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
    if client is None:
        raise ApiError(501, "not_supported", "This server cannot relay WebSockets; serve Berth with `python app.py`.")
    machine, published = target.machine, target.published
    lines = [f"GET {target.request_uri} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in _request_headers(target)]
    lines += ["Connection: Upgrade", "Upgrade: websocket"]
    try:
        upstream = socket.create_connection(current_berth().backend.reach(machine, published.port),
                                            timeout=CONNECT_TIMEOUT)
    except OSError as error:
        return problem_response(machine.name, published.port, explain(machine, published.port, published, str(error)))
    try:
        upstream.settimeout(ANSWER_TIMEOUT)
        upstream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = b""
        while b"\r\n\r\n" not in head:
            data = upstream.recv(CHUNK)
            if not data or len(head) > 65536:
                raise ConnectionError("the server closed the connection")
            head += data
    except OSError as error:
        upstream.close()
        return problem_response(machine.name, published.port, explain(machine, published.port, published, str(error)))
    status = head.split(b"\r\n", 1)[0].split(b" ")
    if len(status) < 2 or status[1] != b"101":
        upstream.close()
        raise ApiError(502, "websocket_refused", f"The server on port {published.port} refused the WebSocket "
                       f"(it answered {status[1].decode('latin-1', 'replace') if len(status) > 1 else '?'}).")
    mode = "werkzeug" if "werkzeug.socket" in environ else "gunicorn"
    return _Spliced(client, upstream, upgrade_answer(head), mode)


def upgrade_answer(head: bytes) -> bytes:
    """The learner's server's answer to a WebSocket upgrade, filtered like any other answer
    (no Set-Cookie on Berth's origin, nothing that acts on the whole origin), keeping what
    the upgrade needs; anything after the head (early frames) is passed on as it is."""
    head, _, rest = head.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    kept = [status]
    for line in lines:
        name = line.split(b":", 1)[0].strip().lower().decode("latin-1")
        if name in ("connection", "upgrade") or name.startswith("sec-websocket-") \
                or (name not in DROP_RESPONSE and name not in HOP_BY_HOP):
            kept.append(line)
    return b"\r\n".join(kept) + b"\r\n\r\n" + rest


# --- the page's list of ports

@bp.get("/api/sessions/<session_id>/ports")
def ports(session_id: str):
    """Published ports per machine, with the preview address of each."""
    record = authenticated(session_id)
    # One look at the host engine for all the machines: the page asks every few seconds.
    found = {m.name: m for m in current_berth().backend.machines(record.id)}
    out = []
    for status in record.machines:
        entry: dict = {"name": status.name, "status": status.status, "ports": []}
        machine = found.get(status.name)
        if status.status == "ready" and machine is not None:
            try:
                entry["ports"] = [
                    {"port": p.port, "container": p.container, "container_port": p.container_port,
                     "url": preview_prefix(record, status.name, p.port) + "/",
                     **({"problem": "loopback_only"} if p.loopback_only else {}),
                     **({"problem": "container_paused"} if p.state == "paused" else {})}
                    for p in watch().ports(machine)
                ]
            except MachineError as error:
                entry["error"] = error.message
        elif status.status == "ready":
            entry["error"] = f"The machine {status.name} is gone; start a new session."
        out.append(entry)
    return jsonify(session=record.id, machines=out, checked_at=iso(time.time()))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

