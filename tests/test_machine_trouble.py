"""Machine trouble, caused for real: a program in a machine runs out of the machine's memory,
a machine's container is killed on the host. The page's /session connection hears it, and a
stopped machine is started again with its files. Restarting the host's engine is not done
here (other work shares it; tests/test_engine_restart.py does it, alone): what notices it,
the periodic look at every machine, is tested here on containers that stopped before anyone
followed the events."""

from __future__ import annotations

import os
import secrets
import threading
import time

import pytest
import socketio

from berth.config import Config
from berth.machines import LABEL_INSTANCE, LABEL_MACHINE, LABEL_ROLE, LABEL_SESSION, DockerMachines
from berth.trouble import size_words

from .conftest import BerthServer, in_machine, machine_container, remove_instance, wait_until

pytestmark = pytest.mark.engine

LESSON = "image-basics"  # one machine: workstation
OOM_TIMEOUT = 180  # the kernel may reclaim page cache first


@pytest.fixture(scope="module")
def small_server(engine, tmp_path_factory) -> BerthServer:
    """A Berth whose machines have 384 MiB of memory."""
    berth = BerthServer(tmp_path_factory.mktemp("berth-small"), {"BERTH_MACHINE_MEMORY": "384m"}).start()
    yield berth
    berth.stop()
    remove_instance(engine, berth.instance_id)


@pytest.fixture(scope="module")
def session(small_server) -> dict:
    created = small_server.create_session(LESSON)
    yield created
    small_server.delete_session(created)


@pytest.fixture
def page(small_server, session):
    """The lesson page's /session connection: every `trouble` it is sent, in order."""
    heard: list[dict] = []
    client = socketio.Client(reconnection=False)
    client.on("trouble", lambda data=None: heard.append(data), namespace="/session")
    client.connect(small_server.url, namespaces=["/session"], auth={"session": session["id"], "token": session["token"]},
                   transports=["websocket"], wait_timeout=10)
    yield heard
    client.disconnect()


def machine_status(server: BerthServer, session: dict, name: str) -> str:
    found = server.get(f"/api/sessions/{session['id']}", session["token"]).json()
    return next(m["status"] for m in found["machines"] if m["name"] == name)


def test_a_program_out_of_memory_is_killed_and_the_page_is_told_once(engine, small_server, session, page):
    """`tail` of an endless line holds it all in memory: past 384 MiB the kernel kills it;
    the page hears it once, and the machine stays ready."""
    code, out = in_machine(engine, session, "workstation",
                           "head -c 2000M /dev/zero | tail; echo tail=${PIPESTATUS[1]}", timeout=OOM_TIMEOUT)
    assert "tail=137" in out, out  # killed by SIGKILL: the OOM killer did it
    wait_until(lambda: page, 30, lambda: f"no trouble heard; log:\n{small_server.log_tail()}")
    time.sleep(3)  # a second notice, if any, would come now
    ooms = [t for t in page if t["what"] == "oom"]
    assert len(ooms) == 1, page
    assert ooms[0]["machine"] == "workstation"
    assert ooms[0]["message"] == ("A program in workstation ran out of memory (limit 384 MiB) "
                                  "and was stopped by the kernel.")
    assert machine_status(small_server, session, "workstation") == "ready"
    code, out = in_machine(engine, session, "workstation", "echo still here")
    assert code == 0 and "still here" in out


def test_a_machine_killed_on_the_host_is_started_again_with_its_files(engine, small_server, session, page):
    """Killed, its engine leaves its pid files behind; after the restart their pids belong to
    other processes (here: containerd's names pid 1, as a reused pid would), which must not
    keep the engine from starting (it did, in CI: dockerd waited for that "containerd")."""
    code, out = in_machine(engine, session, "workstation",
                           "echo mine > /root/kept.txt && docker info -f '{{.ID}}' "
                           "&& printf 1 > /var/run/docker/containerd/containerd.pid")
    assert code == 0, out
    container = machine_container(engine, session, "workstation")
    finished_before = container.attrs["State"]["FinishedAt"]
    container.kill()

    def stopped_since() -> bool:
        """It really stopped after the kill (the engine may still call it running for a
        moment; and Berth may have started it again already, so its stop time is what tells)."""
        container.reload()
        return container.attrs["State"]["FinishedAt"] != finished_before
    wait_until(stopped_since, 30, lambda: f"the machine did not stop: {container.attrs['State']}")

    def said(what: str):
        return next((t for t in page if t["what"] == what), None)

    wait_until(lambda: said("running") or said("failed"), 120,
               lambda: f"heard {page}; log:\n{small_server.log_tail()}")
    whats = [t["what"] for t in page]
    assert "failed" not in whats, page
    assert whats.index("stopped") < whats.index("running"), page
    assert said("stopped")["message"] == "workstation stopped; Berth is starting it again…"
    assert said("running")["message"] == "workstation is running again."
    assert machine_status(small_server, session, "workstation") == "ready"
    again = machine_container(engine, session, "workstation")
    assert again.id == container.id  # started again, not made anew
    code, out = in_machine(engine, session, "workstation", "cat /root/kept.txt && docker info -f '{{.ID}}'")
    assert code == 0 and out.startswith("mine"), out
    # Checks resume: the API answers the task list from a fresh round.
    checked = small_server.get(f"/api/sessions/{session['id']}", session["token"])
    assert checked.status_code == 200


def labels(instance_id: str, session_id: str) -> dict[str, str]:
    return {LABEL_INSTANCE: instance_id, LABEL_SESSION: session_id, LABEL_MACHINE: "workstation",
            LABEL_ROLE: "machine"}


def test_following_reports_stopped_machines_out_of_memory_and_dying(engine):
    """The backend's follow, on its own: a machine that stopped before following began is
    found by the look (as after a restart of the engine), one that dies and one whose
    program runs out of memory are reported from the events; stop is heard within seconds."""
    instance = f"trouble-{secrets.token_hex(3)}"
    image = os.environ.get("BERTH_BASE_IMAGE", "debian:bookworm")
    backend = DockerMachines(Config.from_env(), instance, None)  # type: ignore[arg-type]
    heard: list = []
    stop = threading.Event()
    try:
        stopped = engine.containers.run(image, ["true"], labels=labels(instance, "found"), detach=True)
        stopped.wait(timeout=30)
        follower = threading.Thread(target=backend.follow, args=(heard.append, stop), daemon=True)
        follower.start()
        wait_until(lambda: any(h.session_id == "found" and h.what == "stopped" for h in heard), 20, lambda: heard)
        engine.containers.run(image, ["sleep", "1"], labels=labels(instance, "dies"), detach=True)
        engine.containers.run(image, ["sh", "-c", "head -c 500M /dev/zero | tail"], labels=labels(instance, "hungry"),
                              mem_limit="32m", memswap_limit="32m", detach=True)
        wait_until(lambda: any(h.session_id == "dies" and h.what == "stopped" and h.detail.startswith("die")
                               for h in heard), 30, lambda: heard)  # from its event, not the look
        wait_until(lambda: any(h.session_id == "hungry" and h.what == "oom" for h in heard), 60, lambda: heard)
        assert all(h.machine == "workstation" for h in heard)
        began = time.monotonic()
        stop.set()
        follower.join(10)
        assert not follower.is_alive() and time.monotonic() - began < 5
    finally:
        stop.set()
        backend.close()
        remove_instance(engine, instance)


def test_memory_limits_in_words():
    assert size_words(2**30) == "1 GiB"
    assert size_words(384 * 2**20) == "384 MiB"
    assert size_words(1536 * 2**20) == "1.5 GiB"
