"""Faults of the host around Berth, each caused for real: its progress store locked by
another process, for a few seconds and past Berth's wait."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest
import requests

from .conftest import BerthServer

pytestmark = pytest.mark.engine

HOLD = 4.0  # seconds the other process holds the store


def hold_store(path, seconds: float) -> subprocess.Popen:
    """Another process (a backup, a curious operator's sqlite3 shell) that takes the progress
    store's write lock for `seconds`; returns once the lock is really held."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time\n"
         "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "db.execute('BEGIN EXCLUSIVE')\n"
         "print('locked', flush=True)\n"
         f"time.sleep({seconds})\n"
         "db.execute('COMMIT')\n",
         str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_store_locked_by_another_process_makes_requests_wait_and_loses_nothing(server, lesson_session):
    """Another process (a backup, a curious operator's sqlite3 shell) takes the progress store's
    write lock for a few seconds: Berth's requests wait for it and then answer, nothing lost."""
    holder = hold_store(server.data_dir / "berth.sqlite3", HOLD)
    try:
        started = time.monotonic()
        created = requests.post(server.url + "/api/sessions", json={"lesson": "docker-images"}, timeout=60)
        waited = time.monotonic() - started
        assert created.status_code == 201, created.text
        assert waited > HOLD / 2, f"answered after {waited:.1f} s: the store was not locked"
        assert holder.wait(10) == 0
    finally:
        holder.kill()
        holder.wait()
    session = created.json()
    for each in (session, lesson_session):  # both are there, with their machines
        found = server.get(f"/api/sessions/{each['id']}", each["token"])
        assert found.status_code == 200 and [m["name"] for m in found.json()["machines"]] == \
            ["workstation", "colleague"], found.text
    assert server.delete_session(session).status_code == 204


def test_a_store_locked_past_berths_wait_is_a_clear_503_and_loses_nothing(engine, tmp_path):
    """The lock is held longer than BERTH_STORE_WAIT: a request that must write answers 503
    store_busy, saying so, rather than hanging or crashing; Berth goes on serving, the session
    it had is intact, and the same request succeeds once the lock is released."""
    berth = BerthServer(tmp_path / "berth", {"BERTH_STORE_WAIT": "1s", "BERTH_MIRROR_IMAGE": ""}).start()
    try:
        kept = berth.create_session("image-basics")
        holder = hold_store(berth.data_dir / "berth.sqlite3", HOLD)
        try:
            started = time.monotonic()
            refused = requests.post(berth.url + "/api/sessions", json={"lesson": "image-basics"}, timeout=60)
            waited = time.monotonic() - started
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "store_busy", refused.text
            assert "busy" in refused.json()["message"]
            assert 0.8 < waited < HOLD, f"answered after {waited:.1f} s, not after BERTH_STORE_WAIT"
            assert berth.health().status_code in (200, 503)  # still serving meanwhile
            assert holder.wait(10) == 0
        finally:
            holder.kill()
            holder.wait()
        again = berth.create_session("image-basics")  # the lock is gone: the same request works
        found = berth.get(f"/api/sessions/{kept['id']}", kept["token"])
        assert found.status_code == 200 and found.json()["machines"][0]["status"] == "ready", found.text
        sessions = {row[0] for row in sqlite3.connect(berth.data_dir / "berth.sqlite3").execute(
            "SELECT id FROM sessions WHERE ended_at IS NULL")}
        assert sessions == {kept["id"], again["id"]}  # the refused request left no half-made session
        for each in (kept, again):
            assert berth.delete_session(each).status_code == 204
    finally:
        berth.stop()
        berth.remove_leftovers()
