"""Pages and the JSON API (docs/api.md). Every API call about a session needs its token:
`Authorization: Bearer TOKEN`, or the browser's cookie holding the same token."""

from __future__ import annotations

import datetime
import logging
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from .machines import EngineUnavailable, MachineError
from .sessions import SessionError
from .store import SessionRecord

log = logging.getLogger(__name__)

api = Blueprint("api", __name__, url_prefix="/api")
pages = Blueprint("pages", __name__)

COOKIE_PREFIX = "berth_"


def berth():
    return current_app.extensions["berth"]


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str):
    response = jsonify(error=code, message=message)
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = "10"
    return response


# --- authentication

def cookie_name(slug: str) -> str:
    return COOKIE_PREFIX + slug.replace("-", "_")


def cookie_credentials(session_id: str) -> str | None:
    """The token of session_id if a lesson cookie of this browser holds it."""
    for name, value in request.cookies.items():
        if name.startswith(COOKIE_PREFIX) and value.startswith(session_id + ":"):
            return value.split(":", 1)[1]
    return None


def authenticated(session_id: str) -> SessionRecord:
    header = request.headers.get("Authorization", "")
    token = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "token_required", "Send the token as 'Authorization: Bearer TOKEN'.")
        token = value.strip()
    else:
        token = cookie_credentials(session_id)
        if token is not None and request.method not in ("GET", "HEAD") \
                and not berth().origins(request.headers.get("Origin"), request.environ):
            raise ApiError(403, "foreign_origin",
                           "Requests from other web sites may not use this browser's session.")
    record = berth().sessions.authenticate(session_id, token)
    g.session_record = record
    return record


# --- JSON shapes

def session_json(record: SessionRecord, token: str | None = None, tasks: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {"id": record.id}
    if token is not None:
        data["token"] = token
    data.update(
        lesson=record.lesson,
        machines=[{"name": m.name, "status": m.status, **({"message": m.message} if m.message else {})}
                  for m in record.machines],
        created_at=iso(record.created_at),
        expires_at=iso(record.expires_at),
    )
    if tasks:
        data["tasks"] = task_list(record)
    return data


def task_list(record: SessionRecord) -> list[dict[str, Any]]:
    """The session's tasks as the API and the page show them (the checker keeps them)."""
    return current_app.extensions["berth_checker"].task_list(record.id)


# --- API

@api.get("/lessons")
def lessons():
    library = berth().library
    return jsonify(lessons=[lesson.summary_json() for lesson in library.lessons.values()],
                   errors=[{"lesson": slug, "message": message} for slug, message in library.errors.items()])


@api.post("/sessions")
def create_session():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", 'Send a JSON object such as {"lesson": "docker-images"}.')
    slug = body.get("lesson")
    if not isinstance(slug, str) or not slug:
        raise ApiError(400, "bad_request", 'The field "lesson" (a lesson slug) is required.')
    wait = body.get("wait", False)
    if not isinstance(wait, bool):
        raise ApiError(400, "bad_request", 'The field "wait" must be true or false.')
    if berth().library.get(slug) is None:
        raise ApiError(404, "unknown_lesson", f"There is no lesson {slug!r}.")
    ensure_ready()
    record, token = berth().sessions.create(slug, wait=wait)
    response = jsonify(session_json(record, token))
    response.status_code = 201
    response.headers["Location"] = f"/api/sessions/{record.id}"
    return response


@api.get("/sessions/<session_id>")
def get_session(session_id: str):
    return jsonify(session_json(authenticated(session_id)))


@api.post("/sessions/<session_id>/check")
def check_session(session_id: str):
    record = authenticated(session_id)
    current_app.extensions["berth_checker"].check_now(record.id)
    return jsonify(session_json(berth().sessions.get(record.id)))


@api.delete("/sessions/<session_id>")
def delete_session(session_id: str):
    record = authenticated(session_id)
    berth().sessions.end(record.id)
    response = make_response("", 204)
    response.delete_cookie(cookie_name(record.lesson), path="/")
    return response


def ensure_ready() -> None:
    state = berth()
    if state.state != "ready":
        message = state.problem or "Berth is still starting (preparing the engine and images); try again in a few seconds."
        raise ApiError(503, "not_ready", message)


@pages.get("/healthz")
def healthz():
    state = berth()
    report: dict[str, Any] = {"status": "ok"}
    problems = []
    backend = state.backend
    try:
        backend.ping()
        report["engine"] = "ok"
    except EngineUnavailable as error:
        problems.append(error.message)
        report["engine"] = "down"
    if report["engine"] == "ok":
        config = state.config
        missing = backend.missing_images([config.machine_image, config.base_image])
        if config.machine_image in missing:
            problems.append(f"The machine image {config.machine_image} is missing: ./run serve builds it.")
        if config.base_image in missing:
            problems.append(f"The base image {config.base_image} is missing: ./run serve pulls or builds "
                            "one, or set BERTH_BASE_IMAGE.")
        report["machine_image"] = config.machine_image
        report["base_image"] = config.base_image
    isolation = getattr(backend, "isolation", None)
    report["machines_run_with"] = isolation.summary if isolation else None
    report["isolation"] = isolation.name if isolation else None
    if isolation and isolation.warning:
        report["warning"] = isolation.warning
    if state.mirror is not None:
        report["mirror"] = state.mirror.status
        if state.mirror.status == "failed":
            problems.append(state.mirror.message)
    report["sessions"] = state.store.count_active()
    report["lesson_errors"] = len(state.library.errors)
    if state.state != "ready" and not problems:
        problems.append(state.problem or "Berth is still starting.")
    if problems:
        report["status"] = "unavailable"
        report["reason"] = " ".join(problems)
        return jsonify(report), 503
    return jsonify(report)


# --- pages

@pages.get("/")
def index():
    library = berth().library
    return render_template("index.html", lessons=list(library.lessons.values()), errors=library.errors)


def cookie_session(slug: str) -> tuple[SessionRecord | None, str | None]:
    """The live session (and its token) this browser's cookie holds for a lesson, if any."""
    session_id, _, token = request.cookies.get(cookie_name(slug), "").partition(":")
    if not token:
        return None, None
    try:
        return berth().sessions.authenticate(session_id, token), token
    except SessionError:
        return None, None


@pages.get("/lessons/<slug>")
def lesson_page(slug: str):
    state = berth()
    lesson = state.library.get(slug)
    if lesson is None:
        abort(404, f"There is no lesson {slug!r}.")
    record, token = cookie_session(slug)
    fresh = False
    if record is None:
        if state.state != "ready":
            return render_template("unavailable.html", message=state.problem or "Berth is still starting; this page reloads by itself.", lesson=lesson), 503
        try:
            record, token = state.sessions.create(slug)
        except SessionError as error:
            return render_template("unavailable.html", message=error.message, lesson=lesson), error.status
        fresh = True
    isolation = getattr(state.backend, "isolation", None)
    response = make_response(render_template("lesson.html", lesson=lesson, session=record, token=token,
                                             tasks=task_list(record),
                                             isolation_warning=isolation.warning if isolation else ""))
    if fresh:
        response.set_cookie(cookie_name(slug), f"{record.id}:{token}", httponly=True, samesite="Strict",
                            secure=request.is_secure, path="/", max_age=state.config.session_ttl)
    return response


@pages.post("/lessons/<slug>/end")
def end_session(slug: str):
    """The page's "End session" button: remove the machines, forget the cookie."""
    state = berth()
    if not state.origins(request.headers.get("Origin"), request.environ):
        abort(403, "Requests from other web sites may not end this browser's session.")
    record, _ = cookie_session(slug)
    if record is not None:  # else already ended, or not ours: nothing to do
        state.sessions.end(record.id)
    response = redirect(url_for("pages.index"))
    response.delete_cookie(cookie_name(slug), path="/")
    return response


# --- errors

def init_app(app: Flask) -> None:
    app.register_blueprint(api)
    app.register_blueprint(pages)

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return error_response(error.status, error.code, error.message)

    @app.errorhandler(SessionError)
    def _session_error(error: SessionError):
        return error_response(error.status, error.code, error.message)

    @app.errorhandler(MachineError)
    def _machine_error(error: MachineError):
        log.warning("%s: %s (%s)", request.path, error.message, error.detail)
        return error_response(error.status if error.status != 500 else 503, error.code, error.message)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        if request.path.startswith("/api/") or request.path.startswith("/s/"):
            code = (error.name or "error").lower().replace(" ", "_")
            return error_response(error.code or 500, code, error.description or error.name)
        return render_template("error.html", error=error), error.code

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unexpected error on %s", request.path)
        if request.path.startswith("/api/"):
            return error_response(500, "internal", "Something went wrong in Berth; it is logged.")
        return render_template("error.html", error=None), 500

    @app.after_request
    def _headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.mimetype == "text/html" and not request.path.startswith("/s/"):
            # style-src 'unsafe-inline': xterm.js sizes and colours its cells with <style>
            # elements it creates at run time, and takes no nonce. Scripts stay 'self' only.
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-src 'self'; "
                "frame-ancestors 'self'; base-uri 'none'; form-action 'self'")
        return response
