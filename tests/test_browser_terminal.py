"""The terminal in a real browser: Debian's Chromium driven by Playwright, against a real
Berth server and real learner machines."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page

from berth.config import Config

from .conftest import (
    KEEP,
    SCREEN_TEXT_JS,
    BerthServer,
    in_machine,
    journal,
    page_diagnosis,
    page_session,
    remove_instance,
    wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.engine]

@pytest.fixture
def shots(tmp_path) -> Path:
    """Where screenshots go (printed, to look at them)."""
    print(f"screenshots in {tmp_path}")
    return tmp_path


@pytest.fixture
def lesson(browser, server):
    """A fresh browser (its own cookies) on the lesson page, terminal connected; the
    session it started is ended afterwards."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.journal, page.server = journal(page), server  # for wait_connected's message
    page.goto(server.url + "/lessons/docker-images")
    wait_connected(page)
    page.click("#terminals .terminal-host:not([hidden])")
    yield page
    session, token = page_session(page).values()
    context.close()
    requests.delete(f"{server.url}/api/sessions/{session}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert not errors, errors


CONNECTED_JS = """(m) => Boolean(window.BerthPage && window.BerthPage.terminals[m]
  && window.BerthPage.terminals[m].state.name === "connected")"""


def wait_connected(page: Page, machine: str = "workstation", timeout: float = 90) -> None:
    """Until the machine's terminal is connected; a failure says what the page, its journal
    and the server saw (a terminal once never connected in CI, with nothing else to go by)."""
    wait_until(lambda: page.evaluate(CONNECTED_JS, machine), timeout,
               lambda: f"the {machine} terminal did not connect in {timeout:.0f} s\n"
                       + page_diagnosis(page, getattr(page, "journal", None), getattr(page, "server", None)),
               interval=0.25)


def screen(page: Page, machine: str = "workstation") -> str:
    return page.evaluate(SCREEN_TEXT_JS, machine)


def wait_screen(page: Page, pattern: str, timeout: float = 20, machine: str = "workstation") -> re.Match:
    regex = re.compile(pattern, re.M)
    return wait_until(lambda: regex.search(screen(page, machine)), timeout,
                      lambda: f"no {pattern!r} on the screen:\n{screen(page, machine)[-3000:]}", interval=0.1)


def wait_prompt(page: Page, count: int = 1, timeout: float = 20) -> None:
    """Until the screen ends in a prompt."""
    wait_screen(page, r"root@workstation:[^\n]*# $", timeout)


def type_line(page: Page, text: str) -> None:
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def test_type_a_docker_command_and_see_its_output(lesson, shots):
    wait_prompt(lesson)
    base = Config.from_env().base_image
    type_line(lesson, f"docker run --rm {base} echo hi")
    wait_screen(lesson, r"^hi$", timeout=120)
    wait_prompt(lesson)
    lesson.screenshot(path=str(shots / "hi.png"))


def test_reload_shows_earlier_output_once_and_the_same_shell(lesson, shots):
    wait_prompt(lesson)
    type_line(lesson, "cd /etc; echo before-reload-$((6*7)); echo pid=$$")
    pid = wait_screen(lesson, r"^pid=(\d+)$").group(1)
    wait_prompt(lesson)
    lesson.reload()
    wait_connected(lesson)
    wait_screen(lesson, rf"^pid={pid}$")
    text = screen(lesson)
    assert len(re.findall(r"^before-reload-42$", text, re.M)) == 1, text
    lesson.click("#terminals .terminal-host:not([hidden])")
    type_line(lesson, "echo again=$$ in $PWD")
    wait_screen(lesson, rf"^again={pid} in /etc$")
    lesson.screenshot(path=str(shots / "reloaded.png"))


def test_the_terminal_follows_the_window_and_the_divider(lesson, shots):
    wait_prompt(lesson)
    size = "() => { const t = window.BerthPage.terminals.workstation.terminal; return [t.rows, t.cols]; }"

    def stty_matches() -> tuple[int, int]:
        rows, cols = lesson.evaluate(size)
        type_line(lesson, "clear; stty size")
        wait_screen(lesson, rf"^{rows} {cols}$")
        return rows, cols

    first = stty_matches()
    lesson.set_viewport_size({"width": 1000, "height": 600})
    lesson.wait_for_timeout(300)
    second = stty_matches()
    assert second[0] < first[0] and second[1] < first[1]
    divider = lesson.locator("#divider").bounding_box()
    lesson.mouse.move(divider["x"] + 2, divider["y"] + 200)
    lesson.mouse.down()
    lesson.mouse.move(divider["x"] - 200, divider["y"] + 200, steps=5)
    lesson.mouse.up()
    lesson.wait_for_timeout(300)
    lesson.click("#terminals .terminal-host:not([hidden])")
    third = stty_matches()
    assert third[1] > second[1]
    lesson.screenshot(path=str(shots / "resized.png"))


def test_yes_then_ctrl_c_gives_the_prompt_back_soon(lesson, shots):
    wait_prompt(lesson)
    # Measured in the page: from the Ctrl-C key to the shell's next prompt marker, the time
    # and the bytes the terminal showed in between.
    lesson.evaluate("""() => {
      const term = window.BerthPage.terminals.workstation.terminal;
      window.prompts = [];
      window.bytesAfterCtrlC = 0;
      term.parser.registerOscHandler(7771, () => { window.prompts.push(performance.now()); return true; });
      const write = term.write.bind(term);
      term.write = (data, callback) => write(data, () => {  // once xterm.js has shown it
        if (window.ctrlC && !window.prompts.some((t) => t > window.ctrlC)) window.bytesAfterCtrlC += data.length;
        if (callback) callback();
      });
      document.addEventListener("keydown", (e) => {
        if (e.ctrlKey && e.code === "KeyC") window.ctrlC = performance.now();
      }, true);
    }""")
    type_line(lesson, "yes")
    lesson.wait_for_timeout(3000)
    lesson.keyboard.press("Control+C")
    lesson.wait_for_function("() => window.ctrlC && window.prompts.some((t) => t > window.ctrlC)", timeout=30000)
    took, after = lesson.evaluate("() => [window.prompts.find((t) => t > window.ctrlC) - window.ctrlC, "
                                  "window.bytesAfterCtrlC]")
    print(f"prompt back {took:.0f} ms and {after / 1e6:.2f} MB after Ctrl-C")
    wait_prompt(lesson)
    lesson.screenshot(path=str(shots / "yes.png"))
    # What this guards: without flow control, all the output `yes` made in 3 s queued ahead
    # of the prompt, which came back after 38 s. With it, what comes after the Ctrl-C is what
    # was already in the pipes and socket buffers between the shell and the page: about 2 MB
    # (docs/performance.md), however loaded the host. The time to show those 2 MB is the
    # browser's and does depend on the load: 0.25-1.6 s alone or in quiet runs, 3.6 s in a
    # whole suite on 2 busy cores. So the bytes are held to a bound and the time only to a
    # guard against the queue.
    assert after < 6_000_000, after
    assert took < 15000


def test_copy_paste_and_every_key(lesson, shots):
    wait_prompt(lesson)
    type_line(lesson, "echo copy-me-$((40+2))")
    row = wait_screen(lesson, r"^copy-me-42$")
    line = screen(lesson)[:row.start()].count("\n")
    lesson.evaluate("(row) => window.BerthPage.terminals.workstation.terminal.select(0, row, 10)", line)
    lesson.keyboard.press("Control+Shift+C")
    lesson.wait_for_function("async () => (await navigator.clipboard.readText()) === 'copy-me-42'", timeout=5000)
    lesson.keyboard.type("echo pasted:")
    lesson.keyboard.press("Control+Shift+V")
    lesson.keyboard.press("Enter")
    wait_screen(lesson, r"^pasted:copy-me-42$")
    lesson.keyboard.type("echo inserted:")
    lesson.keyboard.press("Shift+Insert")
    lesson.keyboard.press("Enter")
    wait_screen(lesson, r"^inserted:copy-me-42$")
    lesson.evaluate("() => window.BerthPage.terminals.workstation.terminal.select(0, 0, 4)")
    lesson.evaluate("() => navigator.clipboard.writeText('')")
    lesson.keyboard.press("Control+Insert")
    lesson.wait_for_function("async () => (await navigator.clipboard.readText()) === 'root'", timeout=5000)
    # Ctrl-P is readline's previous line (Docker's default detach key would eat it), and
    # the browser's print dialog does not open.
    lesson.keyboard.press("Control+P")
    lesson.keyboard.press("Enter")
    wait_screen(lesson, r"^inserted:copy-me-42\n(.*\n)*inserted:copy-me-42$")
    lesson.screenshot(path=str(shots / "copy-paste.png"))


def test_a_dropped_connection_resumes_without_repeating_output(lesson, shots):
    wait_prompt(lesson)
    type_line(lesson, "echo once-$((3*3))")
    wait_screen(lesson, r"^once-9$")
    wait_prompt(lesson)
    lesson.evaluate("""() => {
      window.states = [];
      new MutationObserver(() => window.states.push(document.getElementById("connection").dataset.state))
        .observe(document.getElementById("connection"), {attributes: true, childList: true});
      window.BerthPage.terminals.workstation.socket.io.engine.close();  // as a network drop would
    }""")
    lesson.wait_for_function("() => window.states.includes('reconnecting') && window.states.at(-1) === 'connected'",
                             timeout=20000)
    type_line(lesson, "echo after-$((2*2))")
    wait_screen(lesson, r"^after-4$")
    text = screen(lesson)
    assert len(re.findall(r"^once-9$", text, re.M)) == 1, text
    assert "Reconnected" not in text  # the same attachment: nothing to say
    lesson.screenshot(path=str(shots / "resumed.png"))


def test_each_machine_has_its_own_terminal(lesson, shots):
    wait_prompt(lesson)
    lesson.click("#tabs .tab[data-machine=colleague]")
    wait_connected(lesson, "colleague")
    lesson.click("#terminals .terminal-host:not([hidden])")
    wait_screen(lesson, r"root@colleague:~# $", machine="colleague")
    type_line(lesson, "hostname")
    wait_screen(lesson, r"^colleague$", machine="colleague")
    assert not re.search(r"^colleague$", screen(lesson, "workstation"), re.M)
    lesson.screenshot(path=str(shots / "colleague.png"))


def test_a_server_restart_reconnects_to_the_same_shell(browser, engine, tmp_path):
    berth = BerthServer(tmp_path / "restart", KEEP).start()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.journal, page.server = journal(page), berth
        page.goto(berth.url + "/lessons/docker-images")
        wait_connected(page)
        page.click("#terminals .terminal-host:not([hidden])")
        wait_prompt(page)
        type_line(page, "cd /tmp; echo pid=$$")
        pid = wait_screen(page, r"^pid=(\d+)$").group(1)
        berth.stop()
        page.wait_for_function("() => window.BerthPage.terminals.workstation.state.name === 'reconnecting'", timeout=30000)
        page.screenshot(path=str(tmp_path / "restart-reconnecting.png"))
        berth.start()
        wait_connected(page, timeout=120)
        wait_screen(page, r"\[Reconnected to your shell\.\]")
        type_line(page, "echo again=$$ in $PWD")
        wait_screen(page, rf"^again={pid} in /tmp$")
        assert len(re.findall(rf"^pid={pid}$", screen(page), re.M)) == 1
        page.screenshot(path=str(tmp_path / "restart-reconnected.png"))
        print(f"screenshots in {tmp_path}")
    finally:
        context.close()
        berth.stop()
        remove_instance(engine, berth.instance_id)


def test_a_paste_larger_than_a_message_arrives_whole(lesson, engine):
    """1.5 MB through xterm.js's paste: more than Engine.IO's 1 MB message limit."""
    wait_prompt(lesson)
    lines = [f"{i:07d} " + "abcdefghijklmnopqrstuvwxyz0123456789" * 2 for i in range(18_000)]
    text = "\n".join(lines) + "\n"
    expected = text.replace("\n", "\r").encode()  # xterm.js pastes Enter as CR; raw mode keeps it
    type_line(lesson, f"stty raw -echo; head -c {len(expected)} > /tmp/pasted; stty sane; echo pasted-$((1+1))")
    lesson.wait_for_timeout(500)
    lesson.evaluate("(text) => window.BerthPage.terminals.workstation.terminal.paste(text)", text)
    wait_screen(lesson, r"^pasted-2$", timeout=60)
    session = {"id": lesson.eval_on_selector("#lesson", "el => el.dataset.session")}
    code, out = in_machine(engine, session, "workstation", "sha256sum < /tmp/pasted")
    assert out.split()[0] == hashlib.sha256(expected).hexdigest(), out


def test_run_button_types_into_the_terminal(lesson):
    wait_prompt(lesson)
    lesson.evaluate("() => window.BerthPage.terminals.workstation.type('echo typed-$((1+1))\\r')")
    wait_screen(lesson, r"^typed-2$")


def test_a_wrong_token_is_refused(lesson, shots):
    states = lesson.evaluate("""() => new Promise((resolve) => {
      const host = document.createElement("div");
      host.style.cssText = "position:fixed;left:0;top:300px;width:500px;height:200px";
      document.body.appendChild(host);
      const root = document.getElementById("lesson");
      const seen = [];
      window.BerthTerminal.open(host, {
        session: root.dataset.session, token: "not-the-token", machine: "workstation",
        onStatus: (name, text) => { seen.push([name, text]); if (name === "failed") resolve(seen); },
      });
      setTimeout(() => resolve(seen), 10000);
    })""")
    assert states[-1] == ["failed", "That token does not belong to this session."], states
    lesson.screenshot(path=str(shots / "wrong-token.png"))


@pytest.fixture
def foreign_site():
    """Another web site on this machine (its own port: another origin, the same loopback
    address space, so the browser itself lets it try): serves one page that loads the
    Socket.IO client from `src`."""
    page = {"src": ""}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f'<html><body><script src="{page["src"]}"></script></body></html>'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{site.server_address[1]}/", page
    site.shutdown()


def test_a_foreign_origin_is_refused(browser, server, lesson, foreign_site):
    session, token = page_session(lesson).values()
    url, site = foreign_site
    site["src"] = lesson.eval_on_selector("script[src*='vendor']", "el => el.src")
    foreign = browser.new_page()
    foreign.goto(url)
    connect = """([url, auth]) => new Promise((resolve) => {
      const socket = io(url + "/terminal", {auth, transports: ["websocket"], reconnection: false});
      socket.on("connect", () => { socket.disconnect(); resolve("connected"); });
      socket.on("connect_error", (error) => resolve("refused: " + error.message));
    })"""
    auth = {"session": session, "token": token, "machine": "workstation"}
    # A page of another site that holds a valid token is refused all the same ...
    assert foreign.evaluate(connect, [server.url, auth]).startswith("refused")
    foreign.close()
    # ... while Berth's own page connects with it.
    assert lesson.evaluate(connect, [server.url, auth]) == "connected"
