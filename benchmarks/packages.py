"""What the package cache saves: the lesson's `apt-get install nginx` in a nested container,
first learner (cold cache) and second learner (warm), against the same with no cache.

./run bench packages [RUNS]

Each run starts a Berth of its own (so the cache starts empty), with the cache and then
without it (BERTH_PACKAGE_CACHE_IMAGE=), creates one docker-images session (workstation and
colleague), and times, from the host, `docker exec MACHINE docker run --rm debian:bookworm
sh -c 'apt-get update && apt-get install -y nginx'` in the workstation (the first learner),
then in the colleague (the second). The base image is pulled into each machine first
(from the mirror), so the figures are apt's alone. Each learner's time is split, as printed
by the container itself, into `apt-get update`, the download (`apt-get install
--download-only`) and the rest of the install (unpacking and configuring, which no cache
changes). With the cache, the bytes acng fetched from Debian and sent to machines are read
from its log. The load average before and after is printed: the host is shared."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import docker

from tests.conftest import BerthServer, remove_instance

# bash's own clock, in the container: the parts of one learner's install
INSTALL = ("t0=$EPOCHREALTIME; apt-get update -q >/dev/null; t1=$EPOCHREALTIME; "
           "apt-get install -y -q --download-only nginx >/dev/null 2>&1; t2=$EPOCHREALTIME; "
           "apt-get install -y -q nginx >/dev/null 2>&1; t3=$EPOCHREALTIME; nginx -v 2>&1; "
           "echo PARTS $t0 $t1 $t2 $t3")


def timed_install(container: str, image: str) -> dict[str, float]:
    started = time.monotonic()
    result = subprocess.run(["docker", "exec", container, "docker", "run", "--rm", image, "bash", "-c", INSTALL],
                            capture_output=True, text=True, timeout=900)
    took = time.monotonic() - started
    parts = [line for line in result.stdout.splitlines() if line.startswith("PARTS ")]
    if result.returncode != 0 or "nginx version" not in result.stdout or not parts:
        raise SystemExit(f"install failed in {container}: {result.stdout[-500:]} {result.stderr[-500:]}")
    t0, t1, t2, t3 = (float(x) for x in parts[0].split()[1:])
    return {"total": took, "update": t1 - t0, "download": t2 - t1, "unpack": t3 - t2}


def cache_bytes(engine, instance_id: str) -> tuple[int, int]:
    """(bytes acng fetched from Debian, bytes it sent to machines), from its transfer log."""
    log = engine.containers.get(f"berth--packages-{instance_id}").exec_run(
        ["cat", "/var/log/apt-cacher-ng/apt-cacher.log"]).output.decode()
    rows = [line.split("|") for line in log.splitlines() if line.count("|") >= 4]
    return (sum(int(r[2]) for r in rows if r[1] == "I"), sum(int(r[2]) for r in rows if r[1] == "O"))


def one_run(engine, cache: bool, image: str) -> tuple[dict, dict, tuple[int, int] | None]:
    overrides = {} if cache else {"BERTH_PACKAGE_CACHE_IMAGE": ""}
    server = BerthServer(Path(tempfile.mkdtemp(prefix="berth-bench-packages-")), overrides).start(wait=False)
    try:
        server.wait_healthy(timeout=900)  # a loaded shared host: the mirror alone can take minutes to fill
        session = server.create_session("docker-images")
        first, second = (f"berth-{session['id']}-{name}" for name in ("workstation", "colleague"))
        for machine in (first, second):
            subprocess.run(["docker", "exec", machine, "docker", "pull", "-q", image], check=True,
                           capture_output=True, timeout=300)
        one = timed_install(first, image)
        two = timed_install(second, image)
        return one, two, cache_bytes(engine, server.instance_id) if cache else None
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
            first, second, moved = one_run(engine, cache, image)
            label = "cache" if cache else "no cache"
            for learner, parts in (("first", first), ("second", second)):
                for part, value in parts.items():
                    figures.setdefault(f"{label}: {learner} learner, {part}", []).append(value)
                print(f"run {run + 1}, {label}, {learner} learner: " +
                      ", ".join(f"{part} {value:.1f} s" for part, value in parts.items()), flush=True)
            if moved:
                print(f"run {run + 1}: the cache fetched {moved[0] / 1e6:.1f} MB from Debian and sent "
                      f"{moved[1] / 1e6:.1f} MB to the two machines", flush=True)
            print(f"  (load {os.getloadavg()[0]:.2f})", flush=True)
    for label, values in figures.items():
        print(f"{label}: median {statistics.median(values):.1f} s, min {min(values):.1f} s, "
              f"max {max(values):.1f} s (n={len(values)})")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
