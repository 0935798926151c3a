"""How fast a session's machines are ready, and what an idle machine costs.

./run bench machines [RUNS]

Measures, in one run on this host:
- Berth: POST /api/sessions (wait=true) until every machine's engine answers, for a
  one-machine lesson and for the two-machine docker-images lesson;
- the physical limit beside it: `docker run` of the same machine image with the same
  options until its inner engine answers, and a plain container's create+start;
- idle memory of a machine 20 s after it is ready (the engine's own accounting, cache
  excluded, as `docker stats` shows it).
"""

from __future__ import annotations

import statistics
import tempfile
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


def main(argv: list[str]) -> None:
    runs = int(argv[0]) if argv else 10
    engine = docker.from_env()
    work = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    lessons = work / "lessons"
    (lessons / "one-machine").mkdir(parents=True)
    from berth.checks import KINDS  # a real kind keeps the lesson valid

    (lessons / "one-machine" / "lesson.yaml").write_text(ONE_MACHINE_LESSON % ("container" if "container" in KINDS else next(iter(KINDS))))
    docker_images = Path(__file__).resolve().parent.parent / "lessons" / "docker-images"
    (lessons / "docker-images").symlink_to(docker_images)

    server = BerthServer(work / "data", {"BERTH_LESSONS_DIR": str(lessons), "BERTH_LOG_LEVEL": "WARNING"}).start()
    results: dict[str, list[float]] = {"one": [], "two": []}
    memory: list[float] = []
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

    print(f"one-machine session ready (POST wait=true):  {summary(results['one'])}")
    print(f"two-machine session ready (docker-images):   {summary(results['two'])}")
    print(f"machine container until its engine answers:  {summary(raw)}  (no Berth, no network, no TLS)")
    print(f"plain container create+start:                {summary(plain)}")
    print(f"ratio one-machine session / raw machine:     {statistics.median(results['one']) / statistics.median(raw):.2f}")
    print(f"idle machine memory after 20 s: Berth session {memory[0]:.1f} MiB, raw machine {memory[1]:.1f} MiB")
