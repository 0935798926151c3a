"""Self-test of lessons: `python -m berth.selftest [SLUG...]` (all lessons without SLUG).

For each lesson, in fresh real machines: every task must be pending at first; then, task
by task, its solution runs in the machines it names and the checker must then mark the
task done. Exit status 0 when every lesson passes. A lesson whose solution does not pass
its own checks is broken, whatever the reason."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .machines import MachineError
from .root import Berth

DONE_WITHIN = 30.0  # seconds a task may take to show as done after its solution ran
WARM_WITHIN = 300.0  # seconds the pool may take to make a lesson's session ahead of time (--pool)
STEP_TIMEOUT = 600  # seconds one solution step may run


@dataclass
class Report:
    lesson: str
    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def say(self, text: str) -> None:
        self.lines.append(text)
        print(text, flush=True)

    def fail(self, text: str) -> None:
        self.problems.append(text)
        self.say(f"  FAIL {text}")


def wait_until_done(checked_now: Callable[[], list[dict]], task_id: str, within: float = DONE_WITHIN) -> dict:
    """Check until the task is done or `within` seconds have passed; its last state (as in
    the API's task list). `checked_now` checks and returns the task list: the self-test asks
    its checker, tests of a running server ask the API, so both wait alike."""
    deadline = time.monotonic() + within
    while True:
        state = next(t for t in checked_now() if t["id"] == task_id)
        if state["status"] == "done" or time.monotonic() > deadline:
            return state
        time.sleep(1)


def missing(state: dict) -> str:
    """What a pending task still lacks, in its checks' words."""
    return "; ".join(f["message"] for f in state["feedback"] if not f["ok"]) or "no feedback"


def wait_for_kit(berth: Berth, slug: str, within: float = WARM_WITHIN) -> bool:
    """Wait until the pool holds a warm kit of the lesson (--pool)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if berth.pool.report().get(slug, {}).get("warm"):
            return True
        time.sleep(0.5)
    return False


def selftest_lesson(berth: Berth, slug: str, wait: float = DONE_WITHIN, pooled: bool = False) -> Report:
    report = Report(slug)
    checker = berth.checker
    lesson = berth.library.get(slug)
    if lesson is None:
        report.fail(berth.library.errors.get(slug, f"there is no lesson {slug!r}"))
        return report
    for task in lesson.tasks:
        if not task.solution:
            report.fail(f"task {task.id} has no solution to test")
    if not report.ok:
        return report
    if pooled and not wait_for_kit(berth, slug):
        report.fail(f"the pool made no session of the lesson ahead of time in {WARM_WITHIN:.0f} s: "
                    f"{berth.pool.problems().get(slug, 'no reason known')}")
        return report
    started = time.monotonic()
    record, _ = berth.sessions.create(slug, wait=True)
    try:
        record = berth.sessions.get(record.id)
        failed = [f"{m.name}: {m.message}" for m in record.machines if m.status != "ready"]
        if failed:
            report.fail("machines did not start: " + "; ".join(failed))
            return report
        taken = berth.store.facts(record.id, "start", "from") == {"pool"}
        if pooled and not taken:
            report.fail("the session was started cold, not taken from the pool")
            return report
        report.say(f"{slug}: session {record.id}, machines {', '.join(lesson.machines)} ready "
                   f"in {time.monotonic() - started:.1f} s" + (" (taken from the pool, preloaded: "
                                                              f"{', '.join(lesson.preload) or 'nothing'})" if taken else ""))
        watch = checker.watch(record.id)
        if watch is None:
            report.fail("the checker cannot watch the session")
            return report

        ctx = checker.context(watch)
        for task in lesson.tasks:
            findings = berth.runner.run(ctx, [(c.kind, c.params) for c in task.checks])
            if all(f.ok for f in findings):
                report.fail(f"task {task.id} is done before anything was done: its checks prove nothing")
            else:
                first = next(f.message for f in findings if not f.ok)
                report.say(f"  {task.id:<12} pending at first: {first}")
        ctx.close()

        def checked_now() -> list[dict]:
            checker.check_now(record.id)
            return checker.task_list(record.id)

        for task in lesson.tasks:
            began = time.monotonic()
            for step in task.solution:
                machine = berth.sessions.machine(record.id, step.machine)
                result = berth.backend.exec(machine, ["bash", "-c", step.run], timeout=STEP_TIMEOUT)
                if result.exit_code != 0:
                    report.fail(f"task {task.id}: on {step.machine}, `{step.run}` exited with "
                                f"{result.exit_code}: {result.text.strip()[-400:]}")
                    return report
            ran = time.monotonic() - began
            state = wait_until_done(checked_now, task.id, wait)
            waited = time.monotonic() - began - ran
            if state["status"] == "done":
                report.say(f"  {task.id:<12} done (solution {ran:.1f} s, then done after {waited:.1f} s)")
            else:
                report.fail(f"task {task.id} is still pending {wait:.0f} s after its solution: {missing(state)}")
                return report
        report.say(f"{slug}: ok in {time.monotonic() - started:.0f} s")
        return report
    finally:
        checker.forget(record.id)
        berth.sessions.end(record.id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m berth.selftest", description=__doc__.split("\n\n")[0])
    parser.add_argument("slugs", nargs="*", metavar="SLUG", help="lessons to test (default: all)")
    parser.add_argument("--data-dir", help="Berth's data folder (default: a temporary one, removed after)")
    parser.add_argument("--wait", type=float, default=DONE_WITHIN, metavar="SECONDS",
                        help=f"how long a task may take to show as done after its solution (default {DONE_WITHIN:.0f})")
    parser.add_argument("--pool", action="store_true",
                        help="take each lesson's session from the pool (made ahead of time, the lesson's images "
                             "preloaded), as most learners get theirs, instead of starting it cold")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("BERTH_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="berth-selftest-"))
    config = Config.from_env({**os.environ, "BERTH_DATA_DIR": str(data_dir.resolve()),
                              "BERTH_POOL": ",".join(f"{slug}=1" for slug in args.slugs) or "1" if args.pool else "0"})
    berth = Berth(config)
    for slug, error in berth.library.errors.items():
        if not args.slugs or slug in args.slugs:
            print(f"{slug}: FAIL {error}", flush=True)
    failed = [s for s in berth.library.errors if not args.slugs or s in args.slugs]
    unknown = [s for s in args.slugs if s not in berth.library.lessons and s not in berth.library.errors]
    for slug in unknown:
        print(f"{slug}: FAIL there is no lesson {slug!r}", flush=True)
    failed += unknown
    try:
        todo = [slug for slug in args.slugs or list(berth.library.lessons) if slug not in failed]
        if todo:  # machines only for lessons there are
            berth.prepare()
            if args.pool:
                berth.pool.start()
        for slug in todo:
            if not selftest_lesson(berth, slug, args.wait, pooled=args.pool).ok:
                failed.append(slug)
    except MachineError as error:
        print(f"FAIL machines: {error.message} {error.detail}", flush=True)
        return 1
    finally:
        berth.stop()
        try:
            berth.backend.remove_all()
        except Exception as error:  # noqa: BLE001 - clean-up is best effort, and said
            print(f"(could not remove everything this self-test made: {error})", file=sys.stderr)
        berth.store.close()
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    print("self-test: " + ("all lessons pass" if not failed else "FAILED: " + ", ".join(failed)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
