/* The Engine panel: beside the terminal, a picture of the active machine's own Docker
 * engine. Containers as a short list; images as stacks of layer blocks, base at the bottom,
 * images that share a base side by side so that their shared blocks line up. A layer has
 * one colour wherever it is found (its id picks it), so a block of the same colour in two
 * stacks is one layer stored once. The learner's `docker commit` layer is marked "yours".
 *
 * It asks GET /api/sessions/ID/machines/MACHINE/engine when it opens, when the machine tab
 * changes and when the /session socket says `engine` ({machine}) for the machine shown:
 * no polling. window.BerthEngine.start(page) (lesson.js), after BerthTasks. */
(function () {
  "use strict";

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([key, value]) => {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key === "style") node.style.cssText = value;
      else if (value !== undefined && value !== null) node.setAttribute(key, value);
    });
    (children || []).forEach((child) => { if (child) node.appendChild(child); });
    return node;
  }

  function sizeText(bytes) {
    const units = ["B", "KB", "MB", "GB"];
    let value = bytes, unit = 0;
    while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
    return (unit && value < 100 ? value.toFixed(1) : String(Math.round(value))) + " " + units[unit];
  }

  /** A colour of its own for each layer id: the same layer is the same colour everywhere. */
  function hue(id) {
    let h = 0;
    for (let i = 7; i < Math.min(id.length, 23); i++) h = (h * 31 + id.charCodeAt(i)) % 360;
    return h;
  }

  function containerRow(c) {
    const ports = (c.ports || []).map((p) => `${p.port}→${p.container_port}`).join(" ");
    return el("li", { class: "engine-container", "data-running": String(c.running), title: c.status }, [
      el("span", { class: "dot", "aria-label": c.running ? "running" : c.state || "stopped" }),
      el("span", { class: "name", text: c.name }),
      el("span", { class: "image", text: c.image }),
      c.running ? null : el("span", { class: "state", text: c.state || "stopped" }),
      ports ? el("span", { class: "ports", text: ports }) : null,
    ]);
  }

  function layerBlock(layer) {
    const h = hue(layer.id);
    const marks = [];
    if (layer.yours) marks.push(el("span", { class: "mark yours", text: "yours" }));
    if (layer.shared) marks.push(el("span", { class: "mark shared", text: `shared ×${layer.shared_with.length + 1}` }));
    const what = (layer.yours ? "commit: " : "") + (layer.created_by || layer.comment || "(no history)");
    const title = [what, sizeText(layer.size), layer.id.slice(7, 19),
      layer.shared ? "also in " + layer.shared_with.join(", ") : "only in this image",
      ...(layer.settings || []).map((s) => "then " + s)].join("\n");
    return el("div", {
      class: "layer" + (layer.shared ? " is-shared" : "") + (layer.yours ? " is-yours" : ""),
      "data-layer": layer.id, "data-shared": String(layer.shared), "data-yours": String(layer.yours),
      style: `--layer-hue: ${h}`, title,
    }, [
      el("span", { class: "what", text: what }),
      el("span", { class: "line" }, [el("span", { class: "size", text: sizeText(layer.size) }), ...marks]),
    ]);
  }

  function stack(image) {
    const settings = image.layers.length ? image.layers[image.layers.length - 1].settings || [] : image.settings;
    return el("figure", { class: "image-stack", "data-image": image.label, "data-committed": String(image.committed) }, [
      el("figcaption", {}, [
        el("span", { class: "tags", text: image.tags.length ? image.tags.join(", ") : image.label + " (untagged)" }),
        el("span", { class: "total", text: sizeText(image.size) + " · " + image.layers.length +
          (image.layers.length === 1 ? " layer" : " layers") }),
        settings.length ? el("span", { class: "settings", text: settings.join(" · "), title: "settings, no layer" }) : null,
      ]),
      el("div", { class: "layers" }, image.layers.map(layerBlock).reverse()),  // top first: base at the bottom
    ]);
  }

  /** Images that share their base layer, side by side; families in order of the API. */
  function families(images) {
    const byBase = new Map();
    images.forEach((image) => {
      const base = image.layers.length ? image.layers[0].id : "none:" + image.id;
      if (!byBase.has(base)) byBase.set(base, []);
      byBase.get(base).push(image);
    });
    return Array.from(byBase.values());
  }

  function draw(body, data) {
    const images = data.images || [];
    const containers = data.containers || [];
    const family = families(images).map((members) =>
      el("div", { class: "image-family" + (members.length > 1 ? " shares-base" : "") }, members.map(stack)));
    body.replaceChildren(...[
      el("h3", { text: `Containers on ${data.machine}` }),
      containers.length ? el("ul", { class: "engine-containers" }, containers.map(containerRow))
        : el("p", { class: "muted", text: "No containers yet." }),
      el("h3", { text: `Images on ${data.machine}` }),
      el("p", { class: "muted legend", text: "Each block is a layer, the base at the bottom. " +
        "The same colour in two stacks is one layer, stored once." }),
      images.length ? el("div", { class: "image-families" }, family)
        : el("p", { class: "muted", text: "No images yet." }),
      data.truncated ? el("p", { class: "muted", text: "Only the newest images and containers are shown." }) : null,
    ].filter(Boolean));
  }

  function start(page) {
    const bar = document.getElementById("ports");
    const panel = document.getElementById("engine-panel");
    if (!bar || !panel) return null;
    const api = "/api/sessions/" + encodeURIComponent(page.session) + "/machines/";
    const toggle = el("button", { type: "button", class: "quiet engine-toggle", text: "Engine",
      "aria-expanded": "false", "aria-controls": "engine-panel", title: "Containers and image layers in this machine" });
    const files = document.querySelector(".files-toggle");
    (files || bar).after(toggle);
    const status = el("span", { class: "engine-status muted", "aria-live": "polite" });
    const close = el("button", { type: "button", class: "quiet", text: "×", "aria-label": "Close the engine view" });
    const title = el("span", { class: "engine-title", text: "Engine" });
    const body = el("div", { class: "engine-body" });
    panel.replaceChildren(el("div", { class: "engine-bar" }, [title, status, close]), body);

    let loading = false, again = false, shownFor = null;
    function fit() { Object.values(page.terminals || {}).forEach((t) => { if (t && t.fit) t.fit(); }); }

    function load() {
      if (panel.hidden) return;
      if (loading) { again = true; return; }
      loading = true;
      const machine = page.active;
      status.textContent = "reading…";
      fetch(api + encodeURIComponent(machine) + "/engine", { cache: "no-store" })
        .then((response) => response.json().then((data) => ({ response, data })))
        .then(({ response, data }) => {
          if (machine !== page.active) return;
          if (!response.ok) { status.textContent = data.message || "The engine did not answer."; return; }
          title.textContent = `Engine · ${machine}`;
          draw(body, data);
          shownFor = machine;
          panel.dataset.machine = machine;
          panel.dataset.checkedAt = data.checked_at;
          status.textContent = `${data.images.length} images · ${data.layers} layers`;
        })
        .catch(() => { status.textContent = "Berth did not answer."; })
        .finally(() => {
          loading = false;
          if (again) { again = false; load(); }
        });
    }

    function setOpen(open) {
      panel.hidden = !open;
      toggle.setAttribute("aria-expanded", String(open));
      fit();
      if (open) load();
    }
    toggle.addEventListener("click", () => setOpen(panel.hidden));
    close.addEventListener("click", () => setOpen(false));
    page.onMachineChange((machine) => { if (!panel.hidden && shownFor !== machine) load(); });

    const socket = page.tasksSocket;
    if (socket) {
      socket.on("engine", (data) => {
        if (data && data.machine === page.active) { shownFor = null; load(); }
      });
      socket.on("connect", () => { shownFor = null; load(); });  // events may have been missed
    }
    return { load, open: () => setOpen(true) };
  }

  window.BerthEngine = { start };
})();
