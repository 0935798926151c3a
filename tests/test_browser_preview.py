"""The lesson page in Debian's Chromium: "Open port 3000" appears when the learner's
container publishes it, opens the custom page in the preview pane, and the Files controls
upload (by dropping a file onto the terminal), download and send to the colleague."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from .conftest import page_session
from .machine_web import build_web_image, run_nginx, sh, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.browser]

PAGE = "<h1>Hello from ubuntu001</h1><p>Served by nginx in the workstation.</p><a href='/about.html'>About</a>"
SHOTS = Path(os.environ.get("BERTH_SCREENSHOTS", "/tmp/berth-screenshots"))


@pytest.fixture
def lesson(server, browser):
    """The lesson page with a session of its own (made by the page), ended afterwards."""
    page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page.goto(server.url + "/lessons/docker-images")
    session = page_session(page)
    ready = wait_for(lambda: all(m["status"] == "ready" for m in server.get(
        f"/api/sessions/{session['id']}", token=session["token"]).json()["machines"]), timeout=90)
    assert ready, "the session's machines did not get ready"
    yield page, session
    page.close()
    server.delete_session(session)


def test_open_port_3000_shows_the_custom_page(server, engine, lesson):
    page, session = lesson
    sid = session["id"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    expect(page.locator("#ports button")).to_have_count(0)
    build_web_image(engine, sid)
    run_nginx(engine, sid, "ubuntu001", "3000:80", PAGE)
    sh(engine, sid, "workstation", "docker exec ubuntu001 sh -c 'echo \"<p>The about page</p>\" > /var/www/html/about.html'")

    button = page.get_by_role("button", name="Open port 3000")
    # the page asks for the ports every 3 s, every 10 s after a request that failed (such as
    # its first, before the machines were ready): two slow polls fit in the wait
    expect(button).to_be_visible(timeout=25_000)
    button.click()
    expect(page.locator("#preview")).to_be_visible()
    frame = page.frame_locator("#preview iframe")
    expect(frame.locator("h1")).to_have_text("Hello from ubuntu001", timeout=15_000)
    page.screenshot(path=str(SHOTS / "preview-port-3000.png"))
    # A link inside the (sandboxed) page stays under the preview's address.
    frame.get_by_role("link", name="About").click()
    expect(frame.locator("body")).to_contain_text("The about page", timeout=10_000)
    new_tab = page.locator(".preview-open")
    href = new_tab.get_attribute("href")
    assert href.startswith(f"/s/{sid}.") and href.endswith("/workstation/port/3000/")
    assert new_tab.get_attribute("target") == "_blank"

    # The colleague's tab has no published ports.
    page.locator('.tab[data-machine="colleague"]').click()
    expect(page.locator("#ports button")).to_have_count(0)
    page.locator('.tab[data-machine="workstation"]').click()
    expect(button).to_be_visible()

    # When the container stops, the preview says so in the learner's words.
    sh(engine, sid, "workstation", "docker stop -t 1 ubuntu001 >/dev/null")
    page.locator(".preview-bar").get_by_role("button", name="Reload").click()
    expect(frame.locator("h1")).to_have_text("The container ubuntu001 has exited", timeout=10_000)
    page.screenshot(path=str(SHOTS / "preview-exited.png"))


def test_files_upload_by_drop_download_and_send_to_colleague(server, engine, lesson):
    page, session = lesson
    sid = session["id"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    expect(page.locator("#terminals")).to_be_visible()
    # Drop a file from "the learner's computer" onto the terminal.
    page.evaluate("""() => {
        const data = new DataTransfer();
        data.items.add(new File(["<h1>My page</h1>\\n"], "index.html", {type: "text/html"}));
        const target = document.getElementById("terminals");
        for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
        }
    }""")
    expect(page.locator(".files-status")).to_contain_text("is now at /root/index.html on workstation", timeout=15_000)
    assert sh(engine, sid, "workstation", "cat /root/index.html") == "<h1>My page</h1>\n"

    page.get_by_role("button", name="Files", exact=True).click()
    panel = page.get_by_role("dialog", name="Files")
    expect(panel).to_be_visible()
    page.screenshot(path=str(SHOTS / "files-panel.png"))
    panel.get_by_label("File to download").fill("/root/index.html")
    with page.expect_download() as download:
        panel.get_by_role("button", name="Download", exact=True).click()
    assert download.value.suggested_filename == "index.html"
    assert Path(download.value.path()).read_bytes() == b"<h1>My page</h1>\n"

    panel.get_by_label("File to download").fill("/root/missing.tar")
    panel.get_by_role("button", name="Download", exact=True).click()
    expect(page.locator(".files-status")).to_contain_text("There is no /root/missing.tar on workstation")

    panel.get_by_label("File to send").fill("/root/index.html")
    panel.get_by_role("button", name="Send to colleague", exact=True).click()
    expect(page.locator(".files-status")).to_contain_text("colleague has it now: /root/index.html", timeout=15_000)
    assert sh(engine, sid, "colleague", "cat /root/index.html") == "<h1>My page</h1>\n"
    page.screenshot(path=str(SHOTS / "files-sent.png"))
    # The page's requests used the session's own token; nobody else's works.
    assert requests.get(f"{server.url}/api/sessions/{sid}/ports", timeout=30).status_code == 401
