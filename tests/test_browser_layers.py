"""The image-layers lesson in a real browser, typed as the chapter writes OverlayFS by hand:
its work directory is the mount point, and the task says what that does and how to mount
again; mounted again with a work directory of its own, the task ticks."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from .test_browser_lesson import Learner, shot

pytestmark = [pytest.mark.engine, pytest.mark.browser]

CHAPTER = ["mkdir /lower /upper /merged",
           "echo 'Here is the lower layer.' > /lower/lower.txt",
           "echo 'Here is the upper layer.' > /upper/upper.txt",
           "mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper,workdir=/merged /merged",
           "cat /merged/*.txt"]
AGAIN = ["umount /merged", "rm -r /merged/work", "mkdir /work",
         "mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper,workdir=/work /merged"]


def test_the_chapters_overlay_mount_is_explained_then_done(server, browser):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    try:
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/lessons/image-layers")
        expect(page.locator(".machine-state[data-machine=workstation]")).to_have_attribute(
            "data-status", "ready", timeout=90_000)
        expect(page.locator("#connection")).to_have_attribute("data-state", "connected", timeout=30_000)
        learner = Learner(page)
        deadline = time.monotonic() + 30
        while learner.prompts("workstation") < 1:
            assert time.monotonic() < deadline, learner.screen("workstation")
            time.sleep(0.2)
        for command in CHAPTER:
            learner.type("workstation", command)
        assert "Here is the upper layer." in learner.screen("workstation")
        expect(learner.task("layers")).to_have_attribute("data-status", "done", timeout=30_000)
        mount = learner.task("mount")
        expect(mount.locator(".feedback li.missing", has_text="inside the mount point itself")) \
            .to_be_visible(timeout=30_000)
        expect(mount.locator(".feedback li.ok", has_text="/merged/upper.txt says 'Here is the upper layer'.")) \
            .to_be_visible()
        expect(mount).to_have_attribute("data-status", "pending")
        mount.scroll_into_view_if_needed()
        shot(page, "layers-1-chapter-workdir")
        for command in AGAIN:
            learner.type("workstation", command)
        expect(mount).to_have_attribute("data-status", "done", timeout=30_000)
        expect(mount.locator(".feedback li.missing")).to_have_count(0)
        shot(page, "layers-2-mounted-again")
        assert not errors, errors
    finally:
        page.close()
