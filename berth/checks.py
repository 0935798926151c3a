"""The check library: named kinds with typed parameters, each looking at a learner's
machines the way a teacher would (their own Docker engine through the SDK, files, HTTP on
published ports) and saying one thing per assertion ("ubuntu001 is running", "VAR2 is not
set"). Never terminal output, never scripts kept in the machine.

A lesson names a kind and its parameters (`{kind: container, machine: workstation, ...}`);
the check framework (check_framework.py) runs them. Importing this module registers the kinds."""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from dataclasses import dataclass, field

import docker.errors
import requests.exceptions
from pydantic import Field, field_validator, model_validator

from .bounded import TooMuch, read_bounded
from .check_framework import CHECK_TIMEOUT, KINDS, CheckProblem, Context, Finding, Params, kind
from .ports import port_bindings

__all__ = ["KINDS"]

PROGRAM = re.compile(r"^[A-Za-z0-9._+-]{1,64}$")
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Texts of the pages web servers show before anyone changes them.
DEFAULT_PAGES = {
    "Welcome to nginx!": "nginx's default page",
    "Apache2 Debian Default Page": "Apache's default page",
    "Apache2 Ubuntu Default Page": "Apache's default page",
    "<html><body><h1>It works!</h1></body></html>": "Apache's default page",
    "Directory listing for": "a directory listing",
}


class ImageRef(Params):
    """An image as a lesson names it: by name, or as the one committed from a container.
    `machine` is where to look (default: the check's own machine)."""

    machine: str | None = None
    name: str | None = None
    committed_from: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ImageRef:
        if (self.name is None) == (self.committed_from is None):
            raise ValueError("give either name or committed_from")
        return self


class FileRef(Params):
    machine: str
    path: str


@dataclass
class Resolved:
    """An image reference resolved in an engine: its ids, and how to speak of it."""

    ids: set[str] = field(default_factory=set)
    label: str = ""
    problem: str | None = None


def short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def image_label(attrs: dict) -> str:
    tags = [t for t in attrs.get("RepoTags") or [] if t != "<none>:<none>"]
    return tags[0] if tags else short(attrs["Id"])


def committed_images(ctx: Context, machine: str, container: str) -> tuple[list[dict], bool]:
    """Images committed from the container, newest first; and whether the container still
    exists. Images record the id of the container they were committed from, not its name:
    the ids seen under that name are remembered for the session, so that removing the
    container after committing it loses nothing."""
    attrs = ctx.container(machine, container)
    key = f"{ctx.machine(machine).container_id}/{container}"
    seen = ctx.facts.recall("container ids", key)
    if attrs is not None and attrs["Id"] not in seen:
        ctx.facts.remember("container ids", key, attrs["Id"])
        seen.add(attrs["Id"])
    images = [i for i in ctx.images(machine) if i.get("Container") in seen]
    return sorted(images, key=lambda i: i.get("Created", ""), reverse=True), attrs is not None


def find_image(ctx: Context, machine: str, name: str) -> tuple[dict, str] | None:
    """An image by name, as docker finds it, and how to speak of it. A name without a tag
    also finds its repository under another tag (`box-flat` finds `box-flat:1.0`): a
    lesson that asks for a name leaves the tag to the learner."""
    try:
        return ctx.engine(machine).api.inspect_image(name), name
    except docker.errors.ImageNotFound:
        pass
    if ":" in name.rsplit("/", 1)[-1] or "@" in name:
        return None
    for attrs in ctx.images(machine):
        for tag in attrs.get("RepoTags") or []:
            if tag.rsplit(":", 1)[0] == name:
                return attrs, tag
    return None


def resolve(ctx: Context, ref: ImageRef | str, default_machine: str) -> Resolved:
    if isinstance(ref, str):
        ref = ImageRef(name=ref)
    machine = ref.machine or default_machine
    if ref.name is not None:
        found = find_image(ctx, machine, ref.name)
        if found is None:
            return Resolved(label=ref.name, problem=f"There is no image {ref.name} on {machine}.")
        return Resolved({found[0]["Id"]}, found[1])
    images, _ = committed_images(ctx, machine, ref.committed_from or "")
    if not images:
        return Resolved(label=f"the image committed from {ref.committed_from}",
                        problem=f"No image has been committed from {ref.committed_from} on {machine} yet.")
    return Resolved({i["Id"] for i in images}, image_label(images[0]))


# --- the kinds

def _port(value: int | str) -> tuple[int, int]:
    """3000 -> (3000, 3000); "8080:80" -> (8080, 80): host port, container port."""
    text = str(value).removesuffix("/tcp")
    host, _, inner = text.partition(":")
    return int(host), int(inner or host)


class ContainerParams(Params):
    machine: str
    name: str | None = Field(default=None, description="the container's name; none: any container of `image`")
    image: str | ImageRef | None = None
    running: bool = True
    env: dict[str, str] = {}
    publish: list[int | str] = Field(default=[], description='host ports published to the same container port, or "HOST:CONTAINER"')
    absent: bool = Field(default=False, description="the container (by name) must be gone")

    @field_validator("publish")
    @classmethod
    def _ports(cls, value: list[int | str]) -> list[int | str]:
        for item in value:
            try:
                ports = _port(item)
            except ValueError:
                raise ValueError(f"{item!r} is not a port or HOST:CONTAINER") from None
            if not all(0 < p < 65536 for p in ports):
                raise ValueError(f"{item!r}: ports are 1 to 65535")
        return value

    @model_validator(mode="after")
    def _named(self) -> ContainerParams:
        if self.name is None and self.image is None:
            raise ValueError("give the container's name, or the image its container is created from")
        if self.absent and (self.name is None or self.image is not None or self.env or self.publish):
            raise ValueError("absent takes the container's name alone")
        return self


def _state_finding(name: str, attrs: dict) -> Finding:
    state = attrs["State"]
    if state.get("Running") and not state.get("Paused"):
        return Finding(True, f"{name} is running.")
    if state.get("Paused"):
        return Finding(False, f"{name} is paused: docker unpause {name}.")
    status = state.get("Status", "")
    if status == "created":
        return Finding(False, f"{name} was created but never started: docker start {name}.")
    config = attrs["Config"]
    command = " ".join(config.get("Cmd") or config.get("Entrypoint") or [])
    message = f"{name} has stopped (exit code {state.get('ExitCode')})."
    if command.split(" ")[0] in ("bash", "sh", "/bin/bash", "/bin/sh") and not config.get("OpenStdin"):
        message += (f" A shell without input ends at once: run it with -dit "
                    f"(docker rm {name}, then docker run -dit ...).")
    else:
        message += f" docker start {name} starts it again; docker logs {name} shows why it stopped."
    return Finding(False, message)


def env_of(attrs: dict) -> dict[str, str]:
    """The environment a container or image sets (its inspect's Config.Env), as a dict."""
    return dict(item.partition("=")[::2] for item in (attrs.get("Config") or {}).get("Env") or [])


def _env_findings(name: str, attrs: dict, env: dict[str, str]) -> list[Finding]:
    actual = env_of(attrs)
    findings = []
    for key, value in env.items():
        if key not in actual:
            findings.append(Finding(False, f"{key} is not set in {name} (docker run -e {key}={value} ...)."))
        elif actual[key] != value:
            findings.append(Finding(False, f"{key} is {actual[key]!r} in {name}, not {value!r}."))
        else:
            findings.append(Finding(True, f"{key} is {value}."))
    return findings


def _port_findings(name: str, attrs: dict, publish: list[int | str]) -> list[Finding]:
    published = port_bindings(attrs)
    again = f"ports are published when a container is created: docker rm -f {name}, then docker run -p"
    findings = []
    for item in publish:
        host, inner = _port(item)
        spelled = f"{host}:{inner}"
        bindings = published.get(inner, [])
        everywhere = [b for b in bindings if b[1] == host and b[0] in ("", "0.0.0.0", "::")]
        if everywhere:
            what = f"port {host} is published" + ("" if host == inner else f" to the container's port {inner}")
            findings.append(Finding(True, what[0].upper() + what[1:] + "."))
        elif any(b[1] == host for b in bindings):
            address = next(b[0] for b in bindings if b[1] == host)
            findings.append(Finding(False, f"Port {host} is published only on {address}, so it cannot be "
                                           f"reached from outside the machine; publish it on every address ({again} {spelled} ...)."))
        elif bindings:
            others = ", ".join(str(b[1]) for b in bindings)
            findings.append(Finding(False, f"The container's port {inner} is published on port {others}, not {host} ({again} {spelled} ...)."))
        else:
            elsewhere = [p for p, bs in published.items() if any(b[1] == host for b in bs)]
            if elsewhere:
                findings.append(Finding(False, f"Port {host} leads to the container's port {elsewhere[0]}, not {inner} ({again} {spelled} ...)."))
            else:
                findings.append(Finding(False, f"Port {host} is not published ({again} {spelled} ...)."))
    return findings


def _gone_finding(ctx: Context, machine: str, name: str) -> Finding:
    attrs = ctx.container(machine, name)
    if attrs is None:
        return Finding(True, f"There is no container {name} on {machine}: it is removed.")
    state = attrs["State"]
    if state.get("Running"):
        return Finding(False, f"{name} is still running: docker rm -f {name} stops and removes it "
                              f"(or docker stop {name}, then docker rm {name}).")
    return Finding(False, f"{name} is still there ({state.get('Status', 'stopped')}): a stopped container "
                          f"stays until it is removed, and keeps its image; docker rm {name}.")


@kind("container", ContainerParams)
def container(ctx: Context, p: ContainerParams) -> list[Finding]:
    """A container exists (by name, or any created from `image`), was created from `image`,
    is running, has environment variables and publishes ports; or, `absent`, is gone."""
    if p.absent:
        return [_gone_finding(ctx, p.machine, p.name or "")]
    expected = resolve(ctx, p.image, p.machine) if p.image is not None else None
    if p.name is not None:
        attrs = ctx.container(p.machine, p.name)
        if attrs is None:
            others = [c["Name"].lstrip("/") for c in ctx.containers(p.machine)]
            message = f"There is no container named {p.name} on {p.machine} yet."
            if others:
                message += f" (There is: {', '.join(others[:5])}.)"
            return [Finding(False, message)]
        label = p.name
    else:
        assert expected is not None
        if expected.problem:
            return [Finding(False, expected.problem)]
        candidates = [c for c in ctx.containers(p.machine) if c["Image"] in expected.ids]
        if not candidates:
            return [Finding(False, f"No container on {p.machine} was created from {expected.label} yet.")]

        def score(attrs: dict) -> int:
            checks = [_state_finding("", attrs).ok] + [f.ok for f in _port_findings("", attrs, p.publish)]
            return sum(checks)
        attrs = max(candidates, key=score)
        label = attrs["Name"].lstrip("/")
    findings = []
    if p.name is None:
        findings.append(Finding(True, f"{label} was created from {expected.label}."))  # type: ignore[union-attr]
    elif expected is not None:
        if expected.problem and not expected.ids:
            findings.append(Finding(False, f"{label} was created from {attrs['Config'].get('Image')}; {expected.problem}"))
        elif attrs["Image"] in expected.ids:
            findings.append(Finding(True, f"{label} was created from {expected.label}."))
        else:
            findings.append(Finding(False, f"{label} was created from {attrs['Config'].get('Image')}, not "
                                           f"{expected.label}: docker rm -f {label}, then run it again from {expected.label}."))
    if p.running:
        findings.append(_state_finding(label, attrs))
    findings += _env_findings(label, attrs, p.env)
    findings += _port_findings(label, attrs, p.publish)
    return findings


class ProgramsParams(Params):
    machine: str
    container: str
    programs: list[str] = Field(min_length=1)

    @field_validator("programs")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not PROGRAM.match(name):
                raise ValueError(f"{name!r} is not a program name")
        return value


@kind("program_installed", ProgramsParams)
def program_installed(ctx: Context, p: ProgramsParams) -> list[Finding]:
    """Programs can be run in a (running) container: found on its PATH."""
    attrs = ctx.container(p.machine, p.container)
    if attrs is None:
        return [Finding(False, f"There is no container named {p.container} on {p.machine}.")]
    if not attrs["State"].get("Running"):
        return [Finding(False, f"{p.container} is not running, so nothing can be installed in it: docker start {p.container}.")]
    script = f"PATH={SEARCH_PATH}:$PATH; for p in {' '.join(p.programs)}; do " \
             'if command -v "$p" >/dev/null 2>&1; then echo "$p yes"; else echo "$p no"; fi; done'
    code, output = ctx.run_in_container(p.machine, attrs["Id"], script)
    seen = dict(line.split(" ", 1) for line in output.splitlines() if " " in line)
    if code != 0 and not seen:
        return [Finding(False, f"Berth could not look inside {p.container} (it has no sh?): {output.strip()[:120]}")]
    findings = []
    for program in p.programs:
        if seen.get(program) == "yes":
            findings.append(Finding(True, f"{program} is installed in {p.container}."))
        else:
            findings.append(Finding(False, f"{program} is not installed in {p.container} yet."))
    return findings


class FileParams(Params):
    machine: str
    container: str | None = None
    path: str | None = Field(default=None, pattern=r"^/")
    folder: str | None = Field(default=None, pattern=r"^/", description="any file directly in it (with contains)")
    contains: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> FileParams:
        if (self.path is None) == (self.folder is None):
            raise ValueError("give either path or folder")
        if self.folder is not None and (self.contains is None or self.container is not None):
            raise ValueError("a folder is searched in the machine, for a file that contains a text")
        return self


READ_LIMIT = 1024 * 1024
HTTP_TIME = 5.0  # seconds a page may take to arrive whole


def read_machine_file(ctx: Context, machine: str, path: str) -> str | None:
    """A file's text (up to READ_LIMIT) from a machine; None if it is not a file there."""
    result = ctx.run_in_machine(machine, ["sh", "-c", 'test -f "$1" || exit 3; head -c "$2" -- "$1"',
                                          "sh", path, str(READ_LIMIT)])
    if result.exit_code == 3:
        return None
    if result.exit_code != 0:
        raise CheckProblem(f"Berth could not read {path} on {machine}: {result.text.strip()[:120]}")
    return result.text


def read_container_file(ctx: Context, machine: str, container_id: str, path: str) -> str | None:
    try:
        stream, stat = ctx.engine(machine).api.get_archive(container_id, path)
    except docker.errors.NotFound:
        return None
    if stat.get("mode", 0) & (1 << 31):  # a directory
        return None
    data = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.next()
        if member is None or not member.isfile():
            return None
        handle = archive.extractfile(member)
        return handle.read(READ_LIMIT).decode("utf-8", "replace") if handle else None


# Lists the regular files directly in a folder of the machine with their first bytes, for
# a file whose name is the learner's choice.
FOLDER_SCAN = r"""
import json, os, sys
folder = sys.argv[1]
if not os.path.isdir(folder):
    print("null")
    sys.exit()
found = {}
for name in sorted(os.listdir(folder))[:200]:
    path = os.path.join(folder, name)
    if os.path.isfile(path) and not os.path.islink(path):
        with open(path, "rb") as handle:
            found[path] = handle.read(65536).decode("utf-8", "replace")
print(json.dumps(found))
"""


def _file_in_folder(ctx: Context, p: FileParams) -> list[Finding]:
    folder = (p.folder or "").rstrip("/") or "/"
    result = ctx.run_in_machine(p.machine, ["python3", "-c", FOLDER_SCAN, folder])
    if result.exit_code != 0:
        raise CheckProblem(f"Berth could not look in {folder} on {p.machine}: {result.text.strip()[-120:]}")
    files = json.loads(result.text)
    if files is None:
        return [Finding(False, f"There is no folder {folder} on {p.machine} yet (mkdir {folder}).")]
    holding = [path for path, text in files.items() if (p.contains or "") in text]
    if holding:
        return [Finding(True, f"{holding[0]} on {p.machine} says {p.contains!r}.")]
    if files:
        return [Finding(False, f"No file in {folder} on {p.machine} says {p.contains!r} yet "
                               f"(there is {', '.join(list(files)[:3])}).")]
    return [Finding(False, f"{folder} on {p.machine} has no file yet that says {p.contains!r}.")]


@kind("file", FileParams)
def file(ctx: Context, p: FileParams) -> list[Finding]:
    """A file exists in a machine (or in a container of it) and contains a text; or some
    file in a folder of the machine contains it, whatever its name."""
    if p.folder is not None:
        return _file_in_folder(ctx, p)
    assert p.path is not None
    if p.container:
        attrs = ctx.container(p.machine, p.container)
        if attrs is None:
            return [Finding(False, f"There is no container named {p.container} on {p.machine}.")]
        where = f"in {p.container} on {p.machine}"
        text = read_container_file(ctx, p.machine, attrs["Id"], p.path)
    else:
        where = f"on {p.machine}"
        text = read_machine_file(ctx, p.machine, p.path)
    if text is None:
        return [Finding(False, f"There is no file {p.path} {where} yet.")]
    findings = [Finding(True, f"{p.path} exists {where}.")]
    if p.contains is not None:
        if p.contains in text:
            findings.append(Finding(True, f"{p.path} contains {p.contains!r}."))
        else:
            findings.append(Finding(False, f"{p.path} {where} does not contain {p.contains!r}."))
    return findings


class HttpParams(Params):
    machine: str
    port: int = Field(gt=0, lt=65536)
    path: str = Field(default="/", pattern=r"^/")
    contains: str | None = None
    not_default: bool = Field(default=False, description="fail on a web server's default page")
    same_as: FileRef | None = Field(default=None, description="the page must be this file")
    server: str | None = Field(default=None, description="text the Server header must contain, e.g. nginx")


def _normal(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


@kind("http", HttpParams)
def http(ctx: Context, p: HttpParams) -> list[Finding]:
    """A page is served on a port the machine publishes: from a given server, not a default
    page, the same as a file, containing a text."""
    host, port = ctx.reach(p.machine, p.port)
    url = f"http://{host}:{port}{p.path}"
    where = f"port {p.port} of {p.machine}"
    Where = "P" + where[1:]  # noqa: N806 - the same words, starting a sentence
    try:
        response = ctx.http.get(url, timeout=(2, 4), allow_redirects=False, stream=True)
        # the learner's server may answer without end, or a byte at a time: read a page's
        # worth at most, for HTTP_TIME in all
        content = read_bounded(response, READ_LIMIT, time.monotonic() + HTTP_TIME)
    except TooMuch:
        return [Finding(False, f"{Where} answers, but its page did not arrive within {HTTP_TIME:.0f} s.")]
    except requests.exceptions.ConnectionError as error:
        if "refused" in str(error).lower():
            return [Finding(False, f"Nothing answers on {where} yet: is the port published and a web server listening on it?")]
        return [Finding(False, f"{Where} is published, but no web server answers behind it: "
                               f"is one running in the container and listening on the container's port?")]
    except requests.exceptions.Timeout:
        return [Finding(False, f"Nothing answers on {where} within 4 s.")]
    except requests.exceptions.RequestException as error:
        return [Finding(False, f"{Where} does not answer with a web page ({type(error).__name__}).")]
    findings = []
    if response.status_code != 200:
        return [Finding(False, f"{Where} answers {response.status_code} {response.reason}, not a page.")]
    body = content.decode(response.encoding or "utf-8", "replace")
    if p.server is not None:
        header = response.headers.get("Server", "")
        if p.server.lower() in header.lower():
            findings.append(Finding(True, f"{p.server} answers on {where}."))
        else:
            findings.append(Finding(False, f"{Where} answers, but not from {p.server} "
                                           f"(Server: {header or 'not said'})."))
    default = next((what for marker, what in DEFAULT_PAGES.items() if marker in body), None)
    if p.same_as is not None:
        try:
            expected = read_machine_file(ctx, p.same_as.machine, p.same_as.path)
        except CheckProblem as problem:
            expected, findings = None, findings + [Finding(False, str(problem))]
        if expected is None:
            findings.append(Finding(False, f"{Where} serves a page, but there is no "
                                           f"{p.same_as.path} on {p.same_as.machine} to compare it with."))
        elif _normal(expected) == _normal(body):
            findings.append(Finding(True, f"{Where} serves your page ({p.same_as.path} from {p.same_as.machine})."))
        elif default:
            findings.append(Finding(False, f"{Where} serves {default}, not your {p.same_as.path}."))
        else:
            findings.append(Finding(False, f"{Where} serves a page, but not the one in "
                                           f"{p.same_as.path} on {p.same_as.machine}."))
    elif p.not_default:
        if default:
            findings.append(Finding(False, f"{Where} serves {default}, not your own page."))
        else:
            findings.append(Finding(True, f"{Where} serves your own page."))
    if p.contains is not None:
        if p.contains in body:
            findings.append(Finding(True, f"The page on {where} says {p.contains!r}."))
        else:
            findings.append(Finding(False, f"The page on {where} does not say {p.contains!r}."))
    if not findings:
        findings.append(Finding(True, f"{Where} serves a page."))
    return findings


class ImageParams(Params):
    machine: str
    name: str | None = None
    committed_from: str | None = None
    tagged: bool = Field(default=False, description="the image must have a name (a tag); "
                                                    "otherwise an unnamed one passes, with a tip to name it")
    imported: bool = Field(default=False, description="made by docker import: one layer, history says Imported")
    cmd: list[str] | None = Field(default=None, description="the image's CMD, exec form; the shell form counts")
    env: dict[str, str] = Field(default={}, description="environment variables the image sets")
    built_on: str | None = Field(default=None, description="an image whose layers are this one's first layers")
    absent: bool = Field(default=False, description="the image (by name) must be gone")

    @model_validator(mode="after")
    def _one_way(self) -> ImageParams:
        if (self.name is None) == (self.committed_from is None):
            raise ValueError("give either name or committed_from")
        if self.name is None and (self.imported or self.cmd is not None or self.env or self.built_on or self.absent):
            raise ValueError("imported, cmd, env, built_on and absent are checked on an image given by name")
        if self.absent and (self.imported or self.cmd is not None or self.env or self.built_on or self.tagged):
            raise ValueError("absent takes the image's name alone")
        return self


def _imported_finding(ctx: Context, machine: str, name: str, label: str, attrs: dict) -> Finding:
    """Made by docker import: its newest (and only) step of history says Imported, so it
    has one layer; and the export it came from, when the tar is in the machine (the
    digest of the tar is the ID of the layer). A commit or a build on top of an imported
    image (the base image Berth builds is one) is not an import."""
    layers = (attrs.get("RootFS") or {}).get("Layers") or []
    history = ctx.engine(machine).api.history(attrs["Id"])
    top = (history[0].get("Comment") or "") if history else ""  # the newest step
    comment = top if top.startswith("Imported") else ""
    again = f"docker import FILE {name}"
    others = [t for t in attrs.get("RepoTags") or [] if t.rsplit(":", 1)[0] != label.rsplit(":", 1)[0]]
    if others:
        return Finding(False, f"{label} is another name of {others[0]} (docker tag), not an image imported "
                              f"from an export ({again}).")
    if not comment and attrs.get("Container"):
        return Finding(False, f"{label} was made from a container (docker commit, or a step of a build), "
                              f"not imported ({again}).")
    if not comment:
        return Finding(False, f"{label} has {len(layers)} layers and docker history does not say Imported: "
                              f"it was not made by docker import ({again}).")
    source = next((a for a in archives(ctx, machine, ARCHIVE_PLACES) if a.exported and a.digest == layers[0]), None)
    whence = f", from {source.path}" if source else ""
    return Finding(True, f"{label} was made by docker import{whence}: one layer, and docker history says "
                         f"{comment!r}.")


def _cmd_finding(label: str, attrs: dict, cmd: list[str]) -> Finding:
    actual = (attrs.get("Config") or {}).get("Cmd") or []
    wanted = json.dumps(cmd)
    if actual == cmd or actual == ["/bin/sh", "-c", " ".join(cmd)]:
        return Finding(True, f"{label}'s CMD is {json.dumps(actual)}.")
    if not actual:
        return Finding(False, f"{label} has no CMD (docker import keeps none: give it with "
                              f"--change 'CMD {wanted}').")
    return Finding(False, f"{label}'s CMD is {json.dumps(actual)}, not {wanted} (--change 'CMD {wanted}').")


def _image_env_findings(label: str, attrs: dict, env: dict[str, str]) -> list[Finding]:
    actual = env_of(attrs)
    findings = []
    for key, value in env.items():
        if key not in actual:
            findings.append(Finding(False, f"{label} does not set {key} (--change 'ENV {key}={value}')."))
        elif actual[key] != value:
            findings.append(Finding(False, f"{label} sets {key} to {actual[key]!r}, not {value!r}."))
        else:
            findings.append(Finding(True, f"{label} sets {key}={value}."))
    return findings


def normal_name(name: str) -> str:
    """An image name as docker lists it: 'docker.io/library/debian' -> 'debian:latest'."""
    for prefix in ("docker.io/", "index.docker.io/"):
        name = name.removeprefix(prefix)
    name = name.removeprefix("library/")
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def users(ctx: Context, machine: str, image_id: str) -> list[dict]:
    """The containers (running or not) created from the image: they keep it from removal."""
    return [c for c in ctx.containers(machine) if c["Image"] == image_id]


def _still_there_finding(ctx: Context, machine: str, label: str, attrs: dict) -> Finding:
    """An image asked to be gone is there: what holds it, and how to remove it."""
    others = [t for t in attrs.get("RepoTags") or [] if normal_name(t) != normal_name(label) and t != "<none>:<none>"]
    if others:
        return Finding(False, f"{label} is still there: docker rmi {label} removes this name (the image keeps "
                              f"its other name, {others[0]}).")
    using = users(ctx, machine, attrs["Id"])
    if not using:
        return Finding(False, f"{label} is still there: docker rmi {label} (or docker image rm {label}) removes it.")
    names = [c["Name"].lstrip("/") for c in using]
    running = [c["Name"].lstrip("/") for c in using if c["State"].get("Running")]
    which = f"a container ({names[0]})" if len(names) == 1 else f"containers ({', '.join(names[:4])})"
    uses = "uses" if len(names) == 1 else "use"
    if running:
        return Finding(False, f"{label} is still there: {which} {uses} it, running, and docker refuses to remove "
                              f"an image a running container uses (docker rmi -f removes only its name); stop and "
                              f"remove the container first (docker rm -f {' '.join(running)}), then docker rmi {label}.")
    return Finding(False, f"{label} is still there: {which} {uses} it, and docker refuses to remove an image a "
                          f"container uses, even a stopped one; remove the container first "
                          f"(docker rm {' '.join(names[:4])}), or docker rmi -f {label}.")


def _built_on_finding(ctx: Context, machine: str, label: str, attrs: dict, base: str) -> Finding:
    """The base's layers are this image's first layers (docker image inspect: RootFS.Layers)."""
    found = find_image(ctx, machine, base)
    if found is None:
        return Finding(False, f"There is no image {base} on {machine} to compare {label}'s layers with "
                              f"(docker pull {base}).")
    own = (attrs.get("RootFS") or {}).get("Layers") or []
    under = (found[0].get("RootFS") or {}).get("Layers") or []
    if under and own[:len(under)] == under:
        count = "its layer" if len(under) == 1 else f"its {len(under)} layers"
        return Finding(True, f"{label} is built on {found[1]}: it shares {count}, stored once, and adds "
                             f"{len(own) - len(under)} of its own (RootFS.Layers in docker image inspect).")
    return Finding(False, f"{label} does not start with {found[1]}'s layers: it is not built on it.")


def remember_images(ctx: Context, machine: str, images: list[dict]) -> None:
    """Images seen on a machine stay known for the session, with a name to speak of them,
    so that a check can tell images removed from images never pulled."""
    key = ctx.machine(machine).container_id
    for attrs in images:
        ctx.facts.remember("images seen", key, f"{attrs['Id']} {image_label(attrs)}")


@kind("image", ImageParams)
def image(ctx: Context, p: ImageParams) -> list[Finding]:
    """An image exists (by name, any tag when none is asked), or one was committed from a
    container (named or not); one made by docker import, with a CMD and environment; one
    built on another (sharing its layers); or, `absent`, the image is gone."""
    if p.name is not None:
        found = find_image(ctx, p.machine, p.name)
        if p.absent:
            if found is None:
                return [Finding(True, f"There is no image {p.name} on {p.machine} any more.")]
            return [_still_there_finding(ctx, p.machine, found[1], found[0])]
        if found is None:
            return [Finding(False, f"There is no image {p.name} on {p.machine}.")]
        attrs, label = found
        remember_images(ctx, p.machine, [attrs])
        findings = [Finding(True, f"{label} is listed by docker images on {p.machine}.")]
        if p.built_on is not None:
            findings.append(_built_on_finding(ctx, p.machine, label, attrs, p.built_on))
        if p.imported:
            findings.append(_imported_finding(ctx, p.machine, p.name, label, attrs))
        if p.cmd is not None:
            findings.append(_cmd_finding(label, attrs, p.cmd))
        return findings + _image_env_findings(label, attrs, p.env)
    images, exists = committed_images(ctx, p.machine, p.committed_from or "")
    if not images:
        if not exists:
            return [Finding(False, f"There is no container named {p.committed_from} on {p.machine} to commit.")]
        return [Finding(False, f"No image has been committed from {p.committed_from} yet "
                               f"(docker commit {p.committed_from} NAME:TAG).")]
    tagged = [i for i in images if image_label(i) != short(i["Id"])]
    if not tagged:
        newest = short(images[0]["Id"])
        unnamed = f"It has no name, so docker images lists it as <none>: docker tag {newest} NAME:TAG"
        if p.tagged:
            return [Finding(True, f"An image was committed from {p.committed_from} ({newest})."),
                    Finding(False, unnamed + ".")]
        return [Finding(True, f"An image was committed from {p.committed_from} ({newest}) and is listed by docker images."),
                Finding(True, unnamed + " names it; its ID works wherever a name does.", tip=True)]
    best = tagged[0]
    return [Finding(True, f"{image_label(best)} was committed from {p.committed_from} and is listed by docker images.")]


class PrunedParams(Params):
    machine: str


@kind("images_pruned", PrunedParams)
def images_pruned(ctx: Context, p: PrunedParams) -> list[Finding]:
    """No image is left that no container uses (what docker image prune -a removes), and
    some image seen on the machine earlier in the session is gone: pruned, not never pulled."""
    images = ctx.images(p.machine)
    key = ctx.machine(p.machine).container_id
    seen = dict(value.split(" ", 1) for value in ctx.facts.recall("images seen", key))
    remember_images(ctx, p.machine, images)
    unused = [attrs for attrs in images if not users(ctx, p.machine, attrs["Id"])]
    if unused:
        labels = [image_label(attrs) if image_label(attrs) != short(attrs["Id"]) else f"{short(attrs['Id'])} (<none>)"
                  for attrs in unused]
        some = ", ".join(labels[:4]) + (f" and {len(labels) - 4} more" if len(labels) > 4 else "")
        verb = "is" if len(labels) == 1 else "are"
        return [Finding(False, f"{some} {verb} on {p.machine} and no container uses "
                               f"{'it' if len(labels) == 1 else 'them'}: docker image prune -a removes every "
                               f"such image (docker image prune alone only removes the untagged ones).")]
    present = {attrs["Id"] for attrs in images}
    gone = [label for image_id, label in seen.items() if image_id not in present]
    if not gone:
        if not seen:
            return [Finding(False, f"No image has been on {p.machine} yet, so there is nothing to prune (docker pull first).")]
        return [Finding(False, f"Every image {p.machine} had is still there, each used by a container.")]
    kept = f"; {len(images)} kept, used by containers" if images else ""
    return [Finding(True, f"No image on {p.machine} is left unused: {', '.join(sorted(gone)[:4])} "
                          f"{'is' if len(gone) == 1 else 'are'} gone{kept}.")]


ARCHIVE_PLACES = ["/root", "/home", "/tmp", "/var/tmp", "/srv", "/opt"]

# Run in the machine by Berth (sent with each check, never stored there): lists regular
# files that start like a tar archive (plain or compressed) and reads what images each
# `docker save` archive holds from its manifest.json. A tar of a root file system (what
# `docker export` writes) gets the digest of its uncompressed stream, which is the layer ID
# `docker import` gives it, and which of the paths in argv[2] it holds. Files whose size and
# time are in argv[1] (already known) are only reported, not read again.
ARCHIVE_SCAN = r"""
import bz2, gzip, hashlib, json, lzma, os, stat, sys, tarfile, time
known = set(json.loads(sys.argv[1]))
probes = json.loads(sys.argv[2])
started = time.monotonic()
budget, hard = started + float(sys.argv[3]), started + 2 * float(sys.argv[3])
found = []
partial = False
OPEN = {"tar": open, "gz": gzip.open, "bz": bz2.open, "xz": lzma.open}
class Hashing:
    # reads the uncompressed stream once, for tarfile and for its digest alike
    def __init__(self, stream):
        self.stream, self.sha = stream, hashlib.sha256()
    def read(self, size=-1):
        if time.monotonic() > hard:
            raise TimeoutError
        data = self.stream.read(size)
        self.sha.update(data)
        return data
def members(archive, entry):
    # what images a docker save archive holds (its manifest.json), whether it is a root file
    # system, and which of the probes it holds
    for member in archive:
        if time.monotonic() > hard:
            raise TimeoutError
        name = member.name
        while name.startswith("./"):
            name = name[2:]
        name = name.rstrip("/")
        if name == "manifest.json":
            entry["images"] = [{"config": m.get("Config", ""), "tags": m.get("RepoTags") or []}
                               for m in json.load(archive.extractfile(member))]
        elif name in ("etc", "usr", "bin"):
            entry["root"] = True
        if "/" + name in probes:
            entry["holds"].append("/" + name)
for top in sys.argv[4:]:
    depth = top.rstrip("/").count("/")
    for folder, dirs, files in os.walk(top):
        if folder.count("/") - depth >= 3:
            dirs[:] = []
        for name in files:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size < 1024:
                    continue
                key = "%s:%d:%d" % (path, st.st_size, st.st_mtime_ns)
                if key in known:
                    found.append({"key": key, "known": True})
                    continue
                if time.monotonic() > budget:
                    partial = True  # read next time: what is read is kept
                    continue
                with open(path, "rb") as handle:
                    head = handle.read(512)
                if head[257:262] == b"ustar":
                    form, packing = "tar", "tar"
                elif head[:2] == b"\x1f\x8b":
                    form, packing = "compressed", "gz"
                elif head[:3] == b"BZh":
                    form, packing = "compressed", "bz"
                elif head[:6] == b"\xfd7zXZ\x00":
                    form, packing = "compressed", "xz"
                else:
                    continue
                entry = {"key": key, "path": path, "size": st.st_size, "form": form, "images": [],
                         "root": False, "holds": []}
                try:
                    if packing == "tar":
                        # a plain tar is read by its headers alone, seeking past the files in
                        # it (a docker save archive of nginx in a fraction of a second, even
                        # on a loaded machine); only a root file system's is hashed whole
                        with tarfile.open(path, "r:") as archive:
                            members(archive, entry)
                            if archive.offset > st.st_size:  # its last file is cut short
                                raise EOFError("unexpected end of data")
                        if entry["root"] and not entry["images"]:
                            with open(path, "rb") as raw:
                                stream = Hashing(raw)
                                while stream.read(1 << 20):
                                    pass
                    else:
                        with OPEN[packing](path, "rb") as raw:
                            stream = Hashing(raw)
                            with tarfile.open(fileobj=stream, mode="r|") as archive:
                                members(archive, entry)
                            while stream.read(1 << 20):
                                pass
                    if entry["root"] and not entry["images"]:
                        entry["digest"] = "sha256:" + stream.sha.hexdigest()
                except TimeoutError:
                    partial = True  # too slow this time: read from the start next time
                    continue
                except (tarfile.TarError, EOFError, OSError, ValueError) as error:
                    entry["error"] = str(error)[:200]
                found.append(entry)
            except OSError:
                continue
print(json.dumps({"found": found, "partial": partial}))
"""


@dataclass(frozen=True)
class Archive:
    path: str
    size: int
    form: str
    configs: tuple[str, ...]  # image ids (hex) it holds
    tags: tuple[str, ...]
    error: str = ""
    root: bool = False  # a root file system (etc, usr, bin at its top), as docker export writes
    digest: str = ""  # of the uncompressed tar: the layer ID docker import gives it
    holds: tuple[str, ...] = ()  # which of the paths asked for it holds

    @property
    def exported(self) -> bool:
        return self.root and not self.configs


class Archives(list):
    """Archives found in a machine; `partial`: some files were left to read next time."""

    partial: bool = False


# Seconds a scan starts reading new files (the rest are read the next time); a file still
# being read at twice that is left for the next time too, so that a scan ends within the
# check's time whatever the machine's load.
SCAN_BUDGET = 3.5


def archives(ctx: Context, machine: str, places: list[str], probes: tuple[str, ...] = ()) -> Archives:
    """The tar archives in a machine's usual places, with what images they hold, or, for a
    file-system tar, its digest and which of `probes` (absolute paths) it holds. A file is
    read once per size and time (a 400 MB archive takes a while if compressed), and a scan
    that runs out of time keeps what it read, so that many archives are read over rounds."""
    def make() -> Archives:
        cache = ctx.session_cache.setdefault(("archives", ctx.machine(machine).container_id, probes), {})
        result = ctx.run_in_machine(machine, ["python3", "-c", ARCHIVE_SCAN, json.dumps(sorted(cache)),
                                              json.dumps(list(probes)), str(SCAN_BUDGET), *places],
                                    timeout=CHECK_TIMEOUT - 2)
        if result.exit_code != 0:
            raise CheckProblem(f"Berth could not look for archives on {machine}: {result.text.strip()[-160:]}")
        scan = json.loads(result.text)
        found = Archives()
        found.partial = scan["partial"]
        for entry in scan["found"]:
            if not entry.get("known"):
                configs = tuple(re.sub(r"^(blobs/sha256/|sha256:)", "", i["config"]).removesuffix(".json")
                                for i in entry["images"])
                tags = tuple(t for i in entry["images"] for t in i["tags"])
                cache[entry["key"]] = Archive(entry["path"], entry["size"], entry["form"], configs, tags,
                                              entry.get("error", ""), entry.get("root", False),
                                              entry.get("digest", ""), tuple(entry.get("holds", ())))
            found.append(cache[entry["key"]])
        if not found.partial:
            for key in set(cache) - {e["key"] for e in scan["found"]}:
                del cache[key]
        return found
    return ctx.memo(("archives", machine, tuple(places), probes), make)


def still_reading(found: Archives, machine: str) -> None:
    """Nothing fitting was found, but some archives are not read yet: say so, not 'none'."""
    if found.partial:
        raise CheckProblem(f"Berth is still reading the archives on {machine} (large ones take a while); "
                           f"it looks again.")


class ArchiveParams(Params):
    machine: str
    image: ImageRef | str
    places: list[str] = Field(default=ARCHIVE_PLACES, description="folders searched (3 levels deep)")


@kind("saved_archive", ArchiveParams)
def saved_archive(ctx: Context, p: ArchiveParams) -> list[Finding]:
    """A file in a machine is a `docker save` archive (plain or compressed, any name)
    holding the image."""
    wanted = resolve(ctx, p.image, p.machine)
    if wanted.problem:
        return [Finding(False, wanted.problem)]
    hexes = {i.removeprefix("sha256:") for i in wanted.ids}
    found = archives(ctx, p.machine, p.places)
    holding = [a for a in found if hexes & set(a.configs)]
    if holding:
        best = holding[0]
        form = " (compressed)" if best.form == "compressed" else ""
        if best.form == "tar" and best.path.endswith((".gz", ".tgz", ".bz2", ".xz", ".zst")):
            form = " (a plain tar, whatever its name says: docker save does not compress)"
        return [Finding(True, f"{best.path} on {p.machine} is a docker save archive of {wanted.label}{form}.")]
    still_reading(found, p.machine)
    unfinished = [a for a in found if a.error and not a.configs]
    if unfinished:
        return [Finding(False, f"{unfinished[0].path} on {p.machine} is not a whole archive (yet?): "
                               f"{unfinished[0].error}.")]
    saved = [a for a in found if a.configs]
    if saved:
        what = ", ".join(saved[0].tags) or "another image"
        return [Finding(False, f"{saved[0].path} on {p.machine} is a docker save archive, but of {what}, "
                               f"not {wanted.label}.")]
    exported = [a for a in found if a.exported]
    if exported:
        return [Finding(False, f"{exported[0].path} on {p.machine} is a container's file system (docker export), "
                               f"not a docker save archive: it has no manifest.json, no layers and no settings "
                               f"(docker save -o FILE {wanted.label}).")]
    return [Finding(False, f"There is no docker save archive of {wanted.label} on {p.machine} yet "
                           f"(looked in {', '.join(p.places)}).")]


class ExportParams(Params):
    machine: str
    container: str | None = Field(default=None, description="the container exported (said in the messages)")
    holds: list[str] = Field(default=[], description="absolute paths the file system must hold")
    places: list[str] = Field(default=ARCHIVE_PLACES, description="folders searched (3 levels deep)")

    @field_validator("holds")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or path == "/":
                raise ValueError(f"{path!r} is not an absolute path of a file")
        return [path.rstrip("/") for path in value]


def _packing(archive: Archive) -> str:
    if archive.form == "compressed":
        return " (compressed)"
    if archive.path.endswith((".gz", ".tgz", ".bz2", ".xz", ".zst")):
        return " (a plain tar, whatever its name says)"
    return ""


@kind("exported_archive", ExportParams)
def exported_archive(ctx: Context, p: ExportParams) -> list[Finding]:
    """A file in a machine is a container's file system as `docker export` writes it (a tar
    of a root file system, plain or compressed, any name), holding given paths; not a
    `docker save` archive."""
    found = archives(ctx, p.machine, p.places, tuple(p.holds))
    source = p.container or "CONTAINER"
    exported = [a for a in found if a.exported]
    whole = [a for a in exported if set(p.holds) <= set(a.holds)]
    if whole:
        best = whole[0]
        holding = f", holding {', '.join(p.holds)}" if p.holds else ""
        return [Finding(True, f"{best.path} on {p.machine} is a container's file system, as docker export "
                              f"writes it{holding}{_packing(best)}.")]
    still_reading(found, p.machine)
    if exported:
        lacks = [path for path in p.holds if path not in exported[0].holds]
        return [Finding(False, f"{exported[0].path} on {p.machine} is a file system, but it lacks "
                               f"{', '.join(lacks)}: export {source} again once {lacks[0]} is in it "
                               f"(docker export -o FILE {source}).")]
    saved = [a for a in found if a.configs]
    if saved:
        return [Finding(False, f"{saved[0].path} on {p.machine} is a docker save archive (it has manifest.json): "
                               f"an image's layers and settings, not a container's file system "
                               f"(docker export -o FILE {source}).")]
    unfinished = [a for a in found if a.error]
    if unfinished:
        return [Finding(False, f"{unfinished[0].path} on {p.machine} is not a whole archive (yet?): "
                               f"{unfinished[0].error}.")]
    return [Finding(False, f"There is no export of {'a container' if p.container is None else p.container}'s "
                           f"file system on {p.machine} yet (docker export -o FILE {source}; "
                           f"looked in {', '.join(p.places)}).")]


class LoadedParams(Params):
    machine: str
    image: ImageRef | str


@kind("image_loaded", LoadedParams)
def image_loaded(ctx: Context, p: LoadedParams) -> list[Finding]:
    """The machine's engine has the image (the very same, by id), e.g. from `docker load`."""
    wanted = resolve(ctx, p.image, p.machine)
    if wanted.problem:
        return [Finding(False, wanted.problem)]
    here = [i for i in ctx.images(p.machine) if i["Id"] in wanted.ids]
    if not here:
        return [Finding(False, f"{wanted.label} is not on {p.machine} yet (docker load -i FILE).")]
    source = p.image.machine if isinstance(p.image, ImageRef) and p.image.machine else None
    label = image_label(here[0])
    if source and source != p.machine:
        return [Finding(True, f"{label} is on {p.machine}: the very image from {source}.")]
    return [Finding(True, f"{label} is on {p.machine}.")]


from . import layer_checks  # noqa: E402,F401 - registers the layer kinds
