"""Images: the machine, mirror and package cache images Berth builds, the base image lessons use, and
the registry mirror through which every learner machine pulls them, so that an
unmodified `docker pull IMAGE` works in a machine with no public registry in reach."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import docker
import docker.errors
import requests.exceptions

from .config import PROJECT_DIR, Config
from .owner import owner_labels

log = logging.getLogger(__name__)

DEBIAN_BASE = "debian:bookworm"
LABEL_SOURCE = "berth.source"
# A base image made here is made as close to Debian's official one as this engine allows:
# its root file system as one layer, bash as the command, PATH set, and no apt package
# lists or downloads in it. So it behaves as the pulled one does in all a lesson can notice:
# `docker run IMAGE` starts bash, the working directory is /, `docker history` shows the
# layer and the CMD, and `apt-get install` wants `apt-get update` first. The layer is
# imported (`docker import`), not ADDed in a build as Debian does: on an engine that remaps
# users (Berth's), the builder's ADD of a root file system fails on files not owned by root
# ("Container ID 100042 cannot be mapped"), so history says "Imported" where the official
# image says "ADD file:".
BASE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_DOCKERFILE = """FROM {layer}
CMD ["bash"]
"""
# Images lessons pull besides the base image, built here from lesson-images/ on the base
# image lessons use (so that they share its layers, as images built on one base do), and
# named under berthlab/: not an official image's name, and a Docker Hub style name, which
# the registry mirror serves.
LESSON_IMAGES = {"berthlab/hello:1": "lesson-images/hello"}
# The mirror's content: a seed volume per set of images (Mirror)
SEED_PREFIX = "berth-mirror-seed-"
SEED_ROLE = "mirror-seed"
REGISTRY_DIR = "/var/lib/docker-registry"
FILLED_MARK = ".berth-filled"
FILL_WAIT = 300  # seconds a Berth waits for another one filling the same seed


class MirrorError(Exception):
    """The mirror cannot be filled."""


def adopt(client: docker.DockerClient, name: str):
    """The container of this name an earlier start of this Berth left, running again; None
    when there is none. Berth's shared containers (the mirror, the package cache) are taken
    over this way after a restart, so that their content and address stay."""
    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        return None
    if container.status != "running":
        container.start()
    return container


def network_named(client: docker.DockerClient, name: str, make: Callable[[str], object]):
    """The network of this name, made with `make(name)` when there is none."""
    try:
        return client.networks.get(name)
    except docker.errors.NotFound:
        return make(name)


def tar_of(files: dict[str, bytes], mode: int = 0o600) -> bytes:
    """A tar archive of `files` (name: content), for the engine's put_archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
# What a push to the mirror's writer says while the writer is still starting: nothing
# listens yet, or (on a loaded host) its port takes the connection and drops it.
STARTING = ("connection refused", ": EOF", "connection reset by peer")


def split_reference(image: str) -> tuple[str, str]:
    """'ubuntu' -> ('ubuntu', 'latest'); 'host:5000/a/b:1' -> ('host:5000/a/b', '1')."""
    reference = image.split("@")[0]
    if ":" in reference.rsplit("/", 1)[-1]:
        name, tag = reference.rsplit(":", 1)
        return name, tag
    return reference, "latest"


def mirror_path(image: str) -> str | None:
    """Where a Docker Hub image lives in a mirror ('ubuntu:latest' -> 'library/ubuntu:latest');
    None for images of other registries (mirrors only stand in for Docker Hub)."""
    name, tag = split_reference(image)
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        if parts[0] not in ("docker.io", "index.docker.io"):
            return None
        parts = parts[1:]
    if len(parts) == 1:
        parts = ["library", *parts]
    return "/".join(parts) + ":" + tag


def left_out_of_base(member: tarfile.TarInfo) -> bool:
    """apt's package lists and downloaded packages, which Debian's own image leaves out."""
    name = member.name.removeprefix("./")
    if not member.isreg():
        return False
    if name.startswith("var/lib/apt/lists/"):
        return name != "var/lib/apt/lists/lock"
    return name.startswith("var/cache/apt/") and name.endswith((".deb", ".bin"))


def write_rootfs(source: IO[bytes], target: Path) -> None:
    """Copy a root file system's tar (read as a stream) to `target`, without what
    left_out_of_base names."""
    with tarfile.open(fileobj=source, mode="r|") as given, \
            tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as kept:
        for member in given:
            if not left_out_of_base(member):
                kept.addfile(member, given.extractfile(member) if member.isreg() else None)


def _say(message: str) -> None:
    print(f"berth: {message}", file=sys.stderr, flush=True)


def source_hash(folder: Path, base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class Setup:
    """What `./run` does before Berth starts: make sure every image exists."""

    def __init__(self, client: docker.DockerClient, config: Config):
        self.client = client
        self.config = config

    def has(self, image: str) -> bool:
        try:
            self.client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False

    def pull(self, image: str) -> bool:
        _say(f"pulling {image} ...")
        try:
            repository, tag = split_reference(image)
            self.client.images.pull(repository, tag=tag)
            return True
        except (docker.errors.APIError, requests.exceptions.RequestException) as error:
            _say(f"cannot pull {image}: {str(error).splitlines()[0][:200]}")
            return False

    def debian_base(self) -> None:
        """debian:bookworm, from a registry or built from Debian's own packages; one an
        earlier Berth imported without a command is rebuilt from its own files."""
        if self.has(DEBIAN_BASE):
            if not self.lacks_defaults(DEBIAN_BASE):
                return
            if self.rebuild_with_defaults(DEBIAN_BASE):
                return
        elif self.pull(DEBIAN_BASE):
            return
        if subprocess.run(["which", "debootstrap"], capture_output=True).returncode != 0:
            _say("installing debootstrap (Debian package; log: /var/log/berth-apt.log) ...")
            env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            with open("/var/log/berth-apt.log", "ab") as apt_log:
                for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "debootstrap"]):
                    if subprocess.run(command, env=env, stdout=apt_log, stderr=subprocess.STDOUT).returncode:
                        raise SystemExit("berth: installing debootstrap failed; see /var/log/berth-apt.log")
        with tempfile.TemporaryDirectory(prefix="berth-rootfs-") as root, \
                tempfile.TemporaryDirectory(prefix="berth-base-") as context:
            _say(f"no registry answers: building {DEBIAN_BASE} from Debian packages with "
                 "debootstrap (about 30 s) ...")
            started = time.monotonic()
            run = subprocess.Popen(["debootstrap", "--variant=minbase", "bookworm", root],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in run.stdout:  # type: ignore[union-attr]
                if line.startswith("I: ") and any(w in line for w in ("Retriev", "Extract", "Install", "Unpack", "Configur")):
                    print(f"  {line[3:].strip()[:100]}", file=sys.stderr, flush=True)
            if run.wait() != 0:
                raise SystemExit("berth: debootstrap failed; see its output above")
            tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            write_rootfs(tar.stdout, Path(context) / "rootfs.tar")  # type: ignore[arg-type]
            if tar.wait() != 0:
                raise SystemExit("berth: packing the root file system failed")
            self.build_base(Path(context), DEBIAN_BASE)
            _say(f"built {DEBIAN_BASE} in {time.monotonic() - started:.0f} s")

    def lacks_defaults(self, image: str) -> bool:
        """True for an image without a command or PATH, as `docker import` leaves it: the
        official images have both, and `docker run IMAGE` fails without a command."""
        config = self.client.api.inspect_image(image).get("Config") or {}
        return not config.get("Cmd") or not any(e.startswith("PATH=") for e in config.get("Env") or [])

    def rebuild_with_defaults(self, image: str) -> bool:
        """Give an imported one-layer image the official defaults, keeping its files: its
        layer (from `docker save`) becomes the root file system of BASE_DOCKERFILE. False
        when the image is not one layer (then it is built afresh)."""
        attrs = self.client.api.inspect_image(image)
        if len(attrs.get("RootFS", {}).get("Layers") or []) != 1:
            return False
        _say(f"{image} has no command (an earlier Berth imported it): rebuilding it with bash "
             "as its command and PATH set, from its own files ...")
        with tempfile.TemporaryDirectory(prefix="berth-base-") as context:
            with tempfile.TemporaryFile() as saved:
                for chunk in self.client.api.get_image(attrs["Id"]):
                    saved.write(chunk)
                saved.seek(0)
                with tarfile.open(fileobj=saved) as archive:
                    manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
                    layer = archive.extractfile(manifest[0]["Layers"][0])
                    write_rootfs(layer, Path(context) / "rootfs.tar")  # type: ignore[arg-type]
            self.build_base(Path(context), image)
        try:
            self.client.api.remove_image(attrs["Id"])
        except docker.errors.APIError:
            pass  # images built on it still use it; it goes when they are rebuilt and pruned
        return True

    def build_base(self, context: Path, tag: str) -> None:
        """Build `tag` from the rootfs.tar in `context`: imported as one layer with PATH
        set, then BASE_DOCKERFILE on top of it."""
        layer = f"berth-base-layer:{int(time.time())}"
        repository, layer_tag = layer.split(":")
        self.client.api.import_image(src=str(context / "rootfs.tar"), repository=repository, tag=layer_tag,
                                     changes=[f"ENV {BASE_PATH}"])
        try:
            (context / "Dockerfile").write_text(BASE_DOCKERFILE.format(layer=layer))
            (context / ".dockerignore").write_text("rootfs.tar\n")
            for chunk in self.client.api.build(path=str(context), tag=tag, rm=True, forcerm=True, decode=True):
                if "error" in chunk:
                    raise SystemExit(f"berth: building {tag} failed: {chunk['error']}")
        finally:
            self.client.api.remove_image(layer, noprune=True)  # the name only; the layer stays under tag

    def base_image(self) -> str:
        """The base image lessons use; returns the name to put in BERTH_BASE_IMAGE."""
        image = self.config.base_image
        if self.has(image) or self.pull(image):
            return image
        if image == "ubuntu:latest":
            _say(f"{image} cannot be pulled here; lessons use {DEBIAN_BASE} instead "
                 f"(BERTH_BASE_IMAGE={DEBIAN_BASE})")
            return DEBIAN_BASE
        raise SystemExit(f"berth: BERTH_BASE_IMAGE={image} is neither present nor pullable")

    def build(self, folder: Path, tag: str, base: str = DEBIAN_BASE) -> None:
        """Build `tag` from `folder` FROM `base`; skipped when the image there was built from
        the same files on the same base (its source label)."""
        base_id = self.client.images.get(base).id
        wanted = source_hash(folder, base_id)
        try:
            if self.client.images.get(tag).labels.get(LABEL_SOURCE) == wanted:
                return
        except docker.errors.ImageNotFound:
            pass
        _say(f"building {tag} from {folder.relative_to(PROJECT_DIR)}/ (a minute or two the first time) ...")
        for chunk in self.client.api.build(path=str(folder), tag=tag, buildargs={"BASE": base},
                                           labels={LABEL_SOURCE: wanted}, rm=True, forcerm=True,
                                           decode=True):
            if "error" in chunk:
                raise SystemExit(f"berth: building {tag} failed: {chunk['error']}")
            line = chunk.get("stream", "").strip()
            if line.startswith("Step "):
                print(f"  {line[:110]}", file=sys.stderr, flush=True)
        _say(f"built {tag}")

    def run(self) -> str:
        self.debian_base()
        base = self.base_image()
        self.build(PROJECT_DIR / "machine", self.config.machine_image)
        if self.config.mirror_image:
            self.build(PROJECT_DIR / "mirror", self.config.mirror_image)
        if self.config.package_cache_image:
            self.build(PROJECT_DIR / "packages", self.config.package_cache_image)
        for tag, folder in LESSON_IMAGES.items():
            self.build(PROJECT_DIR / folder, tag, base)
        return base


class Mirror:
    """The registry mirror of one Berth: a read-only registry that every session's
    network reaches as `berth-mirror`, serving the lesson images from a seed volume.

    The seed is named by what it holds (the images' ids and the mirror image's), so Berths
    serving the same images share one, filled once by a short-lived writer that listens on
    the engine host's loopback only; each Berth's reader mounts it read-only. The seed is
    set-up, like the images `./run` builds: it outlives a Berth, and `./run clean` removes
    the seeds no Berth mounts. (Filling took 20-30 s of a Berth's start on a loaded host:
    a `docker push` compresses every layer each time.)"""

    def __init__(self, client: docker.DockerClient, config: Config, instance_id: str):
        self.client = client
        self.config = config
        self.name = f"berth-mirror-{instance_id}"
        self.instance_id = instance_id
        self.labels = {"berth.instance": instance_id, "berth.role": "mirror", **owner_labels(config.data_dir)}
        self.status = "starting"
        self.message = ""
        self.container_id: str | None = None
        self._lock = threading.Lock()

    def start(self, images: list[str]) -> str | None:
        """Run the reader on the seed of `images`, filling the seed first if no Berth has;
        returns the reader's container id."""
        with self._lock:
            try:
                servable = self._servable(images)
                seed = self._seed(servable)
                self.container_id = self._reader(seed)
                if not self._filled():
                    self._fill(seed, servable)
                self.status, self.message = "ready", ""
            except (docker.errors.DockerException, requests.exceptions.RequestException, MirrorError) as error:
                self.status = "failed"
                self.message = f"the registry mirror is not working: {str(error)[:300]}"
                log.error("%s", self.message)
            return self.container_id

    def _servable(self, images: list[str]) -> list[tuple[str, str, str]]:
        """(image, path in the mirror, image id) of the images the mirror can serve: the id
        names the seed and is what is pushed, so both are the same image."""
        servable = []
        for image in dict.fromkeys(images):
            path = mirror_path(image)
            if path is None:
                log.warning("%s is not a Docker Hub image; machines cannot pull it through the mirror", image)
            elif image_id := self._image_id(image):
                servable.append((image, path, image_id))
        return servable

    def _seed(self, servable: list[tuple[str, str, str]]) -> str:
        """The seed volume's name: a hash of what it serves, made of what."""
        made_of = [self.client.images.get(self.config.mirror_image).id] + sorted(
            f"{path}={image_id}" for _, path, image_id in servable)
        key = hashlib.sha256(json.dumps(made_of).encode()).hexdigest()[:16]
        name = f"{SEED_PREFIX}{key}"
        try:
            self.client.volumes.get(name)
        except docker.errors.NotFound:
            self.client.volumes.create(name, labels={"berth.role": SEED_ROLE})
        return name

    def _reader(self, seed: str) -> str:
        container = adopt(self.client, self.name)
        if container:
            return container.id
        network = network_named(self.client, self.name, lambda name: self.client.networks.create(
            name, driver="bridge", internal=True, labels=self.labels))
        container = self.client.containers.run(
            self.config.mirror_image, name=self.name, detach=True, labels=self.labels,
            network=network.name, volumes={seed: {"bind": REGISTRY_DIR, "mode": "ro"}},
            # the mirror sits on every session's network: it must never route between them
            sysctls={"net.ipv4.ip_forward": "0"},
            restart_policy={"Name": "unless-stopped"}, mem_limit="256m", pids_limit=200,
            read_only=True,
        )
        return container.id

    def _filled(self) -> bool:
        """The seed holds every image: its writer left the mark, seen through the reader."""
        try:
            stream, _ = self.client.api.get_archive(self.container_id, f"{REGISTRY_DIR}/{FILLED_MARK}")
            for _ in stream:
                pass
            return True
        except docker.errors.NotFound:
            return False

    def _fill(self, seed: str, servable: list[tuple[str, str, str]]) -> None:
        """Push the images into the seed through a writer, then leave the mark. The writer's
        name is the seed's: a second Berth filling the same seed at once waits for the first
        (the engine refuses a second container of that name) and then finds the mark."""
        deadline = time.monotonic() + FILL_WAIT
        while True:
            try:
                writer = self.client.containers.run(
                    self.config.mirror_image, ["/etc/berth/config.yml"], detach=True, remove=False,
                    labels=self.labels, name=f"{seed}-writer",
                    volumes={seed: {"bind": REGISTRY_DIR, "mode": "rw"}},
                    ports={"5000/tcp": ("127.0.0.1", None)},
                )
                break
            except docker.errors.APIError as error:
                if error.status_code != 409:
                    raise
            if self._filled():
                return
            if time.monotonic() > deadline:
                raise MirrorError(f"another Berth has been filling {seed} for {FILL_WAIT} s; "
                                  f"if none runs, `./run clean` removes its writer")
            time.sleep(0.5)
        try:
            writer.reload()
            port = writer.attrs["NetworkSettings"]["Ports"]["5000/tcp"][0]["HostPort"]
            time.sleep(0.3)
            for image, path, image_id in servable:
                target = f"127.0.0.1:{port}/{path}"
                repository, tag = target.rsplit(":", 1)
                self.client.api.tag(image_id, repository, tag)
                try:
                    for attempt in range(40):
                        result = self.client.api.push(repository, tag=tag, stream=True, decode=True)
                        errors = [r["error"] for r in result if "error" in r]
                        if not errors:
                            break
                        if not any(word in errors[0] for word in STARTING) or attempt == 39:
                            raise docker.errors.APIError(errors[0])
                        time.sleep(0.25)  # the writer is still starting (on a loaded host the
                        # published port may accept before the registry answers: EOF)
                    log.info("mirror: %s is served as %s", image, path)
                finally:
                    self.client.api.remove_image(target, noprune=True)
            writer.put_archive(REGISTRY_DIR, tar_of({FILLED_MARK: b"filled\n"}))
        finally:
            writer.remove(force=True)

    def _image_id(self, image: str) -> str | None:
        try:
            return self.client.images.get(image).id
        except docker.errors.ImageNotFound:
            log.warning("%s is not on the engine; the mirror cannot serve it", image)
            return None


def main() -> None:
    """python -m berth.images: the image part of ./run. Progress goes to stderr; the base
    image lessons should use is printed on stdout."""
    config = Config.from_env()
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        raise SystemExit(f"berth: the Docker engine does not answer: {error}") from None
    print(Setup(client, config).run(), flush=True)


if __name__ == "__main__":
    main()
