"""The instructor's side of workshops on the web: the instructor page and dashboard, the
workshop API (docs/api.md, Workshops), the join page learners open and raised hands. The
logic lives in berth/workshops.py (Berth's `workshops` part); this module checks who is
asking. The live dashboard's namespace, /instructor, is in berth/sockets.py."""

from __future__ import annotations

import csv
import io
import logging
import time
from typing import Annotated, Any

from flask import Blueprint, Flask, Response, abort, jsonify, redirect, render_template, request, url_for
from pydantic import BeforeValidator, Field, model_validator

from .config import parse_duration
from .sessions import SessionError
from .views import cookie_session, session_json
from .web import (
    INSTRUCTOR_COOKIE,
    Body,
    authenticated,
    cookie_name,
    current_berth,
    ensure_ready,
    instructor_token,
    is_instructor,
    json_body,
    json_object,
    require_instructor,
    validated,
)
from .workshops import (
    DEFAULT_DURATION,
    DEFAULT_SEATS,
    LONGEST_DURATION,
    MOST_SEATS,
    TITLE_LIMIT,
    WorkshopError,
    Workshops,
    clean_text,
    display_code,
    normalize_code,
)

log = logging.getLogger(__name__)


api = Blueprint("workshops_api", __name__, url_prefix="/api")
pages = Blueprint("instructor", __name__)


def workshops() -> Workshops:
    return current_berth().workshops


def _find_to_join(code: str):
    limiter = current_berth().join_limiter
    address = request.remote_addr or ""
    limiter.check(address)
    try:
        return workshops().by_code(code)
    except WorkshopError:
        limiter.failed(address)
        raise


# --- the workshop API: its request bodies

def _whole_number(value: object) -> object:
    """12 or "12"; never true, 12.0 or "twelve"."""
    if isinstance(value, str):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not a whole number")
    return value


def _seconds(value: object) -> object:
    """5400 or a duration such as "90m"."""
    return parse_duration(value) if isinstance(value, str) else _whole_number(value)


class NewWorkshop(Body):
    lesson: str = Field(min_length=1, description='The field "lesson" (a lesson slug) is required.')
    title: str | None = Field(None, description='The field "title" must be text.')
    seats: Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=MOST_SEATS)] = Field(
        DEFAULT_SEATS, description=f'"seats" must be a whole number from 1 to {MOST_SEATS}.')
    expires_in: Annotated[int, BeforeValidator(_seconds), Field(ge=60, le=LONGEST_DURATION)] = Field(
        DEFAULT_DURATION, description='"expires_in" must be seconds (or a duration such as 90m) from 1 minute to 7 days.')

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: Any) -> Any:
        return {key: value for key, value in data.items() if value is not None} if isinstance(data, dict) else data


class Broadcast(Body):
    message: str = Field(description='The field "message" must be text.')


class Joining(Body):
    name: str = Field(description='The field "name" (the learner\'s name, as text) is required.')


class Hand(Body):
    not_an_object = 'Send a JSON object such as {"message": "..."} (or nothing).'
    message: str | None = Field(None, description='The field "message" must be text.')


# --- the workshop API

@api.post("/workshops")
def create_workshop():
    require_instructor()
    body = json_body(NewWorkshop)
    title = clean_text(body.title, "title", TITLE_LIMIT, required=False)
    record = workshops().create(body.lesson, title, body.seats, body.expires_in)
    data = workshops().summary_json(record)
    data["join_url"] = request.host_url.rstrip("/") + data["join_url"]
    response = jsonify(data)
    response.status_code = 201
    response.headers["Location"] = f"/api/workshops/{record.id}"
    return response


@api.get("/workshops")
def list_workshops():
    require_instructor()
    return jsonify(workshops=[workshops().summary_json(w) for w in current_berth().store.workshops()])


@api.get("/workshops/<workshop_id>")
def get_workshop(workshop_id: str):
    require_instructor()
    data = workshops().workshop_json(workshops().get(workshop_id))
    data["join_url"] = request.host_url.rstrip("/") + data["join_url"]
    return jsonify(data)


@api.get("/workshops/<workshop_id>/results.csv")
def results(workshop_id: str):
    require_instructor()
    workshop = workshops().get(workshop_id)
    out = io.StringIO()
    writer = csv.writer(out)
    for row in workshops().results(workshop.id):
        writer.writerow([_no_formula(cell) for cell in row])
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="workshop-{workshop.code}-results.csv"'
    return response


def _no_formula(cell: str) -> str:
    """A learner's name such as '=HYPERLINK(...)' stays text in a spreadsheet."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


@api.post("/workshops/<workshop_id>/broadcast")
def broadcast(workshop_id: str):
    require_instructor()
    data = json_object(Broadcast)
    workshops().get(workshop_id)  # an unknown workshop is told before the message is looked at
    reached = workshops().broadcast(workshop_id, validated(Broadcast, data).message)
    return jsonify(reached=reached)


@api.delete("/workshops/<workshop_id>/learners/<session_id>/help")
def clear_hand(workshop_id: str, session_id: str):
    require_instructor()
    workshop = workshops().get(workshop_id)
    found = workshops().learner_of(session_id)
    if found is None or found[1].id != workshop.id:
        raise WorkshopError(404, "unknown_learner", "There is no such learner in this workshop.")
    workshops().lower_hand(session_id)
    return "", 204


@api.delete("/workshops/<workshop_id>")
def end_workshop(workshop_id: str):
    require_instructor()
    workshops().end(workshop_id)
    return "", 204


@api.get("/capacity")
def get_capacity():
    require_instructor()
    return jsonify(capacity())


@api.post("/workshops/<code>/join")
def join(code: str):
    data = json_object(Joining)
    workshop = _find_to_join(code)  # an unknown code is told (and counted) before the name is looked at
    name = validated(Joining, data).name
    ensure_ready()
    workshop, record, token = workshops().join(workshop.code, name)
    data = session_json(record, token)
    data["workshop"] = {"id": workshop.id, "code": workshop.code, "title": workshop.title}
    response = jsonify(data)
    response.status_code = 201
    response.headers["Location"] = f"/api/sessions/{record.id}"
    return response


@api.post("/sessions/<session_id>/help")
def raise_hand(session_id: str):
    record = authenticated(session_id)
    body = json_body(Hand, optional=True)
    return jsonify(help=workshops().raise_hand(record.id, body.message)), 201


@api.delete("/sessions/<session_id>/help")
def lower_hand(session_id: str):
    record = authenticated(session_id)
    workshops().lower_hand(record.id)
    return "", 204


# --- capacity

def capacity() -> dict[str, Any]:
    """What this server is running and has room for, before inviting more people."""
    state = current_berth()
    store = state.store
    active = store.sessions()
    machines = sum(1 for s in active for m in s.machines if m.status in ("ready", "starting"))
    memory: dict[str, Any] = {"per_machine_limit": state.config.machine_memory, **state.backend.memory()}
    return {"sessions": store.count_active(), "max_sessions": state.config.max_sessions,
            "machines": machines, "memory": memory,
            "made_ahead": state.pool.counted()}  # sessions the pool holds ready (they count against the maximum)


# --- pages

@pages.get("/instructor")
def instructor_home():
    token = request.args.get("token")
    if token is not None:  # the link printed at start-up: keep the token in a cookie, not the URL
        if not workshops().is_instructor(token):
            return render_template("instructor_login.html", problem="That link's token is not the instructor token."), 403
        response = redirect(url_for("instructor.instructor_home"))
        _set_cookie(response, token)
        return response
    if not is_instructor():
        return render_template("instructor_login.html", problem=None), 401
    lessons = list(current_berth().library.lessons.values())
    listed = [workshops().summary_json(w) for w in current_berth().store.workshops()]
    for item in listed:
        item["seated"] = len(workshops().seated(item["id"]))
    return render_template("instructor.html", lessons=lessons, workshops=listed, capacity=capacity())


@pages.post("/instructor/login")
def instructor_login():
    if not current_berth().origins(request.headers.get("Origin"), request.environ):
        abort(403, "Requests from other web sites may not sign in.")
    token = (request.form.get("token") or "").strip()
    if not workshops().is_instructor(token):
        return render_template("instructor_login.html", problem="That is not the instructor token."), 403
    response = redirect(url_for("instructor.instructor_home"))
    _set_cookie(response, token)
    return response


@pages.post("/instructor/workshops")
def instructor_create():
    """The instructor page's form (the API takes JSON)."""
    if not current_berth().origins(request.headers.get("Origin"), request.environ) or not is_instructor():
        abort(403, "Only the instructor may create workshops.")
    form = request.form
    try:
        seats = int(form.get("seats") or DEFAULT_SEATS)
        minutes = int(form.get("minutes") or DEFAULT_DURATION // 60)
    except ValueError:
        abort(400, "Seats and minutes are whole numbers.")
    if not 1 <= seats <= MOST_SEATS or not 1 <= minutes <= LONGEST_DURATION // 60:
        abort(400, f"Seats are 1 to {MOST_SEATS}; a workshop lasts 1 minute to 7 days.")
    title = clean_text(form.get("title"), "title", TITLE_LIMIT, required=False)
    record = workshops().create(form.get("lesson", ""), title, seats, minutes * 60)
    return redirect(url_for("instructor.dashboard", workshop_id=record.id))


@pages.get("/instructor/workshops/<workshop_id>")
def dashboard(workshop_id: str):
    if not is_instructor():
        return redirect(url_for("instructor.instructor_home"))
    workshop = workshops().get(workshop_id)
    lesson = current_berth().library.get(workshop.lesson)
    return render_template("workshop.html", workshop=workshops().summary_json(workshop), lesson=lesson,
                           join_url=request.host_url.rstrip("/") + f"/join/{workshop.code}",
                           token=instructor_token(), capacity=capacity())


def _set_cookie(response, token: str) -> None:
    response.set_cookie(INSTRUCTOR_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure, path="/",
                        max_age=30 * 86400)


def _seat_of_browser(workshop) -> tuple[Any, Any] | None:
    """The live session of this workshop that this browser's lesson cookie holds, if any."""
    record, _ = cookie_session(workshop.lesson)
    if record is None:
        return None
    found = workshops().learner_of(record.id)
    if found is None or found[1].id != workshop.id:
        return None
    return found[0], record


@pages.get("/join")
def join_any():
    """The address an instructor reads out: a box for the code."""
    code = request.args.get("code")
    if code:
        return redirect(url_for("instructor.join_page", code=normalize_code(code)[:16] or "-"))
    return render_template("join.html", workshop=None, problem=None, code=None)


@pages.get("/join/<code>")
def join_page(code: str):
    try:
        workshop = _find_to_join(code)
    except WorkshopError as error:
        return render_template("join.html", workshop=None, problem=error.message, code=code), error.status
    seat = _seat_of_browser(workshop)
    problem = None
    if seat is None and workshop.over():
        problem = f"The workshop “{workshop.title}” has ended."
    elif seat is None and len(workshops().seated(workshop.id)) >= workshop.seats:
        problem = f"The workshop “{workshop.title}” is full: all {workshop.seats} seats are taken."
    return render_template("join.html", workshop=workshop, code=display_code(workshop.code), problem=problem,
                           learner=seat[0] if seat else None, show_form=seat is None and problem is None,
                           lesson=current_berth().library.get(workshop.lesson))


@pages.post("/join/<code>")
def join_form(code: str):
    """The join page's form: a seat, the lesson cookie, and on to the lesson."""
    state = current_berth()
    if not state.origins(request.headers.get("Origin"), request.environ):
        abort(403, "Requests from other web sites may not join workshops.")
    try:
        workshop = _find_to_join(code)
    except WorkshopError as error:
        return render_template("join.html", workshop=None, problem=error.message, code=code), error.status
    lesson = state.library.get(workshop.lesson)
    seat = _seat_of_browser(workshop)
    if seat is not None:  # this browser is in already: the same session again
        return redirect(url_for("pages.lesson_page", slug=workshop.lesson))
    name = request.form.get("name", "")
    try:
        if state.state != "ready":
            raise WorkshopError(503, "not_ready", state.problem or "Berth is still starting; try again in a moment.")
        workshop, record, token = workshops().join(workshop.code, name)
    except SessionError as error:
        return render_template("join.html", workshop=workshop, code=display_code(workshop.code),
                               problem=error.message, name=name, lesson=lesson,
                               show_form=error.code not in ("workshop_ended", "workshop_full")), error.status
    response = redirect(url_for("pages.lesson_page", slug=workshop.lesson))
    response.set_cookie(cookie_name(workshop.lesson), f"{record.id}:{token}", httponly=True, samesite="Strict",
                        secure=request.is_secure, path="/", max_age=max(60, int(workshop.expires_at - time.time())))
    return response


def seat_for_page(session_id: str) -> dict[str, Any] | None:
    """For the lesson page (a template global): the workshop a session sits in, if any."""
    found = workshops().learner_of(session_id)
    if found is None:
        return None
    learner, workshop = found
    return {"title": workshop.title, "code": display_code(workshop.code), "name": learner.name,
            "help": learner.help_at is not None, "help_message": learner.help_message or "",
            "notice": workshop.notice, "notice_at": workshops().summary_json(workshop)["notice"]["at"]
            if workshop.notice else None}


def init_app(app: Flask) -> None:
    app.register_blueprint(api)
    app.register_blueprint(pages)
    app.add_template_global(seat_for_page, "workshop_seat")
