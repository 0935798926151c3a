"""The whole Docker images lesson in a real browser: a learner types every command into the
page's terminals, sees the feedback of a wrong first attempt, and sees the five tasks tick
in order, ending with their page served on port 3000 of the colleague's machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from berth.config import PROJECT_DIR
from berth.lessons import load_lesson

from .conftest import SCREEN_TEXT_JS, wait_until

pytestmark = [pytest.mark.engine, pytest.mark.browser]

SHOTS = Path(os.environ.get("BERTH_SCREENSHOTS", PROJECT_DIR / "instance" / "screenshots"))

# Order of ticks as the page shows them, recorded in the page itself.
RECORD_TICKS = """() => {
  window.tickOrder = [];
  new MutationObserver((changes) => {
    for (const change of changes) {
      const el = change.target;
      if (el.tagName === "SECTION" && el.dataset.status === "done" && !window.tickOrder.includes(el.dataset.task))
        window.tickOrder.push(el.dataset.task);
    }
  }).observe(document.getElementById("lesson"), {subtree: true, attributes: true, attributeFilter: ["data-status"]});
}"""

class Learner:
    def __init__(self, page: Page):
        self.page = page

    def screen(self, machine: str) -> str:
        return self.page.evaluate(SCREEN_TEXT_JS, machine)

    def prompts(self, machine: str) -> int:
        return self.screen(machine).count(f"root@{machine}:~#")

    def type(self, machine: str, command: str, timeout: float = 300) -> None:
        """Type a command into the machine's terminal, press Enter, wait for the prompt."""
        self.page.click(f"#tabs .tab[data-machine={machine}]")
        before = self.prompts(machine)
        self.page.click(f".terminal-host[data-machine={machine}] .xterm")
        self.page.keyboard.type(command)
        self.page.keyboard.press("Enter")
        wait_until(lambda: self.prompts(machine) > before, timeout,
                   lambda: f"no prompt after {command!r}:\n{self.screen(machine)[-1500:]}")

    def task(self, task_id: str):
        return self.page.locator(f"section.task[data-task={task_id}]")


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"lesson-{name}.png"))


def test_the_whole_lesson_typed_into_the_page(server, browser):
    base = server.health().json()["base_image"]
    lesson = load_lesson(PROJECT_DIR / "lessons" / "docker-images", {"BERTH_BASE_IMAGE": base})
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    try:
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/lessons/docker-images")
        for machine in lesson.machines:
            expect(page.locator(f".machine-state[data-machine={machine}]")).to_have_attribute(
                "data-status", "ready", timeout=90_000)
        expect(page.locator("#connection")).to_have_attribute("data-state", "connected", timeout=30_000)
        expect(page.locator("#progress")).to_have_text("0 of 5 tasks done", timeout=15_000)
        expect(page.locator("#lesson")).to_contain_text(f"docker run -dit --name ubuntu001 -e VAR1=ubuntu "
                                                         f"-e VAR2=webserver -p 3000:3000 {base}")
        page.evaluate(RECORD_TICKS)
        learner = Learner(page)
        for machine in lesson.machines:  # both shells are up
            wait_until(lambda m=machine: learner.prompts(m) >= 1, 30, lambda m=machine: learner.screen(m))

        # A wrong first attempt: VAR2 forgotten, port 3000 sent to the container's port 80.
        learner.type("workstation", f"docker run -dit --name ubuntu001 -e VAR1=ubuntu -p 3000:80 {base} bash")
        run = learner.task("run")
        feedback = run.locator(".feedback")
        expect(feedback.locator("li.missing", has_text="VAR2 is not set in ubuntu001")).to_be_visible(timeout=10_000)
        expect(feedback.locator("li.missing", has_text="Port 3000 leads to the container's port 80, not 3000")) \
            .to_be_visible()
        expect(feedback.locator("li.ok", has_text="ubuntu001 is running.")).to_be_visible()
        expect(run).to_have_attribute("data-status", "pending")
        run.scroll_into_view_if_needed()
        shot(page, "1-wrong-first-attempt")

        learner.type("workstation", "docker rm -f ubuntu001")
        for task in lesson.tasks:  # each pending until its solution, done after it (the self-test's walk)
            expect(learner.task(task.id)).to_have_attribute("data-status", "pending")
            for step in task.solution:
                learner.type(step.machine, step.run)
            expect(learner.task(task.id)).to_have_attribute("data-status", "done", timeout=30_000)
            expect(page.locator(f"#tasklist li[data-task={task.id}]")).to_have_attribute("data-status", "done")
            if task.id == "run":
                expect(feedback.locator("li.missing")).to_have_count(0)
                shot(page, "2-first-task-done")

        assert page.evaluate("window.tickOrder") == ["run", "customize", "commit", "save", "load"]
        expect(page.locator("#progress")).to_have_text("5 of 5 tasks done")
        assert "<h1>Hello from my own image</h1>" in learner.screen("colleague")
        learner.task("load").scroll_into_view_if_needed()
        shot(page, "3-all-done")

        # A reload shows the same: done stays done.
        page.reload()
        expect(page.locator("#tasklist li[data-status=done]")).to_have_count(5, timeout=15_000)
        assert not errors, errors
    finally:
        page.close()
