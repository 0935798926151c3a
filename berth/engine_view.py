"""The engine view: a picture of one learner machine's Docker engine, for the panel beside
the terminal. Containers (name, image, running, published ports) and images, each image
as its layers bottom to top, with what made each layer (`docker history`), its size,
whether other images share it, and whether the learner's `docker commit` made it.

A layer is named by its chain id (its diff id and every layer under it), as the engine
stores it: two images that share a layer share its chain id, so "shared" is a count of
chain ids. What the learner's engine answers is theirs to shape; everything is bounded
(images, layers, containers, text) and read through the bounded engine client."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from typing import Any

import docker.errors
import requests.exceptions

from .machines import MachineError

MAX_IMAGES = 50
MAX_LAYERS = 130  # an image has at most 127
MAX_CONTAINERS = 50
MAX_TEXT = 300  # characters of a history step

NOP = "/bin/sh -c #(nop) "
SHELL = "/bin/sh -c "
# Steps that only set the image's configuration: they add no layer.
SETTINGS = re.compile(r"(ENV|CMD|LABEL|EXPOSE|ENTRYPOINT|USER|VOLUME|STOPSIGNAL|HEALTHCHECK|SHELL|ARG|"
                      r"MAINTAINER|ONBUILD|WORKDIR)\b")


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain id of each layer: how the engine names a layer together with those under it."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def step_text(created_by: str) -> str:
    """A history step as the learner would have written it."""
    text = (created_by or "").strip()
    if text.startswith(NOP):
        text = text[len(NOP):].strip()
    elif text.startswith(SHELL):
        text = "RUN " + text[len(SHELL):]
    text = text.removesuffix("# buildkit").strip()
    return text[:MAX_TEXT] + ("…" if len(text) > MAX_TEXT else "")


def is_setting(created_by: str, size: int) -> bool:
    """Whether a history step added no layer: it has no size and only sets configuration."""
    if size:
        return False
    text = (created_by or "").strip()
    if text.startswith(NOP):
        return not re.match(r"(ADD|COPY)\b", text[len(NOP):].strip())
    return bool(SETTINGS.match(text))


def layers_of(diff_ids: list[str], history: list[dict]) -> tuple[list[dict], list[str]]:
    """The image's layers bottom to top, each with the history step that made it and the
    settings steps above it; and the settings below the first layer. History comes newest
    first, as the engine gives it; its steps are matched to the layers oldest first."""
    steps = [(step_text(h.get("CreatedBy") or ""), int(h.get("Size") or 0), h.get("Comment") or "",
              is_setting(h.get("CreatedBy") or "", int(h.get("Size") or 0)))
             for h in reversed(history[:4 * MAX_LAYERS])]
    # Steps with a size made a layer; steps without one made a layer of nothing (an empty
    # RUN) or none (settings): the count of layers settles it, likelier ones first.
    sized = [i for i, step in enumerate(steps) if step[1]]
    unsized = [i for i, step in enumerate(steps) if not step[1] and not step[3]]
    settings = [i for i, step in enumerate(steps) if step[3]]
    wanted = max(0, len(diff_ids) - len(sized))
    extra = (unsized[::-1] + settings[::-1])[:wanted]
    layer_steps = sorted(sized + extra)[-len(diff_ids):] if diff_ids else []
    # If the history is shorter than the layers, the oldest layers go without a step.
    missing = len(diff_ids) - len(layer_steps)
    layers = [{"id": chain_id, "diff_id": diff_id, "created_by": "", "comment": "", "size": 0, "settings": []}
              for chain_id, diff_id in zip(chain_ids(diff_ids), diff_ids, strict=True)]
    below: list[str] = []
    position = {step: missing + n for n, step in enumerate(layer_steps)}
    current: int | None = None
    for i, (text, size, comment, _) in enumerate(steps):
        if i in position:
            current = position[i]
            layers[current].update(created_by=text, size=size, comment=comment[:MAX_TEXT])
        elif text:
            (layers[current]["settings"] if current is not None else below).append(text)
    return layers, below


def image_label(attrs: dict) -> str:
    tags = [t for t in attrs.get("RepoTags") or [] if t != "<none>:<none>"]
    return tags[0] if tags else attrs["Id"].removeprefix("sha256:")[:12]


def committed(attrs: dict) -> bool:
    """Whether `docker commit` made the image. A commit records the container it came from;
    so does the classic builder for each step, but its containers are made from an image
    id and run the step (`/bin/sh -c ...`), where the learner's were made from a name."""
    if not attrs.get("Container"):
        return False
    made_from = (attrs.get("ContainerConfig") or {}).get("Image") or ""
    cmd = (attrs.get("ContainerConfig") or {}).get("Cmd") or []
    built = made_from.startswith("sha256:") and (not cmd or cmd[:2] == ["/bin/sh", "-c"])
    return not built


def containers_of(summaries: list[dict]) -> list[dict]:
    found = []
    for summary in summaries[:MAX_CONTAINERS]:
        ports = sorted({(p.get("PublicPort"), p.get("PrivatePort"), p.get("Type") or "tcp")
                        for p in summary.get("Ports") or [] if p.get("PublicPort")}, key=str)
        found.append({
            "name": ((summary.get("Names") or ["/?"])[0]).lstrip("/")[:MAX_TEXT],
            "id": (summary.get("Id") or "")[:12],
            "image": (summary.get("Image") or "")[:MAX_TEXT],
            "state": summary.get("State") or "",
            "running": summary.get("State") == "running",
            "status": (summary.get("Status") or "")[:MAX_TEXT],
            "ports": [{"port": int(public), "container_port": int(private or 0), "protocol": protocol}
                      for public, private, protocol in ports],
        })
    return found


def picture(engine: docker.DockerClient, machine: str) -> dict[str, Any]:
    """The machine engine's containers and images, as the panel draws them; MachineError
    when the engine does not answer."""
    try:
        api = engine.api
        container_list = api.containers(all=True)
        summaries = sorted(api.images(), key=lambda i: i.get("Created") or 0, reverse=True)
        images = []
        for summary in summaries[:MAX_IMAGES]:
            try:
                attrs = api.inspect_image(summary["Id"])
                history = api.history(summary["Id"])
            except docker.errors.NotFound:
                continue  # removed meanwhile
            diff_ids = ((attrs.get("RootFS") or {}).get("Layers") or [])[:MAX_LAYERS]
            layers, below = layers_of(diff_ids, history if isinstance(history, list) else [])
            images.append({
                "id": attrs["Id"], "label": image_label(attrs),
                "tags": [t for t in attrs.get("RepoTags") or [] if t != "<none>:<none>"][:20],
                "size": int(attrs.get("Size") or 0), "created": attrs.get("Created") or "",
                "committed": committed(attrs), "settings": below, "layers": layers,
            })
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        raise MachineError(f"The Docker engine of {machine} does not answer right now; try again in a moment.",
                           str(error)) from None
    mark(images)
    # Images on the same base together, fewer layers first (the base before what is built on it).
    images.sort(key=lambda image: (image["layers"][0]["id"] if image["layers"] else "", len(image["layers"]),
                                   image["label"]))
    return {"machine": machine, "containers": containers_of(container_list), "images": images,
            "truncated": len(summaries) > MAX_IMAGES or len(container_list) > MAX_CONTAINERS,
            "layers": len({layer["id"] for image in images for layer in image["layers"]})}


def mark(images: list[dict]) -> None:
    """Mark each layer shared (with which images) and the learner's: the top layer of a
    committed image, wherever it is found (an image built on it carries it too)."""
    holders: dict[str, list[str]] = defaultdict(list)
    for image in images:
        for layer in image["layers"]:
            holders[layer["id"]].append(image["label"])
    theirs = {image["layers"][-1]["id"] for image in images if image["committed"] and image["layers"]}
    for image in images:
        for layer in image["layers"]:
            others = [label for label in holders[layer["id"]] if label != image["label"]]
            layer["shared"] = len(holders[layer["id"]]) > 1
            layer["shared_with"] = others
            layer["yours"] = layer["id"] in theirs
