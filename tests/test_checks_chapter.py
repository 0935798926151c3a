"""The check kinds of the export/import and image-layers lessons against real containers
and real OverlayFS mounts in a learner machine: every correct spelling passes, and each
wrong setup gets the message that says what is wrong (a docker save archive where an
export is asked, an image tagged rather than imported, the work directory inside the
mount point, a file deleted from the lower folder itself)."""

from __future__ import annotations

import pytest

from .test_checks import expect, open_lab

pytestmark = pytest.mark.engine

EXPORTS = r"""
set -e
docker run -dit --name box -e GREETING=hello {base} >/dev/null
docker exec box sh -c 'echo "Made in box" > /hello.txt'
mkdir -p /root/x/plain /root/x/piped /root/x/gz /root/x/save /root/x/early /root/x/none
docker export -o /root/x/plain/box.tar box
docker container export box > /root/x/piped/box.tar
docker export box | gzip -1 > /root/x/gz/box.tar.gz
docker commit box box-image >/dev/null
docker save -o /root/x/save/box-image.tar box-image
docker create --name early {base} >/dev/null
docker export -o /root/x/early/early.tar early
docker import /root/x/plain/box.tar flat >/dev/null
docker image import --change 'CMD bash' --change 'ENV GREETING=hello' /root/x/plain/box.tar flat-shell:2 >/dev/null
docker import --change 'CMD ["sh"]' /root/x/plain/box.tar flat-sh >/dev/null
docker export box | docker import - piped >/dev/null
docker tag {base} fake-flat
docker run -dit --name from-flat flat-shell:2 >/dev/null
"""

LAYERS = r"""
set -e
for d in chapter right gone ro; do
  mkdir -p /$d/lower /$d/upper /$d/merged /$d/work
  echo 'Here is the lower layer.' > /$d/lower/lower.txt
  echo 'Here is the upper layer.' > /$d/upper/upper.txt
done
mount -t overlay overlay -o lowerdir=/chapter/lower,upperdir=/chapter/upper,workdir=/chapter/merged /chapter/merged
mount -t overlay overlay -o lowerdir=/right/lower,upperdir=/right/upper,workdir=/right/work /right/merged
mount -t overlay overlay -o lowerdir=/gone/lower,upperdir=/gone/upper,workdir=/gone/work /gone/merged
mount -t overlay overlay -o lowerdir=/ro/upper:/ro/lower /ro/merged
mkdir -p /tmpfs && mount -t tmpfs tmpfs /tmpfs
mkdir -p /empty
"""


@pytest.fixture(scope="module")
def lab(engine, tmp_path_factory):
    with open_lab(engine, tmp_path_factory.mktemp("chapter-checks"), "export-import") as lab:
        lab.run("workstation", EXPORTS.replace("{base}", lab.base))
        lab.run("workstation", LAYERS)
        yield lab


# --- docker export and docker save archives

@pytest.mark.parametrize("place, ok, words", [
    ("/root/x/plain", True, "/root/x/plain/box.tar on workstation is a container's file system, as docker export "
                            "writes it, holding /hello.txt."),
    ("/root/x/piped", True, "/root/x/piped/box.tar on workstation is a container's file system"),
    ("/root/x/gz", True, "holding /hello.txt (compressed)."),
    ("/root/x/save", False, "/root/x/save/box-image.tar on workstation is a docker save archive (it has "
                            "manifest.json): an image's layers and settings, not a container's file system "
                            "(docker export -o FILE box)."),
    ("/root/x/early", False, "/root/x/early/early.tar on workstation is a file system, but it lacks /hello.txt: "
                             "export box again once /hello.txt is in it"),
    ("/root/x/none", False, "There is no export of box's file system on workstation yet"),
])
def test_exported_archives(lab, place, ok, words):
    expect(lab.check("exported_archive", machine="workstation", container="box", holds=["/hello.txt"],
                     places=[place]), (ok, words))


def test_an_export_given_where_a_save_archive_is_asked(lab):
    expect(lab.check("saved_archive", machine="workstation", image={"committed_from": "box"}, places=["/root/x/plain"]),
           (False, "/root/x/plain/box.tar on workstation is a container's file system (docker export), not a docker "
                   "save archive: it has no manifest.json"))
    expect(lab.check("saved_archive", machine="workstation", image={"committed_from": "box"}, places=["/root/x/save"]),
           (True, "/root/x/save/box-image.tar on workstation is a docker save archive of box-image:latest."))


# --- images made by docker import

def test_imported_images_and_where_from(lab):
    expect(lab.check("image", machine="workstation", name="flat", imported=True),
           (True, "flat is listed by docker images"),
           (True, "flat was made by docker import, from /root/x/plain/box.tar: one layer, and docker history says "
                  "'Imported from -'."))
    expect(lab.check("image", machine="workstation", name="piped:latest", imported=True),
           (True, "piped:latest is listed"), (True, "piped:latest was made by docker import"))


def test_images_not_made_by_import(lab):
    expect(lab.check("image", machine="workstation", name="box-image", imported=True),
           (True, "listed"), (False, "box-image was made from a container (docker commit, or a step of a build), "
                                     "not imported (docker import FILE box-image)."))
    expect(lab.check("image", machine="workstation", name="fake-flat", imported=True),
           (True, "listed"), (False, f"fake-flat is another name of {lab.base} (docker tag), not an image imported"))


def test_command_and_environment_of_an_imported_image(lab):
    # no tag asked: any tag of the name counts; the shell form of CMD counts
    expect(lab.check("image", machine="workstation", name="flat-shell", imported=True, cmd=["bash"],
                     env={"GREETING": "hello"}),
           (True, "flat-shell:2 is listed by docker images on workstation."), (True, "made by docker import"),
           (True, "flat-shell:2's CMD is [\"/bin/sh\", \"-c\", \"bash\"]."), (True, "flat-shell:2 sets GREETING=hello."))
    expect(lab.check("image", machine="workstation", name="flat", cmd=["bash"], env={"GREETING": "hello"}),
           (True, "listed"), (False, "flat has no CMD (docker import keeps none: give it with --change 'CMD [\"bash\"]')."),
           (False, "flat does not set GREETING (--change 'ENV GREETING=hello')."))
    expect(lab.check("image", machine="workstation", name="flat-sh", cmd=["bash"]),
           (True, "listed"), (False, "flat-sh's CMD is [\"sh\"], not [\"bash\"]"))
    expect(lab.check("image", machine="workstation", name="flat-shell:3"),
           (False, "There is no image flat-shell:3 on workstation."))
    expect(lab.check("container", machine="workstation", name="from-flat", image="flat-shell"),
           (True, "from-flat was created from flat-shell:2."), (True, "from-flat is running."))


def test_imported_checks_need_a_name(lab):
    expect(lab.check("image", machine="workstation", committed_from="box", imported=True),
           (False, "The lesson's check 'image' is wrong"))


# --- OverlayFS by hand

def test_the_chapters_work_directory_is_explained(lab):
    expect(lab.check("overlay", machine="workstation", mount="/chapter/merged", lower="/chapter/lower",
                     upper="/chapter/upper", shows=["Here is the lower layer", "Here is the upper layer"]),
           (True, "An overlay is mounted on /chapter/merged."), (True, "Its lower directory is /chapter/lower."),
           (True, "Its upper directory is /chapter/upper."),
           (False, "Its work directory is /chapter/merged, inside the mount point itself. This kernel lets that "
                   "through, but OverlayFS keeps its scratch folder (work) there"),
           (True, "/chapter/merged/lower.txt says 'Here is the lower layer'."),
           (True, "/chapter/merged/upper.txt says 'Here is the upper layer'."))


def test_an_overlay_as_it_should_be(lab):
    expect(lab.check("overlay", machine="workstation", mount="/right/merged", lower="/right/lower",
                     upper="/right/upper", shows=["Here is the lower layer"]),
           (True, "mounted on /right/merged"), (True, "lower directory"), (True, "upper directory"),
           (True, "Its work directory, /right/work, is a folder of its own beside the upper one."),
           (True, "/right/merged/lower.txt says"))
    expect(lab.check("overlay", machine="workstation", mount="/right/merged", lower="/other", upper="/other",
                     shows=["Nobody wrote this"]),
           (True, "mounted"), (False, "Its lower directories are /right/lower, not /other"),
           (False, "Its upper directory is /right/upper, not /other"), (True, "work directory"),
           (False, "No file in /right/merged says 'Nobody wrote this'."))


def test_no_overlay_another_mount_and_a_read_only_one(lab):
    expect(lab.check("overlay", machine="workstation", mount="/empty"),
           (False, "Nothing is mounted on /empty on workstation yet (mount -t overlay overlay -o "
                   "lowerdir=/lower,upperdir=/upper,workdir=/work /empty)."))
    expect(lab.check("overlay", machine="workstation", mount="/tmpfs"),
           (False, "/tmpfs is a tmpfs mount, not an overlay"))
    expect(lab.check("overlay", machine="workstation", mount="/ro/merged", upper="/ro/upper"),
           (True, "mounted"), (False, "It has no upper directory, so it is read-only"))


def test_copy_on_write_then_a_whiteout(lab):
    expect(lab.check("layer_change", machine="workstation", mount="/right/merged", change="changed"),
           (False, "No file of the lower layer (/right/lower) has a changed copy in /right/upper yet"))
    expect(lab.check("layer_change", machine="workstation", mount="/right/merged", change="deleted"),
           (False, "/right/upper has no whiteout yet: delete a file of the lower layer through /right/merged"))
    lab.run("workstation", "echo 'Changed through the view.' >> /right/merged/lower.txt")
    expect(lab.check("layer_change", machine="workstation", mount="/right/merged", change="changed",
                     path="/lower.txt", contains="Changed through"),
           (True, "/lower.txt was changed through /right/merged: the changed copy is /right/upper/lower.txt, and "
                  "/right/lower/lower.txt still says 'Here is the lower layer.'."), (True, "It says 'Changed through'."))
    lab.run("workstation", "rm /right/merged/lower.txt")
    expect(lab.check("layer_change", machine="workstation", mount="/right/merged", change="deleted", path="/lower.txt"),
           (True, "/lower.txt was deleted through /right/merged: /right/upper/lower.txt is a whiteout (a character "
                  "device 0, 0) that hides /right/lower/lower.txt, which is still there."))
    expect(lab.check("layer_change", machine="workstation", mount="/right/merged", change="changed", path="/lower.txt"),
           (False, "/lower.txt was deleted through /right/merged, not changed"))


def test_a_file_deleted_from_the_lower_folder_itself(lab):
    lab.run("workstation", "rm /gone/lower/lower.txt")
    expect(lab.check("layer_change", machine="workstation", mount="/gone/merged", change="deleted", path="/lower.txt"),
           (False, "/lower.txt is gone from the lower layer (/gone/lower) itself"))
    expect(lab.check("layer_change", machine="workstation", mount="/empty", change="deleted"),
           (False, "There is no overlay with an upper directory mounted on /empty"))


def test_a_containers_upper_directory(lab):
    expect(lab.check("layer_change", machine="workstation", container="box", change="added", path="/hello.txt",
                     contains="Made in box"),
           (True, "/hello.txt is in box's upper directory: /var/lib/docker/overlay2/"), (True, "It says 'Made in box'."))
    expect(lab.check("layer_change", machine="workstation", container="box", change="added", path="/nothere.txt"),
           (False, "There is no /nothere.txt in box's upper directory (/var/lib/docker/overlay2/"))
    expect(lab.check("layer_change", machine="workstation", container="ghost", change="added"),
           (False, "There is no container named ghost on workstation."))


def test_a_file_of_any_name_in_a_folder(lab):
    expect(lab.check("file", machine="workstation", folder="/chapter/lower", contains="Here is the lower layer"),
           (True, "/chapter/lower/lower.txt on workstation says 'Here is the lower layer'."))
    expect(lab.check("file", machine="workstation", folder="/chapter/upper", contains="Here is the lower layer"),
           (False, "No file in /chapter/upper on workstation says 'Here is the lower layer' yet (there is "))
    expect(lab.check("file", machine="workstation", folder="/nowhere", contains="x"),
           (False, "There is no folder /nowhere on workstation yet (mkdir /nowhere)."))
