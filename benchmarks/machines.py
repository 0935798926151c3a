"""How fast a session's machines are ready, cold and from the pool, and what an idle
machine costs.

./run bench machines [RUNS] [--class N] [--class-only]

Measures, in one run on this host:
- Berth: POST /api/sessions (wait=true) until every machine's engine answers, for a
  one-machine lesson and for the two-machine docker-images lesson, started cold (BERTH_POOL=0)
  and taken from the pool (a Berth whose pool keeps those lessons' sessions made ahead of
  time; each run waits until the pool has refilled, so that each takes a warm kit);
- a class arriving: N docker-images sessions requested at once (N threads released together),
  with no pool and with the pool sized N: when the first and the last were ready;
- the physical limit beside it: `docker run` of the same machine image with the same
  options until its inner engine answers, and a plain container's create+start;
- idle memory of a machine 20 s after it is ready (the engine's own accounting, cache
  excluded, as `docker stats` shows it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import docker
import requests

from berth.certs import CertificateAuthority
from berth.config import Config
from berth.machines import DockerMachines
from tests.conftest import BerthServer, remove_instance

ONE_MACHINE_LESSON = """\
title: One machine
machines: [{name: workstation}]
tasks:
  - id: anything
    title: Anything
    checks: [{kind: %s, machine: workstation, name: nothing}]
"""


def memory_mib(container) -> float:
    stats = container.stats(stream=False)["memory_stats"]
    cache = stats.get("stats", {}).get("total_inactive_file", stats.get("stats", {}).get("cache", 0))
    return (stats["usage"] - cache) / 1024**2


def summary(values: list[float]) -> str:
    values = sorted(values)
    return (f"median {statistics.median(values):.2f} s, min {values[0]:.2f} s, max {values[-1]:.2f} s"
            f" (n={len(values)})")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f}"


def create(server: BerthServer, lesson: str) -> tuple[float, dict]:
    """POST /api/sessions with wait=true: its round trip, and the session."""
    started = time.perf_counter()
    response = requests.post(server.url + "/api/sessions", json={"lesson": lesson, "wait": True}, timeout=300)
    elapsed = time.perf_counter() - started
    session = response.json()
    assert response.status_code == 201 and all(m["status"] == "ready" for m in session["machines"]), session
    return elapsed, session


def settled(server: BerthServer, timeout: float = 900) -> None:
    """Wait until the pool has made every kit it wants: nothing is being made while a
    session is measured."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool = server.health().json().get("pool", {})
        if pool and all(p["warm"] >= p["wanted"] and not p["filling"] for p in pool.values()):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the pool did not fill: {server.health().json().get('pool')}")


def from_pool(server: BerthServer, session: dict) -> bool:
    return server.fact(session["id"], "start", "from") == {"pool"}


def class_arriving(server: BerthServer, lesson: str, learners: int) -> tuple[list[float], int]:
    """`learners` sessions requested at once: each one's ready time from the common start
    (sorted), and how many came from the pool. The sessions are ended afterwards."""
    go = threading.Barrier(learners + 1)
    ready: list[float] = []
    sessions: list[dict] = []
    lock = threading.Lock()
    start = [0.0]

    def learner() -> None:
        go.wait()
        _, session = create(server, lesson)
        at = time.perf_counter() - start[0]
        with lock:
            ready.append(at)
            sessions.append(session)

    threads = [threading.Thread(target=learner) for _ in range(learners)]
    for thread in threads:
        thread.start()
    start[0] = time.perf_counter()
    go.wait()
    for thread in threads:
        thread.join()
    pooled = sum(from_pool(server, s) for s in sessions)
    for session in sessions:
        server.delete_session(session)
    assert len(ready) == learners, "a learner's session failed"
    return sorted(ready), pooled


def pool_class(engine, learners: int, runs: int) -> None:
    """A class arriving at a Berth whose pool holds a kit for each learner, `runs` times
    (the pool refilled in between): when the first, the median and the last were ready."""
    work = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    pooled = BerthServer(work / "pooled", {"BERTH_LOG_LEVEL": "WARNING", "BERTH_MAX_SESSIONS": str(learners + 1),
                                           "BERTH_POOL": f"0,docker-images={learners}"}).start()
    try:
        for index in range(runs):
            settled(pooled)
            ready, taken = class_arriving(pooled, "docker-images", learners)
            print(f"run {index + 1}: class of {learners} from the pool: first ready {ready[0]:.2f} s, median "
                  f"{statistics.median(ready):.2f} s, last {ready[-1]:.2f} s ({taken} of {learners} from the pool)",
                  flush=True)
    finally:
        pooled.stop()
        remove_instance(engine, pooled.instance_id)
    print(f"load average after: {load()}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="./run bench machines")
    parser.add_argument("runs", nargs="?", type=int, default=10)
    parser.add_argument("--class", dest="learners", type=int, default=16, metavar="N",
                        help="learners arriving at once (default 16; 0: skip)")
    parser.add_argument("--class-only", action="store_true",
                        help="only the class taking the pool sized for it, RUNS times")
    args = parser.parse_args(argv)
    runs, learners = args.runs, args.learners
    loads = [f"load average before: {load()}"]
    engine = docker.from_env()
    if args.class_only:
        pool_class(engine, learners, runs)
        return
    work = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    lessons = work / "lessons"
    (lessons / "one-machine").mkdir(parents=True)
    from berth.checks import KINDS  # a real kind keeps the lesson valid

    (lessons / "one-machine" / "lesson.yaml").write_text(ONE_MACHINE_LESSON % ("container" if "container" in KINDS else next(iter(KINDS))))
    docker_images = Path(__file__).resolve().parent.parent / "lessons" / "docker-images"
    (lessons / "docker-images").symlink_to(docker_images)

    quiet = {"BERTH_LESSONS_DIR": str(lessons), "BERTH_LOG_LEVEL": "WARNING",
             "BERTH_MAX_SESSIONS": str(max(20, learners))}
    server = BerthServer(work / "data", {**quiet, "BERTH_POOL": "0"}).start()
    results: dict[str, list[float]] = {"one": [], "two": [], "one-pool": [], "two-pool": []}
    memory: list[float] = []
    classes: dict[str, tuple[list[float], int]] = {}
    try:
        for lesson, key in (("one-machine", "one"), ("docker-images", "two")):
            for index in range(runs):
                started = time.perf_counter()
                response = requests.post(server.url + "/api/sessions", json={"lesson": lesson, "wait": True}, timeout=120)
                elapsed = time.perf_counter() - started
                session = response.json()
                assert response.status_code == 201 and all(m["status"] == "ready" for m in session["machines"]), session
                results[key].append(elapsed)
                if key == "one" and index == 0:
                    time.sleep(20)
                    container = engine.containers.get(f"berth-{session['id']}-workstation")
                    memory.append(memory_mib(container))
                server.delete_session(session)
        if learners:
            classes["cold"] = class_arriving(server, "docker-images", learners)
        loads.append(f"after the cold runs: {load()}")

        # from the pool: a Berth keeping one kit of each lesson, and the class's seats
        pooled = BerthServer(work / "pooled", {**quiet, "BERTH_MAX_SESSIONS": str(max(1, learners) + 1),
                                               "BERTH_POOL": f"one-machine=1,docker-images={max(1, learners)}"}).start()
        try:
            for lesson, key in (("one-machine", "one-pool"), ("docker-images", "two-pool")):
                for _ in range(runs):
                    settled(pooled)  # every kit made: nothing else runs while this one is taken
                    elapsed, session = create(pooled, lesson)
                    assert from_pool(pooled, session), "a session meant to come from the pool started cold"
                    results[key].append(elapsed)
                    pooled.delete_session(session)
            if learners:
                settled(pooled)
                classes["pool"] = class_arriving(pooled, "docker-images", learners)
        finally:
            pooled.stop()
            remove_instance(engine, pooled.instance_id)
        loads.append(f"after the pool runs: {load()}")

        # the limit: the same machine, started straight through the engine
        config = Config.from_env()
        backend = DockerMachines(config, "bench" + str(int(time.time())), CertificateAuthority(work / "certs"))
        raw: list[float] = []
        plain: list[float] = []
        try:
            profile = backend.profile
            for index in range(runs):
                started = time.perf_counter()
                machine = backend._create_machine(f"raw{index}", "workstation", None, None, profile)
                backend.wait_ready(machine, 60)
                raw.append(time.perf_counter() - started)
                if index == 0:
                    time.sleep(20)
                    memory.append(memory_mib(engine.containers.get(machine.container_id)))
                backend.destroy_session(f"raw{index}")
                started = time.perf_counter()
                container = engine.containers.create(config.machine_image, entrypoint=["true"])
                container.start()
                plain.append(time.perf_counter() - started)
                container.remove(force=True)
        finally:
            remove_instance(engine, backend.instance_id)
    finally:
        server.stop()
        remove_instance(engine, server.instance_id)

    loads.append(f"after: {load()}")
    print(f"one-machine session ready (POST wait=true):  {summary(results['one'])}")
    print(f"two-machine session ready (docker-images):   {summary(results['two'])}")
    print(f"one-machine session from the pool:           {summary(results['one-pool'])}")
    print(f"two-machine session from the pool:           {summary(results['two-pool'])}")
    for kind, (ready, taken) in classes.items():
        print(f"class of {learners} at once, {'no pool' if kind == 'cold' else f'pool sized {learners}'}: "
              f"first ready {ready[0]:.2f} s, median {statistics.median(ready):.2f} s, last {ready[-1]:.2f} s "
              f"({taken} of {learners} from the pool)")
    print(f"machine container until its engine answers:  {summary(raw)}  (no Berth, no network, no TLS)")
    print(f"plain container create+start:                {summary(plain)}")
    print(f"ratio one-machine session / raw machine:     {statistics.median(results['one']) / statistics.median(raw):.2f}")
    print(f"idle machine memory after 20 s: Berth session {memory[0]:.1f} MiB, raw machine {memory[1]:.1f} MiB")
    print("; ".join(loads) + " (1, 5, 15 min; the host may be shared)")
