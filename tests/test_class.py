"""The class benchmark's core with two learners at once against a real Berth: both finish
a lesson typed through the terminal protocol, every task ticks, nothing fails, and Berth's
cost and the learners' machines' CPU are measured.

The lesson here is export-import, not the benchmark's default docker-images: the same
benchmark code, without two more installs of vim, python3 and nginx, which took this test to
206-238 s and the suite close to CI's 30 minutes. The Docker images lesson is walked whole
elsewhere (its self-test, the browser lesson, the chapter), and `./run bench class N` takes it."""

from __future__ import annotations

import importlib

import docker
import pytest

from tests.conftest import BerthServer, remove_instance

pytestmark = pytest.mark.engine

bench = importlib.import_module("benchmarks.class")  # `class` is a keyword: no plain import


def test_two_learners_finish_the_lesson(engine: docker.DockerClient, tmp_path):
    berth = BerthServer(tmp_path / "class", bench.server_settings(2)).start()
    try:
        report = bench.run_class(berth.url, berth.process.pid, 2, lesson=bench.class_lesson("export-import"))
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)
    assert report["failures"] == [], report["failures"]
    assert report["completed"] == 2
    tasks = report["tasks"]
    assert tasks and all(set(learner["ticks"]) == set(tasks) for learner in report["per_learner"]), report["per_learner"]
    assert report["sessions_ready"]["n"] == 2 and report["tick_latency"]["n"] == 2 * len(tasks)
    berth_cost = report["berth"]
    assert berth_cost["processes"] >= 2, berth_cost  # gunicorn's master and its worker were both sampled
    assert berth_cost["cpu_seconds"] > 0 and berth_cost["rss_peak_mib"] > 0
    machines = report["machines_cpu_per_learner"]  # read from the host engine before the sessions ended
    assert machines and machines["n"] == 2 and machines["median"] > 1, machines  # machines' engines at work: seconds of CPU
    assert 0 < report["host_cpu_busy_percent"] <= 100
    assert bench.table(report).count("\n") >= 8
