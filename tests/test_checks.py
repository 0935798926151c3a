"""Every check kind against real containers in real learner machines: the spellings a
learner may use are all accepted, and wrong setups get the message that says what is wrong.

One prepared setup serves the whole module (apt-get and `docker save` take a while). It
installs nginx alone: the lesson's vim and python3 took another 32 s of it, and one package
shows what program_installed does as well as three (the lesson's own walks install all three)."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from berth import Berth
from berth.check_framework import Context, Finding, evaluate
from berth.checker import StoredFacts, Watch
from berth.config import Config

from .conftest import remove_instance

pytestmark = pytest.mark.engine

WORKSTATION = r"""
set -e
docker run -dit --name ubuntu001 -e VAR1=ubuntu -e VAR2=webserver -p 3000:3000 -p 3010:3010 -p 3020:3020 {base} bash
printf 'VAR1=ubuntu\nVAR2=webserver\n' > /root/vars.env
docker run -dit --name spelled-env-file --env-file /root/vars.env --publish 0.0.0.0:3001:3000/tcp {base} bash
docker run -dit --name spelled-long --env VAR1=ubuntu --env=VAR2=webserver --publish=3002:3000/tcp {base} bash
docker run -dit --name wrong -e VAR1=ubuntu -e VAR2=web -p 3003:80 {base} bash
docker run -dit --name loopback -p 127.0.0.1:3004:3000 {base} bash
docker run --name stopped {base} bash
docker create --name created {base} bash >/dev/null
docker exec ubuntu001 sh -c 'apt-get update -q && apt-get install -y -q nginx' >/dev/null 2>&1
docker exec ubuntu001 sed -i 's/80 default_server/3000 default_server/' /etc/nginx/sites-available/default
docker exec ubuntu001 sh -c 'mkdir -p /srv/other /srv/default && echo "<p>Other page</p>" > /srv/other/index.html \
  && cp /var/www/html/index.nginx-debian.html /srv/default/index.html \
  && printf "server { listen 3010; root /srv/other; }\nserver { listen 3020; root /srv/default; }\n" > /etc/nginx/conf.d/more.conf \
  && nginx'
mkdir -p /root/other && echo '<p>Other page</p>' > /root/other/index.html
(cd /root/other && timeout 900 python3 -m http.server 3030 >/dev/null 2>&1 &)
echo '<h1>Hello from my own image</h1>' > /root/index.html
docker cp /root/index.html ubuntu001:/var/www/html/index.html
docker commit ubuntu001 my-web:1.0 >/dev/null
docker container commit spelled-long small:1 >/dev/null
docker commit spelled-env-file >/dev/null
mkdir -p /root/a /root/b /root/c /root/d /root/e /root/f /root/g
docker save -o /root/a/small.tar small:1
docker save small:1 > /root/b/small.tar
docker save small:1 | gzip -1 > /root/c/small.tar.gz
docker save -o /root/d/small.tar.gz small:1
docker save -o /root/e/base.tar {base}
head -c 300000 /root/a/small.tar > /root/f/cut.tar
(cd /root/a && timeout 120 python3 -m http.server 8000 >/dev/null 2>&1 &)
(timeout 600 nc -dlk 3050 >/dev/null 2>&1 &)
"""

COLLEAGUE = r"""
set -e
curl -sS -o /root/small.tar --retry 10 --retry-connrefused --retry-delay 1 http://workstation:8000/small.tar
docker load -i /root/small.tar >/dev/null
docker run -dit --name c1 -p 3000:3000 small:1 bash >/dev/null
docker create --name c2 small:1 bash >/dev/null
"""


@dataclass
class Lab:
    berth: Berth
    session_id: str
    base: str

    cache: dict = field(default_factory=dict)  # what a session's checks remember

    def context(self) -> Context:
        machines = {m.name: m for m in self.berth.backend.machines(self.session_id)}
        # Facts come from the progress store each time, as after a restart of Berth.
        return Context(machines.__getitem__, self.berth.backend.engine, self.berth.backend.exec, self.cache,
                       facts=StoredFacts(self.berth.store, self.session_id))

    def check(self, kind: str, **params) -> list[Finding]:
        ctx = self.context()
        try:
            return evaluate(ctx, kind, params)
        finally:
            ctx.close()

    def run(self, machine: str, script: str) -> str:
        found = self.berth.sessions.machine(self.session_id, machine)
        result = self.berth.backend.exec(found, ["bash", "-c", script], timeout=600)
        assert result.exit_code == 0, result.text
        return result.text


@contextmanager
def open_lab(engine, folder, lesson: str):
    """A Berth of this process with one session of `lesson`, its machines ready: a Lab for
    a module's checks; everything it made is removed at the end."""
    config = Config.from_env({**os.environ, "BERTH_DATA_DIR": str(folder)})
    berth = Berth(config)
    try:
        berth.prepare()
        record, _ = berth.sessions.create(lesson, wait=True)
        yield Lab(berth, record.id, config.base_image)
    finally:
        berth.stop()
        remove_instance(engine, berth.instance_id)
        berth.store.close()


@pytest.fixture(scope="module")
def lab(engine, tmp_path_factory):
    with open_lab(engine, tmp_path_factory.mktemp("checks"), "docker-images") as lab:
        lab.run("workstation", WORKSTATION.replace("{base}", lab.base))
        lab.run("colleague", COLLEAGUE)
        yield lab


def said(findings: list[Finding]) -> list[tuple[bool, str]]:
    return [(f.ok, f.message) for f in findings]


def expect(findings: list[Finding], *wanted: tuple[bool, str]) -> None:
    """Each wanted (ok, words) matches the finding at its place, in order."""
    assert len(findings) == len(wanted), said(findings)
    for finding, (ok, words) in zip(findings, wanted, strict=True):
        assert finding.ok is ok and words in finding.message, said(findings)


# --- container

def test_container_configured_as_asked(lab):
    expect(lab.check("container", machine="workstation", name="ubuntu001", image=lab.base,
                     env={"VAR1": "ubuntu", "VAR2": "webserver"}, publish=[3000]),
           (True, f"ubuntu001 was created from {lab.base}."), (True, "ubuntu001 is running."),
           (True, "VAR1 is ubuntu."), (True, "VAR2 is webserver."), (True, "Port 3000 is published."))


@pytest.mark.parametrize("name, port", [("spelled-env-file", "3001:3000"), ("spelled-long", "3002:3000")])
def test_every_spelling_of_env_and_publish(lab, name, port):
    expect(lab.check("container", machine="workstation", name=name, env={"VAR1": "ubuntu", "VAR2": "webserver"},
                     publish=[port]),
           (True, f"{name} is running."), (True, "VAR1 is ubuntu."), (True, "VAR2 is webserver."),
           (True, f"Port {port.split(':')[0]} is published to the container's port 3000."))


def test_wrong_env_and_wrong_port(lab):
    expect(lab.check("container", machine="workstation", name="wrong", env={"VAR1": "ubuntu", "VAR2": "webserver"},
                     publish=["3003:3000", 3000]),
           (True, "wrong is running."), (True, "VAR1 is ubuntu."),
           (False, "VAR2 is 'web' in wrong, not 'webserver'."),
           (False, "Port 3003 leads to the container's port 80, not 3000"),
           (False, "Port 3000 is not published"))


def test_missing_env_and_port_on_loopback_only(lab):
    expect(lab.check("container", machine="workstation", name="loopback", env={"VAR1": "ubuntu"},
                     publish=["3004:3000"]),
           (True, "loopback is running."), (False, "VAR1 is not set in loopback (docker run -e VAR1=ubuntu"),
           (False, "Port 3004 is published only on 127.0.0.1"))


def test_stopped_created_and_missing_containers(lab):
    expect(lab.check("container", machine="workstation", name="stopped"),
           (False, "stopped has stopped (exit code 0). A shell without input ends at once: run it with -dit"))
    expect(lab.check("container", machine="workstation", name="created"),
           (False, "created was created but never started: docker start created."))
    expect(lab.check("container", machine="workstation", name="ghost"),
           (False, "There is no container named ghost on workstation yet. (There is: "))


def test_container_from_another_image(lab):
    expect(lab.check("container", machine="workstation", name="ubuntu001", image="small:1", running=False),
           (False, f"ubuntu001 was created from {lab.base}, not small:1"))


def test_any_container_of_an_image_in_another_machine(lab):
    ref = {"machine": "workstation", "committed_from": "spelled-long"}
    expect(lab.check("container", machine="colleague", image=ref, publish=[3000]),
           (True, "c1 was created from small:1."), (True, "c1 is running."), (True, "Port 3000 is published."))
    expect(lab.check("container", machine="colleague", image={"machine": "workstation", "name": "my-web:1.0"}),
           (False, "No container on colleague was created from my-web:1.0 yet."))


# --- programs and files

def test_programs_installed_or_not(lab):
    expect(lab.check("program_installed", machine="workstation", container="ubuntu001",
                     programs=["nginx", "sed"]),
           (True, "nginx is installed in ubuntu001."), (True, "sed is installed in ubuntu001."))
    expect(lab.check("program_installed", machine="workstation", container="spelled-long", programs=["vim", "sh"]),
           (False, "vim is not installed in spelled-long yet."), (True, "sh is installed in spelled-long."))
    expect(lab.check("program_installed", machine="workstation", container="stopped", programs=["vim"]),
           (False, "stopped is not running"))


def test_files_in_the_machine_and_in_a_container(lab):
    expect(lab.check("file", machine="workstation", path="/root/index.html", contains="Hello"),
           (True, "/root/index.html exists on workstation."), (True, "/root/index.html contains 'Hello'."))
    expect(lab.check("file", machine="workstation", path="/root/index.html", contains="Goodbye"),
           (True, "exists"), (False, "/root/index.html on workstation does not contain 'Goodbye'."))
    expect(lab.check("file", machine="workstation", path="/root/none.html"),
           (False, "There is no file /root/none.html on workstation yet."))
    expect(lab.check("file", machine="workstation", container="ubuntu001", path="/var/www/html/index.html",
                     contains="my own image"),
           (True, "/var/www/html/index.html exists in ubuntu001 on workstation."), (True, "contains"))
    expect(lab.check("file", machine="workstation", container="ubuntu001", path="/var/www/html"),
           (False, "There is no file /var/www/html in ubuntu001 on workstation yet."))


# --- web pages

PAGE = {"machine": "workstation", "path": "/root/index.html"}


def test_page_from_sites_available(lab):
    expect(lab.check("http", machine="workstation", port=3000, server="nginx", same_as=PAGE),
           (True, "nginx answers on port 3000 of workstation."),
           (True, "Port 3000 of workstation serves your page (/root/index.html from workstation)."))


def test_page_from_conf_d_that_is_not_yours(lab):
    expect(lab.check("http", machine="workstation", port=3010, same_as=PAGE, contains="Other page"),
           (False, "Port 3010 of workstation serves a page, but not the one in /root/index.html on workstation."),
           (True, "The page on port 3010 of workstation says 'Other page'."))


def test_default_nginx_page(lab):
    expect(lab.check("http", machine="workstation", port=3020, same_as=PAGE),
           (False, "Port 3020 of workstation serves nginx's default page, not your /root/index.html."))
    expect(lab.check("http", machine="workstation", port=3020, not_default=True),
           (False, "serves nginx's default page, not your own page."))
    expect(lab.check("http", machine="workstation", port=3010, not_default=True),
           (True, "Port 3010 of workstation serves your own page."))


def test_page_from_another_server_and_no_page(lab):
    expect(lab.check("http", machine="workstation", port=3030, server="nginx"),
           (False, "Port 3030 of workstation answers, but not from nginx (Server: SimpleHTTP"))
    expect(lab.check("http", machine="workstation", port=3999),
           (False, "Nothing answers on port 3999 of workstation yet"))
    expect(lab.check("http", machine="workstation", port=3003),
           (False, "Nothing answers on port 3003 of workstation yet"))


def test_page_of_the_colleague_compared_with_the_workstation_file(lab):
    expect(lab.check("http", machine="colleague", port=3000, same_as=PAGE),
           (False, "Nothing answers on port 3000 of colleague yet"))


# --- images and archives

def test_committed_images(lab):
    expect(lab.check("image", machine="workstation", committed_from="ubuntu001"),
           (True, "my-web:1.0 was committed from ubuntu001 and is listed by docker images."))
    expect(lab.check("image", machine="workstation", committed_from="spelled-long"),
           (True, "small:1 was committed from spelled-long"))
    unnamed = lab.check("image", machine="workstation", committed_from="spelled-env-file")
    expect(unnamed, (True, "An image was committed from spelled-env-file"), (True, "It has no name"))
    assert [f.tip for f in unnamed] == [False, True]  # advice to name it: it holds nothing back
    assert unnamed[1].as_json()["tip"] is True and "tip" not in unnamed[0].as_json()
    expect(lab.check("image", machine="workstation", committed_from="spelled-env-file", tagged=True),
           (True, "An image was committed from spelled-env-file"), (False, "It has no name"))
    expect(lab.check("image", machine="workstation", committed_from="wrong"),
           (False, "No image has been committed from wrong yet (docker commit wrong NAME:TAG)."))
    expect(lab.check("image", machine="workstation", committed_from="ghost"),
           (False, "There is no container named ghost on workstation to commit."))


def test_a_committed_image_is_still_known_when_its_container_is_gone(lab):
    # each check reads what it learnt from the store: this holds across a restart too
    lab.run("workstation", f"docker run -d --name short-lived {lab.base} true >/dev/null && docker commit short-lived gone:1")
    expect(lab.check("image", machine="workstation", committed_from="short-lived"),
           (True, "gone:1 was committed from short-lived"))
    lab.run("workstation", "docker rm short-lived")
    expect(lab.check("image", machine="workstation", committed_from="short-lived"),
           (True, "gone:1 was committed from short-lived"))
    expect(lab.check("saved_archive", machine="workstation", image={"committed_from": "short-lived"}, places=["/root/g"]),
           (False, "There is no docker save archive of gone:1 on workstation yet"))


def test_images_by_name(lab):
    expect(lab.check("image", machine="workstation", name="my-web:1.0"),
           (True, "my-web:1.0 is listed by docker images on workstation."))
    expect(lab.check("image", machine="workstation", name="nope:1"), (False, "There is no image nope:1 on workstation."))


SMALL = {"committed_from": "spelled-long"}


@pytest.mark.parametrize("place, ok, words", [
    ("/root/a", True, "/root/a/small.tar on workstation is a docker save archive of small:1."),  # save -o
    ("/root/b", True, "/root/b/small.tar on workstation is a docker save archive of small:1."),  # save >
    ("/root/c", True, "/root/c/small.tar.gz on workstation is a docker save archive of small:1 (compressed)."),
    ("/root/d", True, "/root/d/small.tar.gz on workstation is a docker save archive of small:1 "  # -o: plain tar
                      "(a plain tar, whatever its name says: docker save does not compress)."),
    ("/root/e", False, "/root/e/base.tar on workstation is a docker save archive, but of {base}, not small:1."),
    ("/root/f", False, "/root/f/cut.tar on workstation is not a whole archive (yet?)"),
    ("/root/g", False, "There is no docker save archive of small:1 on workstation yet (looked in /root/g)."),
])
def test_saved_archives(lab, place, ok, words):
    expect(lab.check("saved_archive", machine="workstation", image=SMALL, places=[place]),
           (ok, words.replace("{base}", lab.base)))


def test_archive_copied_to_the_colleague_and_loaded(lab):
    ref = {"machine": "workstation", **SMALL}
    expect(lab.check("saved_archive", machine="colleague", image=ref),
           (True, "/root/small.tar on colleague is a docker save archive of small:1."))
    expect(lab.check("image_loaded", machine="colleague", image=ref),
           (True, "small:1 is on colleague: the very image from workstation."))
    expect(lab.check("image_loaded", machine="colleague", image={"machine": "workstation", "committed_from": "ubuntu001"}),
           (False, "my-web:1.0 is not on colleague yet (docker load -i FILE)."))
    expect(lab.check("saved_archive", machine="colleague", image={"machine": "workstation", "committed_from": "wrong"}),
           (False, "No image has been committed from wrong on workstation yet."))


# --- failures become messages

def test_a_check_that_hangs_is_bounded_and_said(lab):
    ctx = lab.context()
    started = time.monotonic()
    findings = lab.berth.runner.run(ctx, [("http", {"machine": "workstation", "port": 3050})], timeout=1)
    assert time.monotonic() - started < 2
    expect(findings, (False, "Checking this took longer than 1 s (http); Berth tries again."))


def test_mistakes_and_missing_machines_are_said(lab):
    expect(lab.check("http", machine="nowhere", port=80), (False, "This session has no machine nowhere."))
    expect(lab.check("http", machine="workstation", port="eighty"), (False, "The lesson's check 'http' is wrong"))
    expect(lab.check("nope"), (False, "Berth has no check 'nope'"))


# --- the checker tells its own engine events from the learner's

def test_events_caused_by_checks_are_ignored(lab):
    workstation = lab.berth.sessions.machine(lab.session_id, "workstation")
    stream = lab.berth.backend.engine(workstation).events(decode=True)
    events: list[dict] = []
    reader = threading.Thread(target=lambda: events.extend(stream), daemon=True)
    reader.start()
    time.sleep(0.3)
    ctx = lab.context()
    evaluate(ctx, "program_installed", {"machine": "workstation", "container": "ubuntu001", "programs": ["vim"]})
    evaluate(ctx, "file", {"machine": "workstation", "container": "ubuntu001", "path": "/etc/hostname"})
    ours = len(ctx.own_execs)
    time.sleep(0.5)
    checks_only = len(events)
    lab.run("workstation", "docker exec ubuntu001 true")  # what a learner does
    time.sleep(0.5)
    stream.close()
    reader.join(5)
    watch = Watch(lab.session_id, own_execs=ctx.own_execs)
    checker = lab.berth.checker
    assert ours == 1 and checks_only >= 4, events
    assert all(checker.caused_by_checks(watch, e) for e in events[:checks_only]), events[:checks_only]
    learner = events[checks_only:]
    assert [e["Action"].split(":")[0] for e in learner] == ["exec_create", "exec_start", "exec_die"], learner
    assert not any(checker.caused_by_checks(watch, e) for e in learner), learner

