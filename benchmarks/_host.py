"""What the benchmarks read of this host: a process tree's CPU and memory, and the host's
own memory and CPU, from /proc (no psutil: the figures are the kernel's, read the same way
on every run)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def host_cpu_busy() -> float:
    """Seconds of CPU the whole host has spent busy (all cores, every state but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


class Watch:
    """Samples Berth's process tree (CPU, resident memory) and the host's available memory
    from /proc once a second, in a thread of its own."""

    def __init__(self, root_pid: int, interval: float = 1.0):
        self.root = root_pid
        self.interval = interval
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tree(self) -> dict[int, tuple[float, int]]:
        """pid: (CPU seconds with reaped children's, resident bytes) of the root and its descendants."""
        stats: dict[int, tuple[int, list[str]]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    text = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue  # ended meanwhile
                fields = text.rsplit(")", 1)[1].split()
                stats[int(entry)] = (int(fields[1]), fields)
        members = {self.root}
        grew = True
        while grew:
            found = {pid for pid, (parent, _) in stats.items() if parent in members} - members
            members |= found
            grew = bool(found)
        return {pid: (sum(int(f) for f in stats[pid][1][11:15]) / CLOCK_TICKS, int(stats[pid][1][21]) * PAGE_SIZE)
                for pid in members if pid in stats}

    def sample(self) -> dict:
        tree = self.tree()
        return {"t": time.monotonic(), "cpu": sum(c for c, _ in tree.values()),
                "rss": sum(r for _, r in tree.values()), "processes": len(tree), "available": host_memory()["available"]}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self.sample())

    def start(self) -> Watch:
        self.samples.append(self.sample())
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.sample())
        first, last = self.samples[0], self.samples[-1]
        took = last["t"] - first["t"]
        rates = [(b["cpu"] - a["cpu"]) / (b["t"] - a["t"]) for a, b in zip(self.samples, self.samples[1:], strict=False)
                 if b["t"] > a["t"]]
        return {"cpu_seconds": last["cpu"] - first["cpu"], "seconds": took,
                "cpu_mean_percent": 100 * (last["cpu"] - first["cpu"]) / took if took else 0.0,
                "cpu_peak_percent": 100 * max(rates, default=0.0),
                "rss_start_mib": first["rss"] / 2**20, "rss_peak_mib": max(s["rss"] for s in self.samples) / 2**20,
                "processes": max(s["processes"] for s in self.samples),
                "host_available_start_mib": first["available"] / 2**20,
                "host_available_low_mib": min(s["available"] for s in self.samples) / 2**20}


def host_memory() -> dict[str, int]:
    """The host's total and available memory in bytes (/proc/meminfo)."""
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        values[name] = int(value.split()[0]) * 1024
    return {"total": values["MemTotal"], "available": values["MemAvailable"]}


@contextlib.contextmanager
def own_berth(name: str, settings: dict[str, str]) -> Iterator:
    """A Berth of the benchmark's own (a data folder of its own, a free loopback port), not
    yet started. On the way out, also on Ctrl-C or SIGTERM, it is stopped and everything it
    made is removed; a second Ctrl-C cannot skip that."""
    from tests.conftest import BerthServer  # the tests' server harness, imported when used

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still clean up when stopped
    work = Path(tempfile.mkdtemp(prefix=f"berth-bench-{name}-"))
    server = BerthServer(work / "data", settings)
    try:
        yield server
    except KeyboardInterrupt:
        print("interrupted: stopping Berth and removing what it made ...", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            server.stop()  # ends the sessions and removes their machines
            server.remove_leftovers()
            shutil.rmtree(work, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)
