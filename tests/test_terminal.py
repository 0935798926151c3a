"""The terminal bridge (/terminal): authentication and refusals in-process; then a real
shell in a real machine, in-process and through real Berth servers over WebSocket."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass

import pytest
from socketio import packet

from berth import create_app, socketio
from berth.config import Config
from berth.events import LearnerActivity
from berth.sessions import hash_token
from berth.sockets import TERMINAL as NAMESPACE
from berth.store import MachineRecord, SessionRecord

from .conftest import KEEP, BerthServer, in_machine, remove_instance, wait_until, wait_until_ready
from .terminal_client import Refused, TerminalClient

PROMPT = re.compile(rb"\x1b\]7771;prompt\x07")
PROMPT_TEXT = re.compile(r"\x1b\]7771;prompt\x07")
ESCAPES = re.compile(r"\x1b\[[?0-9;]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def plain(text: str) -> str:
    """Terminal output without escape sequences and carriage returns."""
    return ESCAPES.sub("", text)


def output_of(text: str, token: str) -> str:
    """What a command printed: after the (last) echo of its line, which ends in `echo
    END<token>` (readline may have drawn the line more than once)."""
    line = text.rfind(f"echo END{token}")
    rest = text[line:].split("\r\n", 1)
    return plain(rest[1]) if len(rest) == 2 else ""


# --- in-process, no engine: who may connect


@pytest.fixture
def quiet_app(tmp_path):
    """Berth with two sessions in its store and no machines: enough to test refusals."""
    config = Config.from_env({**os.environ, "BERTH_DATA_DIR": str(tmp_path / "data")})
    app = create_app(config, start=False)
    berth = app.berth
    now = time.time()
    tokens = {}
    for session_id in ("aaaa00000001", "bbbb00000002"):
        tokens[session_id] = secrets.token_urlsafe(16)
        berth.store.add_session(SessionRecord(
            id=session_id, token_hash=hash_token(tokens[session_id]), lesson="docker-images",
            created_at=now, expires_at=now + 3600, last_seen_at=now,
            machines=[MachineRecord("workstation", "starting"), MachineRecord("colleague", "starting")]))
    app.config["TEST_TOKENS"] = tokens
    return app


def refused(app, auth, headers=None) -> dict | None:
    """Connect a test client to /terminal; the CONNECT_ERROR data if it was refused."""
    client = socketio.test_client(app, headers=headers)  # "/" first, to watch what follows
    errors = []
    send = socketio.server._send_packet

    def watch(eio_sid, pkt):
        if pkt.packet_type == packet.CONNECT_ERROR and pkt.namespace == NAMESPACE:
            errors.append(pkt.data)
        send(eio_sid, pkt)

    socketio.server._send_packet = watch
    client.connect(NAMESPACE, auth=auth, headers=headers)
    assert client.is_connected(NAMESPACE) == (not errors)
    return errors[0] if errors else None


def test_refuses_without_auth(quiet_app):
    assert refused(quiet_app, None)["data"]["status"] == 401
    assert refused(quiet_app, {"session": "aaaa00000001", "machine": "workstation"})["data"]["status"] == 401
    assert refused(quiet_app, "a string")["data"]["status"] == 401


def test_refuses_a_wrong_token_and_another_sessions_token(quiet_app):
    tokens = quiet_app.config["TEST_TOKENS"]
    wrong = refused(quiet_app, {"session": "aaaa00000001", "token": "nope", "machine": "workstation"})
    assert wrong["data"] == {"error": "wrong_token", "status": 403}
    foreign = refused(quiet_app, {"session": "aaaa00000001", "token": tokens["bbbb00000002"], "machine": "workstation"})
    assert foreign["data"]["error"] == "wrong_token"
    unknown = refused(quiet_app, {"session": "cccc00000003", "token": tokens["aaaa00000001"], "machine": "workstation"})
    assert unknown["data"]["status"] == 404


def test_refuses_a_foreign_origin(quiet_app):
    tokens = quiet_app.config["TEST_TOKENS"]
    auth = {"session": "aaaa00000001", "token": tokens["aaaa00000001"], "machine": "workstation"}
    error = refused(quiet_app, auth, headers={"Origin": "http://evil.example"})
    assert error["data"] == {"error": "foreign_origin", "status": 403}
    # Its own origin passes that check (and is refused only because Berth is still starting).
    assert refused(quiet_app, auth, headers={"Origin": "http://localhost"})["data"]["error"] == "not_ready"


def test_refuses_unknown_machines_bad_shell_names_and_machines_not_ready(quiet_app):
    quiet_app.berth.state = "ready"
    token = quiet_app.config["TEST_TOKENS"]["aaaa00000001"]
    auth = {"session": "aaaa00000001", "token": token}
    assert refused(quiet_app, {**auth, "machine": "laptop"})["data"] == {"error": "unknown_machine", "status": 404}
    assert refused(quiet_app, {**auth, "machine": "workstation"})["data"]["error"] == "machine_not_ready"
    assert refused(quiet_app, {**auth, "machine": "workstation", "shell": "../x"})["data"]["status"] == 400
    assert refused(quiet_app, {**auth, "machine": "workstation", "shell": 5})["data"]["status"] == 400
    assert refused(quiet_app, {**auth, "machine": ["workstation"]})["data"]["status"] == 400


def test_events_without_a_connection_are_dropped(quiet_app):
    client = socketio.test_client(quiet_app)
    token = quiet_app.config["TEST_TOKENS"]["aaaa00000001"]
    client.connect(NAMESPACE, auth={"session": "aaaa00000001", "token": token, "machine": "workstation"})
    assert not client.is_connected(NAMESPACE)
    client.connected[NAMESPACE] = True  # behave as a client that ignores the refusal
    for event, args in (("input", ["ls\r"]), ("resize", [{"cols": 10, "rows": 5}]), ("ack", [10])):
        client.emit(event, *args, namespace=NAMESPACE)
    assert quiet_app.berth.terminals.shells == {}
    assert client.get_received(NAMESPACE) == []


# --- in-process, with a real machine


@dataclass
class Live:
    app: object
    berth: object
    session_id: str
    token: str

    def auth(self, **more) -> dict:
        return {"session": self.session_id, "token": self.token, "machine": "workstation", **more}


@pytest.fixture(scope="module")
def live(engine, tmp_path_factory):
    """An in-process Berth with a real session: short linger, at most 3 shells a machine."""
    data = tmp_path_factory.mktemp("terminal-live")
    config = Config.from_env({**os.environ, "BERTH_DATA_DIR": str(data), "BERTH_SHELL_LINGER": "3s",
                              "BERTH_SHELLS_PER_MACHINE": "3"})
    app = create_app(config)
    berth = app.berth
    wait_until_ready(berth)
    record, token = berth.sessions.create("docker-images", wait=True)
    assert all(m.status == "ready" for m in berth.store.session(record.id).machines)
    yield Live(app, berth, record.id, token)
    berth.sessions.end(record.id)
    berth.stop()
    remove_instance(engine, berth.instance_id)


class Term:
    """An in-process /terminal client: collects output by offset and acknowledges it as
    xterm.js would."""

    def __init__(self, app, auth: dict):
        self.client = socketio.test_client(app, namespace=NAMESPACE, auth=auth)
        self.data = bytearray()
        self.start: int | None = None
        self.events: list[dict] = []
        self.seq = 0

    @property
    def connected(self) -> bool:
        return self.client.is_connected(NAMESPACE)

    def pump(self) -> None:
        queue = self.client.queue
        while queue:
            item = queue.pop(0)  # atomic: the server's pump threads append meanwhile
            if item["name"] == "output":
                chunk, offset = item["args"]
                if self.start is None:
                    self.start = offset
                assert offset == self.start + len(self.data), "output out of order or repeated"
                self.data += chunk
                if self.connected:
                    self.client.emit("ack", offset + len(chunk), namespace=NAMESPACE)
            else:
                self.events.append(item)

    def text(self) -> str:
        self.pump()
        return self.data.decode("utf-8", "replace")

    def wait_for(self, pattern: str | re.Pattern, timeout: float = 15, after: int = 0) -> re.Match:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        return wait_until(lambda: regex.search(self.text(), after), timeout,
                          lambda: f"no {regex.pattern!r} in {self.text()[-2000:]!r}", interval=0.02)

    def event(self, name: str, timeout: float = 10) -> dict:
        def take() -> dict | None:
            self.pump()
            for item in self.events:
                if item["name"] == name:
                    self.events.remove(item)
                    return item
            return None

        return wait_until(take, timeout, lambda: f"no {name} event; got {self.events}", interval=0.02)["args"][0]

    def send(self, text: str) -> None:
        self.client.emit("input", text, self.seq, namespace=NAMESPACE)
        self.seq += 1

    def run(self, command: str, timeout: float = 30) -> str:
        """Type a command, return what it printed (up to the next prompt)."""
        mark = len(self.text())
        token = secrets.token_hex(3)
        self.send(f"{command}; echo END{token}\r")
        match = self.wait_for(rf"[\r\n]END{token}\r\n", timeout, after=mark)
        return output_of(self.text()[mark:match.start()], token)

    def close(self) -> None:
        if self.connected:
            self.client.disconnect(NAMESPACE)


def shell_pid(term: Term) -> str:
    return term.run("echo $$").strip()


@pytest.mark.engine
def test_a_shell_in_the_machine(live):
    events = []
    live.berth.bus.subscribe(LearnerActivity, lambda e: events.append((e.what, e.session_id, e.machine)))
    term = Term(live.app, live.auth(cols=91, rows=27))
    assert term.connected
    attached = term.event("attached")
    assert attached["shell"] == "new" and attached["offset"] == 0
    term.wait_for(r"root@workstation.*# ")
    assert "7771;shell=" not in term.text()  # berth-shell's state marker is not passed on
    assert term.run("stty size").strip() == "27 91"
    assert term.run("echo $TERM; hostname; pwd").split() == ["xterm-256color", "workstation", "/root"]
    assert term.run("docker info --format '{{.ServerVersion}}' >/dev/null && echo engine ok").strip() == "engine ok"
    wait_until(lambda: ("command", live.session_id, "workstation") in events
               and ("enter", live.session_id, "workstation") in events, 5, lambda: events, interval=0.05)
    shell = live.berth.terminals.shells[(live.session_id, "workstation", "main")]
    assert shell.tty.stream.sock.gettimeout() is None  # an idle terminal never times out
    term.close()


@pytest.mark.engine
def test_every_key_reaches_the_shell(live):
    term = Term(live.app, live.auth())
    term.wait_for(r"# $")
    term.run("echo first-command")
    mark = len(term.text())
    term.send("\x10")  # Ctrl-P: readline's previous-history (Docker's default detach key)
    term.wait_for("echo first-command", after=mark)
    term.send("\x15")  # Ctrl-U: clear the line
    term.send("sleep 30\r")
    time.sleep(0.3)
    mark = len(term.text())
    term.send("\x1a")  # Ctrl-Z: suspends the job, not the shell's keeper
    term.wait_for(r"Stopped\s+sleep 30", after=mark)
    mark = len(term.text())
    term.send("fg\r")
    time.sleep(0.3)
    term.send("\x03")  # Ctrl-C
    term.wait_for(PROMPT_TEXT, after=mark)
    assert term.run("jobs").strip() == ""
    term.close()


@pytest.mark.engine
def test_resize_follows_the_browser(live):
    term = Term(live.app, live.auth(cols=80, rows=24))
    term.wait_for(r"# $")
    term.client.emit("resize", {"cols": 132, "rows": 43}, term.seq, namespace=NAMESPACE)
    term.seq += 1
    assert term.run("stty size").strip() == "43 132"
    term.client.emit("resize", {"cols": 100, "rows": 30}, term.seq, namespace=NAMESPACE)
    term.seq += 1
    assert term.run("stty size").strip() == "30 100"
    term.close()


@pytest.mark.engine
def test_reattach_shows_recent_output_once_and_keeps_the_shell(live):
    first = Term(live.app, live.auth())
    attached = first.event("attached")
    first.wait_for(r"# $")
    pid = shell_pid(first)
    first.run("cd /tmp && { sleep 600 & }")
    first.run("echo before-reload")
    offset, epoch = first.start + len(first.data), attached["epoch"]
    first.close()
    # A reload: no offset, so the recent output is replayed.
    reloaded = Term(live.app, live.auth())
    info = reloaded.event("attached")
    assert info["epoch"] == epoch and info["shell"] == "new" and not info["resumed"]
    reloaded.wait_for("before-reload")
    assert shell_pid(reloaded) == pid
    assert reloaded.run("pwd; jobs").split()[:3] == ["/tmp", "[1]+", "Running"]
    reloaded.close()
    # A dropped network: the page says where it was, and gets only what came after.
    resumed = Term(live.app, live.auth(epoch=epoch, offset=offset))
    info = resumed.event("attached")
    assert info["resumed"] and info["offset"] == offset
    resumed.wait_for(r"# $")
    assert "before-reload" not in resumed.text()
    assert shell_pid(resumed) == pid
    resumed.run("kill %1")
    resumed.close()


@pytest.mark.engine
def test_fan_out_to_several_tabs(live):
    one = Term(live.app, live.auth())
    two = Term(live.app, live.auth())
    one.wait_for(r"# $")
    two.wait_for(r"# $")
    mark = len(two.text())
    one.run("echo shown-in-both-tabs")
    two.wait_for(r"[\r\n]shown-in-both-tabs\r\n", after=mark)
    one.close()
    two.close()


@pytest.mark.engine
def test_nothing_a_client_sends_breaks_the_bridge(live):
    term = Term(live.app, live.auth())
    term.wait_for(r"# $")
    junk = [
        ("input", [None]), ("input", [{"a": 1}]), ("input", [[1, 2, 3]]), ("input", [b""]),
        ("input", ["x", "not a number"]), ("input", ["", -5]), ("input", [12345]),
        ("input", ["\x15", 10**30]), ("resize", ["big"]), ("resize", [{"cols": "80", "rows": 24}]),
        ("resize", [{"cols": -1, "rows": 0}]), ("resize", [{"cols": 10**9, "rows": 10**9}]), ("resize", []),
        ("ack", ["12"]), ("ack", [-100]), ("ack", [10**40]), ("ack", [True]), ("ack", []),
        ("unknown", [1, 2, 3]), ("connect", [{}]), ("disconnect", []),
    ]
    for event, args in junk:
        term.client.emit(event, *args, namespace=NAMESPACE)
    term.send("\x15")  # clear whatever reached the line
    assert term.connected
    assert term.run("echo still-here").strip() == "still-here"
    term.close()


@pytest.mark.engine
def test_shells_per_machine_are_bounded(live):
    terms = [Term(live.app, live.auth(machine="colleague", shell=name)) for name in ("main", "second", "third")]
    assert all(t.connected for t in terms)
    assert not Term(live.app, live.auth(machine="colleague", shell="fourth")).connected
    assert len({shell_pid(t) for t in terms}) == 3
    for t in terms:
        t.close()
    shells = live.berth.terminals.shells
    wait_until(lambda: not any(key[1] == "colleague" for key in list(shells)), 20,  # ended after the linger
               lambda: list(shells))
    again = Term(live.app, live.auth(machine="colleague", shell="fourth"))
    assert again.connected
    again.close()


@pytest.mark.engine
def test_a_shell_without_browser_is_ended_after_the_linger(live, engine):
    term = Term(live.app, live.auth(shell="lingers"))
    pid = shell_pid(term)
    term.close()
    session = {"id": live.session_id}
    code, out = in_machine(engine, session, "workstation", f"kill -0 {pid}")
    assert code == 0, (pid, out)
    wait_until(lambda: in_machine(engine, session, "workstation", f"kill -0 {pid}")[0] != 0, 20,
               lambda: "the shell outlived BERTH_SHELL_LINGER", interval=0.5)
    again = Term(live.app, live.auth(shell="lingers"))
    assert again.event("attached")["shell"] == "new"
    assert shell_pid(again) != pid
    again.close()


@pytest.mark.engine
def test_exit_ends_the_shell_and_a_new_one_can_start(live):
    term = Term(live.app, live.auth(shell="exits"))
    pid = shell_pid(term)
    term.send("exit\r")
    ended = term.event("ended")
    assert ended["reason"] == "exit"
    assert "7771;shell=" not in term.text()
    again = Term(live.app, live.auth(shell="exits"))
    assert again.event("attached")["shell"] == "new"
    assert shell_pid(again) != pid
    again.close()


# --- through real servers, over WebSocket


class Remote(TerminalClient):
    """A client of a real server's /terminal, reading in a thread of its own."""

    def __init__(self, url: str, auth: dict, origin: str | None = None, rate: float | None = None):
        super().__init__(url, auth, origin=origin, rate=rate)
        self.start()

    def run(self, command: str, timeout: float = 30) -> str:
        mark = len(self.data)
        token = secrets.token_hex(3)
        self.send(f"{command}; echo END{token}\r")
        match = self.wait_for(rf"[\r\n]END{token}\r\n".encode(), timeout, after=mark)
        return output_of(bytes(self.data[mark:match.start()]).decode("utf-8", "replace"), token)


def remote_auth(session: dict, **more) -> dict:
    return {"session": session["id"], "token": session["token"], "machine": "workstation", **more}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


@pytest.mark.engine
def test_remote_refusals_say_why(server, lesson_session):
    with pytest.raises(Refused) as refused:
        Remote(server.url, remote_auth(lesson_session, token="wrong"))
    assert refused.value.args[0] == {"message": "That token does not belong to this session.",
                                     "data": {"error": "wrong_token", "status": 403}}
    with pytest.raises(Refused):  # Engine.IO refuses the handshake itself
        Remote(server.url, remote_auth(lesson_session), origin="http://evil.example")
    ok = Remote(server.url, remote_auth(lesson_session), origin=server.url)
    ok.wait_for(rb"# $")
    ok.close()


def yes_then_ctrl_c(server, session, rate: float | None, seconds: float) -> tuple[float, int]:
    """Run `yes` for a while, press Ctrl-C: (seconds until the prompt, server RSS growth in KiB)."""
    term = Remote(server.url, remote_auth(session), rate=rate)
    term.wait_for(rb"# $")
    before = rss_kib(server.serving_pid)
    term.send("yes\r")
    grown = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.25)
        grown = max(grown, rss_kib(server.serving_pid) - before)
    assert len(term.data) > seconds * (rate or 4e6) / 2, "yes did not run"
    mark = len(term.data)
    pressed = time.monotonic()
    term.send("\x03")
    term.wait_for(PROMPT, timeout=30, after=mark)
    took = time.monotonic() - pressed
    print(f"rate {rate}: prompt {took:.2f} s after Ctrl-C, {len(term.data) - mark} bytes after it; "
          f"server RSS +{grown} KiB")
    assert term.run("echo alive").strip() == "alive"
    term.close()
    return took, grown


@pytest.mark.engine
def test_yes_then_ctrl_c_gives_the_prompt_back_within_a_second(server, lesson_session):
    took, _ = yes_then_ctrl_c(server, lesson_session, rate=None, seconds=3)
    assert took < 1.0


@pytest.mark.engine
def test_a_slow_browser_keeps_the_servers_memory_bounded(server, lesson_session):
    """A browser that shows 1 MB/s: the server holds back output instead of queueing it."""
    _, grown = yes_then_ctrl_c(server, lesson_session, rate=1e6, seconds=5)
    assert grown < 32 * 1024


@pytest.mark.engine
def test_pastes_larger_than_a_message_arrive_whole(server, lesson_session, engine):
    term = Remote(server.url, remote_auth(lesson_session))
    term.wait_for(rb"# $")
    lines = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(48_000)]
    text = ("\n".join(lines) + "\n").encode()  # 3 MB: three times Engine.IO's limit
    term.send(f"stty raw -echo; head -c {len(text)} > /tmp/paste; stty sane\r")
    time.sleep(0.5)
    for i in range(0, len(text), 64 * 1024):  # as the page splits it
        term.send(text[i:i + 64 * 1024])
    digest = hashlib.sha256(text).hexdigest()
    def pasted() -> str:
        return in_machine(engine, lesson_session, "workstation", "sha256sum < /tmp/paste")[1]

    wait_until(lambda: pasted().split()[0] == digest, 60, lambda: f"paste arrived as {pasted()}", interval=0.5)
    assert term.run("echo after-paste").strip() == "after-paste"
    term.close()


@pytest.mark.engine
def test_keystrokes_arrive_in_order(server, lesson_session):
    """Socket.IO handles each message in a thread of its own; numbered input is put back in order."""
    term = Remote(server.url, remote_auth(lesson_session))
    term.wait_for(rb"# $")
    word = "".join(secrets.choice("abcdefghij") for _ in range(400))
    mark = len(term.data)
    for char in f"echo {word}\r":
        term.send(char)
    term.wait_for(f"[\r\n]{word}\r\n".encode(), after=mark)
    term.close()


@pytest.mark.engine
def test_an_idle_terminal_stays_up(engine, tmp_path):
    """Idle for longer than the engine client's socket timeout (BERTH_ENGINE_TIMEOUT, made
    5 s here instead of its 60 s, for the suite's time) and than Socket.IO's ping interval
    (25 s): the shell's stream has no timeout, and the pings keep the WebSocket."""
    berth = BerthServer(tmp_path / "idle", {"BERTH_ENGINE_TIMEOUT": "5s"}).start()
    try:
        session = berth.create_session("image-basics")  # one machine is enough
        term = Remote(berth.url, remote_auth(session))
        term.wait_for(rb"# $")
        time.sleep(30)
        assert not term.closed and term.ended is None
        assert term.run("echo still-up").strip() == "still-up"
        term.close()
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)


@pytest.mark.engine
def test_a_server_restart_keeps_the_shell(engine, tmp_path):
    """Berth restarts: the page reconnects to the same bash, with its directory and jobs."""
    berth = BerthServer(tmp_path / "restart", KEEP).start()
    try:
        session = berth.create_session()
        term = Remote(berth.url, remote_auth(session))
        term.wait_for(rb"# $")
        pid = term.run("echo $$").strip()
        term.run("cd /etc && { sleep 900 & }")
        epoch, offset = term.attached["epoch"], term.end
        term.close()
        berth.stop()
        berth.start()
        deadline = time.monotonic() + 60
        while True:  # the session is adopted once its machines answer again
            try:
                again = Remote(berth.url, remote_auth(session, epoch=epoch, offset=offset))
                break
            except Refused as error:
                assert time.monotonic() < deadline, str(error)
                time.sleep(0.5)
        assert again.attached["shell"] == "existing" and again.attached["epoch"] != epoch
        assert again.run("echo $$").strip() == pid
        assert again.run("pwd; jobs").split()[:3] == ["/etc", "[1]+", "Running"]
        def attachments() -> str:
            return in_machine(engine, session, "workstation", "pgrep -c -f '[b]erth-shell attach '")[1].strip()

        wait_until(lambda: attachments() == "1", 5,  # the earlier attachment is told to leave, and goes
                   lambda: f"{attachments()} attachments: the stopped Berth's was left behind")
        again.close()
        berth.delete_session(session)
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)


@pytest.mark.engine
def test_ending_the_session_ends_its_terminals(server):
    session = server.create_session()
    term = Remote(server.url, remote_auth(session))
    term.wait_for(rb"# $")
    assert server.delete_session(session).status_code == 204
    wait_until(lambda: term.ended is not None, 20, interval=0.1)
    assert term.ended["reason"] == "session"
    term.close()
