"""The lesson format without Docker: the real lesson loads, broken lessons are left out with
a message naming file, place and problem, and nothing in a lesson can inject script."""

from __future__ import annotations

import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

from berth.checks import KINDS
from berth.config import PROJECT_DIR
from berth.lessons import LessonError, Library, load_lesson, render_markdown

KNOWN = {name: kind.params for name, kind in KINDS.items()}
LESSON = PROJECT_DIR / "lessons" / "docker-images"

MINIMAL = """
title: Tiny
machines: [{name: box}]
tasks:
  - id: one
    title: Make a file
    checks: [{kind: file, machine: box, path: /root/x}]
    solution: [{machine: box, run: touch /root/x}]
"""


def write(folder: Path, text: str, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lesson.yaml").write_text(textwrap.dedent(text))
    for name, content in files.items():
        (folder / name.replace("__", "/")).write_text(content)
    return folder


def problem(folder: Path, settings: dict | None = None) -> str:
    with pytest.raises(LessonError) as raised:
        load_lesson(folder, settings or {}, KNOWN)
    return str(raised.value)


# --- the real lesson

def test_docker_images_lesson_loads_with_the_base_image_shown():
    lesson = load_lesson(LESSON, {"BERTH_BASE_IMAGE": "debian:bookworm"}, KNOWN)
    assert [t.id for t in lesson.tasks] == ["run", "customize", "commit", "save", "load"]
    assert lesson.machines == ("workstation", "colleague")
    assert lesson.images == ("debian:bookworm",)
    run = lesson.tasks[0]
    assert "debian:bookworm" in run.html and "{{" not in run.html
    assert run.checks[0].params["image"] == "debian:bookworm"
    assert run.solution[0].run.endswith("-p 3000:3000 debian:bookworm")  # the chapter's command: the image runs bash
    assert all(task.solution and task.hints_html for task in lesson.tasks)
    assert [t.needs for t in lesson.tasks[1:]] == [("run",), ("customize",), ("commit",), ("save",)]
    # Run buttons: the fences name the machine they type into
    assert '<pre data-machine="workstation"><code class="language-sh">' in run.html
    assert '<pre data-machine="colleague">' in lesson.tasks[4].html
    # the text teaches what the issue asks for
    text = (lesson.html + "".join(t.html for t in lesson.tasks)).lower()
    for topic in ("layer", "cache", "registr", "docker commit", "docker save", "docker load", "export", "import"):
        assert topic in text, topic
    assert "python3" in lesson.tasks[1].html and "there is no package called" in lesson.tasks[1].html


def test_the_default_base_image_without_a_setting():
    lesson = load_lesson(LESSON, {}, KNOWN)
    assert "ubuntu:latest" in lesson.tasks[0].html
    assert lesson.tasks[0].checks[0].params["image"] == "ubuntu:latest"


def test_the_last_solution_ends_with_the_page_on_port_3000_of_colleague():
    last = load_lesson(LESSON, {}, KNOWN).tasks[-1].solution[-1]
    assert last.machine == "colleague" and "http://localhost:3000" in last.run


# --- broken lessons: file, place, problem

def test_invalid_yaml_names_line_and_column(tmp_path):
    folder = write(tmp_path / "bad", "title: x\nmachines: [unclosed\n")
    message = problem(folder)
    assert str(folder / "lesson.yaml") in message and "line 3" in message and "not valid YAML" in message


def test_missing_lesson_file(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "missing" in problem(tmp_path / "empty")


@pytest.mark.parametrize("change, place, words", [
    ("kind: file,", "tasks.0.checks.0", "unknown check kind 'nope'"),
    ("path: /root/x", "tasks.0.checks.0 (file)", "path"),
    ("title: Make a file", "tasks.0.title", "at least 1 character"),
    ("machines: [{name: box}]", "machines", "at least 1 item"),
    ("id: one", "tasks.0.id", "pattern"),
])
def test_validation_errors_name_the_place(tmp_path, change, place, words):
    replacement = {
        "kind: file,": "kind: nope,",
        "path: /root/x": "path: relative/x",
        "title: Make a file": "title: ''",
        "machines: [{name: box}]": "machines: []",
        "id: one": "id: One Two",
    }[change]
    folder = write(tmp_path / "broken", MINIMAL.replace(change, replacement))
    message = problem(folder)
    assert str(folder / "lesson.yaml") in message and place in message and words in message, message


def test_check_parameters_are_validated_against_the_kind(tmp_path):
    text = MINIMAL.replace("checks: [{kind: file, machine: box, path: /root/x}]",
                           "checks: [{kind: container, machine: box, name: c, publish: [http]}]")
    message = problem(write(tmp_path / "ports", text))
    assert "tasks.0.checks.0 (container)" in message and "'http' is not a port" in message


def test_unknown_machines_are_found_in_nested_parameters(tmp_path):
    text = MINIMAL.replace("checks: [{kind: file, machine: box, path: /root/x}]",
                           "checks: [{kind: image_loaded, machine: box, image: {machine: elsewhere, committed_from: c}}]")
    message = problem(write(tmp_path / "nested", text))
    assert "unknown machine 'elsewhere'" in message


def test_needs_must_name_an_earlier_task(tmp_path):
    text = MINIMAL.replace("title: Make a file", "title: Make a file\n    needs: [later]")
    assert "needs 'later', which is not a task before it" in problem(write(tmp_path / "needs", text))


def test_solution_in_an_unknown_machine(tmp_path):
    text = MINIMAL.replace("solution: [{machine: box,", "solution: [{machine: other,")
    assert "solution runs in unknown machine 'other'" in problem(write(tmp_path / "sol", text))


def test_text_files_must_exist_and_stay_in_the_folder(tmp_path):
    text = MINIMAL.replace("title: Tiny", "title: Tiny\ntext: ../secret.md")
    (tmp_path / "secret.md").write_text("outside")
    assert "outside the lesson folder" in problem(write(tmp_path / "escape", text))
    text = MINIMAL.replace("title: Tiny", "title: Tiny\ntext: gone.md")
    message = problem(write(tmp_path / "gone", text))
    assert "text: cannot read gone.md" in message


def test_a_broken_lesson_is_left_out_and_the_others_stay(tmp_path):
    write(tmp_path / "good", MINIMAL)
    write(tmp_path / "bad", MINIMAL.replace("kind: file,", "kind: nope,"))
    library = Library(tmp_path, {}, KNOWN)
    assert list(library.lessons) == ["good"]
    assert "unknown check kind" in library.errors["bad"] and "tasks.0.checks.0" in library.errors["bad"]


def test_variables_substitute_and_settings_override(tmp_path):
    text = MINIMAL.replace("title: Tiny", "title: Tiny\nvariables: {img: {default: 'a:1', setting: BERTH_X}}\n"
                                          "text: 'Use {{ img }} and {{ unknown }}'")
    folder = write(tmp_path / "vars", text)
    assert "Use a:1 and {{ unknown }}" in load_lesson(folder, {}, KNOWN).html
    assert "Use b:2" in load_lesson(folder, {"BERTH_X": "b:2"}, KNOWN).html


# --- sanitizing

@pytest.mark.parametrize("markdown", [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "<a href='javascript:alert(1)'>x</a>",
    "![x](javascript:alert(1))",
    '```sh "><script>alert(1)</script>\nls\n```',
    "```sh workstation\"onmouseover=alert(1)\nls\n```",
    "<iframe src='https://example.com'></iframe>",
    "<style>body{display:none}</style>",
])
def test_nothing_in_a_lesson_can_inject_script(markdown):
    elements = parse(render_markdown(markdown))
    for tag, attrs in elements:
        assert tag not in ("script", "iframe", "style", "object", "embed"), (markdown, tag)
        for name, value in attrs:
            assert not name.startswith("on"), (markdown, name)
            assert not (value or "").strip().lower().startswith("javascript:"), (markdown, value)


def parse(html: str) -> list[tuple[str, list]]:
    elements: list[tuple[str, list]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            elements.append((tag, attrs))

    Collect().feed(html)
    return elements


def test_code_fences_carry_language_and_machine():
    html = render_markdown("```sh colleague\ndocker load -i my-web.tar\n```")
    assert html.startswith('<pre data-machine="colleague"><code class="language-sh">docker load -i my-web.tar')
    assert 'data-machine' not in render_markdown("```sh Not_A_Machine!\nls\n```")
    assert "&lt;h1&gt;" in render_markdown("```sh\necho '<h1>x</h1>'\n```")


def test_every_check_kind_is_in_the_author_guide():
    guide = (PROJECT_DIR / "docs" / "lessons.md").read_text()
    for name, kind in KINDS.items():
        heading = f"### `{name}`"
        assert heading in guide, f"docs/lessons.md lacks {heading}"
        section = guide.split(heading, 1)[1].split("\n### ", 1)[0]
        for field in kind.params.model_fields:
            assert f"`{field}`" in section, f"docs/lessons.md: {name} does not explain {field}"
