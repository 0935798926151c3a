"""The host's Docker engine restarted under a running Berth, for real: the engine is stopped
(its containers stop with it) and started again as `./run` starts it. Berth keeps serving
meanwhile, then starts each stopped machine again with its files, puts its firewall back
(the attack on the host is refused again) and its disk bound, and leaves nothing half-made;
the page is told.

This stops the engine every other test uses, so `./run test` runs it alone, after the rest
(marker `engine_restart`), and only on the engine that `./run` itself started: an engine of
the operator's own is not ours to restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import docker
import pytest
import socketio

from berth.config import PROJECT_DIR

from .conftest import BerthServer, in_machine, labelled, wait_until
from .test_isolation import listener

pytestmark = [pytest.mark.engine, pytest.mark.engine_restart]

ENGINE_PID = Path("/var/run/docker.pid")  # scripts/engine.sh
ENGINE_LOG = Path("/var/log/berth-dockerd.log")
ENGINE_DATA = "/var/lib/berth-engine"  # the engine's disk, a btrfs mount
COME_BACK = 180  # seconds for the machines to be ready again after the engine is back


def engine_pid() -> int | None:
    """The pid of the dockerd that `./run` started (scripts/engine.sh), or None."""
    try:
        pid = int(ENGINE_PID.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    ours = cmdline[:3] == [b"dockerd", b"--pidfile", str(ENGINE_PID).encode()] and ENGINE_LOG.exists()
    return pid if ours else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def restart_engine() -> None:
    """Stop the engine as an operator's `systemctl restart` would (SIGTERM), then start it
    again the way `./run` does."""
    pid = engine_pid()
    assert pid, "not the engine ./run started"
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid), 90, lambda: f"dockerd (pid {pid}) did not stop")
    subprocess.run(["bash", "scripts/engine.sh"], cwd=PROJECT_DIR, check=True, timeout=120)
    assert engine_pid() not in (None, pid)


def quota_mode() -> str:
    """How btrfs counts the engine's disk (scripts/engine.sh): squota (simple quotas), qgroup
    (full quota groups), off, or '' where this kernel does not say."""
    try:
        uuid = subprocess.run(["findmnt", "-no", "UUID", "--mountpoint", ENGINE_DATA],
                              capture_output=True, text=True, timeout=10).stdout.split()[0]
    except (IndexError, OSError):
        return ""
    mode = Path(f"/sys/fs/btrfs/{uuid}/qgroups/mode")
    if not mode.parent.exists():
        return "off"
    return mode.read_text().strip() if mode.exists() else ""


def machine_statuses(berth: BerthServer, session: dict) -> dict[str, str]:
    found = berth.get(f"/api/sessions/{session['id']}", session["token"])
    assert found.status_code == 200, found.text
    return {m["name"]: m["status"] for m in found.json()["machines"]}


def host_refused(engine, session, gateway: str, port: int) -> str:
    """Try the host's listener from the machine; '' if it was refused, else what happened."""
    code, out = in_machine(engine, session, "workstation",
                           f"curl -sS --max-time 5 telnet://{gateway}:{port} </dev/null", timeout=30)
    refused = "SECRET-FROM-HOST" not in out and any(
        words in out for words in ("Connection refused", "Connection reset", "Failed to connect"))
    return "" if refused else out or f"exit {code}, no output"


def test_an_engine_restart_brings_the_machines_back_with_their_files_and_firewall(tmp_path):
    if engine_pid() is None:
        pytest.skip("the Docker engine here is not the one ./run started; restarting it is not ours to do")
    # a small disk bound, so that filling it after the restart is quick
    berth = BerthServer(tmp_path / "berth", {"BERTH_MACHINE_DISK": "2g"}).start()
    client = socketio.Client(reconnection=False)
    try:
        engine = docker.from_env(timeout=120)
        session = berth.create_session("docker-images")
        code, out = in_machine(engine, session, "workstation", "echo kept > /root/before-restart && docker info -f ok")
        assert code == 0, out
        gateway = engine.containers.get(f"berth-{session['id']}-workstation").attrs[
            "NetworkSettings"]["Networks"][f"berth-{session['id']}"]["Gateway"]
        heard: list[dict] = []
        client.on("trouble", lambda data=None: heard.append(data), namespace="/session")
        client.connect(berth.url, namespaces=["/session"], auth={"session": session["id"], "token": session["token"]},
                       transports=["websocket"], wait_timeout=10)
        with listener() as port:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as control:
                assert control.recv(100) == b"SECRET-FROM-HOST\n"
            assert host_refused(engine, session, gateway, port) == ""

            restart_engine()
            # Berth served throughout (its store and pages need no engine) and is still up
            assert berth.process.poll() is None, berth.log_tail()
            assert berth.get("/healthz").status_code in (200, 503)

            def back() -> bool:
                return machine_statuses(berth, session) == {"workstation": "ready", "colleague": "ready"} and any(
                    t["what"] == "running" for t in heard)
            wait_until(back, COME_BACK, lambda: f"machines {machine_statuses(berth, session)}, heard {heard}\n"
                                                f"{berth.log_tail()}")
            # the machine's own files and engine are back
            code, out = in_machine(engine, session, "workstation", "cat /root/before-restart && docker info -f ok")
            assert code == 0 and "kept" in out, out
            # the firewall is back: the attack on the host is refused again
            assert host_refused(engine, session, gateway, port) == ""
        # the disk bound is back: filling the host's disk from the machine is refused again,
        # and the engine's disk is still counted by simple quotas (the engine turns quotas off
        # when it stops and would turn slow full ones on; scripts/engine.sh sets them again)
        code, out = in_machine(engine, session, "workstation",
                               "dd if=/dev/zero of=/root/fill bs=1M count=2500 2>&1; rm -f /root/fill", timeout=180)
        assert "Disk quota exceeded" in out or "No space left" in out, out
        assert quota_mode() in ("squota", ""), f"the engine's disk is counted by {quota_mode()!r} after the restart"
        # the page was told, in order: stopped, then running again
        whats = [t["what"] for t in heard if t["machine"] == "workstation"]
        assert "stopped" in whats and whats.index("stopped") < len(whats) - 1 - whats[::-1].index("running"), heard
        # nothing half-made: this Berth's containers are its mirror, its package cache and the
        # session's two machines, all running (the engine restarted the mirror and the cache)
        mine = engine.containers.list(all=True, filters={"label": f"berth.instance={berth.instance_id}"})
        assert sorted(c.labels.get("berth.role") for c in mine) == ["machine", "machine", "mirror", "packages"], mine
        assert all(c.status == "running" for c in mine), [(c.name, c.status) for c in mine]
        # and the lesson's image still comes from the mirror, which came back with the engine
        code, out = in_machine(engine, session, "workstation",
                               f"docker pull {os.environ.get('BERTH_BASE_IMAGE', 'debian:bookworm')}", timeout=120)
        assert code == 0, out
        assert berth.delete_session(session).status_code == 204
    finally:
        if client.connected:
            client.disconnect()
        berth.stop()
        berth.remove_leftovers()
    assert labelled(docker.from_env(), berth.instance_id) == []
