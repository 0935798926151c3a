"""The base image Berth builds where no registry answers behaves as the official one: an
image an earlier Berth imported (no command, no PATH) is noticed and rebuilt from its own
files with the official defaults. On a tiny root file system of the test's own."""

from __future__ import annotations

import io
import os
import tarfile
import uuid

import docker.errors
import pytest

from berth.config import Config
from berth.images import Setup

pytestmark = pytest.mark.engine

FOLDERS = ["etc", "var", "var/lib", "var/lib/apt", "var/lib/apt/lists", "var/cache", "var/cache/apt",
           "var/cache/apt/archives"]
FILES = {
    "etc/hello": b"kept\n",
    "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages": b"Package: x\n",
    "var/lib/apt/lists/lock": b"",
    "var/cache/apt/archives/x_1_all.deb": b"a package",
    "var/cache/apt/pkgcache.bin": b"a cache",
}


def rootfs() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in FOLDERS:
            folder = tarfile.TarInfo(name)
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(folder)
        for name, data in FILES.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def listing(engine, container, path: str) -> dict[str, bytes]:
    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive if m.isreg()}


def test_an_imported_base_gets_the_official_defaults(engine):
    tag = f"berth-test-base-{uuid.uuid4().hex[:8]}:old"
    engine.api.import_image_from_data(rootfs(), repository=tag.split(":")[0], tag="old")
    setup = Setup(engine, Config.from_env(dict(os.environ)))
    container = None
    try:
        assert setup.lacks_defaults(tag)
        assert setup.rebuild_with_defaults(tag)
        assert not setup.lacks_defaults(tag)
        config = engine.api.inspect_image(tag)["Config"]
        assert config["Cmd"] == ["bash"] and not config.get("Entrypoint") and not config.get("WorkingDir")
        assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in config["Env"]
        made_by = [h["CreatedBy"] for h in engine.api.history(tag)]
        # the layer, then the command: as the official image's history, but imported (see images.py)
        assert len(made_by) == 2 and 'CMD ["bash"]' in made_by[0], made_by
        container = engine.containers.create(tag)
        assert listing(engine, container, "/etc/hello") == {"hello": b"kept\n"}
        assert listing(engine, container, "/var/lib/apt/lists") == {"lists/lock": b""}
        assert listing(engine, container, "/var/cache/apt") == {}
    finally:
        if container is not None:
            container.remove(force=True)
        try:
            engine.api.remove_image(tag)
        except docker.errors.ImageNotFound:
            pass
