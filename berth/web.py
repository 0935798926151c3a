"""The web layer's shared kernel: the Flask app that carries its Berth, who a request is
(a session's token, from the Authorization header or the lesson page's cookie), errors as
JSON, and the response headers every page gets. The blueprints (views, files, preview) and
the Socket.IO namespaces (sockets) build on it."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, ClassVar, TypeVar, cast

from flask import Flask, current_app, g, jsonify, render_template, request
from pydantic import BaseModel, ConfigDict, ValidationError
from werkzeug.exceptions import HTTPException

from .machines import MachineError
from .root import Berth
from .sessions import SessionError
from .store import SessionRecord
from .workshops import WorkshopError

log = logging.getLogger(__name__)

COOKIE_PREFIX = "berth_"
INSTRUCTOR_COOKIE = "berth-instructor"  # not berth_*: those are lesson cookies


class BerthFlask(Flask):
    """A Flask app wired to one Berth."""

    berth: Berth


def current_berth() -> Berth:
    """The Berth of the app serving this request."""
    return cast(BerthFlask, current_app).berth


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


# --- request bodies

class Body(BaseModel):
    """A JSON request body of one endpoint. Values are taken as JSON sent them (no "true"
    for true, no 7 for "7"); fields it does not declare are ignored. A field's description
    is the message the caller gets when that field is missing or wrong."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    not_an_object: ClassVar[str] = "Send a JSON object."


B = TypeVar("B", bound=Body)


def json_object(model: type[Body], optional: bool = False) -> dict[str, Any]:
    """The request's JSON object (`optional`: no body at all is an empty one)."""
    data = request.get_json(silent=True) if request.content_length or not optional else {}
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", model.not_an_object)
    return data


def validated(model: type[B], data: dict[str, Any]) -> B:
    """`data` as `model`; a field that does not fit is ApiError 400 bad_request, naming it."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problem = error.errors(include_url=False)[0]
        name = str(problem["loc"][0]) if problem["loc"] else ""
        field = model.model_fields.get(name)
        message = field.description if field and field.description else f'The field "{name}": {problem["msg"]}.'
        raise ApiError(400, "bad_request", message) from None


def json_body(model: type[B], optional: bool = False) -> B:
    """The request's JSON body as `model`, or ApiError 400 bad_request saying what is wrong."""
    return validated(model, json_object(model, optional))


# --- who is asking

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
    berth = current_berth()
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "token_required", "Send the token as 'Authorization: Bearer TOKEN'.")
        token = value.strip()
    else:
        token = cookie_credentials(session_id)
        if token is not None and request.method not in ("GET", "HEAD") \
                and not berth.origins(request.headers.get("Origin"), request.environ):
            raise ApiError(403, "foreign_origin",
                           "Requests from other web sites may not use this browser's session.")
    record = berth.sessions.authenticate(session_id, token)
    g.session_record = record
    return record


def instructor_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise WorkshopError(401, "token_required", "Send the token as 'Authorization: Bearer TOKEN'.")
        return value.strip()
    return request.cookies.get(INSTRUCTOR_COOKIE)


def require_instructor() -> None:
    """The instructor token, from Berth's own pages (or none: tools send no Origin). A
    page of another origin is refused whichever way it sends the token."""
    if not current_berth().origins(request.headers.get("Origin"), request.environ):
        raise WorkshopError(403, "foreign_origin", "Requests from other web sites may not act as the instructor.")
    current_berth().workshops.check_token(instructor_token())


def is_instructor() -> bool:
    try:
        require_instructor()
    except WorkshopError:
        return False
    return True


def ensure_ready() -> None:
    berth = current_berth()
    if berth.state != "ready":
        message = berth.problem or "Berth is still starting (preparing the engine and images); try again in a few seconds."
        raise ApiError(503, "not_ready", message)


# --- errors and headers, for every blueprint

def init_app(app: Flask) -> None:
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

    @app.errorhandler(sqlite3.OperationalError)
    def _store_busy(error: sqlite3.OperationalError):
        # another process held the progress store's lock past BERTH_STORE_WAIT
        log.warning("%s: the progress store: %s", request.path, error)
        return error_response(503, "store_busy", "Berth's progress store is busy (another program holds it); "
                                                 "try again in a moment. Nothing was lost.")

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
