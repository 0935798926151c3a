"""Pages and the JSON API (docs/api.md). Every API call about a session needs its token:
`Authorization: Bearer TOKEN`, or the browser's cookie holding the same token."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Flask, abort, jsonify, make_response, redirect, render_template, request, url_for
from pydantic import Field

from . import engine_view
from .machines import EngineUnavailable
from .sessions import SessionError
from .store import SessionRecord, iso
from .web import ApiError, Body, authenticated, cookie_name, current_berth, ensure_ready, is_instructor, json_body

log = logging.getLogger(__name__)

api = Blueprint("api", __name__, url_prefix="/api")
pages = Blueprint("pages", __name__)

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
    return current_berth().checker.task_list(record.id)


# --- API

@api.get("/lessons")
def lessons():
    library = current_berth().library
    return jsonify(lessons=[lesson.summary_json() for lesson in library.lessons.values()],
                   errors=[{"lesson": slug, "message": message} for slug, message in library.errors.items()])


class NewSession(Body):
    not_an_object = 'Send a JSON object such as {"lesson": "docker-images"}.'
    lesson: str = Field(min_length=1, description='The field "lesson" (a lesson slug) is required.')
    wait: bool = Field(False, description='The field "wait" must be true or false.')


@api.post("/sessions")
def create_session():
    body = json_body(NewSession)
    if current_berth().library.get(body.lesson) is None:
        raise ApiError(404, "unknown_lesson", f"There is no lesson {body.lesson!r}.")
    ensure_ready()
    record, token = current_berth().sessions.create(body.lesson, wait=body.wait, client=request.remote_addr)
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
    current_berth().checker.check_now(record.id)
    return jsonify(session_json(current_berth().sessions.get(record.id)))


@api.delete("/sessions/<session_id>")
def delete_session(session_id: str):
    record = authenticated(session_id)
    current_berth().sessions.end(record.id)
    response = make_response("", 204)
    response.delete_cookie(cookie_name(record.lesson), path="/")
    return response


@api.get("/sessions/<session_id>/machines/<machine_name>/engine")
def engine_picture(session_id: str, machine_name: str):
    """The machine engine's containers and images with their layers (the page's Engine
    panel); the page asks again when the `engine` event says the engine changed."""
    record = authenticated(session_id)
    berth = current_berth()
    machine = berth.sessions.machine(record.id, machine_name)
    found = engine_view.picture(berth.backend.engine(machine), machine.name)
    return jsonify({**found, "checked_at": iso(time.time())})


@pages.get("/healthz")
def healthz():
    """200 when Berth can start sessions, else 503. Anonymous callers (monitoring) get the
    status alone; with the instructor token, what is wrong and how Berth runs machines."""
    berth = current_berth()
    report: dict[str, Any] = {"status": "ok"}
    problems = []
    backend = berth.backend
    try:
        backend.ping()
        report["engine"] = "ok"
    except EngineUnavailable as error:
        problems.append(error.message)
        report["engine"] = "down"
    if report["engine"] == "ok":
        config = berth.config
        missing = backend.missing_images([config.machine_image, config.base_image])
        if config.machine_image in missing:
            problems.append(f"The machine image {config.machine_image} is missing: ./run serve builds it.")
        if config.base_image in missing:
            problems.append(f"The base image {config.base_image} is missing: ./run serve pulls or builds "
                            "one, or set BERTH_BASE_IMAGE.")
        report["machine_image"] = config.machine_image
        report["base_image"] = config.base_image
    machines = backend.describe()
    report["machines_run_with"] = machines.isolation_summary
    report["isolation"] = machines.isolation
    if machines.warning:
        report["warning"] = machines.warning
    if machines.mirror is not None:
        report["mirror"] = machines.mirror
    if machines.package_cache is not None:
        report["package_cache"] = machines.package_cache
    problems += machines.problems
    report["sessions"] = berth.store.count_active()
    # sessions made ahead of time, per lesson: warm (ready to take), filling, wanted
    report["pool"] = berth.pool.report()
    for slug, why in berth.pool.problems().items():
        if slug in report["pool"]:
            report["pool"][slug]["problem"] = why
    report["lesson_errors"] = len(berth.library.errors)
    if berth.state != "ready" and not problems:
        problems.append(berth.problem or "Berth is still starting.")
    status = 503 if problems else 200
    if problems:
        report["status"] = "unavailable"
        report["reason"] = " ".join(problems)
    if not is_instructor():
        # what monitoring needs; the engine, images, isolation and counts are for the operator
        report = {"status": report["status"], "detail": "with the instructor token"}
    return jsonify(report), status


# --- pages

@pages.get("/")
def index():
    """The chapter's lessons in order, each with this browser's progress in it (the session
    its cookie holds, while that session lasts)."""
    library = current_berth().library
    progress = {}
    for slug in library.lessons:
        record, _ = cookie_session(slug)
        if record is not None:
            tasks = task_list(record)
            progress[slug] = (sum(task["status"] == "done" for task in tasks), len(tasks))
    response = make_response(render_template("index.html", lessons=list(library.lessons.values()),
                                             errors=library.errors, progress=progress))
    return no_store(response) if progress else response


def cookie_session(slug: str) -> tuple[SessionRecord | None, str | None]:
    """The live session (and its token) this browser's cookie holds for a lesson, if any."""
    session_id, _, token = request.cookies.get(cookie_name(slug), "").partition(":")
    if not token:
        return None, None
    try:
        return current_berth().sessions.authenticate(session_id, token), token
    except SessionError:
        return None, None


def navigated_here() -> bool:
    """True for a page load the learner made on Berth itself: typed, bookmarked or a link on
    one of Berth's pages (Sec-Fetch-Site none or same-origin). Not for a link on another
    site, a page of another site loading ours, or a link preview (which sends no Sec-Fetch
    headers): those see the lesson with a button that starts it."""
    return (request.headers.get("Sec-Fetch-Site") in ("none", "same-origin")
            and request.headers.get("Sec-Fetch-Mode") == "navigate")


def start_session(slug: str):
    """A new session for this browser: its machines start, its cookie is set. A response
    that is not a page (the refusal) when it cannot."""
    berth = current_berth()
    lesson = berth.library.get(slug)
    if berth.state != "ready":
        message = berth.problem or "Berth is still starting; this page reloads by itself."
        return None, (render_template("unavailable.html", lesson=lesson, message=message), 503)
    try:
        record, token = berth.sessions.create(slug, client=request.remote_addr)
    except SessionError as error:
        return None, (render_template("unavailable.html", message=error.message, lesson=lesson), error.status)
    return (record, token), None


def no_store(response):
    """Lesson pages hold a live session: no cache (a shared computer's, a proxy's) keeps them."""
    response.headers["Cache-Control"] = "no-store"
    return response


@pages.get("/lessons/<slug>")
def lesson_page(slug: str):
    berth = current_berth()
    lesson = berth.library.get(slug)
    if lesson is None:
        abort(404, f"There is no lesson {slug!r}.")
    record, token = cookie_session(slug)
    fresh = False
    if record is None:
        if not navigated_here():
            return no_store(make_response(render_template("start.html", lesson=lesson)))
        started, refusal = start_session(slug)
        if refusal:
            return no_store(make_response(refusal))
        record, token = started
        fresh = True
    response = make_response(render_template("lesson.html", lesson=lesson, session=record,
                                             tasks=task_list(record), next_lesson=berth.library.after(slug),
                                             isolation_warning=berth.backend.describe().warning))
    if fresh:
        set_session_cookie(response, record, token)
    return no_store(response)


def set_session_cookie(response, record: SessionRecord, token: str) -> None:
    """The lesson's cookie holds the session and its token, out of the page's reach
    (HttpOnly): the page's requests and sockets carry it."""
    response.set_cookie(cookie_name(record.lesson), f"{record.id}:{token}", httponly=True, samesite="Strict",
                        secure=request.is_secure, path="/", max_age=current_berth().config.session_ttl)


@pages.post("/lessons/<slug>/start")
def start_lesson(slug: str):
    """The start page's button: a learner's click starts the machines."""
    berth = current_berth()
    if berth.library.get(slug) is None:
        abort(404, f"There is no lesson {slug!r}.")
    if not berth.origins(request.headers.get("Origin"), request.environ):
        abort(403, "Requests from other web sites may not start sessions.")
    response = redirect(url_for("pages.lesson_page", slug=slug), 303)
    if cookie_session(slug)[0] is None:
        started, refusal = start_session(slug)
        if refusal:
            return no_store(make_response(refusal))
        set_session_cookie(response, *started)
    return response


@pages.post("/lessons/<slug>/end")
def end_session(slug: str):
    """The page's "End session" button: remove the machines, forget the cookie."""
    berth = current_berth()
    if not berth.origins(request.headers.get("Origin"), request.environ):
        abort(403, "Requests from other web sites may not end this browser's session.")
    record, _ = cookie_session(slug)
    if record is not None:  # else already ended, or not ours: nothing to do
        berth.sessions.end(record.id)
    response = redirect(url_for("pages.index"))
    response.delete_cookie(cookie_name(slug), path="/")
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(api)
    app.register_blueprint(pages)
