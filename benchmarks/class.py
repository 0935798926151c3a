"""A class at once: N learners each start a session and type the whole Docker images lesson,
measured (docs/performance.md, "A class").

    ./run bench class N [--stagger SECONDS] [--warm] [--json PATH]

Starts a Berth of its own (gunicorn, a data folder of its own, a free loopback port) sized for
N learners, all from one address as a classroom behind one NAT is. Every learner, in a
thread of its own, arrives (all at once, or one every --stagger seconds), creates a session
with `POST /api/sessions` (`"wait": true`), opens both machines' terminals over `/terminal`
and the page's `/session` socket, and types each task's solution commands as the page does,
waiting for each command's prompt mark. A task's tick is the first `tasks` event with it
done; its latency runs from the prompt of the task's last command to that event, both on
this client's clock (a task that ticked before its command's prompt came back counts 0).
Meanwhile Berth's processes (gunicorn master and worker) and the host's memory are sampled
from /proc; the host's busy CPU time is read at the start and the end, and each learner's
machines' CPU time (their containers' cgroups, the learner's own containers included) from
the host engine before the sessions end: what the lesson costs, and so how many learners the
cores can carry at once. At the end (also on Ctrl-C) the server is stopped and everything it made is
removed. The package cache starts empty with the Berth (cold); with --warm, one learner
goes through the whole lesson first, unmeasured, so that the class finds every package of
the lesson in the cache."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
import requests

from benchmarks._host import Watch, host_cpu_busy, host_memory, own_berth
from benchmarks.checks import PROMPT, SLUG, Page, percentile
from berth.config import PROJECT_DIR
from berth.lessons import Lesson, load_lesson
from tests.terminal_client import TerminalClient

SESSION_TIMEOUT = 900  # seconds a session may take to be ready when a whole class arrives (in turns)
COMMAND_TIMEOUT = 600  # a command's prompt (installing packages in a loaded machine is slow)
TICK_TIMEOUT = 120  # a task's tick after its last command


def class_lesson(slug: str = SLUG) -> Lesson:
    """The lesson the class takes (the Docker images lesson unless told), with the base image
    this host serves."""
    return load_lesson(PROJECT_DIR / "lessons" / slug, {"BERTH_BASE_IMAGE": os.environ.get("BERTH_BASE_IMAGE", "")})


def server_settings(learners: int) -> dict[str, str]:
    """A Berth that takes the whole class: a session each, a thread per open socket (two
    terminals and the page per learner, and their requests), every learner one address."""
    return {"BERTH_MAX_SESSIONS": str(max(20, learners)), "BERTH_THREADS": str(max(100, 4 * learners + 20)),
            "BERTH_SESSIONS_PER_CLIENT": "0", "BERTH_LOG_LEVEL": "WARNING"}


class Shell:
    """One machine's terminal: types a command and notes when its prompt mark arrived."""

    def __init__(self, url: str, session: dict, machine: str):
        self.prompts: list[tuple[int, float]] = []  # (offset after the mark, when it arrived)
        self.changed = threading.Condition()
        self._tail = b""
        self.client = TerminalClient(url, {"session": session["id"], "token": session["token"],
                                           "machine": machine, "cols": 120, "rows": 40})
        # what came with the connection (a new shell's first prompt may come before the
        # connect reply); the reader thread has not started yet, so nothing is missed
        self._output(bytes(self.client.data), self.client.start_offset)
        self.client.on_output = self._output
        self.client.start()

    def _output(self, chunk: bytes, offset: int) -> None:
        now = time.monotonic()
        seen = self._tail + chunk
        base = offset - len(self._tail)
        with self.changed:
            for match in re.finditer(re.escape(PROMPT), seen):
                self.prompts.append((base + match.end(), now))
            self._tail = seen[-(len(PROMPT) - 1):]
            self.changed.notify_all()

    def wait_prompt(self, after: int, timeout: float) -> float:
        """When the first prompt mark ending after `after` arrived."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = [when for end, when in self.prompts if end > after]
                if found:
                    return found[0]
                if self.client.closed:
                    raise ConnectionError(f"the terminal closed ({self.client.ended or 'no reason given'})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no prompt in {timeout:.0f} s; output ends {self.client.text()[-200:]!r}")
                self.changed.wait(min(left, 1))

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> float:
        """Type a command and Enter; return when its prompt came back (monotonic time)."""
        with self.changed:
            mark = self.client.end
        self.client.send(command + "\r")
        return self.wait_prompt(mark, timeout)

    def close(self) -> None:
        self.client.close()


@dataclass
class Learner:
    """What one simulated learner saw. Times in seconds; `ticks` by task id (negative: the
    task ticked before its last command's prompt came back)."""

    number: int
    arrived: float = 0.0  # after the class started
    ready: float | None = None  # POST /api/sessions until every machine was ready
    ticks: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, float] = field(default_factory=dict)  # a task's first command typed until it ticked
    lesson: float | None = None  # first command typed until the last task ticked
    machines_cpu: float | None = None  # CPU seconds its machines used, their containers included
    failure: str | None = None
    session: dict | None = field(default=None, repr=False)


def attend(url: str, lesson: Lesson, learner: Learner, start: float, say: Callable[[str], None]) -> None:
    """One learner's lesson; a failure is noted with its reason, not raised."""
    step = "starting a session"
    try:
        response = requests.post(url + "/api/sessions", json={"lesson": lesson.slug, "wait": True},
                                 timeout=SESSION_TIMEOUT)
        learner.ready = time.monotonic() - start - learner.arrived
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != 201:
            raise RuntimeError(f"POST /api/sessions answered {response.status_code}: {body or response.text[:200]}")
        learner.session = body
        failed = [m for m in body["machines"] if m["status"] != "ready"]
        if failed:
            raise RuntimeError(f"machines not ready: {failed}")
        say(f"learner {learner.number}: session ready in {learner.ready:.1f} s")
        step = "opening the terminals"
        shells = {name: Shell(url, body, name) for name in lesson.machines}
        page = Page(url, body)
        try:
            for shell in shells.values():
                shell.wait_prompt(-1, 60)  # the shell is ready
            began = time.monotonic()
            for task in lesson.tasks:
                typed = returned = time.monotonic()
                for command in task.solution:
                    step = f"task {task.id}: {command.machine}$ {command.run}"
                    returned = shells[command.machine].run(command.run)
                step = f"task {task.id}: waiting for its tick"
                ticked = page.wait_done(task.id, TICK_TIMEOUT)
                learner.ticks[task.id] = ticked - returned
                learner.tasks[task.id] = ticked - typed
                say(f"learner {learner.number}: {task.id} done in {ticked - typed:.1f} s, ticked "
                    + (f"{1000 * (ticked - returned):.0f} ms after" if ticked >= returned else "before")
                    + " its last command's prompt")
            learner.lesson = max(page.done_at.values()) - began
        finally:
            page.close()
            for shell in shells.values():
                shell.close()
    except Exception as error:  # noqa: BLE001 - every failure is a result to report
        learner.failure = f"{step}: {type(error).__name__}: {error}"
        say(f"learner {learner.number}: failed: {learner.failure}")


def machines_cpu(client: docker.DockerClient, session: dict, machines: list[str]) -> float | None:
    """CPU seconds a session's machines have used so far: their containers' cgroups, which
    hold the learner's own containers too (read from the host engine's stats)."""
    from tests.conftest import machine_container  # when used: importing it sets the tests' defaults (no pool)

    try:
        return sum(machine_container(client, session, name).stats(stream=False, one_shot=True)
                   ["cpu_stats"]["cpu_usage"]["total_usage"] for name in machines) / 1e9
    except (docker.errors.DockerException, KeyError):
        return None  # a machine gone or a stats answer without CPU figures: no figure


def describe(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "p95": percentile(values, 0.95), "max": max(values), "n": len(values)}


def run_class(url: str, server_pid: int, learners: int, stagger: float = 0.0, lesson: Lesson | None = None,
              say: Callable[[str], None] = lambda line: None) -> dict:
    """The core: N learners against a running Berth whose master is `server_pid`; returns
    the report (every learner's figures, failures and Berth's cost). Sessions are ended at
    the end."""
    lesson = lesson or class_lesson()
    class_ = [Learner(number=n + 1, arrived=n * stagger) for n in range(learners)]
    watch = Watch(server_pid).start()
    load_before = os.getloadavg()
    busy_before = host_cpu_busy()
    start = time.monotonic()
    threads = []
    for learner in class_:
        time.sleep(max(0.0, start + learner.arrived - time.monotonic()))
        thread = threading.Thread(target=attend, args=(url, lesson, learner, start, say), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)  # in slices, so that Ctrl-C gets through
    took = time.monotonic() - start
    cost = watch.stop()
    busy = host_cpu_busy() - busy_before
    load_after = os.getloadavg()
    client = docker.from_env(timeout=60)
    for learner in class_:
        if learner.session:
            learner.machines_cpu = machines_cpu(client, learner.session, list(lesson.machines))
            try:
                requests.delete(f"{url}/api/sessions/{learner.session['id']}",
                                headers={"Authorization": f"Bearer {learner.session['token']}"}, timeout=120)
            except requests.RequestException:
                pass  # stopping the server removes it anyway
    ticks = [max(0.0, t) for learner in class_ for t in learner.ticks.values()]
    memory = host_memory()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": {"name": platform.node(), "kernel": platform.release(), "cores": os.cpu_count(),
                 "memory_mib": memory["total"] / 2**20, "load_before": load_before, "load_after": load_after},
        "learners": learners, "stagger": stagger, "lesson": lesson.slug, "tasks": [t.id for t in lesson.tasks],
        "seconds": took,
        "sessions_ready": describe([x.ready for x in class_ if x.ready is not None and x.session]),
        "tick_latency": describe(ticks),
        "ticked_early": sum(1 for learner in class_ for t in learner.ticks.values() if t < 0),
        "lesson_completion": describe([x.lesson for x in class_ if x.lesson is not None]),
        "task_seconds": {t.id: describe([x.tasks[t.id] for x in class_ if t.id in x.tasks]) for t in lesson.tasks},
        "completed": sum(1 for x in class_ if x.lesson is not None and not x.failure),
        "failures": [{"learner": x.number, "reason": x.failure} for x in class_ if x.failure],
        "berth": cost,
        "host_cpu_busy_percent": 100 * busy / (took * (os.cpu_count() or 1)),
        "machines_cpu_per_learner": describe([x.machines_cpu for x in class_ if x.machines_cpu is not None
                                              and x.lesson is not None]),
        "host_memory_per_learner_mib": (cost["host_available_start_mib"] - cost["host_available_low_mib"]) / learners,
        "per_learner": [{k: v for k, v in asdict(x).items() if k != "session"} for x in class_],
    }


def package_cache_state(warm: bool) -> str:
    """What the class found in the package cache: none (no cache), cold or warm."""
    if not os.environ.get("BERTH_PACKAGE_CACHE_IMAGE", "berth-packages:latest"):
        return "none"
    return "warm" if warm else "cold"


def table(report: dict) -> str:
    """The report as a short table for the terminal."""

    def seconds(figures: dict | None, key: str, unit: str = "s") -> str:
        if not figures:
            return "-"
        return f"{1000 * figures[key]:.0f} ms" if unit == "ms" else f"{figures[key]:.2f} s"

    host, berth = report["host"], report["berth"]
    rows = [
        ("learners", f"{report['learners']} (stagger {report['stagger']:g} s), lesson {report['lesson']}, "
                     f"package cache {report.get('package_cache', '-')}"),
        ("host", f"{host['cores']} cores, {host['memory_mib'] / 1024:.1f} GiB, load {host['load_before'][0]:.1f} "
                 f"before, {host['load_after'][0]:.1f} after"),
        ("sessions ready", f"median {seconds(report['sessions_ready'], 'median')}, "
                           f"p95 {seconds(report['sessions_ready'], 'p95')}"),
        ("tick latency", f"p95 {seconds(report['tick_latency'], 'p95', 'ms')}, median "
                         f"{seconds(report['tick_latency'], 'median', 'ms')}, max {seconds(report['tick_latency'], 'max', 'ms')}"
                         f" ({report['ticked_early']} ticked before the prompt, counted 0)"),
        ("lesson completion", f"median {seconds(report['lesson_completion'], 'median')}, "
                              f"max {seconds(report['lesson_completion'], 'max')} (first command to last tick)"),
        ("tasks, median", ", ".join(f"{task} {figures['median']:.1f} s" for task, figures in report["task_seconds"].items()
                                    if figures) + " (first command to tick)"),
        ("completed", f"{report['completed']} of {report['learners']}, {len(report['failures'])} failed"),
        ("Berth CPU", f"{berth['cpu_seconds']:.1f} s in {berth['seconds']:.0f} s: mean {berth['cpu_mean_percent']:.0f}%, "
                      f"peak {berth['cpu_peak_percent']:.0f}% of one core"),
        ("host CPU", f"busy {report['host_cpu_busy_percent']:.0f}% of {host['cores']} cores over the run"),
        ("machines' CPU", "per learner who completed the lesson: "
                          + (f"median {report['machines_cpu_per_learner']['median']:.1f} s, "
                             f"max {report['machines_cpu_per_learner']['max']:.1f} s"
                             if report["machines_cpu_per_learner"] else "-")),
        ("Berth memory", f"{berth['rss_start_mib']:.0f} MiB at the start, peak {berth['rss_peak_mib']:.0f} MiB "
                         f"(resident, {berth['processes']} processes)"),
        ("host memory", f"{report['host_memory_per_learner_mib']:.0f} MiB per learner (available: "
                        f"{berth['host_available_start_mib']:.0f} MiB before, {berth['host_available_low_mib']:.0f} MiB at the lowest)"),
    ]
    lines = [f"{name:<18} {value}" for name, value in rows]
    lines += [f"  failure: learner {f['learner']}: {f['reason']}" for f in report["failures"]]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="./run bench class", description=__doc__.split("\n\n")[0])
    parser.add_argument("learners", type=int, help="how many learners")
    parser.add_argument("--stagger", type=float, default=0.0, help="seconds between two learners' arrivals (default 0: at once)")
    parser.add_argument("--warm", action="store_true",
                        help="one learner goes through the lesson first, unmeasured, so the class finds the package cache warm")
    parser.add_argument("--lesson", default=SLUG, help=f"the lesson the class takes (default {SLUG})")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    lesson = class_lesson(args.lesson)
    with own_berth("class", server_settings(args.learners)) as server:
        print(f"starting a Berth for {args.learners} learners ...", flush=True)
        server.start()
        if args.warm:
            print("warming the package cache: one learner goes through the lesson first ...", flush=True)
            warming = run_class(server.url, server.process.pid, 1, lesson=lesson,
                                say=lambda line: print("(warming) " + line, flush=True))
            if warming["failures"]:
                raise SystemExit(f"warming the package cache failed: {warming['failures'][0]['reason']}")
            warming["package_cache"] = package_cache_state(warm=False)
            print(f"one learner alone, before the class (package cache {warming['package_cache']}):\n"
                  + table(warming), flush=True)
        print(f"the class arrives ({server.url}) ...", flush=True)
        report = run_class(server.url, server.process.pid, args.learners, args.stagger, lesson=lesson,
                           say=lambda line: print(line, flush=True))
        report["package_cache"] = package_cache_state(args.warm)
        if args.warm:
            report["alone_before"] = warming  # the same lesson, one learner, same Berth: the baseline
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.json}")
    if report["failures"]:
        raise SystemExit(1)
