"""The chapter Berth was founded on (the "Docker Image" chapter), typed as its readers type
it, into the docker-images lesson's machines: each command works as the chapter says, or
Berth explains why not, in the lesson's text or in a task's feedback. The base image
stands for the chapter's ubuntu:latest. The self-test walks the lesson's own solutions;
this walks the chapter's text, mistakes included (`docker commit` without a name, a plain
tar called .tar.gz, a container that runs bash instead of nginx, sudo, an OverlayFS work
directory that is the mount point).

The tasks are read as the learner's page reads them: through the API, with the token."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import requests

from berth.config import PROJECT_DIR
from berth.selftest import missing, wait_until_done

from .conftest import BerthServer, in_machine

pytestmark = pytest.mark.engine

LESSON = PROJECT_DIR / "lessons" / "docker-images"


def lesson_block(containing: str) -> str:
    """The lesson's code block that contains a text, as the page's Run button would type it."""
    for path in sorted(LESSON.glob("*.md")):
        for block in re.findall(r"```sh[^\n]*\n(.*?)```", path.read_text(), re.S):
            if containing in block:
                return block
    raise AssertionError(f"the lesson has no code block with {containing!r}")


def lesson_says(*words: str) -> None:
    """The lesson's text (every Markdown file of it) explains, in these words."""
    text = " ".join(" ".join(p.read_text().split()) for p in sorted(LESSON.glob("*.md")))
    for phrase in words:
        assert phrase in text, f"the lesson does not say {phrase!r}"


@dataclass
class Reader:
    """Someone following the chapter in a session of the lesson."""

    server: BerthServer
    session: dict
    engine: object

    def types(self, machine: str, command: str, works: bool = True) -> str:
        """Run a command in a machine's shell, as typed; it must work (or fail) as said."""
        code, output = in_machine(self.engine, self.session, machine, command, timeout=300)
        assert (code == 0) is works, f"on {machine}, `{command}` exited with {code}:\n{output[-1500:]}"
        return output

    def checked(self) -> list[dict]:
        """Check now (POST .../check) and return the task list it answers with."""
        response = requests.post(f"{self.server.url}/api/sessions/{self.session['id']}/check",
                                 headers={"Authorization": f"Bearer {self.session['token']}"}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["tasks"]

    def task(self, task_id: str) -> dict:
        response = self.server.get(f"/api/sessions/{self.session['id']}", self.session["token"])
        assert response.status_code == 200, response.text
        return next(t for t in response.json()["tasks"] if t["id"] == task_id)

    def ticks(self, task_id: str) -> dict:
        state = wait_until_done(self.checked, task_id)
        assert state["status"] == "done", f"{task_id} is still pending: {missing(state)}"
        assert self.task(task_id)["status"] == "done"
        return state

    def still_pending(self, task_id: str, because: str) -> None:
        state = next(t for t in self.checked() if t["id"] == task_id)
        assert state["status"] == "pending" and because in missing(state), state


def test_the_chapter_as_written(server, lesson_session, engine):
    reader = Reader(server, lesson_session, engine)
    base = server.health().json()["base_image"]
    repository = base.split(":")[0]

    # Pulling image: `docker pull nginx` or `docker pull ubuntu:latest`
    reader.types("workstation", f"docker pull {base}")
    pulled = in_machine(engine, lesson_session, "workstation", "timeout 60 docker pull nginx")
    if pulled[0] != 0:  # no registry in reach: the mirror serves the lesson's images only
        lesson_says("`docker pull nginx`", "no such host")
    assert repository in reader.types("workstation", "docker images")
    assert repository in reader.types("workstation", "docker image ls")
    image_id = reader.types("workstation", f"docker images -q {base}").split()[0]
    reader.types("workstation", f"docker rmi {image_id}")
    reader.types("workstation", "echo y | docker image prune -a")  # it asks; the reader says y

    # Task 1: the chapter's command runs the image's own command (bash), as ubuntu's does
    reader.types("workstation", f"docker run -dit --name ubuntu001 -e VAR1=ubuntu -e VAR2=webserver "
                                f"-p 3000:3000 {base}")
    reader.ticks("run")

    # Task 2: vim, Python, Nginx; nginx on port 3000 with a page copied from the host
    failed = reader.types("workstation", "docker exec ubuntu001 sh -c 'apt-get update -q && "
                                         "apt-get install -y vim python nginx'", works=False)
    assert "Package 'python' has no installation candidate" in failed
    lesson_says("there is no package called `python`")
    reader.types("workstation", "docker exec ubuntu001 apt-get install -y vim python3 nginx")
    reader.types("workstation", "docker exec ubuntu001 sed -i 's/80 default_server/3000 default_server/' "
                                "/etc/nginx/sites-available/default")
    reader.types("workstation", "docker exec ubuntu001 nginx")
    reader.types("workstation", "echo '<h1>Hello from my own image</h1>' > ~/index.html")
    reader.types("workstation", "docker cp ~/index.html ubuntu001:/var/www/html/index.html")
    reader.ticks("customize")

    # Task 3: `docker commit [OPTIONS] CONTAINER [REPOSITORY[:TAG]]`, the name left out
    committed = reader.types("workstation", "docker commit ubuntu001")
    image_id = re.search(r"sha256:([0-9a-f]{64})", committed).group(1)[:12]
    assert "<none>" in reader.types("workstation", "docker images")
    state = reader.ticks("commit")
    tips = [f for f in state["feedback"] if f.get("tip")]
    assert tips and tips[0]["ok"] and f"docker tag {image_id} NAME:TAG" in tips[0]["message"], state

    # Task 4: `docker save -o image.tar.gz <image_id>`, then the file goes to the colleague
    reader.types("workstation", f"docker save -o image.tar.gz {image_id}")
    reader.types("workstation", "(cd ~ && timeout 300 python3 -m http.server 8000 >/dev/null 2>&1 &)")
    reader.types("colleague", "curl -sS -O --retry 10 --retry-connrefused --retry-delay 1 "
                              "http://workstation:8000/image.tar.gz")
    state = reader.ticks("save")
    assert any("a plain tar, whatever its name says" in f["message"] for f in state["feedback"]), state
    lesson_says("`-o` always writes a plain tar, whatever the file's name says")

    # Task 5: `docker load -i <path/to/image.tar.gz>`, a new container, http://localhost:3000
    assert image_id in reader.types("colleague", "docker load -i image.tar.gz")
    reader.types("colleague", f"docker run -dit -p 3000:3000 {image_id}")
    reader.still_pending("load", "a web server listening on it?")  # the command is bash: nginx is not running
    lesson_says("The image's command is `bash`")
    reader.types("colleague", "docker exec $(docker ps -lq) nginx")
    assert "Hello from my own image" in reader.types("colleague", "curl -sS --retry 10 --retry-all-errors "
                                                                  "--retry-delay 1 http://localhost:3000")
    reader.ticks("load")

    # OverlayFS by hand, as the chapter writes it, then as the lesson does
    reader.types("workstation", "sudo mkdir /lower", works=False)
    lesson_says("You are root in your machines, so leave out `sudo`")
    reader.types("workstation", "mkdir /lower && mkdir /upper && mkdir /merged")
    reader.types("workstation", "echo 'Here is the lower layer' > /lower/lower.txt && "
                                "echo 'Here is the upper layer' > /upper/upper.txt")
    # the chapter's work directory is the mount point: this kernel lets it through on the
    # machines' file system, and leaves OverlayFS's own folder behind, hidden under the view
    reader.types("workstation", "mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper,workdir=/merged "
                                "/merged && cat /merged/*.txt")
    leftover = reader.types("workstation", "umount /merged && ls -a /merged")
    assert "work" in leftover.split(), leftover
    lesson_says("never the mount point itself")
    lesson_says("a folder named `work`")
    layers = reader.types("workstation", "set -e\n" + lesson_block("mount -t overlay"))
    assert "Here is the lower layer" in layers and "Here is the upper layer" in layers
