"""Machine trouble on the lesson page, in a real browser: the learner's machine is killed on
the host; its terminal says that it stopped and runs again, and a new shell opens in it."""

from __future__ import annotations

import pytest

from .conftest import SCREEN_TEXT_JS, machine_container, page_session, wait_until

pytestmark = [pytest.mark.engine, pytest.mark.browser]


def test_the_terminal_says_a_killed_machine_stopped_and_runs_again(engine, server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    session = None
    try:
        page.goto(server.url + "/lessons/image-basics")
        session = page_session(page)

        def screen() -> str:
            return page.evaluate(SCREEN_TEXT_JS, "workstation")

        wait_until(lambda: "root@workstation" in screen(), 120, screen)
        machine_container(engine, session, "workstation").kill()
        wait_until(lambda: "[workstation is running again.]" in screen(), 120,
                   lambda: f"{screen()}\n{server.log_tail()}")
        text = screen()
        assert text.index("[workstation stopped; Berth is starting it again…]") \
            < text.index("[workstation is running again.]"), text
        after = text[text.index("[workstation is running again.]"):]
        wait_until(lambda: "root@workstation" in screen()[screen().index("running again."):], 60, screen)
        assert "failed" not in after
    finally:
        if session:
            server.delete_session(session)
        page.close()
