"""Berth in a container: its image builds (./run image), it serves with the host
engine's socket mounted, and its machines work as they do outside a container."""

from __future__ import annotations

import os
import subprocess

import pytest
import requests

from berth.config import PROJECT_DIR

from .conftest import free_port, in_machine, wait_until

pytestmark = pytest.mark.engine

TAG = "berth:test"


@pytest.fixture(scope="module")
def berth_container(engine):
    build = subprocess.run(["bash", str(PROJECT_DIR / "run"), "image"], cwd=PROJECT_DIR,
                           env={**os.environ, "BERTH_IMAGE_TAG": TAG}, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    port = free_port()
    volume = engine.volumes.create(f"berth-test-data-{port}")
    container = engine.containers.run(
        TAG, detach=True, name=f"berth-test-{port}", ports={"5000/tcp": ("127.0.0.1", port)},
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                 volume.name: {"bind": "/data", "mode": "rw"}},
        environment={"BERTH_BASE_IMAGE": os.environ.get("BERTH_BASE_IMAGE", "ubuntu:latest"),
                     "BERTH_NETWORK_POOL": os.environ.get("BERTH_NETWORK_POOL", "10.213.0.0/16")},
        # on an engine that remaps users, only the host's user namespace may use its socket
        sysctls={"net.ipv4.ip_forward": "0"}, userns_mode="host",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            try:
                if requests.get(url + "/healthz", timeout=5).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            container.reload()
            assert container.status == "running", container.logs()[-3000:]
            return False

        wait_until(healthy, 120, lambda: container.logs()[-3000:], interval=0.5)
        yield url, container
    finally:
        instance = container.exec_run(["/venv/bin/python", "-c",
                                       "import sqlite3; print(sqlite3.connect('/data/berth.sqlite3')"
                                       ".execute(\"select value from meta where key='instance_id'\").fetchone()[0])"])
        container.remove(force=True)
        if instance.exit_code == 0:
            from .conftest import remove_instance

            remove_instance(engine, instance.output.decode().strip())
        volume.remove(force=True)


def test_a_session_through_berth_in_a_container(engine, berth_container):
    url, container = berth_container
    created = requests.post(url + "/api/sessions", json={"lesson": "docker-images", "wait": True}, timeout=120)
    assert created.status_code == 201, created.text
    session = created.json()
    assert [m["status"] for m in session["machines"]] == ["ready", "ready"], session
    # Berth joined an internal network of the session's to reach the machines' engines,
    # and still answers on its published port
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"]
    assert f"berth-{session['id']}-reach" in networks and f"berth-{session['id']}" not in networks
    assert requests.get(url + "/healthz", timeout=10).status_code == 200
    code, out = in_machine(engine, session, "workstation", "docker info --format '{{.ID}}'")
    assert code == 0 and out.strip() != engine.info()["ID"]
    checked = requests.post(f"{url}/api/sessions/{session['id']}/check",
                            headers={"Authorization": f"Bearer {session['token']}"}, timeout=60)
    assert checked.status_code == 200 and len(checked.json()["tasks"]) == 5
    # the machines cannot use Berth although it now sits on their network
    berth_ip = networks[f"berth-{session['id']}-reach"]["IPAddress"]
    code, out = in_machine(engine, session, "workstation", f"curl -sS --max-time 3 http://{berth_ip}:5000/api/lessons")
    assert "from_machine" in out and '"lessons"' not in out, out
    deleted = requests.delete(f"{url}/api/sessions/{session['id']}",
                              headers={"Authorization": f"Bearer {session['token']}"}, timeout=60)
    assert deleted.status_code == 204
    assert not engine.containers.list(all=True, filters={"label": f"berth.session={session['id']}"}, ignore_removed=True)
