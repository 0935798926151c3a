"""The lessons' self-test: lessons pass it in fresh real machines and in sessions from the pool
(docker-images is walked in the browser instead, see COLD below), and a lesson whose checks
prove nothing or whose solution misses is reported as broken."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from berth.config import PROJECT_DIR
from berth.lessons import Library

pytestmark = pytest.mark.engine


def selftest(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "berth.selftest", *args], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=1200, env={**os.environ, **(env or {})})


# Each lesson is walked once: in fresh machines or in a session from the pool (the two ways a
# learner gets machines), or, for docker-images, typed into the page by
# tests/test_browser_lesson.py, which holds each task pending until its solution and done after
# it, as the self-test does. Walking all four in fresh machines and two again from the pool took
# 281 s of a 1747 s suite that ran close to CI's limit (docs/performance.md, "The test suite").
COLD = ("export-import",)
POOLED = ("image-layers", "image-basics")
IN_THE_BROWSER = ("docker-images",)


def test_every_lesson_is_walked_by_a_test():
    library = Library(PROJECT_DIR / "lessons", dict(os.environ))
    assert not library.errors, library.errors
    assert sorted(COLD + POOLED + IN_THE_BROWSER) == sorted(library.lessons), "a lesson no test walks"


def assert_walked(out: str, slugs: tuple[str, ...]) -> None:
    library = Library(PROJECT_DIR / "lessons", dict(os.environ))
    for slug in slugs:
        assert f"{slug}: ok in " in out, out
        for task in library.lessons[slug].tasks:
            assert f"  {task.id:<12} pending at first: " in out, out
            assert f"  {task.id:<12} done (solution " in out, out


def test_lessons_pass_their_self_test_in_fresh_machines():
    result = selftest(*COLD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-test: all lessons pass" in result.stdout
    assert_walked(result.stdout, COLD)


def test_lessons_pass_their_self_test_in_sessions_taken_from_the_pool():
    """A learner usually gets a session made ahead of time, its images preloaded: the tasks
    are pending at first and done after their solutions there too (image-layers preloads
    the base image, as docker-images does; image-basics preloads nothing, as its first task is
    the learner's pull)."""
    result = selftest("--pool", *POOLED)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "image-layers: session " in out and "(taken from the pool, preloaded: " in out, out
    assert "(taken from the pool, preloaded: nothing)" in out, out  # image-basics
    assert_walked(out, POOLED)


BROKEN = """
title: Broken on purpose
machines: [{name: box}]
tasks:
  - id: proves-nothing
    title: Done before anything was done
    checks: [{kind: file, machine: box, path: /etc/hostname}]
    solution: [{machine: box, run: "true"}]
  - id: misses
    title: The solution does not do what the check wants
    checks: [{kind: file, machine: box, path: /root/x, contains: wanted}]
    solution: [{machine: box, run: echo other > /root/x}]
"""


def test_a_broken_lesson_fails_with_reasons(tmp_path):
    lesson = tmp_path / "lessons" / "broken"
    lesson.mkdir(parents=True)
    (lesson / "lesson.yaml").write_text(textwrap.dedent(BROKEN))
    result = selftest("--wait", "2", "broken", env={"BERTH_LESSONS_DIR": str(tmp_path / "lessons")})
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "FAIL task proves-nothing is done before anything was done: its checks prove nothing" in out
    assert "FAIL task misses is still pending 2 s after its solution: /root/x on box does not contain 'wanted'." in out
    assert "self-test: FAILED: broken" in out


def test_an_unknown_lesson_fails():
    result = selftest("no-such-lesson")
    assert result.returncode == 1 and "there is no lesson 'no-such-lesson'" in result.stdout
