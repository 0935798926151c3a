"""The escape suite: a learner who is root in their machine, and who knows the attacks,
stays in it. Each test runs the attack in a real machine, asserts that it ran (the command
reached the machine and the kernel answered), and that it was refused for the right
reason. Then the lesson's needs are shown to work on the same machines.

Network tests reach only listeners these tests start on this machine: on loopback, on the
host's side of a session network, or in a network namespace of the tests' own."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import threading
import uuid
from contextlib import contextmanager

import pytest

from .conftest import NAVIGATE, BerthServer, in_machine, machine_container, remove_instance, wait_until

pytestmark = pytest.mark.engine

# errno names a refused privileged call may give: EPERM/EACCES where the kernel checks a
# capability the machine lacks, ENOSYS where this kernel has no such call at all (this
# project's hosts run kernels without modules or kexec). Either way, nothing happens.
REFUSED = {"EPERM", "EACCES", "ENOSYS"}

SYSCALLS = r'''
import ctypes, errno, os, struct
libc = ctypes.CDLL(None, use_errno=True)
def call(name, nr, *args):
    args = [a if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    rc = libc.syscall(ctypes.c_long(nr), *args)
    print(name, "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?"))
call("init_module", 175, b"\0" * 64, 64, b"")
call("finit_module", 313, os.open("/etc/hostname", os.O_RDONLY), b"", 0)
call("kexec_load", 246, 0, 0, 0, 0)
call("kexec_file_load", 320, 3, 3, 0, b"", 0)
insns = (ctypes.c_uint64 * 2)(0xb7, 0x95)  # r0 = 0; exit
license = ctypes.c_char_p(b"GPL")
attr = (ctypes.c_uint8 * 128)()
struct.pack_into("IIQQ", attr, 0, 1, 2, ctypes.addressof(insns), ctypes.cast(license, ctypes.c_void_p).value)
call("bpf", 321, 5, ctypes.addressof(attr), 128)
perf = (ctypes.c_uint8 * 128)()
struct.pack_into("II", perf, 0, 1, 128)  # a software event, on every process of cpu 0
call("perf_event_open", 298, ctypes.addressof(perf), -1, 0, -1, 0)
handle = (ctypes.c_uint8 * 16)()
struct.pack_into("Ii", handle, 0, 8, 1)  # the root inode of the host's file system
call("open_by_handle_at", 304, os.open("/", os.O_RDONLY), ctypes.addressof(handle), 0)
call("reboot", 169, 0xfee1dead, 672274793, 0x4321fedc, 0)
call("settimeofday", 164, 0, 0)
call("swapon", 167, b"/etc/hostname", 0)
'''


@pytest.fixture(scope="module")
def machines(server):
    """One session of the first lesson (workstation and colleague) for the attacks."""
    session = server.create_session("docker-images")
    yield session
    server.delete_session(session)


def attack(engine, session, command: str, machine: str = "workstation") -> str:
    """Run an attack as the learner (root in the machine); its output, which must show
    that it ran."""
    code, out = in_machine(engine, session, machine, f"echo ATTACK-RAN; {command}", timeout=60)
    assert "ATTACK-RAN" in out, out
    return out


def test_berth_reports_the_isolation_it_runs_with(server):
    health = server.health().json()
    assert health["isolation"] == "userns", health
    assert "warning" not in health


# 1. nothing global to the host kernel

def test_host_kernel_settings_cannot_be_changed(engine, machines):
    with open("/proc/sys/kernel/core_pattern") as file:
        core_pattern = file.read()
    out = attack(engine, machines,
                 "echo '|/tmp/evil' > /proc/sys/kernel/core_pattern; echo 1 > /proc/sys/vm/drop_caches; "
                 "echo 1000 > /proc/sys/fs/file-max; echo 99 > /proc/sys/kernel/keys/maxkeys; "
                 # a proc file system of the learner's own is the same kernel's
                 "mkdir -p /mnt/proc && mount -t proc proc /mnt/proc && echo mounted-proc && "
                 "echo '|/tmp/evil' > /mnt/proc/sys/kernel/core_pattern; umount /mnt/proc; "
                 "echo h > /proc/sysrq-trigger")
    assert out.count("Permission denied") >= 5, out
    assert "mounted-proc" in out, out
    assert "/proc/sysrq-trigger: Permission denied" in out or "/proc/sysrq-trigger: No such file" in out, out
    with open("/proc/sys/kernel/core_pattern") as file:
        assert file.read() == core_pattern
    # its own network namespace's settings are its own to change (its engine needs that)
    out = attack(engine, machines, "echo 1 > /proc/sys/net/ipv4/ip_forward && echo own-netns-ok")
    assert "own-netns-ok" in out, out


def test_modules_kexec_bpf_perf_and_the_host_clock_are_refused(engine, machines):
    out = attack(engine, machines, f"python3 - <<'PY'\n{SYSCALLS}\nPY")
    results = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    for call in ("init_module", "finit_module", "kexec_load", "kexec_file_load", "bpf", "perf_event_open",
                 "open_by_handle_at", "reboot", "settimeofday", "swapon"):
        assert results.get(call) in REFUSED, (call, out)
    # the capability checks answered where this kernel has the call: refused, not absent
    for call in ("bpf", "open_by_handle_at", "reboot", "settimeofday", "swapon"):
        assert results[call] in ("EPERM", "EACCES"), (call, out)


# 2. no devices but its own

def _host_disk() -> tuple[int, int]:
    device = os.stat("/").st_dev
    return os.major(device), os.minor(device)


def test_no_device_but_its_own(engine, machines):
    major, minor = _host_disk()
    out = attack(engine, machines,
                 f"mknod /tmp/disk b {major} {minor}; mknod /tmp/loop b 7 0; mknod /tmp/kvm c 10 232; "
                 "mknod /tmp/mem c 1 1; mknod /tmp/loop-control c 10 237; "
                 "echo 'a *:* rwm' > /sys/fs/cgroup/devices/devices.allow; "
                 "losetup -f; ls /dev")
    assert out.count("Operation not permitted") >= 5, out
    assert "devices.allow: Permission denied" in out, out
    for device in ("vda", "sda", "kvm", "mem", "loop0", "loop-control"):
        assert f"\n{device}\n" not in out, out


# 3. no way out through cgroups, host mounts or other processes

def test_cgroup_escapes_are_refused(engine, machines):
    out = attack(engine, machines,
                 "mkdir -p /mnt/cg && for c in rdma memory; do mount -t cgroup -o $c cgroup /mnt/cg 2>/dev/null && break; done; "
                 "echo /tmp/evil > /mnt/cg/release_agent; echo 1 > /mnt/cg/notify_on_release; "
                 "echo /tmp/evil > /sys/fs/cgroup/memory/release_agent; umount /mnt/cg 2>/dev/null; "
                 "echo 99999999999 > /sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert "release_agent: Permission denied" in out, out
    assert "notify_on_release: Permission denied" in out or "notify_on_release: No such file" in out, out
    assert "memory.limit_in_bytes: Permission denied" in out, out


def test_host_processes_are_out_of_sight_and_reach(engine, machines):
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        out = attack(engine, machines,
                     f"ls /proc/{sleeper.pid}/root; kill -0 {sleeper.pid}; cat /proc/1/comm; "
                     f"python3 -c 'import ctypes; print(\"ptrace\", ctypes.CDLL(None).ptrace(16, {sleeper.pid}, 0, 0))'")
        assert f"/proc/{sleeper.pid}/root': No such file" in out, out
        assert f"({sleeper.pid}) - No such process" in out, out
        assert "ptrace -1" in out, out
        assert "tini" in out, out  # its pid 1 is its own
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


# 4. other machines' processes and files

def test_other_machines_processes_and_files_are_out_of_reach(engine, machines):
    marker = uuid.uuid4().hex
    code, _ = in_machine(engine, machines, "colleague",
                         f"echo {marker} > /root/secret && (sh -c 'sleep 300; : {marker}' >/dev/null 2>&1 &)")
    assert code == 0
    code, out = in_machine(engine, machines, "colleague", f"pgrep -f '[:] {marker}'")
    assert code == 0, out  # the search finds it where it runs
    out = attack(engine, machines,
                 f"pgrep -f '[:] {marker}' || echo no-process; grep -rl {marker} /root /tmp /var/lib/docker 2>/dev/null || echo no-file")
    assert "no-process" in out and "no-file" in out, out


# 5. the host's disk cannot be filled

@pytest.fixture(scope="module")
def small_disk(engine, tmp_path_factory):
    """A Berth whose machines have 1 GiB of disk each, on an address pool of its own, that
    lets machines reach one range of the tests' own network (ALLOWED)."""
    berth = BerthServer(tmp_path_factory.mktemp("small-disk"), {
        "BERTH_MACHINE_DISK": "1g", "BERTH_NETWORK_POOL": "10.215.0.0/16",
        "BERTH_ALLOWED_NETWORKS": ALLOWED_NETWORK,
    }).start()
    session = berth.create_session("docker-images")
    yield berth, session
    berth.delete_session(session)
    berth.stop()
    remove_instance(engine, berth.instance_id)


def test_a_machine_cannot_fill_the_host_disk(engine, small_disk):
    berth, session = small_disk
    # files in the machine, and images and containers in its engine, share one bound
    out = attack(engine, session, f"docker run --rm {_base_image()} dd if=/dev/zero of=/fill bs=1M count=1500")
    assert "Disk quota exceeded" in out or "No space left" in out, out
    out = attack(engine, session, "dd if=/dev/zero of=/root/fill bs=1M count=1500")
    assert "Disk quota exceeded" in out or "No space left" in out, out
    # an upload is bounded by the same disk: with the disk full, it is refused
    response = _upload(berth, session, b"\0" * (64 * 1024 * 1024))
    assert response.status_code == 507 and response.json()["error"] == "disk_full", response.text
    # and once the learner makes room, the machine works again
    attack(engine, session, "rm -f /root/fill")
    code, out = in_machine(engine, session, "workstation", "docker info --format '{{.ID}}'")
    assert code == 0, out


def _upload(berth, session, data: bytes):
    import requests
    return requests.put(f"{berth.url}/api/sessions/{session['id']}/machines/workstation/files",
                        params={"path": "/root/big.bin"}, data=data, timeout=300,
                        headers={"Authorization": f"Bearer {session['token']}"})


# 6. the host's services and the networks around it

BLOCKED_NETWORK, ALLOWED_NETWORK, LINK_LOCAL = "10.77.0.0/24", "10.78.0.0/24", "169.254.77.0/24"


@contextmanager
def listener(host: str = "0.0.0.0"):
    """A TCP server of the test's own that answers one line to whoever connects."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, 0))
    server.listen(8)
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                continue
            client.sendall(b"SECRET-FROM-HOST\n")
            client.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


@pytest.fixture(scope="module")
def test_lan():
    """A network namespace of the tests' own standing for the networks around the host:
    addresses in a private range, in an allowed range and link-local, each with a listener
    that answers SECRET-FROM-LAN."""
    name = f"berth-lan-{uuid.uuid4().hex[:6]}"
    outside, inside = _test_lan_links(name)

    def ip(*args, netns=False):
        command = ["ip", "netns", "exec", name, "ip", *args] if netns else ["ip", *args]
        subprocess.run(command, check=True, capture_output=True)

    lock = open(TEST_LAN_LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one test network per host at a time: they share addresses
    _remove_stale_test_lans()
    ip("netns", "add", name)
    listeners = []
    try:
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", name)
        ip("link", "set", outside, "up")
        ip("link", "set", "lo", "up", netns=True)
        ip("link", "set", inside, "up", netns=True)
        addresses = {}
        for kind, network in (("blocked", BLOCKED_NETWORK), ("allowed", ALLOWED_NETWORK), ("link-local", LINK_LOCAL)):
            prefix = network.rsplit(".", 1)[0]
            ip("addr", "add", f"{prefix}.254/24", "dev", outside)
            ip("addr", "add", f"{prefix}.1/24", "dev", inside, netns=True)
            addresses[kind] = f"{prefix}.1"
        ip("route", "add", "default", "dev", inside, netns=True)
        answer = "import socket,sys\ns=socket.socket();s.setsockopt(1,2,1);s.bind(('0.0.0.0',8777));s.listen(8)\n" \
                 "while True:\n c,_=s.accept();c.sendall(b'SECRET-FROM-LAN\\n');c.close()\n"
        listeners.append(subprocess.Popen(["ip", "netns", "exec", name, "python3", "-c", answer]))
        def listening() -> bool:
            assert listeners[0].poll() is None, f"the test network's listener exited ({listeners[0].returncode})"
            try:
                socket.create_connection((addresses["blocked"], 8777), timeout=2).close()
                return True
            except OSError:
                return False

        wait_until(listening, 20, lambda: "the test network's listener did not answer: "
                   + subprocess.run(["ip", "route", "get", addresses["blocked"]], capture_output=True, text=True).stdout,
                   interval=0.1)
        yield addresses
    finally:
        for process in listeners:
            process.kill()
            process.wait()
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        lock.close()


TEST_LAN_LOCK = "/run/berth-test-lan.lock"


def _test_lan_links(name: str) -> tuple[str, str]:
    """The veth pair of test network `name`: its end on the host and its end inside."""
    return f"bl{name[-6:]}o", f"bl{name[-6:]}i"


def _remove_stale_test_lans() -> None:
    """Remove the test networks a run that was killed left behind (called holding the lock, so
    every one there is stale). One left in place holds the same addresses on another link,
    the host's route to them goes there, and this run's listener is never reached."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for stale in (name for name in names if name.startswith("berth-lan-")):
        pids = subprocess.run(["ip", "netns", "pids", stale], capture_output=True, text=True).stdout.split()
        for pid in pids:  # that run's listener, by its pid
            subprocess.run(["kill", "-KILL", pid], capture_output=True)
        subprocess.run(["ip", "link", "del", _test_lan_links(stale)[0]], capture_output=True)
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def _gateway(engine, session) -> str:
    container = machine_container(engine, session, "workstation")
    return container.attrs["NetworkSettings"]["Networks"][f"berth-{session['id']}"]["Gateway"]


def test_host_services_are_out_of_reach(engine, machines):
    gateway = _gateway(engine, machines)
    with listener() as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as control:
            assert control.recv(100) == b"SECRET-FROM-HOST\n"  # it answers, from the host
        out = attack(engine, machines, f"curl -sS --max-time 5 telnet://{gateway}:{port} </dev/null")
    assert "SECRET-FROM-HOST" not in out, out
    assert "Connection refused" in out or "Connection reset" in out or "Failed to connect" in out, out


def test_private_and_link_local_networks_are_out_of_reach_unless_allowed(engine, small_disk, test_lan):
    berth, session = small_disk
    for kind in ("blocked", "link-local", "allowed"):  # each answers from the host
        with socket.create_connection((test_lan[kind], 8777), timeout=5) as control:
            assert control.recv(100) == b"SECRET-FROM-LAN\n"
    out = attack(engine, session,
                 f"curl -sS --max-time 5 telnet://{test_lan['blocked']}:8777 </dev/null; "
                 f"curl -sS --max-time 5 telnet://{test_lan['link-local']}:8777 </dev/null")
    assert "SECRET-FROM-LAN" not in out, out
    assert out.count("Failed to connect") + out.count("No route to host") >= 2, out
    # a range the operator allowed (BERTH_ALLOWED_NETWORKS) is reached
    out = attack(engine, session, f"curl -sS --max-time 5 telnet://{test_lan['allowed']}:8777 </dev/null")
    assert "SECRET-FROM-LAN" in out, out


# what a lesson needs still works on the same machines

def test_lessons_needs_work_under_isolation(engine, machines):
    base = _base_image()
    out = attack(engine, machines, f"""set -e
cd /root && mkdir -p build site && echo built-ok > build/note && echo served-ok > site/index.html
printf 'FROM {base}\\nCOPY note /note\\nCMD ["cat", "/note"]\\n' > build/Dockerfile
docker build -q -t mine:1 build >/dev/null && docker run --rm mine:1
docker run --rm -v /root/site:/site {base} cat /site/index.html
docker run -d --name keeper {base} sleep 300 >/dev/null && docker exec keeper echo exec-ok
docker top keeper | grep -o 'sleep 300'
docker save -o /root/mine.tar mine:1 && docker rmi mine:1 >/dev/null && docker load -i /root/mine.tar | tail -1
mkdir -p /lower /upper /work /merged && echo 'Here is the lower layer.' > /lower/lower.txt
echo 'Here is the upper layer.' > /upper/upper.txt
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper,workdir=/work /merged && cat /merged/*.txt
umount /merged
""")
    for expected in ("built-ok", "served-ok", "exec-ok", "sleep 300", "Loaded image: mine:1", "Here is the lower layer.",
                     "Here is the upper layer."):
        assert expected in out, (expected, out)


def _base_image() -> str:
    return os.environ.get("BERTH_BASE_IMAGE", "ubuntu:latest")


def test_the_weaker_profile_runs_only_when_named_and_says_so(engine, tmp_path):
    trusted = BerthServer(tmp_path / "trusted", {"BERTH_ISOLATION": "trusted",
                                                 "BERTH_NETWORK_POOL": "10.216.0.0/16"}).start()
    try:
        health = trusted.health().json()
        assert health["isolation"] == "trusted" and "reach the host" in health["warning"], health
        assert "reach the host" in trusted.log_tail(200)  # said at start-up, in the log
        page = trusted.get("/lessons/docker-images", headers=NAVIGATE)
        assert page.status_code == 200 and 'class="problem isolation-warning"' in page.text
        session = trusted.create_session()
        code, out = in_machine(engine, session, "workstation", f"docker run --rm {_base_image()} echo nested-ok")
        assert code == 0 and "nested-ok" in out, out
    finally:
        trusted.stop()
        remove_instance(engine, trusted.instance_id)
