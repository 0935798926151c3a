"""A workshop in real browsers: the instructor creates it on the instructor page, three
learners join from browsers of their own, and the dashboard follows them live: a task one
of them does in the terminal ticks on the grid without a reload, a raised hand shows, the
instructor watches a learner's terminal (sees their typing, cannot type), a broadcast
reaches every page, the results download as CSV, and a learner coming back resumes their
session."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from .conftest import SCREEN_TEXT_JS, wait_until
from .test_browser_lesson import SHOTS, Learner

pytestmark = [pytest.mark.engine, pytest.mark.browser]

WATCH_TEXT_JS = """() => {
  const buffer = window.BerthDashboard.watching().terminal.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
  return lines.join("\\n");
}"""


def shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"workshop-{name}.png"
    page.bring_to_front()  # a page in the background does not paint its terminals
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), full_page=False)
    return path


def wait_for_text(read, text: str, timeout: float = 15) -> None:
    wait_until(lambda: text in read(), timeout, lambda: f"{text!r} not in:\n{read()[-1500:]}", interval=0.1)


def test_a_workshop_from_the_instructors_page(server, browser):
    token = (server.data_dir / "instructor-token").read_text().strip()
    base = server.health().json()["base_image"]
    contexts = []
    errors: list[str] = []
    workshop_id = None

    def context(**kwargs):
        made = browser.new_context(viewport={"width": 1440, "height": 900}, **kwargs)
        contexts.append(made)
        page = made.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        return page

    try:
        # --- the instructor creates a workshop
        teacher = context()
        teacher.goto(f"{server.url}/instructor?token={token}")
        expect(teacher).to_have_url(f"{server.url}/instructor")  # the token has left the address bar
        expect(teacher.locator("#capacity")).to_contain_text("sessions")
        teacher.select_option("select[name=lesson]", "docker-images")
        teacher.fill("input[name=title]", "Docker images, Tuesday group")
        teacher.fill("input[name=seats]", "5")
        teacher.fill("input[name=minutes]", "90")
        teacher.click("text=Create workshop")
        expect(teacher.locator("#connection")).to_have_attribute("data-state", "connected", timeout=10_000)
        workshop_id = teacher.url.rsplit("/", 1)[1]
        code = teacher.locator("#dashboard").get_attribute("data-code")
        expect(teacher.locator("#join-code")).to_have_text(f"{code[:3]}-{code[3:]}")
        teacher.evaluate("window.notReloaded = true")

        # --- three learners join, each from a browser of their own
        names = ["Ada", "Grace", "Linus"]
        learners: dict[str, Page] = {}
        for name in names:
            page = context()
            page.goto(f"{server.url}/join/{code.lower()}")
            expect(page.locator("h1")).to_have_text("Docker images, Tuesday group")
            page.fill("#name", name)
            page.click("#join")
            expect(page).to_have_url(f"{server.url}/lessons/docker-images")
            expect(page.locator("#workshop-seat")).to_contain_text(name)
            learners[name] = page
        for page in learners.values():
            for machine in ("workstation", "colleague"):
                expect(page.locator(f".machine-state[data-machine={machine}]")).to_have_attribute(
                    "data-status", "ready", timeout=120_000)
            expect(page.locator("#connection")).to_have_attribute("data-state", "connected", timeout=30_000)
        sessions = {name: page.locator("#lesson").get_attribute("data-session") for name, page in learners.items()}
        rows = teacher.locator("#grid-body tr")
        expect(rows).to_have_count(3, timeout=10_000)
        for name in names:
            expect(teacher.locator(f"#grid-body tr[data-session='{sessions[name]}'] .name")).to_have_text(name)
        assert token not in learners["Ada"].content()  # the instructor token never reaches a learner

        # --- Ada does the run task in her terminal; the grid ticks it within a second or two
        ada = Learner(learners["Ada"])
        wait_until(lambda: ada.prompts("workstation") >= 1, 30, lambda: ada.screen("workstation"))
        ada.type("workstation", f"docker run -dit --name ubuntu001 -e VAR1=ubuntu -p 3000:80 {base} bash")
        cell = teacher.locator(f"#grid-body tr[data-session='{sessions['Ada']}'] td.cell[data-task=run]")
        expect(cell).to_have_attribute("data-status", "trying", timeout=10_000)
        expect(cell).to_contain_text("VAR2 is not set")  # the feedback Ada sees, on the grid
        ada.type("workstation", "docker rm -f ubuntu001")
        ada.type("workstation", f"docker run -dit --name ubuntu001 -e VAR1=ubuntu -e VAR2=webserver -p 3000:3000 {base}")
        expect(ada.task("run")).to_have_attribute("data-status", "done", timeout=30_000)
        ticked = time.monotonic()
        expect(cell).to_have_attribute("data-status", "done", timeout=2_000)
        lag = time.monotonic() - ticked
        assert lag < 2, lag
        expect(teacher.locator("th.task-col[data-task=run] .task-count")).to_have_text("1 of 3 done")
        expect(teacher.locator(f"#grid-body tr[data-session='{sessions['Ada']}'] .progress-text")).to_have_text("1/5")

        # --- Grace raises her hand, with a message
        grace = learners["Grace"]
        grace.click("#raise-hand")
        grace.fill("#hand-message", "docker says permission denied?")
        grace.click("#hand-form button[type=submit]")
        expect(grace.locator("#workshop-seat")).to_have_attribute("data-hand", "true")
        grace_row = teacher.locator(f"#grid-body tr[data-session='{sessions['Grace']}']")
        expect(grace_row).to_have_attribute("data-hand", "true", timeout=3_000)
        expect(grace_row.locator(".hand")).to_contain_text("docker says permission denied?")
        expect(teacher.locator(".chip.hand")).to_have_text("1 hand up")
        expect(rows.first).to_have_attribute("data-session", sessions["Grace"])  # who needs help comes first

        # --- the instructor watches Linus's terminal: sees his typing, cannot type
        linus = Learner(learners["Linus"])
        wait_until(lambda: linus.prompts("workstation") >= 1, 30, lambda: linus.screen("workstation"))
        linus.type("workstation", "echo before-watching-$((6*7))")
        teacher.locator(f"#grid-body tr[data-session='{sessions['Linus']}'] .watch-button[data-machine=workstation]").click()
        expect(teacher.locator("#watch")).to_be_visible()
        expect(teacher.locator("#watch-state")).to_have_attribute("data-state", "connected", timeout=15_000)
        wait_for_text(lambda: teacher.evaluate(WATCH_TEXT_JS), "before-watching-42")  # his scrollback
        linus.type("workstation", "echo typed-by-linus-$((7*7))")
        wait_for_text(lambda: teacher.evaluate(WATCH_TEXT_JS), "typed-by-linus-49", timeout=5)
        teacher.click("#watch-term .xterm")
        teacher.keyboard.type("echo typed-by-teacher")
        teacher.keyboard.press("Enter")
        linus.type("workstation", "echo still-mine-$((8*8))")
        wait_for_text(lambda: teacher.evaluate(WATCH_TEXT_JS), "still-mine-64", timeout=5)
        assert "typed-by-teacher" not in linus.screen("workstation")
        assert "typed-by-teacher" not in teacher.evaluate(WATCH_TEXT_JS)
        shot(teacher, "2-watching")
        teacher.click("#watch-close")
        expect(teacher.locator("#watch")).to_be_hidden()

        # --- a broadcast reaches every learner's page
        teacher.fill("#broadcast-message", "Ten minutes left: finish the task you are on.")
        teacher.click("#broadcast button[type=submit]")
        expect(teacher.locator("#broadcast-status")).to_contain_text("Sent to 3 learners")
        for page in learners.values():
            expect(page.locator("#notices .notice")).to_contain_text("Ten minutes left", timeout=3_000)
        shot(learners["Grace"], "3-learner-notice")
        assert teacher.evaluate("window.notReloaded") is True  # all of it live, no reload
        shot(teacher, "1-dashboard")

        # --- the instructor clears Grace's hand; her page hears it
        grace_row.locator(".clear-hand").click()
        expect(grace_row).to_have_attribute("data-hand", "false", timeout=3_000)
        expect(grace.locator("#workshop-seat")).to_have_attribute("data-hand", "false", timeout=3_000)

        # --- the results, as the Export button downloads them
        with teacher.expect_download() as download:
            teacher.click("#export")
        table = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
        assert len(table) == 15  # three learners by five tasks
        assert [(r["learner"], r["task"], r["done"]) for r in table if r["done"] == "yes"] == [("Ada", "run", "yes")]
        assert all(r["learner"] in names for r in table)

        # --- Ada opens the join link again: the same session
        learners["Ada"].goto(f"{server.url}/join/{code}")
        expect(learners["Ada"].locator("main")).to_contain_text("Welcome back, Ada")
        learners["Ada"].click("#continue")
        expect(learners["Ada"].locator("#lesson")).to_have_attribute("data-session", sessions["Ada"])
        expect(learners["Ada"].locator("#progress")).to_have_text("1 of 5 tasks done", timeout=10_000)
        wait_for_text(lambda: learners["Ada"].evaluate(SCREEN_TEXT_JS, "workstation"), "ubuntu001")  # her shell

        # --- ending the workshop: pages are told, the grid shows it
        teacher.once("dialog", lambda dialog: dialog.accept())
        teacher.click("#end-workshop")
        expect(teacher.locator("#time-left")).to_contain_text("Ended", timeout=90_000)
        for page in learners.values():
            expect(page.locator("#notices")).to_contain_text("The workshop has ended", timeout=10_000)
        expect(teacher.locator("#grid-body tr[data-active=false]")).to_have_count(3, timeout=10_000)
        assert not errors, errors
    finally:
        if workshop_id:
            requests.delete(f"{server.url}/api/workshops/{workshop_id}", headers={"Authorization": f"Bearer {token}"},
                            timeout=120)
        for made in contexts:
            made.close()
