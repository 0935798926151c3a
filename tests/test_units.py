"""Pure logic, without an engine: so that a failure points at a function. The same logic
is also exercised end to end by the engine and browser tests."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from berth.config import Config, ConfigError, parse_pool
from berth.events import Bus, Event, LearnerActivity, TasksChanged
from berth.machines import ExecStream, Machine
from berth.ports import PublishedPort, port_bindings, published_in
from berth.preview_diagnosis import parse_listening
from berth.preview_rewrite import rewrite_html, rewrite_location
from berth.terminal import CHUNK, EARLY_LIMIT, RING, WINDOW, Shell

# --- the terminal bridge: input order and the credit window


class FakeTty:
    """Stands in for the attachment to berth-shell: records what the writer would send."""

    def write(self, data: bytes) -> None: ...
    def resize(self, cols: int, rows: int) -> None: ...
    def read(self, size: int, wait: bool | float = True) -> bytes: return b""
    def close(self) -> None: ...


class Tab:
    """A Screen that keeps what it was sent."""

    connected = True

    def __init__(self, id: str = "tab"):
        self.id = id
        self.sent: list[tuple[str, object]] = []

    def send(self, event: str, data) -> None:
        self.sent.append((event, data))

    def hang_up(self) -> None: ...

    def output(self) -> list[tuple[int, int]]:
        """(offset, length) of each output message."""
        return [(data[1], len(data[0])) for event, data in self.sent if event == "output"]


def shell() -> Shell:
    return Shell(None, ("s1", "workstation", "main"), None, FakeTty(), "new", b"", 80, 24)  # type: ignore[arg-type]


def inputs(s: Shell) -> list[bytes]:
    return [item[1] for item in s._inputs if item[0] == "input"]


def test_input_that_overtook_other_input_waits_for_it():
    s, tab = shell(), Tab()
    s.add_viewer(tab, 80, 24, None, None)
    s.receive(tab.id, 2, ("input", b"c"))
    s.receive(tab.id, 1, ("input", b"b"))
    assert inputs(s) == []
    s.receive(tab.id, 0, ("input", b"a"))
    assert inputs(s) == [b"a", b"b", b"c"]
    s.receive(tab.id, None, ("input", b"!"))  # unnumbered: at once
    s.receive(tab.id, 1, ("input", b"old"))  # a number already passed: at once, too
    assert inputs(s) == [b"a", b"b", b"c", b"!", b"old"]


def test_a_gap_that_never_fills_is_given_up():
    s, tab = shell(), Tab()
    s.add_viewer(tab, 80, 24, None, None)
    for seq in range(1, EARLY_LIMIT + 2):  # number 0 never comes
        s.receive(tab.id, seq, ("input", b"%d " % seq))
    assert inputs(s) == [b"%d " % seq for seq in range(1, EARLY_LIMIT + 2)]


def test_only_the_latest_size_is_kept_and_an_unchanged_size_is_not_sent():
    s, tab = shell(), Tab()
    s.add_viewer(tab, 80, 24, None, None)
    assert list(s._inputs) == []
    s.receive(tab.id, None, ("resize", 100, 30))
    s.receive(tab.id, None, ("resize", 120, 40))
    assert list(s._inputs) == [("resize", 120, 40)]


def test_a_viewer_gets_no_more_than_its_credit_window():
    s, tab = shell(), Tab()
    s.add_viewer(tab, 80, 24, None, None)
    for _ in range(WINDOW // CHUNK):  # as the pump reads: a chunk at a time
        s._publish(b"x" * CHUNK)
    assert sum(size for _, size in tab.output()) == WINDOW
    assert not s._has_room()  # the pump waits for the browser
    s.ack(tab.id, CHUNK)
    assert s._has_room()
    s._publish(b"x" * CHUNK)
    s._publish(b"x" * CHUNK)  # beyond the window: kept in the ring, not sent
    assert tab.output() == [(offset, CHUNK) for offset in range(0, WINDOW + CHUNK, CHUNK)]
    s.ack(tab.id, 10 * WINDOW)  # more than was sent counts as all that was sent
    assert tab.output()[-1] == (WINDOW + CHUNK, CHUNK) and s.end == WINDOW + 2 * CHUNK


def test_a_window_held_back_opens_a_whole_message_at_a_time():
    """Acks that free a little credit at a time do not each send a little message (what the
    client acks per message would otherwise do in a flood); output that is not held back by
    the window, a keystroke's echo above all, goes at once however small."""
    s, tab = shell(), Tab()
    s.add_viewer(tab, 80, 24, None, None)
    s._publish(b"a")
    assert tab.output() == [(0, 1)]  # an echo: at once
    s.ack(tab.id, 1)
    s._publish(b"x" * (WINDOW + CHUNK))  # a flood: a window's worth goes, the rest waits
    assert sum(size for _, size in tab.output()) == 1 + WINDOW
    s.ack(tab.id, 1 + 4096)  # a little credit: nothing yet
    s.ack(tab.id, 1 + CHUNK // 2)
    assert sum(size for _, size in tab.output()) == 1 + WINDOW
    s.ack(tab.id, 1 + CHUNK)  # a whole message's worth: it goes
    assert tab.output()[-1] == (1 + WINDOW, CHUNK)
    s._publish(b"y" * 100)  # more output beyond the window, then everything acked: it all goes
    s.ack(tab.id, s.end)
    assert tab.output()[-1] == (1 + WINDOW + CHUNK, 100)


def test_an_exec_stream_read_waits_as_long_as_it_is_told():
    """The engine's frames (an 8-byte header each) are taken off; wait=False takes what is
    there, a number waits that long for more, True waits for ever (here: until the end)."""
    ours, engine = socket.socketpair()
    stream = ExecStream(ours)

    def frame(data: bytes) -> bytes:
        return b"\x01\0\0\0" + len(data).to_bytes(4, "big") + data

    engine.sendall(frame(b"hello "))
    assert stream.read(100) == b"hello "
    assert stream.read(100, wait=False) == b""
    started = time.monotonic()
    assert stream.read(100, wait=0.05) == b""  # nothing came within 50 ms
    assert time.monotonic() - started >= 0.04
    threading.Timer(0.02, lambda: engine.sendall(frame(b"world"))).start()
    assert stream.read(100, wait=1.0) == b"world"  # came within the wait, returned then
    engine.close()
    assert stream.read(100) == b""  # the end
    ours.close()


def test_a_viewer_that_fell_behind_the_ring_skips_ahead():
    s = shell()
    s._publish(b"y" * (RING + 2 * CHUNK))  # nobody watching: the ring keeps the latest
    assert s.ring_start > 0 and len(s.ring) <= RING + CHUNK
    tab = Tab()
    attached = s.add_viewer(tab, 80, 24, s.epoch, 0)  # it saw this shell at offset 0, long gone
    assert attached["resumed"] is False and attached["offset"] >= s.ring_start
    assert tab.output()[0][0] == attached["offset"]


def test_a_viewer_resumes_where_it_left_off():
    s, first = shell(), Tab("first")
    s.add_viewer(first, 80, 24, None, None)
    s._publish(b"hello\nworld\n")
    tab = Tab("again")
    attached = s.add_viewer(tab, 80, 24, s.epoch, 6)
    assert attached["resumed"] is True
    assert tab.output() == [(6, 6)]


# --- the preview: links and redirects stay under the preview's prefix

PREFIX = b"/s/abc.key/workstation/port/3000"


def rewritten(html: bytes, pieces: int = 1) -> bytes:
    size = max(1, len(html) // pieces)
    chunks = [html[i:i + size] for i in range(0, len(html), size)]
    return b"".join(rewrite_html(chunks, PREFIX, b"abc"))


def test_root_relative_links_get_the_prefix():
    page = b'<a href="/about">x</a><img src=/logo.png><form action=\'/go\'>'
    assert rewritten(page) == (b'<a href="' + PREFIX + b'/about">x</a><img src=' + PREFIX + b'/logo.png>'
                               b"<form action='" + PREFIX + b"/go'>")


def test_other_links_are_left_alone():
    page = b'<a href="//cdn.example/x"><a href="https://example.org/"><a href="rel"><a href="/s/abc/x">'
    assert rewritten(page) == page


def test_links_cut_between_chunks_are_rewritten_once():
    page = b"<p>" + b"a" * 100 + b'</p><a href="/about">x</a>' * 20
    whole = rewritten(page)
    assert whole.count(PREFIX + b"/about") == 20
    for pieces in (3, 7, len(page)):  # down to a byte a chunk
        assert rewritten(page, pieces) == whole


MACHINE = Machine("abc", "workstation", "c0ffee", "10.213.0.9", "running")
PUBLISHED = PublishedPort(3000, "web", "c1", 80, "0.0.0.0", "running")


def test_redirects_to_the_learners_own_server_stay_under_the_prefix():
    prefix = PREFIX.decode()
    for location in ("/login", "http://localhost:3000/login", "http://localhost/login",
                     "http://10.213.0.9:80/login", "http://workstation:3000/login"):
        assert rewrite_location(location, prefix, MACHINE, PUBLISHED) == prefix + "/login", location
    assert rewrite_location("relative", prefix, MACHINE, PUBLISHED) == "relative"
    assert rewrite_location("https://example.org/", prefix, MACHINE, PUBLISHED) == "https://example.org/"
    assert rewrite_location("http://localhost:9999/x", prefix, MACHINE, PUBLISHED) == "http://localhost:9999/x"
    assert rewrite_location("http://localhost:3000/a?b=1#c", prefix, MACHINE, PUBLISHED) == prefix + "/a?b=1#c"


# --- listening sockets and published ports

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0900D50A:0BB8 0100D50A:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0 0 0 0 0 4 1
   1: 00000000000000000000000001000000:0051 00000000000000000000000000000000:0000 0A 0 0 0 0 0 5 1
   2: 0000000000000000FFFF00000100007F:0052 00000000000000000000000000000000:0000 0A 0 0 0 0 0 6 1
"""


def test_listening_sockets_are_read_from_proc_net_tcp():
    assert parse_listening(PROC_NET_TCP) == [(3000, "0.0.0.0"), (8080, "127.0.0.1"), (80, "::"), (81, "::1"),
                                             (82, "127.0.0.1")]


def test_published_ports_prefer_an_address_everyone_reaches():
    summaries = [{"Id": "c1", "Names": ["/web"], "State": "running", "Ports": [
        {"PrivatePort": 80, "PublicPort": 3000, "Type": "tcp", "IP": "127.0.0.1"},
        {"PrivatePort": 80, "PublicPort": 3000, "Type": "tcp", "IP": "0.0.0.0"},
        {"PrivatePort": 53, "PublicPort": 53, "Type": "udp", "IP": "0.0.0.0"},
        {"PrivatePort": 9000, "Type": "tcp"}]}]
    assert published_in(summaries) == [PublishedPort(3000, "web", "c1", 80, "0.0.0.0", "running")]


def test_port_bindings_of_running_and_stopped_containers():
    running = {"State": {"Running": True}, "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "1"}]}},
               "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "3000"}],
                                             "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "53"}],
                                             "81/tcp": None}}}
    assert port_bindings(running) == {80: [("0.0.0.0", 3000)]}
    stopped = {**running, "State": {"Running": False}}
    assert port_bindings(stopped) == {80: [("", 1)]}


# --- the event bus


def test_the_bus_delivers_by_type_and_survives_a_failing_subscriber():
    bus, heard = Bus(), []

    def broken(event: Event) -> None:
        raise RuntimeError("a subscriber's bug")

    bus.subscribe(LearnerActivity, broken)
    bus.subscribe(LearnerActivity, heard.append)
    bus.subscribe(Event, lambda event: heard.append(("any", event.session_id)))
    bus.publish(LearnerActivity("s1", "workstation", "enter"))
    bus.publish(TasksChanged("s2", []))
    assert heard == [LearnerActivity("s1", "workstation", "enter"), ("any", "s1"), ("any", "s2")]


def test_routed_networks_are_read_from_the_routing_table(tmp_path):
    from berth.machines import routed_networks

    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"  # default: not a network
        "br-1\t0000D50A\t00000000\t0001\t0\t0\t0\tE0FFFFFF\t0\t0\t0\n"  # 10.213.0.0/27
    )
    assert [str(n) for n in routed_networks(str(table))] == ["10.213.0.0/27"]
    assert routed_networks(str(tmp_path / "missing")) == []


# --- one lock per key


def test_keyed_locks_let_one_in_per_key_and_forget_keys_nobody_holds():
    import threading
    import time

    from berth.locks import KeyedLocks

    locks, inside, most, a_held = KeyedLocks(), [0], [0], threading.Event()

    def one(key: str) -> None:
        with locks.hold(key):
            a_held.set()
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            time.sleep(0.1)
            inside[0] -= 1

    threads = [threading.Thread(target=one, args=("session-a",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert a_held.wait(5)
    with locks.hold("session-b"):  # another key goes on while session-a's holders take turns
        assert len(locks) == 2
    for thread in threads:
        thread.join()
    assert most[0] == 1 and len(locks) == 0
    try:
        with locks.hold("session-c"):
            raise ValueError("the holder failed")
    except ValueError:
        pass
    assert len(locks) == 0


# --- request bodies


def test_a_request_body_that_does_not_fit_names_the_field():
    import pytest

    from berth.instructor import NewWorkshop
    from berth.views import NewSession
    from berth.web import ApiError, validated

    for data, field in (({}, '"lesson"'), ({"lesson": 7}, '"lesson"'), ({"lesson": "x", "wait": "yes"}, '"wait"'),
                        ({"lesson": "x", "seats": True}, '"seats"'), ({"lesson": "x", "seats": 2.0}, '"seats"'),
                        ({"lesson": "x", "expires_in": "forever"}, '"expires_in"')):
        model = NewWorkshop if "seats" in data or "expires_in" in data else NewSession
        with pytest.raises(ApiError) as refused:
            validated(model, data)
        assert (refused.value.status, refused.value.code) == (400, "bad_request") and field in refused.value.message
    assert validated(NewSession, {"lesson": "docker-images", "colour": "blue"}).wait is False  # others ignored
    workshop = validated(NewWorkshop, {"lesson": "docker-images", "seats": "12", "expires_in": "90m", "title": None})
    assert (workshop.seats, workshop.expires_in, workshop.title) == (12, 5400, None)


def test_pool_sizes_are_read_per_lesson_or_for_every_lesson():
    assert parse_pool("1") == {"*": 1}
    assert parse_pool("docker-images=2, image-basics=0") == {"docker-images": 2, "image-basics": 0}
    assert parse_pool("1,docker-images=3") == {"*": 1, "docker-images": 3}
    assert parse_pool("0") == {"*": 0}
    for wrong in ("two", "docker-images=-1", "Docker=1", "=x"):
        with pytest.raises(ValueError):
            parse_pool(wrong)
    assert Config.from_env({"BERTH_POOL": "image-layers=2"}).pool == {"image-layers": 2}
    with pytest.raises(ConfigError, match="BERTH_POOL='lots'"):
        Config.from_env({"BERTH_POOL": "lots"})
