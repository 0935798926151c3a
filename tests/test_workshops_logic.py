"""The pure parts of workshops, fast and without an engine: join codes as people type them,
text from learners, the instructor token's keeping, and when a learner counts as stuck."""

from __future__ import annotations

import os
import time

import pytest

from berth.config import Config
from berth.events import Bus, HandChanged, Happening, LearnerChanged
from berth.store import LearnerRecord, SessionRecord, Store, TaskResult, WorkshopRecord
from berth.workshops import (
    CODE_ALPHABET,
    WorkshopError,
    Workshops,
    clean_text,
    display_code,
    load_instructor_token,
    normalize_code,
)

TASKS = [{"id": "run", "title": "Run a configured container"}, {"id": "customize", "title": "Turn it into a web server"}]


def test_codes_as_people_type_them():
    assert normalize_code("k7m-rx4") == normalize_code("K7M RX4") == normalize_code(" k7mRX4 ") == "K7MRX4"
    assert display_code("K7MRX4") == "K7M-RX4"
    assert not set(CODE_ALPHABET) & set("0O1IL2Z5S6G8BUVQ")


def test_text_from_people():
    assert clean_text("  Ada \t Lovelace\n", "name", 40) == "Ada Lovelace"
    assert clean_text("Gr\x00ace\x1b", "name", 40) == "Grace"
    assert clean_text(None, "message", 10, required=False) is None
    assert clean_text("   ", "message", 10, required=False) is None
    for value in (None, "", " \x07 ", 5, ["x"], "x" * 41):
        with pytest.raises(WorkshopError) as error:
            clean_text(value, "name", 40)
        assert error.value.status == 400 and "name" in error.value.message


def test_the_instructor_token_is_made_once_and_kept_private(tmp_path):
    config = Config.from_env({"BERTH_DATA_DIR": str(tmp_path)})
    token, made = load_instructor_token(config)
    assert made and len(token) >= 24
    assert (tmp_path / "instructor-token").stat().st_mode & 0o077 == 0
    assert load_instructor_token(config) == (token, True)
    assert load_instructor_token(Config.from_env({"BERTH_DATA_DIR": str(tmp_path),
                                                  "BERTH_INSTRUCTOR_TOKEN": "given"})) == ("given", False)


@pytest.fixture
def room(tmp_path):
    """Workshops over a real store, with one learner who joined `ago` seconds before."""
    store = Store(tmp_path / "berth.sqlite3")
    config = Config.from_env({**os.environ, "BERTH_DATA_DIR": str(tmp_path), "BERTH_STUCK_AFTER": "10m",
                              "BERTH_STUCK_TRIES": "3"})

    def task_list(session_id):
        results = store.task_results(session_id)
        return [{**task, "status": results[task["id"]].status if task["id"] in results else "pending",
                 "completed_at": None, "feedback": results[task["id"]].feedback if task["id"] in results else []}
                for task in TASKS]

    workshops = Workshops(config, store, sessions=None, library=None, task_list=task_list,  # type: ignore[arg-type]
                          bus=Bus(), token="t")

    def learner(ago: float) -> LearnerRecord:
        now = time.time()
        store.add_session(SessionRecord("s1", "h", "docker-images", now - ago, now + 3600, now))
        store.add_workshop(WorkshopRecord("w1", "K7MRX4", "docker-images", "W", 30, now - ago, now + 3600))
        record = LearnerRecord("s1", "w1", "Ada", now - ago)
        store.add_learner(record)
        return record

    return workshops, store, learner


def test_stuck_after_a_while_without_progress(room):
    workshops, store, learner = room
    ada = learner(ago=11 * 60)
    assert workshops.stuck_reason(ada, workshops.task_list("s1")) == "No progress for 11 min on “Run a configured container”"
    store.save_task_result("s1", TaskResult("run", "done", time.time() - 60, []))
    assert workshops.stuck_reason(ada, workshops.task_list("s1")) is None  # a task done a minute ago
    store.save_task_result("s1", TaskResult("customize", "done", time.time(), []))
    assert workshops.stuck_reason(ada, workshops.task_list("s1")) is None  # all done: never stuck


def test_stuck_when_the_same_checks_fail_again_and_again(room):
    workshops, store, learner = room
    ada = learner(ago=60)
    feedback = [{"ok": True, "message": "ubuntu001 is running."}, {"ok": False, "message": "VAR2 is not set."}]
    store.save_task_result("s1", TaskResult("run", "pending", None, feedback))
    workshops.on_tasks("s1", workshops.task_list("s1"))
    for _ in range(2):
        workshops.on_command("s1")
    assert workshops.stuck_reason(ada, workshops.task_list("s1")) is None
    workshops.on_command("s1")
    assert workshops.stuck_reason(ada, workshops.task_list("s1")) == "“VAR2 is not set.” through 3 commands in a row"
    # what the checks say changes: that is progress, the count starts again
    store.save_task_result("s1", TaskResult("run", "pending", None, [{"ok": False, "message": "Port 3000 ..."}]))
    workshops.on_tasks("s1", workshops.task_list("s1"))
    assert workshops.stuck_reason(ada, workshops.task_list("s1")) is None


def test_a_raised_hand_is_said_on_the_bus_for_the_page_and_the_dashboard(room):
    workshops, store, learner = room
    learner(ago=60)
    heard: list = []
    workshops.bus.subscribe(Happening, heard.append)
    workshops.raise_hand("s1", "  Where is \x07 my port? ")
    hand = heard[0]
    assert isinstance(hand, HandChanged) and hand.session_id == "s1"
    assert hand.help and hand.help["message"] == "Where is my port?"
    entry = heard[1]
    assert isinstance(entry, LearnerChanged) and entry.workshop_id == "w1"
    assert entry.entry["name"] == "Ada" and entry.entry["help"] == hand.help
    workshops.lower_hand("s1")
    assert heard[2] == HandChanged("s1", None) and heard[3].entry["help"] is None
