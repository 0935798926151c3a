"""Files between the learner's computer and their machines: upload into a machine,
download from it, and send a file from one machine of the session to another ("Send to
colleague"). Everything is streamed through the engine's archive API, so a saved image of
hundreds of megabytes passes in constant memory; sizes are bounded by BERTH_UPLOAD_LIMIT,
and paths are resolved inside the machine by its backend, never on Berth's own disk. Files
move as tar archives (the machines contract's get_archive and put_archive)."""

from __future__ import annotations

import io
import logging
import posixpath
import secrets
import tarfile
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Flask, Response, jsonify, request
from humanize import naturalsize
from pydantic import Field

from .events import LearnerActivity
from .machines import Archive, FileProblem, Machine
from .web import ApiError, Body, authenticated, current_berth, json_body

log = logging.getLogger(__name__)

bp = Blueprint("files", __name__, url_prefix="/api/sessions/<session_id>/machines/<machine_name>/files")

WORKDIR = "/root"  # the learner's working directory in a machine
CHUNK = 256 * 1024
NOT_WRITABLE = ("/proc", "/sys", "/dev")  # the kernel's, not files


# --- paths

def machine_path(text: object, field: str = "path") -> str:
    """An absolute, normalized path in the machine; relative paths are under /root."""
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "bad_path", f'"{field}" must name a file in the machine, e.g. /root/index.html.')
    text = text.strip()
    if "\x00" in text or len(text) > 4096:
        raise ApiError(400, "bad_path", f'"{field}" is not a usable path.')
    if text == "~" or text.startswith("~/"):
        text = WORKDIR + text[1:]
    path = posixpath.normpath(posixpath.join(WORKDIR, text))
    return "/" + path.lstrip("/")


def check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\x00" in name or len(name.encode()) > 255:
        raise ApiError(400, "bad_name", f"{name!r} cannot be a file name.")
    return name


def check_writable(machine: Machine, path: str) -> None:
    if any(path == top or path.startswith(top + "/") for top in NOT_WRITABLE) or path == "/":
        raise ApiError(403, "not_writable", f"Files cannot be written to {path} on {machine.name}.")


def is_directory(machine: Machine, path: str) -> bool:
    return current_berth().backend.exec(machine, ["test", "-d", path], timeout=10).exit_code == 0


def destination(machine: Machine, raw: str | None, name: str) -> str:
    """Where a file called `name` goes: `raw` names the file, or a directory to put it in
    (ending in / or existing); no `raw` means the working directory."""
    if not raw or not raw.strip():
        return posixpath.join(WORKDIR, check_name(name))
    path = machine_path(raw)
    if raw.strip().endswith("/") or is_directory(machine, path):
        return posixpath.join(path, check_name(name))
    return path


# --- the engine's archive API, streamed

def archive_error(machine: Machine, path: str, problem: FileProblem) -> ApiError:
    """The backend's complaint about a path, in the learner's words."""
    text = problem.message
    if problem.reason == "missing":
        return ApiError(404, "no_such_file", f"There is no {path} on {machine.name}.")
    if problem.reason == "disk_full":
        return ApiError(507, "disk_full", f"The disk of {machine.name} is full; remove something "
                        "(for example `docker image prune` or old tar files) and try again.")
    if problem.reason == "not_a_directory":
        return ApiError(409, "not_a_directory", f"Part of {path} on {machine.name} is a file, not a directory.")
    if problem.reason == "not_writable":
        return ApiError(403, "not_writable", f"{path} on {machine.name} cannot be written.")
    log.warning("archive of %s on %s: %s", path, machine.name, text)
    return ApiError(502, "machine_error", f"{machine.name} could not move the file ({text[:200]}).")


class ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (an archive streamed out of a machine)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._view = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not len(self._view):
            try:
                self._view = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._view))
        buffer[:size] = self._view[:size]
        self._view = self._view[size:]
        return size


class Source:
    """A file in a machine, opened for streaming out of it."""

    def __init__(self, machine: Machine, path: str):
        self.machine = machine
        self.path = path
        backend = current_berth().backend
        for _ in range(8):  # follow symbolic links, as `cat` would
            try:
                self.stream: Archive = backend.get_archive(machine, self.path)
            except FileProblem as problem:
                raise archive_error(machine, self.path, problem) from None
            info = self.stream.info
            if info.kind != "link" or not info.link_target:
                break
            self.close()
            self.path = posixpath.normpath(posixpath.join(posixpath.dirname(self.path), info.link_target))
        else:
            raise ApiError(400, "bad_path", f"{path} on {machine.name} is a chain of too many links.")
        self.size = info.size
        self.name = info.name or posixpath.basename(self.path) or "file"
        self.kind = info.kind

    @property
    def is_directory(self) -> bool:
        return self.kind == "directory"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    def raw(self) -> Iterator[bytes]:
        """The engine's tar archive as it comes (a directory)."""
        try:
            yield from self.stream
        finally:
            self.close()

    def data(self) -> tuple[int, Iterator[bytes]]:
        """The file's size and bytes, unpacked from the archive on the fly."""
        archive = tarfile.open(fileobj=ChunkReader(self.stream), mode="r|", bufsize=CHUNK)
        member = archive.next()
        if member is None or not member.isfile():
            self.close()
            raise ApiError(400, "not_a_file", f"{self.path} on {self.machine.name} is not a regular file.")
        content = archive.extractfile(member)

        def chunks() -> Iterator[bytes]:
            try:
                while chunk := content.read(CHUNK):  # type: ignore[union-attr]
                    yield chunk
            finally:
                self.close()
        return member.size, chunks()

    def close(self) -> None:
        self.stream.close()


def tar_stream(name: str, size: int, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """A one-file tar archive, produced as the file's bytes arrive: the size goes in the
    header first, so it must be known, and the bytes must match it."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(time.time())
    info.uname = info.gname = "root"
    yield info.tobuf(tarfile.PAX_FORMAT)
    sent = 0
    for chunk in chunks:
        if not chunk:
            continue  # an empty chunk would end the chunked upload to the engine early
        sent += len(chunk)
        if sent > size:
            raise ValueError("more bytes than announced")
        yield chunk
    if sent != size:
        raise ConnectionError(f"the file ended after {sent} of {size} bytes")
    yield b"\0" * ((-size) % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)


def write_file(machine: Machine, path: str, size: int, chunks: Iterable[bytes]) -> None:
    """Stream a file into the machine at `path`: into a hidden name beside it first, then
    renamed, so an interrupted upload never leaves half a file under the real name."""
    check_writable(machine, path)
    directory, name = posixpath.split(path)
    temporary = posixpath.join(directory, f".{name[:200]}.berth-{secrets.token_hex(4)}")
    backend = current_berth().backend
    done = False
    try:
        try:
            # Put at / with the whole path as the member's name: missing directories are made.
            backend.put_archive(machine, "/", tar_stream(temporary.lstrip("/"), size, chunks))
        except FileProblem as problem:
            raise archive_error(machine, directory, problem) from None
        moved = backend.exec(machine, ["mv", "-fT", "--", temporary, path], timeout=30)
        if moved.exit_code != 0:
            message = moved.text.strip().split(": ", 1)[-1] or "it could not be renamed"
            raise ApiError(409, "cannot_write", f"{path} on {machine.name}: {message}.")
        done = True
    finally:
        if not done:
            try:
                backend.exec(machine, ["rm", "-f", "--", temporary], timeout=10)
            except Exception as error:  # noqa: BLE001 - clean-up must not hide the real error
                log.warning("could not remove %s on %s: %s", temporary, machine.name, error)


def attachment(name: str) -> str:
    """A Content-Disposition that survives any file name (quotes, newlines, non-ASCII)."""
    plain = "".join(c for c in name if 32 <= ord(c) < 127 and c not in '"\\') or "download"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


def limit() -> int:
    return current_berth().config.upload_limit


def too_large(size: int) -> ApiError:
    return ApiError(413, "too_large", f"The file is {naturalsize(size, binary=True)}; files may be at most "
                    f"{naturalsize(limit(), binary=True)} (BERTH_UPLOAD_LIMIT).")


# --- the API

@bp.put("")
@bp.post("")
def upload(session_id: str, machine_name: str):
    """The request's body becomes a file in the machine (`?path=`, `?name=`)."""
    record = authenticated(session_id)
    machine = current_berth().sessions.machine(record.id, machine_name)
    size = request.content_length
    if size is None:
        raise ApiError(411, "length_required", "Send the file's size (Content-Length) with it.")
    if size > limit():
        raise too_large(size)
    name = request.args.get("name") or ""
    raw_path = request.args.get("path") or ""
    if name:  # "path" is then the directory, the working directory by default
        path = posixpath.join(machine_path(raw_path) if raw_path.strip() else WORKDIR, check_name(name))
    elif raw_path.strip():
        path = machine_path(raw_path)
        if raw_path.strip().endswith("/") or is_directory(machine, path):
            raise ApiError(400, "name_required", f"{path} is a directory on {machine.name}; add the file's "
                           'name to "path", or send it as "name".')
    else:
        raise ApiError(400, "bad_path", 'Say where the file goes: "path" (e.g. /root/index.html) or "name".')
    request.max_content_length = limit()
    stream = request.stream

    def chunks() -> Iterator[bytes]:
        while chunk := stream.read(CHUNK):
            yield chunk
    write_file(machine, path, size, chunks())
    current_berth().bus.publish(LearnerActivity(record.id, machine.name, "files"))
    log.info("session %s: %s into %s:%s", record.id, naturalsize(size, binary=True), machine.name, path)
    return jsonify(machine=machine.name, path=path, size=size), 201


@bp.get("")
def download(session_id: str, machine_name: str):
    """A file of the machine (`?path=`), streamed; a directory comes as a tar archive."""
    record = authenticated(session_id)
    machine = current_berth().sessions.machine(record.id, machine_name)
    source = Source(machine, machine_path(request.args.get("path")))
    if source.is_directory:
        name = (posixpath.basename(source.path) or "root") + ".tar"
        if request.method == "HEAD":
            source.close()
            return Response(status=200, mimetype="application/x-tar", headers={"Content-Disposition": attachment(name)})
        return Response(source.raw(), mimetype="application/x-tar", direct_passthrough=True,
                        headers={"Content-Disposition": attachment(name), "Cache-Control": "no-store"})
    if not source.is_file:
        source.close()
        raise ApiError(400, "not_a_file", f"{source.path} on {machine.name} is not a regular file.")
    headers = {"Content-Disposition": attachment(source.name), "Cache-Control": "no-store",
               "X-Berth-Path": quote(source.path)}
    if request.method == "HEAD":
        source.close()
        return Response(status=200, mimetype="application/octet-stream",
                        headers={**headers, "Content-Length": str(source.size)})
    size, chunks = source.data()
    response = Response(chunks, mimetype="application/octet-stream", direct_passthrough=True, headers=headers)
    response.headers["Content-Length"] = str(size)
    return response


class Sending(Body):
    not_an_object = 'Send a JSON object such as {"path": "/root/image.tar", "to": "colleague"}.'
    path: Any = None  # machine_path says what is wrong with it (bad_path)
    to: str = Field(min_length=1, description='The field "to" (the machine to send the file to) is required.')
    to_path: str | None = Field(None, description='The field "to_path" must be a path.')


@bp.post("/copy")
def copy(session_id: str, machine_name: str):
    """Send a file to another machine of the session: {"path", "to", "to_path"?}."""
    record = authenticated(session_id)
    body = json_body(Sending)
    source_machine = current_berth().sessions.machine(record.id, machine_name)
    target_machine = current_berth().sessions.machine(record.id, body.to)
    source = Source(source_machine, machine_path(body.path))
    if not source.is_file:
        source.close()
        kind = "a directory" if source.is_directory else "not a regular file"
        raise ApiError(400, "not_a_file", f"{source.path} on {source_machine.name} is {kind}; send one file "
                       "(docker save -o makes one of an image).")
    if source.size > limit():
        source.close()
        raise too_large(source.size)
    try:
        path = destination(target_machine, body.to_path, source.name)
    except ApiError:
        source.close()
        raise
    size, chunks = source.data()
    if size > limit():
        source.close()
        raise too_large(size)
    write_file(target_machine, path, size, chunks)
    current_berth().bus.publish(LearnerActivity(record.id, target_machine.name, "files"))
    log.info("session %s: %s from %s:%s to %s:%s", record.id, naturalsize(size, binary=True), source_machine.name, source.path,
             target_machine.name, path)
    return jsonify(machine=target_machine.name, path=path, size=size, **{"from": {
        "machine": source_machine.name, "path": source.path}}), 201


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
