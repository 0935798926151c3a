"""Check kinds for image layers by hand: an OverlayFS mount in a machine (its lower, upper
and work directories, read from the machine's /proc/mounts, and what its merged view
shows), and what the upper directory records when files change through the view: a copy
of a changed file (copy-on-write), a whiteout for a deleted one, a new file; for a mount
the learner made, or for a container of the machine's engine (its GraphDriver folders).

Like every kind, they look at the machine itself, never at what the terminal printed.
Importing this module registers the kinds (checks.py does)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, model_validator

from .check_framework import CheckProblem, Context, Finding, Params, kind

# Run in the machine by Berth (sent with each check, never stored there). argv[1] is what
# to look at: {"mount": PATH} finds the overlay mounted there, or {"upper": DIR, "lowers":
# [DIR...]} names the layers outright (a container's); "view": list the merged view's
# files, to find texts in them. Prints the mount and every entry of the upper directory:
# its kind (file, whiteout, dir, other), whether a lower layer has the same path, and the
# first bytes of both when they are files.
LAYER_SCAN = r"""
import json, os, re, stat, sys
ask = json.loads(sys.argv[1])
def unescape(text):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
def head(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
def entries(top, limit):
    found = []
    base = top.rstrip("/").count("/")
    for folder, dirs, files in os.walk(top):
        if folder.count("/") - base >= 3:
            dirs[:] = []
        for name in sorted(dirs + files):
            if len(found) >= limit:
                return found
            found.append(os.path.join(folder, name)[len(top.rstrip("/")):])
    return found
result = {"mount": None, "upper": ask.get("upper"), "lowers": ask.get("lowers") or [], "entries": [], "view": []}
if "mount" in ask:
    point = os.path.realpath(ask["mount"])
    for line in open("/proc/self/mounts"):
        device, where, fstype, options = line.split()[:4]
        if unescape(where) == point:
            parsed = {}
            for option in options.split(","):
                key, _, value = option.partition("=")
                parsed[key] = unescape(value)
            result["mount"] = {"type": fstype, "options": parsed}
    mount = result["mount"]
    if mount and mount["type"] == "overlay":
        options = mount["options"]
        result["upper"] = options.get("upperdir")
        result["lowers"] = [l for l in options.get("lowerdir", "").split(":") if l]
        result["work"] = options.get("workdir")
    if ask.get("view") and mount:
        for rel in entries(point, 200):
            text = head(point + rel) if os.path.isfile(point + rel) else None
            if text is not None:
                result["view"].append({"path": point + rel, "text": text})
upper = result["upper"]
if upper and os.path.isdir(upper):
    for rel in entries(upper, 500):
        st = os.lstat(upper + rel)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            what = "whiteout"
        elif stat.S_ISREG(st.st_mode):
            what = "file"
        elif stat.S_ISDIR(st.st_mode):
            what = "dir"
        else:
            what = "other"
        lower = next((l for l in result["lowers"] if os.path.lexists(l + rel)), None)
        result["entries"].append({"path": rel, "kind": what, "lower": lower,
                                  "text": head(upper + rel) if what == "file" else None,
                                  "lower_text": head(lower + rel) if lower and what == "file" else None})
result["missing_lowers"] = {}
for rel in ask.get("paths", []):
    result["missing_lowers"][rel] = not any(os.path.lexists(l + rel) for l in result["lowers"])
print(json.dumps(result))
"""


def look(ctx: Context, machine: str, ask: dict) -> dict:
    """What LAYER_SCAN sees in the machine, once per round for the same question."""
    def make() -> dict:
        result = ctx.run_in_machine(machine, ["python3", "-c", LAYER_SCAN, json.dumps(ask)])
        if result.exit_code != 0:
            raise CheckProblem(f"Berth could not look at the layers on {machine}: {result.text.strip()[-160:]}")
        return json.loads(result.text)
    return ctx.memo(("layers", machine, json.dumps(ask, sort_keys=True)), make)


def inside(path: str, folder: str) -> bool:
    folder = folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")


class OverlayParams(Params):
    machine: str
    mount: str = Field(pattern=r"^/", description="the mount point (the merged view)")
    lower: str | None = Field(default=None, pattern=r"^/", description="a lower directory it must stack")
    upper: str | None = Field(default=None, pattern=r"^/", description="its upper directory")
    shows: list[str] = Field(default=[], description="texts that files in the merged view must contain")


@kind("overlay", OverlayParams)
def overlay(ctx: Context, p: OverlayParams) -> list[Finding]:
    """An OverlayFS is mounted on a folder of the machine (as /proc/mounts says), stacks the
    given lower and upper directories, has a work directory of its own (not the mount point,
    as some guides write), and its merged view shows given texts."""
    seen = look(ctx, p.machine, {"mount": p.mount, "view": bool(p.shows)})
    mount = seen["mount"]
    lower, upper = p.lower or "/lower", p.upper or "/upper"
    command = f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir=/work {p.mount}"
    if mount is None:
        return [Finding(False, f"Nothing is mounted on {p.mount} on {p.machine} yet ({command}).")]
    if mount["type"] != "overlay":
        return [Finding(False, f"{p.mount} is a {mount['type']} mount, not an overlay "
                               f"(umount {p.mount}, then {command}).")]
    lowers, found_upper, work = seen["lowers"], seen["upper"], seen.get("work")
    findings = [Finding(True, f"An overlay is mounted on {p.mount}.")]
    again = f"umount {p.mount}, then mount it again"
    if p.lower is not None:
        if p.lower.rstrip("/") in [item.rstrip("/") for item in lowers]:
            findings.append(Finding(True, f"Its lower directory is {p.lower}."))
        else:
            findings.append(Finding(False, f"Its lower directories are {':'.join(lowers)}, not {p.lower} "
                                           f"({again} with lowerdir={p.lower})."))
    if p.upper is not None:
        if found_upper is None:
            findings.append(Finding(False, f"It has no upper directory, so it is read-only: nothing written in "
                                           f"{p.mount} could be kept ({again} with upperdir={p.upper})."))
        elif found_upper.rstrip("/") == p.upper.rstrip("/"):
            findings.append(Finding(True, f"Its upper directory is {p.upper}."))
        else:
            findings.append(Finding(False, f"Its upper directory is {found_upper}, not {p.upper} "
                                           f"({again} with upperdir={p.upper})."))
    if work and inside(work, p.mount):
        findings.append(Finding(False, (
            f"Its work directory is {work}, inside the mount point itself. This kernel lets that through, but "
            f"OverlayFS keeps its scratch folder (work) there, hidden under the view, and it is left behind in "
            f"{p.mount} after umount; many kernels refuse the mount ('wrong fs type, bad option'). The work "
            f"directory must be an empty folder of its own on the same file system as the upper one: "
            f"umount {p.mount}; rm -r {p.mount}/work; mkdir /work; then mount again with workdir=/work.")))
    elif work:
        findings.append(Finding(True, f"Its work directory, {work}, is a folder of its own beside the upper one."))
    for text in p.shows:
        where = next((f["path"] for f in seen["view"] if text in f["text"]), None)
        if where:
            findings.append(Finding(True, f"{where} says {text!r}."))
        else:
            findings.append(Finding(False, f"No file in {p.mount} says {text!r}."))
    return findings


class LayerChangeParams(Params):
    machine: str
    mount: str | None = Field(default=None, pattern=r"^/", description="an overlay's mount point")
    container: str | None = Field(default=None, description="or a container: its GraphDriver layers")
    change: Literal["changed", "deleted", "added"]
    path: str | None = Field(default=None, pattern=r"^/", description="the file, as the view shows it")
    contains: str | None = Field(default=None, description="text the upper copy must contain")

    @model_validator(mode="after")
    def _one_place(self) -> LayerChangeParams:
        if (self.mount is None) == (self.container is None):
            raise ValueError("give either mount or container")
        return self


@kind("layer_change", LayerChangeParams)
def layer_change(ctx: Context, p: LayerChangeParams) -> list[Finding]:
    """What the upper directory of an overlay (a mount, or a container's) records of a
    change made through its view: a changed copy of a lower file (copy-on-write), a
    whiteout (a character device 0, 0) for a deleted one, or a new file."""
    if p.container is not None:
        attrs = ctx.container(p.machine, p.container)
        if attrs is None:
            return [Finding(False, f"There is no container named {p.container} on {p.machine}.")]
        data = (attrs.get("GraphDriver") or {}).get("Data") or {}
        if not data.get("UpperDir"):
            driver = (attrs.get("GraphDriver") or {}).get("Name", "?")
            return [Finding(False, f"{p.container}'s storage driver is {driver}, which has no upper directory.")]
        ask = {"upper": data["UpperDir"], "lowers": [d for d in data.get("LowerDir", "").split(":") if d]}
        view, upper_name = p.container, f"{p.container}'s upper directory"
    else:
        ask = {"mount": p.mount}
        view, upper_name = p.mount or "", ""
    if p.path:
        ask["paths"] = [p.path]
    seen = look(ctx, p.machine, ask)
    upper = seen["upper"]
    if upper is None:
        return [Finding(False, f"There is no overlay with an upper directory mounted on {p.mount}, so nothing "
                               f"records changes yet.")]
    upper_name = upper_name or upper
    lowers = ":".join(seen["lowers"])
    entries = [e for e in seen["entries"] if p.path is None or e["path"] == p.path]
    example = p.path or "/lower.txt"
    if p.change == "changed":
        copies = [e for e in entries if e["kind"] == "file" and e["lower"]]
        changed = [e for e in copies if e["text"] != e["lower_text"]]
        if changed:
            e = changed[0]
            findings = [Finding(True, f"{e['path']} was changed through {view}: the changed copy is "
                                      f"{upper}{e['path']}, and {e['lower']}{e['path']} still says "
                                      f"{(e['lower_text'] or '').strip()[:60]!r}.")]
        elif copies:
            e = copies[0]
            return [Finding(False, f"{upper}{e['path']} is a copy of {e['lower']}{e['path']} with the same text: "
                                   f"change the file's text through {view}.")]
        elif any(e["kind"] == "whiteout" for e in entries):
            return [Finding(False, f"{example} was deleted through {view}, not changed: {upper} holds a whiteout.")]
        else:
            return [Finding(False, f"No file of the lower layer ({lowers}) has a changed copy in {upper} yet: "
                                   f"change one through {view} (echo more >> {view}{example}), "
                                   f"never in the lower folder itself.")]
        upper_text = changed[0]["text"] or ""
    elif p.change == "deleted":
        whiteouts = [e for e in entries if e["kind"] == "whiteout" and e["lower"]]
        if whiteouts:
            e = whiteouts[0]
            return [Finding(True, f"{e['path']} was deleted through {view}: {upper}{e['path']} is a whiteout "
                                  f"(a character device 0, 0) that hides {e['lower']}{e['path']}, "
                                  f"which is still there.")]
        if p.path and seen["missing_lowers"].get(p.path) and not entries:
            return [Finding(False, f"{p.path} is gone from the lower layer ({lowers}) itself: a layer below must "
                                   f"stay as it is. Write it there again, then delete it through {view}.")]
        return [Finding(False, f"{upper} has no whiteout yet: delete a file of the lower layer through {view} "
                               f"(rm {view}{example}).")]
    else:
        added = [e for e in entries if e["kind"] == "file" and not e["lower"]]
        if not added:
            where = f"{upper_name} ({upper})" if p.container else upper
            return [Finding(False, f"There is no {example if p.path else 'new file'} in {where} yet.")]
        e = added[0]
        findings = [Finding(True, f"{e['path']} is in {upper_name}: {upper}{e['path']}.")]
        upper_text = e["text"] or ""
    if p.contains is not None:
        if p.contains in upper_text:
            findings.append(Finding(True, f"It says {p.contains!r}."))
        else:
            findings.append(Finding(False, f"It does not say {p.contains!r}."))
    return findings
