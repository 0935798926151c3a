"""The engine view: a machine engine's containers and images as layers, from a real
session's engine (two images built FROM the base share its layers and each has a top layer
of its own; a committed container's layer is the learner's), and how history steps are
matched to layers (no engine needed)."""

from __future__ import annotations

import hashlib

import pytest
import requests

from berth.engine_view import chain_ids, layers_of, step_text

from .conftest import in_machine, wait_until


def step(created_by: str, size: int = 0, comment: str = "") -> dict:
    return {"CreatedBy": created_by, "Size": size, "Comment": comment}


def test_chain_ids_name_a_layer_with_those_under_it():
    assert chain_ids([]) == []
    first, second = chain_ids(["sha256:a", "sha256:b"])
    assert first == "sha256:a"
    assert second == "sha256:" + hashlib.sha256(b"sha256:a sha256:b").hexdigest()
    assert chain_ids(["sha256:b"]) != [second]  # the same diff on another base is another layer


def test_history_steps_are_matched_to_layers_and_settings_folded():
    history = [  # newest first, as the engine gives it
        step("/bin/sh -c #(nop)  CMD [\"sh\"]"),
        step("/bin/sh -c touch /empty"),  # a layer of nothing
        step("/bin/sh -c #(nop)  ENV A=1"),
        step("/bin/sh -c echo a > /a", 2),
        step("/bin/sh -c #(nop)  CMD [\"bash\"]"),
        step("/bin/sh -c #(nop) ADD file:abc in / ", 74_000_000),
    ]
    layers, below = layers_of(["sha256:base", "sha256:a", "sha256:empty"], history)
    assert below == []
    assert [layer["created_by"] for layer in layers] == [
        "ADD file:abc in /", "RUN echo a > /a", "RUN touch /empty"]
    assert [layer["size"] for layer in layers] == [74_000_000, 2, 0]
    assert [layer["settings"] for layer in layers] == [['CMD ["bash"]'], ["ENV A=1"], ['CMD ["sh"]']]
    assert step_text("RUN /bin/sh -c apt-get update # buildkit") == "RUN /bin/sh -c apt-get update"


def test_a_short_history_leaves_the_oldest_layers_without_a_step():
    layers, _ = layers_of(["sha256:x", "sha256:y"], [step("/bin/sh -c echo y > /y", 5)])
    assert [layer["created_by"] for layer in layers] == ["", "RUN echo y > /y"]


# --- against a real session's engine

@pytest.mark.engine
def test_engine_picture_shows_shared_layers_and_the_learners_commit(server, engine, lesson_session):
    session = lesson_session
    path = f"/api/sessions/{session['id']}/machines/workstation/engine"
    base = server.health().json()["base_image"]
    for name, file in (("one", "/a"), ("two", "/b")):
        code, output = in_machine(engine, session, "workstation",
                                  f"printf 'FROM {base}\\nRUN echo {name} > {file}\\n' | docker build -t {name} -",
                                  timeout=240)
        assert code == 0, output

    picture = server.get(path, session["token"])
    assert picture.status_code == 200, picture.text
    data = picture.json()
    images = {tag: image for image in data["images"] for tag in image["tags"]}
    one, two = images["one:latest"], images["two:latest"]
    base_layers = [layer["id"] for layer in one["layers"][:-1]]
    assert base_layers and base_layers == [layer["id"] for layer in two["layers"][:-1]]
    for layer in one["layers"][:-1]:
        assert layer["shared"] and "two:latest" in layer["shared_with"], layer
    for image, file in ((one, "/a"), (two, "/b")):
        top = image["layers"][-1]
        assert not top["shared"] and top["shared_with"] == [] and not top["yours"], top
        assert top["created_by"] == f"RUN echo {image['tags'][0].split(':')[0]} > {file}", top
        assert 0 < top["size"] < 1000
        assert not image["committed"]
    assert one["size"] > 0 and data["layers"] >= len(base_layers) + 2
    assert data["machine"] == "workstation" and data["checked_at"]

    code, output = in_machine(engine, session, "workstation",
                              f"docker run -d --name box -p 3000:80 {base} sleep 600 >/dev/null && "
                              "docker exec box sh -c 'echo mine > /mine' && docker commit box mine")
    assert code == 0, output
    data = server.get(path, session["token"]).json()
    box = next(c for c in data["containers"] if c["name"] == "box")
    assert box["running"] and box["image"] == base and box["ports"] == [
        {"port": 3000, "container_port": 80, "protocol": "tcp"}]
    mine = next(image for image in data["images"] if "mine:latest" in image["tags"])
    assert mine["committed"] and mine["layers"][-1]["yours"], mine
    assert [layer["id"] for layer in mine["layers"][:-1]] == base_layers
    assert not any(layer["yours"] for image in data["images"] if image is not mine for layer in image["layers"])


@pytest.mark.engine
def test_engine_picture_errors(server, lesson_session):
    session = lesson_session
    base = f"/api/sessions/{session['id']}/machines"
    assert server.get(f"{base}/workstation/engine").json()["error"] == "token_required"
    wrong = server.get(f"{base}/workstation/engine", "not-the-token")
    assert wrong.status_code in (401, 403, 404) and wrong.json()["error"]
    unknown = server.get(f"{base}/nowhere/engine", session["token"])
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_machine"
    colleague = wait_until(lambda: (r := server.get(f"{base}/colleague/engine", session["token"])).ok and r, 30,
                           lambda: "the colleague's engine did not answer")
    assert colleague.json()["machine"] == "colleague"
    assert requests.get(server.url + f"{base}/workstation/engine", timeout=10).status_code == 401
