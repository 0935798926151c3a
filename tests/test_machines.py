"""Learner machines on a real engine: their own engines, nested containers, limits,
isolation, adoption after a restart, and clean removal."""

from __future__ import annotations

import os
import re
import threading
import time

import pytest
import requests

from .conftest import (
    KEEP,
    BerthServer,
    in_machine,
    labelled,
    machine_container,
    remove_instance,
    wait_until,
    wait_until_ready,
)

pytestmark = pytest.mark.engine

# A web server the Debian base image can run without installing anything (perl-base is in
# every Debian image): answers every request with "hello from nested".
PERL_HTTPD = (
    "perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalPort=>80,Listen=>5,ReuseAddr=>1) or die;"
    "while($c=$s->accept){<$c>;print $c \"HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nhello from nested\\n\";close $c}'"
)


def test_each_machine_runs_its_own_engine(engine, lesson_session):
    host_id = engine.info()["ID"]
    ids = set()
    for name in ("workstation", "colleague"):
        code, out = in_machine(engine, lesson_session, name, "docker info --format '{{.ID}}'")
        assert code == 0, out
        ids.add(out.strip())
    assert host_id not in ids
    assert len(ids) == 2


def test_an_engine_that_dies_is_restarted(engine, lesson_session):
    code, out = in_machine(engine, lesson_session, "colleague",
                           "kill -9 $(cat /var/run/docker.pid) && sleep 0.5 && "
                           "for i in $(seq 60); do docker info >/dev/null 2>&1 && echo back && exit 0; sleep 0.25; done; exit 1")
    assert code == 0 and "back" in out, out


def test_machine_prompt_and_tools(engine, lesson_session):
    code, out = in_machine(engine, lesson_session, "workstation",
                           "hostname; for t in curl vim nano less python3 ps ip jq tree berth-shell; do command -v $t >/dev/null || echo missing $t; done; "
                           "complete -p docker >/dev/null 2>&1 || . /usr/share/bash-completion/completions/docker && echo completion")
    assert code == 0, out
    assert "workstation" in out and "missing" not in out and "completion" in out


def test_nested_run_publish_and_pull_through_mirror(engine, lesson_session):
    base = _base_image()
    code, out = in_machine(engine, lesson_session, "workstation",
                           f"docker pull {base} >/dev/null && docker run -d --name web -p 8080:80 {base} {PERL_HTTPD} >/dev/null && "
                           "for i in $(seq 50); do curl -fsS localhost:8080 && exit 0; sleep 0.2; done; exit 1", timeout=120)
    assert code == 0, out
    assert "hello from nested" in out
    # the colleague reaches it by the workstation's name, on the session's network
    code, out = in_machine(engine, lesson_session, "colleague", "curl -fsS --max-time 5 http://workstation:8080/")
    assert code == 0 and "hello from nested" in out, out


def test_images_come_from_the_mirror_read_only(engine, lesson_session):
    base = _base_image()
    code, out = in_machine(engine, lesson_session, "colleague",
                           f"docker pull {base} >/dev/null && docker tag {base} berth-mirror:5000/pushed:1 && "
                           "docker push berth-mirror:5000/pushed:1", timeout=120)
    assert code != 0, "a learner must not be able to push into the shared mirror"


def test_isolation_between_sessions_and_from_the_host(engine, server, lesson_session):
    other = server.create_session()
    try:
        other_ip = machine_container(engine, other, "workstation").attrs["NetworkSettings"]["Networks"][
            f"berth-{other['id']}"]["IPAddress"]
        own = machine_container(engine, lesson_session, "workstation")
        gateway = own.attrs["NetworkSettings"]["Networks"][f"berth-{lesson_session['id']}"]["Gateway"]
        # another session's machine: neither its engine nor anything else answers
        code, out = in_machine(engine, lesson_session, "workstation",
                               f"curl -ksS --max-time 3 https://{other_ip}:2376/version; "
                               f"ping -c 1 -W 2 {other_ip}")
        assert code != 0 and "ApiVersion" not in out, out
        # the host engine's API is not in the machine: its docker socket is the inner engine
        code, out = in_machine(engine, lesson_session, "workstation", "docker info --format '{{.ID}}'")
        assert out.strip() != engine.info()["ID"]
        for port in (2375, 2376):
            code, out = in_machine(engine, lesson_session, "workstation",
                                   f"curl -sS --max-time 3 http://{gateway}:{port}/version")
            assert code != 0 and "ApiVersion" not in out, out
        # Berth itself is not reachable from the machine
        code, out = in_machine(engine, lesson_session, "workstation",
                               f"curl -sS --max-time 3 http://{gateway}:{server.port}/healthz")
        assert code != 0 or '"status"' not in out, out
        # a machine of the same session cannot drive its neighbour's engine without Berth's key
        code, out = in_machine(engine, lesson_session, "colleague",
                               "curl -ksS --max-time 3 https://workstation:2376/version")
        assert code != 0 and "ApiVersion" not in out, out
        code, out = in_machine(engine, lesson_session, "colleague", "ping -c 1 -W 2 workstation")
        assert code == 0, out
    finally:
        server.delete_session(other)


def test_berth_refuses_machines_even_when_listening_on_all_addresses(engine, tmp_path):
    exposed = BerthServer(tmp_path / "exposed", {"BERTH_HOST": "0.0.0.0"}).start()
    try:
        session = exposed.create_session()
        gateway = machine_container(engine, session, "workstation").attrs["NetworkSettings"]["Networks"][
            f"berth-{session['id']}"]["Gateway"]
        code, out = in_machine(engine, session, "workstation",
                               f"curl -sS --max-time 3 http://{gateway}:{exposed.port}/api/lessons")
        # the host's firewall refuses it first (docs/security.md); Berth's own refusal of the
        # sessions' addresses stands behind it (tested where the firewall lets traffic through:
        # Berth in a container on a session's network, test_container.py)
        assert '"lessons"' not in out, out
        assert "Failed to connect" in out or "Connection reset" in out or "from_machine" in out, out
    finally:
        exposed.stop()
        remove_instance(engine, exposed.instance_id)


def test_limits_hold(engine, tmp_path):
    small = BerthServer(tmp_path / "small", {"BERTH_MACHINE_MEMORY": "256m", "BERTH_MACHINE_PIDS": "300"}).start()
    try:
        session = small.create_session()
        container = machine_container(engine, session, "workstation")
        # a memory hog is stopped at the machine's limit
        code, out = in_machine(engine, session, "workstation",
                               "python3 -c 'b = bytearray(600 * 1024 * 1024); print(\"survived\")'")
        assert code != 0 and "survived" not in out, out
        # a fork bomb in a nested container stays inside the machine's process limit
        base = _base_image()
        code, out = in_machine(engine, session, "workstation",
                               f"docker pull -q {base} >/dev/null && docker run -d --name bomb {base} "
                               "bash -c 'b() { b | b & }; b; sleep 60'", timeout=120)
        # the bomb started (the CLI printed its id); the CLI itself may then die for want of a
        # process, as nested containers share the machine's process limit with it
        assert re.search(r"\b[0-9a-f]{64}\b", out), out
        time.sleep(5)
        pids = container.stats(stream=False)["pids_stats"]["current"]
        assert pids <= 300
        started = time.monotonic()
        engine.ping()
        engine.containers.list()
        assert time.monotonic() - started < 5, "the host engine stays responsive"
        assert requests.get(small.url + "/healthz", timeout=10).status_code == 200
        # ending the session removes even a machine full of processes
        assert small.delete_session(session).status_code == 204
        assert labelled(engine, small.instance_id, "machine") == []
    finally:
        small.stop()
        remove_instance(engine, small.instance_id)


def test_restart_adopts_running_sessions(engine, tmp_path):
    first = BerthServer(tmp_path / "restart", KEEP).start()
    try:
        session = first.create_session()
        code, _ = in_machine(engine, session, "workstation", "echo kept > /root/note.txt")
        assert code == 0
        before = machine_container(engine, session, "workstation").id
        first.stop()
        second = BerthServer(first.data_dir, KEEP, port=first.port).start()
        response = second.get(f"/api/sessions/{session['id']}", session["token"])
        assert response.status_code == 200, response.text

        def machines() -> list[dict]:
            return second.get(f"/api/sessions/{session['id']}", session["token"]).json()["machines"]

        wait_until(lambda: all(m["status"] == "ready" for m in machines()), 60, machines, interval=0.5)
        assert [m["status"] for m in machines()] == ["ready", "ready"]
        assert machine_container(engine, session, "workstation").id == before
        assert in_machine(engine, session, "workstation", "cat /root/note.txt")[1].strip() == "kept"
        second.stop()
    finally:
        first.stop()
        remove_instance(engine, first.instance_id)


def test_delete_and_reaper_leave_nothing_behind(engine, tmp_path):
    # long enough a life that a loaded host still creates and deletes the first session within it
    berth = BerthServer(tmp_path / "reaper", {"BERTH_SESSION_TTL": "20s", "BERTH_REAP_INTERVAL": "1s"}).start()
    try:
        deleted = berth.create_session()
        assert berth.delete_session(deleted).status_code == 204
        assert not [n for n in labelled(engine, berth.instance_id) if deleted["id"] in n]
        assert berth.get(f"/api/sessions/{deleted['id']}", deleted["token"]).status_code == 404

        expiring = berth.create_session()
        # leftovers of a session Berth does not know (say, after its data folder was lost)
        engine.volumes.create("berth-orphan-test", labels={"berth.instance": berth.instance_id,
                                                            "berth.session": "0rphan", "berth.role": "disk"})
        wait_until(lambda: not [n for n in labelled(engine, berth.instance_id) if "mirror" not in n and "packages" not in n], 60,
                   lambda: labelled(engine, berth.instance_id), interval=0.5)
        assert berth.get(f"/api/sessions/{expiring['id']}", expiring["token"]).status_code == 404
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)


def test_two_removers_at_once_both_return_with_everything_gone(engine, config):
    """An API delete and the reaper may remove the same session together: neither may
    return while the other still has its machines, disks or network on the engine."""
    from berth import create_app

    berth = create_app(config).berth
    try:
        wait_until_ready(berth)
        record, _ = berth.sessions.create("docker-images", wait=True)
        assert len([n for n in labelled(engine, berth.instance_id) if record.id in n]) >= 3  # two machines and their network
        left: list[list[str]] = []

        def remove() -> None:
            berth.backend.destroy_session(record.id)
            left.append([n for n in labelled(engine, berth.instance_id) if record.id in n])

        removers = [threading.Thread(target=remove) for _ in range(3)]
        for remover in removers:  # staggered, so that each finds another halfway through
            remover.start()
            time.sleep(0.05)
        for remover in removers:
            remover.join(60)
        assert left == [[], [], []]
        berth.sessions.end(record.id)  # the checker stops watching it (its machines are gone)
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)


def _base_image() -> str:
    return os.environ.get("BERTH_BASE_IMAGE", "ubuntu:latest")


def test_typing_keeps_a_session_from_being_reaped_as_idle(engine, tmp_path):
    from .terminal_client import TerminalClient

    berth = BerthServer(tmp_path / "idle", {"BERTH_SESSION_IDLE": "8s", "BERTH_REAP_INTERVAL": "1s"}).start()
    try:
        session = berth.create_session()
        terminal = TerminalClient(berth.url, {"session": session["id"], "token": session["token"],
                                              "machine": "workstation"}).start()
        for _ in range(8):  # 16 s of a learner typing, twice the idle time
            terminal.send("true\r")
            time.sleep(2)
        assert labelled(engine, berth.instance_id, "machine"), "a session in use was reaped as idle"
        terminal.close()
        # now left alone, it is reaped
        wait_until(lambda: not labelled(engine, berth.instance_id, "machine"), 30,
                   lambda: "an idle session was not reaped", interval=0.5)
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)
