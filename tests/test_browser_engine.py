"""The Engine panel in a real browser: open it beside the terminal, build two images FROM
the base in the machine and see them appear without a reload, side by side with their
shared base layers lined up; commit a container in the terminal and see its layer marked
as the learner's. Screenshots at a wide and a narrow viewport."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from .conftest import in_machine, page_session
from .test_browser_lesson import Learner, shot

pytestmark = [pytest.mark.engine, pytest.mark.browser]


def test_engine_panel_shows_shared_layers_live(server, engine, browser):
    base = server.health().json()["base_image"]
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    try:
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/lessons/docker-images")
        expect(page.locator(".machine-state[data-machine=workstation]")).to_have_attribute(
            "data-status", "ready", timeout=90_000)
        expect(page.locator("#connection")).to_have_attribute("data-state", "connected", timeout=30_000)
        session_id = page.eval_on_selector("#lesson", "el => el.dataset.session")
        page.evaluate("() => { window.sameDocument = true; }")  # gone if the page reloads

        page.click(".engine-toggle")
        panel = page.locator("#engine-panel")
        expect(panel).to_be_visible()
        expect(panel).to_have_attribute("data-machine", "workstation", timeout=30_000)

        session = {"id": session_id}
        for name, file in (("one", "/a"), ("two", "/b")):
            code, output = in_machine(engine, session, "workstation",
                                      f"printf 'FROM {base}\\nRUN echo {name} > {file}\\n' | docker build -t {name} -",
                                      timeout=240)
            assert code == 0, output
        one = panel.locator('.image-stack[data-image="one:latest"]')
        two = panel.locator('.image-stack[data-image="two:latest"]')
        expect(one).to_be_visible(timeout=15_000)
        expect(two).to_be_visible(timeout=15_000)
        shared_one = one.locator('.layer[data-shared="true"]')
        expect(shared_one.first).to_be_visible()
        expect(one.locator('.layer[data-shared="false"]')).to_have_count(1)
        expect(one.locator(".layer").first).to_contain_text("RUN echo one > /a")  # the top, drawn first
        # One family, side by side: the shared base block sits at the same height in both.
        base_id = shared_one.last.get_attribute("data-layer")
        base_one = one.locator(f'.layer[data-layer="{base_id}"]').bounding_box()
        base_two = two.locator(f'.layer[data-layer="{base_id}"]').bounding_box()
        assert base_one and base_two and abs(base_one["y"] - base_two["y"]) < 1, (base_one, base_two)
        assert base_two["x"] > base_one["x"]
        family = page.locator(".image-family.shares-base")
        assert family.filter(has=page.locator('[data-image="one:latest"]')) \
            .filter(has=page.locator('[data-image="two:latest"]')).count() == 1
        shot(page, "engine-1-shared-base")

        learner = Learner(page)
        deadline = time.monotonic() + 30
        while learner.prompts("workstation") < 1:
            assert time.monotonic() < deadline, learner.screen("workstation")
            time.sleep(0.2)
        learner.type("workstation", f"docker run --name box {base} sh -c 'echo mine > /mine'")
        learner.type("workstation", "docker commit box mine")
        mine = panel.locator('.image-stack[data-image="mine:latest"]')
        expect(mine.locator('.layer[data-yours="true"]')).to_have_count(1, timeout=15_000)
        expect(mine.locator('.layer[data-yours="true"] .mark.yours')).to_have_text("yours")
        expect(panel.locator(".engine-container", has_text="box")).to_have_attribute("data-running", "false")
        assert page.evaluate("() => window.sameDocument === true"), "the page reloaded"
        shot(page, "engine-2-committed")

        page.set_viewport_size({"width": 420, "height": 860})
        mine.scroll_into_view_if_needed()
        boxes = [s.bounding_box() for s in panel.locator(".image-stack").all()]
        assert all(b and b["x"] + b["width"] <= 420 + 1 for b in boxes), boxes  # stacks wrap
        shot(page, "engine-3-narrow")
        assert not errors, errors
    finally:
        try:
            server.delete_session(page_session(page))
        finally:
            page.close()
