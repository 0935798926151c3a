"""What the package cache saves: the lesson's `apt-get install nginx` in a nested container,
first learner (cold cache) and second learner (warm), against the same with no cache.

./run bench packages [RUNS]

Each run starts a Berth of its own (so the cache starts empty), with the cache and then
without it (BERTH_PACKAGE_CACHE_IMAGE=), creates one docker-images session (workstation and
colleague), and times, from the host, `docker exec MACHINE docker run --rm debian:bookworm
sh -c 'apt-get update && apt-get install -y nginx'` in the workstation (the first learner),
then in the colleague (the second). The base image is pulled into each machine first
(from the mirror), so the figures are apt's alone. The load average before and after is
printed: the host is shared."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import docker

from tests.conftest import BerthServer, remove_instance

INSTALL = "apt-get update -q >/dev/null && apt-get install -y -q nginx >/dev/null 2>&1 && nginx -v"


def timed_install(container: str, image: str) -> float:
    started = time.monotonic()
    result = subprocess.run(["docker", "exec", container, "docker", "run", "--rm", image, "sh", "-c", INSTALL],
                            capture_output=True, text=True, timeout=900)
    took = time.monotonic() - started
    if result.returncode != 0 or "nginx version" not in result.stderr + result.stdout:
        raise SystemExit(f"install failed in {container}: {result.stdout[-500:]} {result.stderr[-500:]}")
    return took


def one_run(engine, cache: bool, image: str) -> tuple[float, float]:
    overrides = {} if cache else {"BERTH_PACKAGE_CACHE_IMAGE": ""}
    server = BerthServer(Path(tempfile.mkdtemp(prefix="berth-bench-packages-")), overrides).start()
    try:
        session = server.create_session("docker-images")
        first, second = (f"berth-{session['id']}-{name}" for name in ("workstation", "colleague"))
        for machine in (first, second):
            subprocess.run(["docker", "exec", machine, "docker", "pull", "-q", image], check=True,
                           capture_output=True, timeout=300)
        return timed_install(first, image), timed_install(second, image)
    finally:
        server.stop()
        remove_instance(engine, server.instance_id)


def main(argv: list[str]) -> None:
    runs = int(argv[0]) if argv else 3
    image = os.environ.get("BERTH_BASE_IMAGE", "debian:bookworm")
    engine = docker.from_env()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    figures: dict[str, list[float]] = {}
    for run in range(runs):
        for cache in (True, False):
            first, second = one_run(engine, cache, image)
            label = "cache" if cache else "no cache"
            figures.setdefault(f"{label}: first learner", []).append(first)
            figures.setdefault(f"{label}: second learner", []).append(second)
            print(f"run {run + 1}, {label}: first learner {first:.1f} s, second learner {second:.1f} s "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    for label, values in figures.items():
        print(f"{label}: median {statistics.median(values):.1f} s, min {min(values):.1f} s, "
              f"max {max(values):.1f} s (n={len(values)})")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
