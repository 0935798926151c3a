"""How many idle one-machine sessions this host holds, what each costs, and whether Berth's
background work (checker, reaper) costs more per second as sessions pile up
(docs/performance.md, "Density").

    ./run bench density [--most N] [--keep-free-memory GIB] [--quiet SECONDS] [--json PATH]

Starts a Berth of its own (gunicorn, a data folder of its own, a free loopback port) with
room for N sessions, then creates sessions of the one-machine `image-basics` lesson one
after another with `POST /api/sessions` (`"wait": true`), each left idle once ready (its
checks still run every BERTH_CHECK_INTERVAL, as they would for a learner who walked away).
It stops adding sessions at the first of:

- a failure (a refusal, a machine that failed): the host is full, by Berth's own count or
  the engine's;
- starts slowing down: the median of the last 5 starts more than twice the median of the
  first 5;
- the host's available memory below --keep-free-memory (default 6 GiB), or the engine's disk
  below 10 GiB free: stopping well before the host itself is in danger;
- N sessions (default 120).

At 1, 10 and 40 sessions (and where it stopped) it waits for the host to settle, then
measures over --quiet seconds (default 30): Berth's process tree's CPU (the checker, the
reaper and the rest of Berth's idle work), the host's busy CPU, and the host's available
memory. The cost of one idle machine is the difference from before the first session,
divided by the sessions. At the end (also on Ctrl-C) the server is stopped and everything
it made is removed."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import docker
import requests

from benchmarks._host import Watch, host_cpu_busy, host_memory, own_berth
from tests.conftest import BerthServer

LESSON = "image-basics"  # one machine, real checks
MARKS = (1, 10, 40)
SETTLE = 20  # seconds after the last start before an idle measurement


def free_disk() -> int | None:
    """Free bytes where the engine keeps its data, as Berth's watermark reads it."""
    try:
        root = docker.from_env().info()["DockerRootDir"]
        return shutil.disk_usage(root).free
    except (docker.errors.DockerException, OSError, KeyError):
        return None


def idle_cost(server: BerthServer, seconds: float) -> dict:
    """Berth's and the host's CPU, and the host's available memory, over `seconds` of idling."""
    time.sleep(SETTLE)
    watch = Watch(server.serving_pid).start()
    busy_before, started = host_cpu_busy(), time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - started
    busy = (host_cpu_busy() - busy_before) / took
    cost = watch.stop()
    return {"berth_cpu_percent": cost["cpu_mean_percent"], "berth_rss_mib": cost["rss_peak_mib"],
            "host_cpu_percent": 100 * busy, "host_available_mib": host_memory()["available"] / 2**20,
            "load": os.getloadavg()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="./run bench density", description=__doc__.split("\n\n")[0])
    parser.add_argument("--most", type=int, default=120, help="most sessions to create (default 120)")
    parser.add_argument("--keep-free-memory", type=float, default=6.0,
                        help="stop adding sessions below this much available memory, GiB (default 6)")
    parser.add_argument("--quiet", type=float, default=30.0, help="seconds of each idle measurement (default 30)")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    settings = {"BERTH_MAX_SESSIONS": str(args.most + 5), "BERTH_SESSIONS_PER_CLIENT": "0",
                "BERTH_LOG_LEVEL": "WARNING", "BERTH_MIN_FREE_MEMORY": "0", "BERTH_MIN_FREE_DISK": "0"}
    report: dict = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "host": {"name": platform.node(), "kernel": platform.release(), "cores": os.cpu_count(),
                             "memory_mib": host_memory()["total"] / 2**20},
                    "lesson": LESSON, "starts": [], "idle": {}, "stopped_because": ""}
    sessions: list[dict] = []
    with own_berth("density", settings) as server:
        print("starting a Berth ...", flush=True)
        server.start()
        report["idle"]["0"] = idle_cost(server, args.quiet)
        print(f"before any session: {report['idle']['0']}", flush=True)
        while True:
            if len(sessions) >= args.most:
                report["stopped_because"] = f"reached --most {args.most}"
                break
            available = host_memory()["available"]
            if available < args.keep_free_memory * 2**30:
                report["stopped_because"] = f"available memory {available / 2**30:.1f} GiB, under --keep-free-memory"
                break
            disk = free_disk()
            if disk is not None and disk < 10 * 2**30:
                report["stopped_because"] = f"the engine's disk has {disk / 2**30:.1f} GiB free"
                break
            started = time.perf_counter()
            try:
                response = requests.post(server.url + "/api/sessions", json={"lesson": LESSON, "wait": True}, timeout=180)
                elapsed = time.perf_counter() - started
                body = response.json()
            except (requests.RequestException, ValueError) as error:
                report["stopped_because"] = f"session {len(sessions) + 1}: {type(error).__name__}: {error}"
                break
            if response.status_code != 201 or any(m["status"] != "ready" for m in body.get("machines", [])):
                report["stopped_because"] = f"session {len(sessions) + 1} failed: {response.status_code} {str(body)[:300]}"
                break  # (a failed session's machines go when the server stops)
            sessions.append(body)
            report["starts"].append({"n": len(sessions), "seconds": elapsed, "available_mib": available / 2**20,
                                     "load": os.getloadavg()[0]})
            print(f"session {len(sessions)} ready in {elapsed:.2f} s (available {available / 2**30:.1f} GiB, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
            starts = [s["seconds"] for s in report["starts"]]
            if len(starts) >= 10 and statistics.median(starts[-5:]) > 2 * statistics.median(starts[:5]):
                report["stopped_because"] = (f"starts slowed down: the last 5 took {statistics.median(starts[-5:]):.2f} s "
                                             f"(median), the first 5 {statistics.median(starts[:5]):.2f} s")
                break
            if len(sessions) in MARKS:
                report["idle"][str(len(sessions))] = idle_cost(server, args.quiet)
                print(f"{len(sessions)} idle sessions: {report['idle'][str(len(sessions))]}", flush=True)
        if str(len(sessions)) not in report["idle"] and sessions:
            report["idle"][str(len(sessions))] = idle_cost(server, args.quiet)
        report["sessions"] = len(sessions)
        print(f"stopped at {len(sessions)} sessions: {report['stopped_because']}", flush=True)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.json}")


def table(report: dict) -> str:
    idle, starts = report["idle"], [s["seconds"] for s in report["starts"]]
    base = idle.get("0")
    lines = [f"sessions held: {report.get('sessions', 0)} ({report['stopped_because']})"]
    if starts:
        lines.append(f"start: first 5 median {statistics.median(starts[:5]):.2f} s, last 5 median "
                     f"{statistics.median(starts[-5:]):.2f} s, slowest {max(starts):.2f} s")
    lines.append("idle sessions | Berth CPU % of a core | Berth RSS MiB | host CPU % | per machine: CPU %, memory MiB")
    for n, cost in sorted(idle.items(), key=lambda item: int(item[0])):
        per = ""
        if base and int(n):
            per = (f"{(cost['host_cpu_percent'] - base['host_cpu_percent']) / int(n):.2f}, "
                   f"{(base['host_available_mib'] - cost['host_available_mib']) / int(n):.1f}")
        lines.append(f"{n:>13} | {cost['berth_cpu_percent']:>21.2f} | {cost['berth_rss_mib']:>13.0f} | "
                     f"{cost['host_cpu_percent']:>10.1f} | {per}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
