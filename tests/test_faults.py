"""Faults of the host around Berth, each caused for real: its progress store locked by
another process."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests

pytestmark = pytest.mark.engine

HOLD = 4.0  # seconds the other process holds the store


def test_a_store_locked_by_another_process_makes_requests_wait_and_loses_nothing(server, lesson_session):
    """Another process (a backup, a curious operator's sqlite3 shell) takes the progress store's
    write lock for a few seconds: Berth's requests wait for it and then answer, nothing lost."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time\n"
         "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "db.execute('BEGIN EXCLUSIVE')\n"
         "print('locked', flush=True)\n"
         f"time.sleep({HOLD})\n"
         "db.execute('COMMIT')\n",
         str(server.data_dir / "berth.sqlite3")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # the lock is really held
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
