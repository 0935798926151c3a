/* The learner's machines from the browser: "Open port N" buttons for what the active machine
 * publishes (kept current while the learner works), a preview pane under the terminal, and
 * files: upload (drop onto the terminal, or the Files panel), download, send to another
 * machine. Talks to the API in docs/api.md ("Port preview and files"). */
(function () {
  "use strict";
  const POLL_MS = 3000;
  const SLOW_POLL_MS = 10000;
  const SANDBOX = "allow-scripts allow-forms allow-popups allow-modals allow-downloads";

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([key, value]) => {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (value !== undefined && value !== null) node.setAttribute(key, value);
    });
    (children || []).forEach((child) => node.appendChild(child));
    return node;
  }

  function sizeText(bytes) {
    const units = ["bytes", "KiB", "MiB", "GiB"];
    let value = bytes, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return (unit ? value.toFixed(1) : String(value)) + " " + units[unit];
  }

  function start(page) {
    const api = "/api/sessions/" + encodeURIComponent(page.session);
    const bar = document.getElementById("ports");
    const pane = document.getElementById("preview");
    const terminals = document.getElementById("terminals");
    if (!bar || !pane) return null;
    let ports = {};  // machine name -> [{port, container, container_port, url, problem?}]
    let shown = null;  // {machine, port, url} in the preview pane

    // --- published ports, kept current
    let timer = null, polling = false, failures = 0;
    function schedule(ms) {
      clearTimeout(timer);
      timer = setTimeout(poll, ms);
    }
    function poll() {
      if (polling) return;
      if (document.hidden) { schedule(SLOW_POLL_MS); return; }
      polling = true;
      fetch(api + "/ports", { cache: "no-store" })
        .then((response) => response.ok ? response.json() : Promise.reject(response.status))
        .then((data) => {
          failures = 0;
          const next = {};
          data.machines.forEach((m) => { next[m.name] = m.ports || []; });
          ports = next;
          render();
        })
        .catch(() => { failures += 1; })
        .finally(() => {
          polling = false;
          schedule(failures ? SLOW_POLL_MS : POLL_MS);
        });
    }
    document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(0); });

    function render() {
      const list = ports[page.active] || [];
      const key = JSON.stringify(list.map((p) => [p.port, p.url, p.problem || ""]));
      if (bar.dataset.key === key && bar.dataset.machine === page.active) return;
      bar.dataset.key = key;
      bar.dataset.machine = page.active || "";
      bar.replaceChildren(...list.map((p) => {
        const button = el("button", {
          type: "button", class: "port" + (p.problem ? " problem" : ""), "data-port": String(p.port),
          title: `${page.active}: port ${p.port} → ${p.container}:${p.container_port}` +
            (p.problem ? " (" + p.problem.replace(/_/g, " ") + ")" : ""),
          text: "Open port " + p.port,
        });
        button.addEventListener("click", () => open(page.active, p));
        return button;
      }));
      if (shown && shown.machine === page.active) {
        const current = list.find((p) => p.port === shown.port);
        if (current && current.url !== shown.url) open(shown.machine, current);
      }
    }

    // --- the preview pane
    const title = el("span", { class: "preview-title" });
    const reload = el("button", { type: "button", class: "quiet", text: "Reload", title: "Load the page again" });
    const newTab = el("a", { class: "preview-open", target: "_blank", rel: "noopener", text: "Open in new tab ↗" });
    const close = el("button", { type: "button", class: "quiet", text: "×", "aria-label": "Close the preview" });
    const frame = el("iframe", { sandbox: SANDBOX, referrerpolicy: "no-referrer" });
    pane.replaceChildren(el("div", { class: "preview-bar" }, [title, reload, newTab, close]), frame);
    reload.addEventListener("click", () => { if (shown) frame.src = shown.url; });
    close.addEventListener("click", () => {
      shown = null;
      pane.hidden = true;
      frame.src = "about:blank";
      fit();
    });

    function open(machine, p) {
      shown = { machine, port: p.port, url: p.url };
      title.textContent = `${machine} · port ${p.port}`;
      frame.title = `Port ${p.port} of ${machine}`;
      newTab.href = p.url;
      frame.src = p.url;
      pane.hidden = false;
      fit();
    }

    function fit() {
      Object.values(page.terminals || {}).forEach((t) => { if (t && t.fit) t.fit(); });
    }

    // --- files
    const status = el("div", { class: "files-status", role: "status", "aria-live": "polite", hidden: "" });
    let statusTimer = null;
    function say(text, kind, sticky) {
      status.textContent = text;
      status.dataset.kind = kind || "info";
      status.hidden = false;
      clearTimeout(statusTimer);
      if (!sticky) statusTimer = setTimeout(() => { status.hidden = true; }, 8000);
    }
    function problem(xhrOrResponse, body) {
      try {
        const data = typeof body === "string" ? JSON.parse(body) : body;
        if (data && data.message) return data.message;
      } catch (e) { /* not JSON */ }
      return "It did not work (" + xhrOrResponse.status + ").";
    }

    function upload(machine, file, folder) {
      const query = new URLSearchParams({ name: file.name });
      if (folder && folder.trim()) query.set("path", folder.trim());
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", `${api}/machines/${encodeURIComponent(machine)}/files?${query}`);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) {
          say(`Uploading ${file.name} to ${machine}: ${Math.floor(100 * event.loaded / event.total)} %`, "info", true);
        }
      });
      return new Promise((resolve) => {
        xhr.addEventListener("load", () => {
          if (xhr.status === 201) {
            const data = JSON.parse(xhr.responseText);
            say(`${file.name} (${sizeText(data.size)}) is now at ${data.path} on ${machine}.`, "ok");
          } else {
            say(problem(xhr, xhr.responseText), "error");
          }
          resolve();
        });
        xhr.addEventListener("error", () => { say(`The upload of ${file.name} broke off.`, "error"); resolve(); });
        say(`Uploading ${file.name} to ${machine} …`, "info", true);
        xhr.send(file);
      });
    }
    async function uploadAll(machine, files, folder) {
      for (const file of Array.from(files)) await upload(machine, file, folder);
    }

    function download(machine, path) {
      const url = `${api}/machines/${encodeURIComponent(machine)}/files?` + new URLSearchParams({ path });
      // Ask first, so a missing file gives a message here and not a page of JSON.
      fetch(url, { method: "HEAD" }).then((response) => {
        if (!response.ok) {
          return fetch(url).then((r) => r.json().catch(() => ({})))
            .then((data) => say(problem(response, data), "error"));
        }
        const link = el("a", { href: url, download: "" });
        document.body.appendChild(link);
        link.click();  // the browser streams it to disk; the lesson cookie authenticates it
        link.remove();
        say(`Downloading ${path} from ${machine} …`, "ok");
        return null;
      }).catch(() => say("Berth did not answer.", "error"));
    }

    function send(from, path, to) {
      say(`Sending ${path} from ${from} to ${to} …`, "info", true);
      return fetch(`${api}/machines/${encodeURIComponent(from)}/files/copy`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ path, to }),
      }).then((response) => response.json().then((data) => {
        if (response.status === 201) say(`${to} has it now: ${data.path} (${sizeText(data.size)}).`, "ok");
        else say(problem(response, data), "error");
      })).catch(() => say("Berth did not answer.", "error"));
    }

    // The Files panel, opened from a button beside the port buttons.
    const filesButton = el("button", { type: "button", class: "quiet files-toggle", text: "Files",
      "aria-expanded": "false", title: "Upload, download, send files" });
    bar.after(filesButton);
    const picker = el("input", { type: "file", multiple: "", hidden: "" });
    const folder = el("input", { type: "text", value: "/root/", spellcheck: "false", "aria-label": "Folder in the machine" });
    const choose = el("button", { type: "button", text: "Choose files…" });
    const downloadPath = el("input", { type: "text", placeholder: "/root/ubuntu001.tar", spellcheck: "false",
      "aria-label": "File to download" });
    const downloadButton = el("button", { type: "button", text: "Download" });
    const sendPath = el("input", { type: "text", placeholder: "/root/ubuntu001.tar", spellcheck: "false",
      "aria-label": "File to send" });
    const sendTo = el("select", { "aria-label": "Machine to send it to" });
    const sendButton = el("button", { type: "button", text: "Send" });
    const heading = (text) => el("h3", { text });
    const uploadHeading = heading("Upload");
    const downloadHeading = heading("Download");
    const sendHeading = heading("Send to another machine");
    const panel = el("div", { class: "files-panel", hidden: "", role: "dialog", "aria-label": "Files" }, [
      el("section", {}, [uploadHeading, el("div", { class: "row" }, [folder, choose, picker]),
        el("p", { class: "muted", text: "…or drop files onto the terminal." })]),
      el("section", {}, [downloadHeading, el("div", { class: "row" }, [downloadPath, downloadButton])]),
      el("section", { class: "send" }, [sendHeading, el("div", { class: "row" }, [sendPath, sendTo, sendButton])]),
    ]);
    document.getElementById("work-pane").append(panel, status);

    function refreshPanel() {
      const machine = page.active;
      const others = page.machines.filter((m) => m !== machine);
      uploadHeading.textContent = `Upload to ${machine}`;
      downloadHeading.textContent = `Download from ${machine}`;
      sendHeading.textContent = others.length === 1 ? `Send to ${others[0]}` : "Send to another machine";
      sendButton.textContent = others.length === 1 ? `Send to ${others[0]}` : "Send";
      sendTo.replaceChildren(...others.map((m) => el("option", { value: m, text: m })));
      sendTo.hidden = others.length <= 1;
      panel.querySelector(".send").hidden = others.length === 0;
    }
    filesButton.addEventListener("click", () => {
      panel.hidden = !panel.hidden;
      filesButton.setAttribute("aria-expanded", String(!panel.hidden));
      if (!panel.hidden) refreshPanel();
    });
    function closePanel() { panel.hidden = true; filesButton.setAttribute("aria-expanded", "false"); }
    document.addEventListener("keydown", (event) => { if (event.key === "Escape" && !panel.hidden) closePanel(); });
    document.addEventListener("pointerdown", (event) => {
      if (!panel.hidden && !panel.contains(event.target) && !filesButton.contains(event.target)) closePanel();
    });
    choose.addEventListener("click", () => picker.click());
    picker.addEventListener("change", () => {
      uploadAll(page.active, picker.files, folder.value).then(() => { picker.value = ""; });
    });
    downloadButton.addEventListener("click", () => {
      if (downloadPath.value.trim()) download(page.active, downloadPath.value.trim());
    });
    downloadPath.addEventListener("keydown", (e) => { if (e.key === "Enter") downloadButton.click(); });
    sendButton.addEventListener("click", () => {
      if (sendPath.value.trim() && sendTo.value) send(page.active, sendPath.value.trim(), sendTo.value);
    });

    // Drag and drop onto the terminal: into the working directory of the machine shown.
    if (terminals) {
      const hint = el("div", { class: "drop-hint", hidden: "" });
      terminals.appendChild(hint);
      let depth = 0;
      const carriesFiles = (event) => Array.from(event.dataTransfer ? event.dataTransfer.types : []).includes("Files");
      terminals.addEventListener("dragenter", (event) => {
        if (!carriesFiles(event)) return;
        event.preventDefault();
        depth += 1;
        hint.textContent = `Drop to upload into ${folder.value.trim() || "/root/"} on ${page.active}`;
        hint.hidden = false;
      });
      terminals.addEventListener("dragover", (event) => {
        if (!carriesFiles(event)) return;
        event.preventDefault();
        event.dataTransfer.dropEffect = "copy";
      });
      terminals.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) hint.hidden = true; });
      terminals.addEventListener("drop", (event) => {
        if (!carriesFiles(event)) return;
        event.preventDefault();
        depth = 0;
        hint.hidden = true;
        uploadAll(page.active, event.dataTransfer.files, folder.value);
      });
    }

    page.onMachineChange(() => { render(); if (!panel.hidden) refreshPanel(); });
    poll();
    return { poll, open: (machine, port) => open(machine, (ports[machine] || []).find((p) => p.port === port)),
      upload, download, send };
  }

  window.BerthPreview = { start };
})();
