"""The pool of sessions made ahead of time (berth/pool.py), on the real engine: a learner
takes a warm kit whose machines answer and already hold the lesson's images; the pool
refills; no kit is shared or anybody's before; a kit has the same isolation as a cold start;
stopping drains the pool, a restart removes what a killed Berth left, and the pool yields
to learners at BERTH_MAX_SESSIONS and makes a workshop's seats."""

from __future__ import annotations

import os
import time

import pytest
import requests

from tests.conftest import BerthServer, in_machine, labelled, machine_container, remove_instance, wait_until

pytestmark = pytest.mark.engine

BASE = os.environ.get("BERTH_BASE_IMAGE", "ubuntu:latest")
FILL_TIMEOUT = 180  # a kit: its machines made, their engines up, the lesson's images pulled (a loaded host)
# What a machine's HostConfig says about its isolation and limits: a kit's must be a cold one's.
PROFILE_KEYS = ("Privileged", "CapAdd", "CapDrop", "SecurityOpt", "UsernsMode", "Runtime", "CgroupnsMode",
                "Devices", "DeviceCgroupRules", "MaskedPaths", "ReadonlyPaths", "ReadonlyRootfs", "Memory",
                "MemorySwap", "NanoCpus", "PidsLimit", "Sysctls", "PidMode", "IpcMode", "Binds")


def pool_of(server: BerthServer) -> dict:
    return server.health().json().get("pool", {})


def wait_warm(server: BerthServer, slug: str, count: int = 1) -> dict:
    return wait_until(lambda: (p := pool_of(server)).get(slug, {}).get("warm", 0) >= count and p, FILL_TIMEOUT,
                      lambda: f"no warm kit of {slug}: {pool_of(server)}\n{server.log_tail()}", interval=0.5)


def from_pool(server: BerthServer, session: dict) -> bool:
    return server.fact(session["id"], "start", "from") == {"pool"}


def kit_ids(engine, server: BerthServer, sessions: list[dict]) -> set[str]:
    """Session ids of machines on the engine that belong to no learner's session: the kits."""
    names = labelled(engine, server.instance_id, "machine")
    ids = {name.split("-")[1] for name in names}
    return ids - {s["id"] for s in sessions}


@pytest.fixture(scope="module")
def pooled(engine, tmp_path_factory):
    """A Berth that keeps one kit of image-layers (preloads the base image) and one of
    image-basics (`preload: []`)."""
    server = BerthServer(tmp_path_factory.mktemp("pooled"),
                         {"BERTH_POOL": "image-layers=1,image-basics=1"}).start()
    yield server
    server.stop()
    left = labelled(engine, server.instance_id)
    remove_instance(engine, server.instance_id)
    assert left == [], f"a stopped Berth left {left}"


def test_a_session_from_the_warm_pool_answers_and_holds_the_lesson_image(pooled, engine):
    wait_warm(pooled, "image-layers")
    started = time.perf_counter()
    session = pooled.create_session("image-layers")  # wait=true: every machine ready
    took = time.perf_counter() - started
    try:
        assert from_pool(pooled, session), session
        print(f"session from the pool ready in {took:.3f} s")
        code, out = in_machine(engine, session, "workstation", "docker info --format '{{.ServerVersion}}'")
        assert code == 0 and out.strip(), out
        # the lesson's image is in the machine's own store: its first run pulls nothing
        code, out = in_machine(engine, session, "workstation", f"docker image inspect {BASE} >/dev/null")
        assert code == 0, out
        code, out = in_machine(engine, session, "workstation", f"docker run --rm --pull never {BASE} echo ran")
        assert code == 0 and "ran" in out, out
        # the checker watches it as any session: the first task is pending, with feedback
        tasks = pooled.get(f"/api/sessions/{session['id']}", session["token"]).json()["tasks"]
        assert tasks[0]["status"] == "pending", tasks
    finally:
        pooled.delete_session(session)


def test_the_pool_refills_after_a_take(pooled):
    wait_warm(pooled, "image-layers")
    session = pooled.create_session("image-layers")
    try:
        assert from_pool(pooled, session)
        after = pool_of(pooled)["image-layers"]
        assert after["warm"] == 0 and after["wanted"] == 1, after
        wait_warm(pooled, "image-layers")  # made again behind the learner
    finally:
        pooled.delete_session(session)


def test_no_kit_is_shared_or_a_previous_learners(pooled, engine):
    wait_warm(pooled, "image-layers")
    first = pooled.create_session("image-layers")
    second = pooled.create_session("image-layers", wait=True)  # the pool has one kit: this one is cold
    try:
        assert from_pool(pooled, first) and not from_pool(pooled, second)
        assert first["id"] != second["id"]
        mine = machine_container(engine, first, "workstation")
        network = engine.networks.get(f"berth-{first['id']}")
        assert machine_container(engine, second, "workstation").id != mine.id
        code, out = in_machine(engine, first, "workstation", "echo secret > /root/mine")
        assert code == 0, out
    finally:
        pooled.delete_session(first)
        pooled.delete_session(second)
    # ending a session removes its machines and network: nothing of it can be handed out again
    assert not [n for n in labelled(engine, pooled.instance_id) if first["id"] in n]
    wait_warm(pooled, "image-layers")
    third = pooled.create_session("image-layers")
    try:
        assert from_pool(pooled, third)
        assert third["id"] not in (first["id"], second["id"])
        container = machine_container(engine, third, "workstation")
        assert container.id != mine.id
        assert engine.networks.get(f"berth-{third['id']}").id != network.id
        code, out = in_machine(engine, third, "workstation", "test ! -e /root/mine && echo fresh")
        assert code == 0 and "fresh" in out, out
    finally:
        pooled.delete_session(third)


def test_a_kit_has_the_isolation_of_a_cold_start(pooled, engine):
    wait_warm(pooled, "image-layers")
    warm = pooled.create_session("image-layers")
    cold = pooled.create_session("export-import")  # no kits wanted for it: made now
    try:
        assert from_pool(pooled, warm) and not from_pool(pooled, cold)
        warm_config = machine_container(engine, warm, "workstation").attrs["HostConfig"]
        cold_config = machine_container(engine, cold, "workstation").attrs["HostConfig"]
        for key in PROFILE_KEYS:
            assert warm_config.get(key) == cold_config.get(key), (key, warm_config.get(key), cold_config.get(key))
        assert warm_config["NetworkMode"] == f"berth-{warm['id']}"  # a network of its own, as a cold one
        assert cold_config["NetworkMode"] == f"berth-{cold['id']}"
        assert [m["Type"] for m in warm_config.get("Mounts") or []] == [m["Type"] for m in cold_config.get("Mounts") or []]
        # the same user namespace and capabilities as seen from inside
        probe = "grep -E '^(CapEff|CapBnd)' /proc/self/status; cat /proc/self/uid_map"
        assert in_machine(engine, warm, "workstation", probe) == in_machine(engine, cold, "workstation", probe)
    finally:
        pooled.delete_session(warm)
        pooled.delete_session(cold)


def test_a_lesson_with_preload_empty_gets_a_machine_without_its_images(pooled, engine):
    wait_warm(pooled, "image-basics")
    session = pooled.create_session("image-basics")
    try:
        assert from_pool(pooled, session)
        code, out = in_machine(engine, session, "workstation", "docker images -q | wc -l")
        assert code == 0 and out.strip() == "0", out
        response = requests.post(f"{pooled.url}/api/sessions/{session['id']}/check",
                                 headers={"Authorization": f"Bearer {session['token']}"}, timeout=60)
        pull = response.json()["tasks"][0]
        assert pull["id"] == "pull" and pull["status"] == "pending", pull
    finally:
        pooled.delete_session(session)


def test_stopping_drains_the_pool_even_when_sessions_are_kept(engine, tmp_path):
    server = BerthServer(tmp_path / "drain", {"BERTH_POOL": "image-layers=1", "BERTH_KEEP_ON_STOP": "1"}).start()
    try:
        learner = server.create_session("export-import")
        wait_warm(server, "image-layers")
        kits = kit_ids(engine, server, [learner])
        assert len(kits) == 1, kits
        server.stop()
        left = labelled(engine, server.instance_id)
        assert not [name for name in left for kit in kits if kit in name], left  # containers, networks, volumes
        assert machine_container(engine, learner, "workstation").status == "running"  # kept, as asked
    finally:
        server.stop()
        remove_instance(engine, server.instance_id)


def test_a_restarted_berth_removes_the_kits_a_killed_one_left(engine, tmp_path):
    server = BerthServer(tmp_path / "killed", {"BERTH_POOL": "image-layers=1"}).start()
    try:
        wait_warm(server, "image-layers")
        kits = kit_ids(engine, server, [])
        assert len(kits) == 1, kits
        server.process.kill()  # SIGKILL: nothing is cleaned up
        server.process.wait(10)
        worker_gone = lambda: not os.path.exists(f"/proc/{server.serving_pid}")  # noqa: E731
        wait_until(worker_gone, 10, lambda: "the worker outlived its killed master")
        assert [name for name in labelled(engine, server.instance_id) for kit in kits if kit in name]
        server.env_overrides["BERTH_POOL"] = "0"
        server.start()
        wait_until(lambda: not [n for n in labelled(engine, server.instance_id) for kit in kits if kit in n], 60,
                   lambda: f"the killed run's kit is still there: {labelled(engine, server.instance_id)}")
    finally:
        server.stop()
        remove_instance(engine, server.instance_id)


def test_kits_give_way_to_learners_and_a_workshop_gets_its_seats_within_capacity(engine, tmp_path):
    server = BerthServer(tmp_path / "capacity", {"BERTH_POOL": "image-layers=2", "BERTH_MAX_SESSIONS": "2",
                                                 "BERTH_INSTRUCTOR_TOKEN": "teacher-" + "x" * 20}).start()
    sessions = []
    try:
        wait_warm(server, "image-layers", 2)
        capacity = server.get("/api/capacity", server.instructor_token).json()
        assert capacity["made_ahead"] == 2 and capacity["sessions"] == 0, capacity
        sessions.append(server.create_session("export-import"))  # a cold one: a kit makes room for it
        wait_until(lambda: len(kit_ids(engine, server, sessions)) <= 1, 60,
                   lambda: f"kits did not give way: {pool_of(server)}")
        response = requests.post(f"{server.url}/api/workshops", json={"lesson": "image-layers", "seats": 3},
                                 headers={"Authorization": f"Bearer {server.instructor_token}"}, timeout=30)
        assert response.status_code == 201, response.text
        wanted = wait_until(lambda: (p := pool_of(server)["image-layers"])["wanted"] == 5 and p, 30)
        assert wanted["warm"] + wanted["filling"] <= 1, wanted  # within BERTH_MAX_SESSIONS
        wait_warm(server, "image-layers")
        joined = requests.post(f"{server.url}/api/workshops/{response.json()['code']}/join", json={"name": "Ada"},
                               timeout=60)
        assert joined.status_code == 201, joined.text
        sessions.append(joined.json())
        assert from_pool(server, sessions[-1])
        assert pool_of(server)["image-layers"]["wanted"] == 4  # the seat is taken
        time.sleep(5)  # two learners: no room for another kit, however many are wanted
        state = pool_of(server)["image-layers"]
        assert state["warm"] + state["filling"] == 0 and not kit_ids(engine, server, sessions), state
    finally:
        server.stop()
        remove_instance(engine, server.instance_id)
