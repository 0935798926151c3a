"""The check kinds of the image-basics lesson against a real learner machine that pulled
its images through Berth's mirror: an image built on another (sharing its layers), an
image or a container that must be gone, and pruning. Every spelling of a name passes, and
each wrong state says what holds it (a container using the image, stopped or running; an
image with another name; images no container uses)."""

from __future__ import annotations

import pytest

from .test_checks import expect, open_lab

pytestmark = pytest.mark.engine

HELLO = "berthlab/hello:1"

MACHINE = r"""
set -e
docker pull {base} >/dev/null
docker image pull docker.io/{hello} >/dev/null
docker run --name hello1 {hello} > /root/hello.out
docker run -dit --name keeper {base} >/dev/null
tar cf /root/empty.tar --files-from /dev/null
docker import /root/empty.tar other >/dev/null
docker tag {hello} hello-copy:2
"""


@pytest.fixture(scope="module")
def lab(engine, tmp_path_factory):
    with open_lab(engine, tmp_path_factory.mktemp("basics-checks"), "image-basics") as lab:
        lab.run("workstation", MACHINE.replace("{base}", lab.base).replace("{hello}", HELLO))
        yield lab


def test_pulled_through_the_mirror_and_run(lab):
    assert "Hello from berthlab/hello:1." in lab.run("workstation", "cat /root/hello.out")
    again = lab.run("workstation", f"docker pull {HELLO}")
    assert "Image is up to date for berthlab/hello:1" in again, again


@pytest.mark.parametrize("name", [HELLO, f"docker.io/{HELLO}", "berthlab/hello"])
def test_an_image_by_any_spelling(lab, name):
    expect(lab.check("image", machine="workstation", name=name), (True, "is listed by docker images on workstation."))


def test_built_on_its_base(lab):
    expect(lab.check("image", machine="workstation", name=HELLO, built_on=lab.base),
           (True, "listed"),
           (True, f"berthlab/hello:1 is built on {lab.base}: it shares its layer, stored once, and adds 1 of its own "
                  "(RootFS.Layers in docker image inspect)."))
    expect(lab.check("image", machine="workstation", name=lab.base, built_on="other"),
           (True, "listed"), (False, f"{lab.base} does not start with other's layers: it is not built on it."))
    expect(lab.check("image", machine="workstation", name=HELLO, built_on="nope:1"),
           (True, "listed"), (False, "There is no image nope:1 on workstation to compare berthlab/hello:1's layers "
                                     "with (docker pull nope:1)."))


def test_an_image_that_must_be_gone(lab):
    expect(lab.check("image", machine="workstation", name="nope:1", absent=True),
           (True, "There is no image nope:1 on workstation any more."))
    expect(lab.check("image", machine="workstation", name=lab.base, absent=True),
           (False, f"{lab.base} is still there: a container (keeper) uses it, running, and docker refuses to remove "
                   f"an image a running container uses (docker rmi -f removes only its name); stop and remove the "
                   f"container first (docker rm -f keeper), then docker rmi {lab.base}."))
    expect(lab.check("image", machine="workstation", name="other", absent=True),
           (False, "other is still there: docker rmi other (or docker image rm other) removes it."))
    expect(lab.check("image", machine="workstation", name="hello-copy:2", absent=True),
           (False, "hello-copy:2 is still there: docker rmi hello-copy:2 removes this name (the image keeps its "
                   "other name, berthlab/hello:1)."))


def test_a_container_that_must_be_gone(lab):
    expect(lab.check("container", machine="workstation", name="nope", absent=True),
           (True, "There is no container nope on workstation: it is removed."))
    expect(lab.check("container", machine="workstation", name="hello1", absent=True),
           (False, "hello1 is still there (exited): a stopped container stays until it is removed, and keeps its "
                   "image; docker rm hello1."))
    expect(lab.check("container", machine="workstation", name="keeper", absent=True),
           (False, "keeper is still running: docker rm -f keeper stops and removes it"))


def test_removed_refused_forced_and_pruned(lab):
    """The lesson's path with its wrong turns: docker refuses while hello1 uses the image;
    -f overrides a stopped container, not a running one; prune -a leaves what containers use."""
    untagged = lab.run("workstation", "docker rmi hello-copy:2")  # another name: only the name goes
    assert "Untagged: hello-copy:2" in untagged and "Deleted" not in untagged, untagged
    refused = lab.run("workstation", f"docker image rm {HELLO} 2>&1 || true")
    assert "container" in refused and "is using its referenced image" in refused, refused
    expect(lab.check("image", machine="workstation", name=HELLO, absent=True),
           (False, f"{HELLO} is still there: a container (hello1) uses it, and docker refuses to remove an image a "
                   f"container uses, even a stopped one; remove the container first (docker rm hello1), "
                   f"or docker rmi -f {HELLO}."))
    expect(lab.check("images_pruned", machine="workstation"),
           (False, "other:latest is on workstation and no container uses it: docker image prune -a removes every such image"))
    forced = lab.run("workstation", f"docker rmi -f {lab.base}")  # keeper runs: the name goes, the image stays
    assert "Untagged: " in forced and "Deleted" not in forced, forced
    lab.run("workstation", f"docker rmi -f {HELLO}")  # hello1 has stopped: -f deletes it anyway
    expect(lab.check("image", machine="workstation", name=HELLO, absent=True),
           (True, f"There is no image {HELLO} on workstation any more."))
    lab.run("workstation", "docker image prune -f")  # dangling ones only: other has a name
    expect(lab.check("images_pruned", machine="workstation"), (False, "other:latest is on workstation and no container"))
    lab.run("workstation", "docker image prune -a -f")
    expect(lab.check("images_pruned", machine="workstation"),
           (True, "No image on workstation is left unused: berthlab/hello:1, other:latest are gone; 1 kept, used by "
                  "containers."))
    lab.run("workstation", "docker rm -f hello1 keeper && docker image prune -a -f")
    expect(lab.check("images_pruned", machine="workstation"), (True, "No image on workstation is left unused: "))
    assert lab.run("workstation", "docker images -q").strip() == ""
