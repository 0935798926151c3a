"""The shared package cache (berth/packages.py, packages/, machine/berth-packages): a
learner's unchanged `apt-get install` in a nested container goes through it, a second
machine's is served from it, it works around a cache that is down, and the attacks a
learner (root in their machine) can send the cache are refused.

Debian's mirror is the one outside address contacted (the lesson's own traffic); the
attack targets are servers these tests start on networks they make."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import socket
import uuid

import docker
import pytest

from berth.config import PROJECT_DIR

from .conftest import BerthServer, in_machine, machine_container, remove_instance, wait_until
from .test_isolation import listener

pytestmark = pytest.mark.engine

PACKAGE = "tree"  # small, and not in the base image
DEB = "debrep/pool/main/t/tree/"
NESTED_INSTALL = (f"docker run --rm debian:bookworm sh -c "
                  f"'apt-get update -q && apt-get install -y -q {PACKAGE} && tree --version'")


@pytest.fixture(scope="module")
def berth(engine, tmp_path_factory) -> BerthServer:
    """A Berth of this module's own: the last test stops it."""
    server = BerthServer(tmp_path_factory.mktemp("berth-packages")).start()
    yield server
    server.stop()
    remove_instance(engine, server.instance_id)


@pytest.fixture(scope="module")
def session(berth) -> dict:
    session = berth.create_session("docker-images")
    yield session
    if berth.process:
        berth.delete_session(session)


def cache(engine, berth):
    return engine.containers.get(f"berth--packages-{berth.instance_id}")


def cache_log(engine, berth) -> list[list[str]]:
    """acng's transfer log: time|I (fetched from Debian) or O (sent to a client)|bytes|client|path."""
    result = cache(engine, berth).exec_run(["cat", "/var/log/apt-cacher-ng/apt-cacher.log"])
    return [line.split("|") for line in result.output.decode().splitlines() if line.count("|") >= 4]


def address(engine, session: dict, machine: str) -> str:
    networks = machine_container(engine, session, machine).attrs["NetworkSettings"]["Networks"]
    return networks[f"berth-{session['id']}"]["IPAddress"]


def test_berth_reports_its_package_cache(berth):
    assert berth.health().json()["package_cache"] == "ready"


def test_a_nested_apt_install_goes_through_the_cache_and_a_second_machine_gets_a_hit(engine, berth, session):
    workstation, colleague = address(engine, session, "workstation"), address(engine, session, "colleague")
    code, out = in_machine(engine, session, "workstation", NESTED_INSTALL, timeout=300)
    assert code == 0, out
    fetched = [row for row in cache_log(engine, berth) if DEB in row[4]]
    assert any(row[1] == "I" for row in fetched), fetched  # fetched from Debian once
    assert any(row[1] == "O" and row[3] == workstation for row in fetched), fetched

    code, out = in_machine(engine, session, "colleague", NESTED_INSTALL, timeout=300)
    assert code == 0, out
    rows = [row for row in cache_log(engine, berth) if DEB in row[4]]
    assert any(row[1] == "O" and row[3] == colleague for row in rows), rows
    assert len([row for row in rows if row[1] == "I"]) == len([row for row in fetched if row[1] == "I"]), \
        f"the second machine's {PACKAGE} was fetched from Debian again: {rows}"


@pytest.fixture
def target(engine, berth):
    """An HTTP server on a network these tests make, which the cache is connected to: the
    cache could reach it, so only its own refusal keeps the learner from it."""
    name = f"berth-test-target-{uuid.uuid4().hex[:8]}"
    network = engine.networks.create(name, driver="bridge", labels={"berth.test": "packages"})
    server = engine.containers.run(
        berth.env.get("BERTH_MACHINE_IMAGE", "berth-machine:latest"),  # it has python3 and curl
        ["python3", "-m", "http.server", "80"], entrypoint=[], name=name, detach=True,
        network=name, labels={"berth.test": "packages"})
    try:
        network.connect(cache(engine, berth))
        server.reload()
        yield server, server.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
    finally:
        try:
            network.disconnect(cache(engine, berth), force=True)
        except docker.errors.APIError:
            pass
        server.remove(force=True)
        network.remove()


def test_the_cache_fetches_nothing_but_debian(engine, berth, session, target):
    server, ip = target
    # the target answers whoever reaches it (here: a container on its network)
    probe = engine.containers.run(
        server.image.id, ["sh", "-c", f"for i in $(seq 100); do curl -sf -o /dev/null http://{ip}/ && echo answered "
                          "&& break; sleep 0.2; done"],
        entrypoint=[], remove=True, network=server.attrs["HostConfig"]["NetworkMode"])
    assert b"answered" in probe, probe
    before = server.logs().decode()
    attacks = {
        "as a mirror path": f"http://berth-packages:3142/{ip}/",
        "as a proxy": f"-x http://berth-packages:3142 http://{ip}/",
        "as a proxy, Debian's path": f"-x http://berth-packages:3142 http://{ip}/debian/dists/bookworm/Release",
        "as a proxy, another port": f"-x http://berth-packages:3142 http://{ip}:8080/",
        "by Host header": f"-H 'Host: {ip}' http://berth-packages:3142/x",
        "the report page": "http://berth-packages:3142/acng-report.html",
        "the maintenance page": "http://berth-packages:3142/acng-report.html?doExpire=Start",
        "the documentation folder": "http://berth-packages:3142/acng-doc/",
        "its own loopback": "-x http://berth-packages:3142 http://127.0.0.1:3142/acng-report.html",
    }
    for what, request in attacks.items():
        out = in_machine(engine, session, "workstation",
                         f"echo ATTACK-RAN; curl -s -D - -o /dev/null --max-time 10 {request}")[1]
        assert "ATTACK-RAN" in out, out
        assert " 403 " in out.splitlines()[1] and "Apt-Cacher NG" in out, f"{what}: {out}"
    # its front page says what it is, and nothing more
    out = in_machine(engine, session, "workstation", f"curl -s -i --max-time 10 -H 'Host: {ip}' http://berth-packages:3142/")[1]
    assert out.startswith("HTTP/1.1 406") and "Berth's package cache" in out and ip not in out, out
    # a tunnel (CONNECT) to the target is refused too
    out = in_machine(engine, session, "workstation",
                     f"echo ATTACK-RAN; curl -sv -p -x http://berth-packages:3142 --max-time 10 http://{ip}:80/ 2>&1")[1]
    assert "ATTACK-RAN" in out and "200 Connection established" not in out, out
    assert "< HTTP/1.1 403" in out or "CONNECT tunnel failed" in out, out
    assert server.logs().decode() == before, "a request reached the target through the cache"
    # and Debian's archive is served all the same
    code, out = in_machine(engine, session, "workstation", "curl -s -o /dev/null -w '%{http_code}' "
                           "http://berth-packages:3142/debian/dists/bookworm/Release")
    assert out == "200", out


def test_the_cache_does_not_route_between_sessions(engine, berth, session):
    other = berth.create_session("docker-images")
    try:
        victim = address(engine, other, "workstation")
        in_machine(engine, other, "workstation", "nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
        code, out = wait_until(lambda: (r := in_machine(engine, other, "colleague",
                               f"curl -s -o /dev/null -w '%{{http_code}}' http://{victim}:8000/"))[1] == "200" and r,
                               30, lambda: "the victim's server does not answer in its own session")
        assert cache(engine, berth).exec_run(["cat", "/proc/sys/net/ipv4/ip_forward"]).output.strip() == b"0"
        cache_here = cache(engine, berth).attrs["NetworkSettings"]["Networks"][f"berth-{session['id']}"]["IPAddress"]
        code, out = in_machine(engine, session, "workstation",
                               f"echo ATTACK-RAN; ip route add {victim}/32 via {cache_here} && ip route get {victim}; "
                               f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://{victim}:8000/; "
                               f"echo curl-exit=$?")
        assert "ATTACK-RAN" in out and f"via {cache_here}" in out, out
        assert "curl-exit=0" not in out, out
    finally:
        berth.delete_session(other)


def test_the_machines_firewall_holds_for_the_cache_too(engine, berth):
    """Should acng ever be made to connect somewhere, its own network is in the sessions'
    pool: the host's services stay shut to it as to a machine."""
    container = cache(engine, berth)
    gateway = container.attrs["NetworkSettings"]["Networks"][container.name]["Gateway"]
    with listener() as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as control:
            assert control.recv(100) == b"SECRET-FROM-HOST\n"  # it answers, from the host
        result = container.exec_run(["timeout", "10", "bash", "-c",
                                     f"echo ATTACK-RAN; exec 3<>/dev/tcp/{gateway}/{port} && head -c 100 <&3"])
    out = result.output.decode()
    assert "ATTACK-RAN" in out and "SECRET-FROM-HOST" not in out, out
    assert "Connection refused" in out, out


def test_apt_still_works_when_the_cache_is_down(engine, berth, session):
    container = cache(engine, berth)
    container.stop(timeout=2)
    try:
        code, out = in_machine(engine, session, "colleague",
                               "docker run --rm debian:bookworm sh -c 'apt-get update -q && "
                               "apt-get install -y -q --no-install-recommends sl && ls /usr/games/sl'", timeout=300)
        assert code == 0, out
        log = in_machine(engine, session, "colleague", "cat /var/log/berth-packages.log")[1]
        assert "does not answer" in log, log
    finally:
        container.start()


def relay_module():
    """machine/berth-packages, loaded as a module (it is a script in the machine image)."""
    path = str(PROJECT_DIR / "machine" / "berth-packages")
    loader = importlib.machinery.SourceFileLoader("berth_packages_relay", path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_relay_sends_only_debians_archive_to_the_cache():
    relay = relay_module()
    assert relay.for_the_cache(b"GET /debian/dists/bookworm/InRelease HTTP/1.1\r\nHost: deb.debian.org\r\n\r\n")
    assert relay.for_the_cache(b"GET /debian-security/pool/x.deb HTTP/1.1\r\nhost: security.debian.org:80\r\n\r\n")
    assert not relay.for_the_cache(b"GET /debian/x HTTP/1.1\r\nHost: example.org\r\n\r\n")  # another site on the CDN
    assert not relay.for_the_cache(b"GET /other/x HTTP/1.1\r\nHost: deb.debian.org\r\n\r\n")
    assert not relay.for_the_cache(b"POST /debian/x HTTP/1.1\r\nHost: deb.debian.org\r\n\r\n")
    assert not relay.for_the_cache(b"")  # a client that waits for the server to speak first


def test_the_cache_goes_when_berth_stops(engine, berth):
    instance = berth.instance_id
    assert cache(engine, berth).status == "running"
    berth.stop()
    left = [c.name for c in engine.containers.list(all=True, filters={"label": f"berth.instance={instance}"})]
    left += [n.name for n in engine.networks.list(filters={"label": f"berth.instance={instance}"})]
    assert not left, left
