"""Lessons are data: a folder per lesson under lessons/, with a validated lesson.yaml
(machines, variables, tasks with checks, hints and solutions) and Markdown text.
Loading and rendering need no Docker."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nh3
import yaml
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

log = logging.getLogger(__name__)

NAME = r"^[a-z][a-z0-9-]{0,30}$"
VARIABLE = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MachineSpec(Strict):
    name: str = Field(pattern=NAME)
    title: str = ""


class Variable(Strict):
    default: str
    setting: str | None = Field(default=None, description="BERTH_* setting that overrides the default")


class CheckSpec(BaseModel):
    """One check of a task: a kind from the check library and its parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Step(Strict):
    """A command of a solution, run in a machine by the lesson's self-test."""

    machine: str = Field(pattern=NAME)
    run: str


class TaskSpec(Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,40}$")
    title: str = Field(min_length=1)
    text: str = ""
    needs: list[str] = []
    checks: list[CheckSpec] = Field(min_length=1)
    hints: list[str] = []
    solution: list[Step] = []


class LessonSpec(Strict):
    title: str = Field(min_length=1)
    summary: str = ""
    order: int = 100
    machines: list[MachineSpec] = Field(min_length=1)
    variables: dict[str, Variable] = {}
    images: list[str] = Field(default=[], description="images machines pull; the mirror serves them")
    preload: list[str] | None = Field(default=None, description="images already in a machine taken from the "
                                      "pool (default: images); [] when pulling is the lesson's task")
    text: str = ""
    tasks: list[TaskSpec] = Field(min_length=1)

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, value: dict[str, Variable]) -> dict[str, Variable]:
        for name in value:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                raise ValueError(f"variable name {name!r} must be lower case letters, digits and _")
        return value

    @model_validator(mode="after")
    def _references(self) -> LessonSpec:
        machines = [m.name for m in self.machines]
        if len(set(machines)) != len(machines):
            raise ValueError("two machines have the same name")
        ids = [t.id for t in self.tasks]
        if len(set(ids)) != len(ids):
            raise ValueError("two tasks have the same id")
        for index, task in enumerate(self.tasks):
            for need in task.needs:
                if need not in ids[:index]:
                    raise ValueError(f"task {task.id!r} needs {need!r}, which is not a task before it")
            for step in task.solution:
                if step.machine not in machines:
                    raise ValueError(f"task {task.id!r}: solution runs in unknown machine {step.machine!r}")
            for check in task.checks:
                for machine in _machines_named(check.params):
                    if machine not in machines:
                        raise ValueError(f"task {task.id!r}: check {check.kind!r} names unknown machine {machine!r}")
        return self


def _machines_named(value: Any) -> list[str]:
    """Every `machine: NAME` in a check's parameters, nested ones included (image: {machine: ...})."""
    if isinstance(value, dict):
        named = [value["machine"]] if isinstance(value.get("machine"), str) else []
        return named + [m for v in value.values() for m in _machines_named(v)]
    if isinstance(value, list):
        return [m for v in value for m in _machines_named(v)]
    return []


class LessonError(ValueError):
    """A lesson file has a mistake; the message names the file, the place and the problem."""


@dataclass(frozen=True)
class Task:
    id: str
    title: str
    html: str
    needs: tuple[str, ...]
    checks: tuple[CheckSpec, ...]
    hints_html: tuple[str, ...]
    solution: tuple[Step, ...]


@dataclass(frozen=True)
class Lesson:
    slug: str
    title: str
    summary: str
    order: int
    machines: tuple[str, ...]
    images: tuple[str, ...]
    preload: tuple[str, ...]  # images a machine made ahead of time already holds
    variables: dict[str, str]
    html: str
    tasks: tuple[Task, ...]

    def task(self, task_id: str) -> Task | None:
        return next((t for t in self.tasks if t.id == task_id), None)

    def summary_json(self) -> dict:
        return {
            "slug": self.slug, "title": self.title, "summary": self.summary,
            "machines": list(self.machines),
            "tasks": [{"id": t.id, "title": t.title} for t in self.tasks],
        }


# --- Markdown

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_ALLOWED_TAGS = {
    "a", "p", "br", "hr", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "table", "thead", "tbody", "tr", "th", "td", "img", "kbd", "span",
}
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"}, "img": {"src", "alt", "title"}, "code": {"class"},
    "pre": {"data-machine"}, "th": {"align"}, "td": {"align"},
}


def _fence(renderer, tokens, index, options, env):
    """Code blocks: ```sh or ```sh colleague (the machine a Run button types into)."""
    token = tokens[index]
    words = token.info.split()
    language = re.sub(r"[^a-z0-9-]", "", words[0].lower()) if words else ""
    machine = words[1] if len(words) > 1 and re.fullmatch(NAME, words[1]) else ""
    code = escapeHtml(token.content)
    attrs = f' data-machine="{machine}"' if machine else ""
    css = f' class="language-{language}"' if language else ""
    return f"<pre{attrs}><code{css}>{code}</code></pre>\n"


_markdown.add_render_rule("fence", _fence)


def render_markdown(text: str) -> str:
    """Markdown to HTML that cannot carry script: raw HTML is escaped by the parser, and
    the result is cleaned to an allow-list of tags and attributes."""
    html = _markdown.render(text)
    return nh3.clean(html, tags=_ALLOWED_TAGS, attributes=_ALLOWED_ATTRIBUTES,
                     url_schemes={"http", "https", "mailto"}, link_rel="noopener noreferrer")


def substitute(text: str, variables: dict[str, str]) -> str:
    """Replace {{ name }} with the variable's value; unknown names stay as they are."""
    return VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)


def _substitute_data(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        return substitute(value, variables)
    if isinstance(value, list):
        return [_substitute_data(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _substitute_data(v, variables) for k, v in value.items()}
    return value


# --- loading

def _location(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def load_lesson(folder: Path, settings: dict[str, str], known_kinds: dict[str, Any] | None = None) -> Lesson:
    """Load and validate one lesson folder. `settings` are BERTH_* values that may override
    variables; `known_kinds` maps check kinds to their parameter models."""
    spec_path = folder / "lesson.yaml"
    where = str(spec_path)
    try:
        raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LessonError(f"{where}: missing (every lesson folder needs a lesson.yaml)") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        place = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(error, "problem", None) or str(error)
        raise LessonError(f"{where}: {place}: not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LessonError(f"{where}: cannot be read: {error}") from None
    if not isinstance(raw, dict):
        raise LessonError(f"{where}: should be a mapping of title, machines, tasks, ...")
    try:
        spec = LessonSpec.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{_location(e)}: {e['msg']}" for e in error.errors()[:5])
        raise LessonError(f"{where}: {problems}") from None

    variables = {name: settings.get(v.setting or "", v.default) or v.default for name, v in spec.variables.items()}

    def text_of(value: str, place: str) -> str:
        """A text field holds Markdown, or the name of a .md file in the lesson folder."""
        if value.endswith(".md") and "\n" not in value:
            path = (folder / value).resolve()
            if folder.resolve() not in path.parents:
                raise LessonError(f"{where}: {place}: {value} is outside the lesson folder")
            try:
                value = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise LessonError(f"{where}: {place}: cannot read {value}: {error}") from None
        return render_markdown(substitute(value, variables))

    tasks = []
    for index, task in enumerate(spec.tasks):
        checks = []
        for number, check in enumerate(task.checks):
            params = _substitute_data(check.params, variables)
            if known_kinds is not None:
                model = known_kinds.get(check.kind)
                place = f"tasks.{index}.checks.{number}"
                if model is None:
                    raise LessonError(f"{where}: {place}: unknown check kind {check.kind!r} "
                                      f"(known: {', '.join(sorted(known_kinds))})")
                try:
                    model.model_validate(params)
                except ValidationError as error:
                    problems = "; ".join(f"{_location(e)}: {e['msg']}" for e in error.errors()[:3])
                    raise LessonError(f"{where}: {place} ({check.kind}): {problems}") from None
            checks.append(CheckSpec(kind=check.kind, **params))
        tasks.append(Task(
            id=task.id, title=substitute(task.title, variables),
            html=text_of(task.text, f"tasks.{index}.text"),
            needs=tuple(task.needs), checks=tuple(checks),
            hints_html=tuple(render_markdown(substitute(h, variables)) for h in task.hints),
            solution=tuple(Step(machine=s.machine, run=substitute(s.run, variables)) for s in task.solution),
        ))
    return Lesson(
        slug=folder.name, title=spec.title, summary=spec.summary, order=spec.order,
        machines=tuple(m.name for m in spec.machines),
        images=tuple(substitute(i, variables) for i in spec.images),
        preload=tuple(substitute(i, variables) for i in (spec.images if spec.preload is None else spec.preload)),
        variables=variables, html=text_of(spec.text, "text"), tasks=tuple(tasks),
    )


class Library:
    """All lessons of a folder. A lesson with a mistake is left out and its error kept
    (shown on the index page and logged); it never takes the server down."""

    def __init__(self, folder: Path, settings: dict[str, str], known_kinds: dict[str, Any] | None = None):
        self.folder = folder
        self.settings = settings
        self.known_kinds = known_kinds
        self.lessons: dict[str, Lesson] = {}
        self.errors: dict[str, str] = {}
        self.reload()

    def reload(self) -> None:
        lessons, errors = {}, {}
        folders = sorted(p for p in self.folder.iterdir() if p.is_dir()) if self.folder.is_dir() else []
        for folder in folders:
            if not re.fullmatch(NAME, folder.name):
                continue
            try:
                lessons[folder.name] = load_lesson(folder, self.settings, self.known_kinds)
            except LessonError as error:
                errors[folder.name] = str(error)
                log.error("lesson %s left out: %s", folder.name, error)
            except Exception as error:  # a lesson must never take the server down
                errors[folder.name] = f"{folder / 'lesson.yaml'}: cannot be loaded: {type(error).__name__}: {error}"
                log.exception("lesson %s left out", folder.name)
        self.lessons = dict(sorted(lessons.items(), key=lambda kv: (kv[1].order, kv[0])))
        self.errors = errors

    def get(self, slug: str) -> Lesson | None:
        return self.lessons.get(slug)

    def after(self, slug: str) -> Lesson | None:
        """The lesson that follows this one in the chapter's order, if any."""
        slugs = list(self.lessons)
        index = slugs.index(slug) if slug in slugs else len(slugs)
        return self.lessons[slugs[index + 1]] if index + 1 < len(slugs) else None

    def images(self) -> list[str]:
        """Every image a lesson uses or preloads: the mirror serves them all."""
        return list(dict.fromkeys(image for lesson in self.lessons.values()
                                  for image in (*lesson.images, *lesson.preload)))
