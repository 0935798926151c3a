/* The workshop dashboard: learners by tasks, live. The page joins its workshop on the
 * Socket.IO namespace /instructor and is sent `workshop` (GET /api/workshops/ID) at once,
 * then `learner` (one learner's entry) whenever anything in it changes, and `workshop`
 * again (without learners) when the workshop itself changes. Everything a learner typed
 * (names, messages, feedback quoting their commands) is shown as text, never as HTML. */
(function () {
  "use strict";
  const root = document.getElementById("dashboard");
  if (!root) return;
  const workshopId = root.dataset.workshop;
  const token = root.dataset.token;
  const api = (path, options = {}) => fetch(`/api/workshops/${workshopId}${path}`, {
    ...options,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });

  const state = { workshop: null, tasks: [], learners: new Map(), order: [] };
  const body = document.getElementById("grid-body");
  const headRow = document.getElementById("grid-head");
  const sortSelect = document.getElementById("sort");
  sortSelect.value = localStorage.getItem("berth.dashboardSort") || "help";

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function clock(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  function ago(iso) {
    if (!iso) return "";
    const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (seconds < 45) return "just now";
    const minutes = Math.round(seconds / 60);
    return minutes < 60 ? `${minutes} min ago` : `${Math.floor(minutes / 60)} h ${minutes % 60} min ago`;
  }
  function handText(help) {
    return `${ago(help.at)}${help.message ? `: “${help.message}”` : ""}`;
  }
  function firstUnmet(task) {
    const item = (task.feedback || []).find((f) => !f.ok);
    return item ? item.message : "";
  }

  // --- the grid
  function renderHead() {
    headRow.querySelectorAll("th.task-col").forEach((th) => th.remove());
    const seated = Array.from(state.learners.values()).filter((l) => l.active).length;
    const everyone = state.learners.size;
    state.tasks.forEach((task, index) => {
      const done = Array.from(state.learners.values())
        .filter((l) => l.tasks.some((t) => t.id === task.id && t.status === "done")).length;
      const th = el("th", "task-col");
      th.dataset.task = task.id;
      th.appendChild(el("div", "task-title", `${index + 1}. ${task.title}`));
      const count = el("div", "task-count", `${done} of ${everyone} done`);
      count.dataset.done = String(done);
      th.appendChild(count);
      const bar = el("div", "task-bar");
      const fill = el("span");
      fill.style.width = everyone ? `${(100 * done) / everyone}%` : "0";
      bar.appendChild(fill);
      th.appendChild(bar);
      headRow.appendChild(th);
    });
    document.getElementById("seated").textContent = String(seated);
  }

  function renderSummary() {
    const learners = Array.from(state.learners.values()).filter((l) => l.active);
    const hands = learners.filter((l) => l.help).length;
    const stuck = learners.filter((l) => l.stuck).length;
    const finished = learners.filter((l) => l.tasks.length && l.done === l.tasks.length).length;
    const summary = document.getElementById("summary");
    summary.replaceChildren(
      chip("hand", `${hands} ${hands === 1 ? "hand" : "hands"} up`, hands),
      chip("stuck", `⚠ ${stuck} stuck`, stuck),
      chip("finished", `✓ ${finished} finished`, finished),
      chip("", `${learners.length} working`, 1),
    );
    document.getElementById("empty").hidden = state.learners.size > 0;
    document.title = (hands ? `(${hands}) ` : "") + (state.workshop ? state.workshop.title : "Workshop") + " · Berth";
  }
  function chip(kind, text, count) {
    const node = el("span", `chip ${kind}`, text);
    node.dataset.count = String(count);
    return node;
  }

  function row(learner) {
    let tr = body.querySelector(`tr[data-session="${learner.session}"]`);
    if (!tr) {
      tr = el("tr");
      tr.dataset.session = learner.session;
    }
    tr.dataset.hand = String(Boolean(learner.help));
    tr.dataset.stuck = String(Boolean(learner.stuck));
    tr.dataset.active = String(Boolean(learner.active));
    const cells = [];

    const who = el("td", "learner");
    const name = el("div", "name", learner.name);
    if (!learner.active) name.appendChild(el("span", "left", " · left"));
    who.appendChild(name);
    if (learner.help) {
      const hand = el("div", "hand");
      hand.appendChild(el("span", "badge", "Hand up"));
      hand.appendChild(el("span", "hand-text", handText(learner.help)));
      const clear = el("button", "quiet small clear-hand", "Clear");
      clear.type = "button";
      clear.title = "Lower this hand (you have helped)";
      clear.addEventListener("click", () => api(`/learners/${learner.session}/help`, { method: "DELETE" }));
      hand.appendChild(clear);
      who.appendChild(hand);
    }
    if (learner.stuck) {
      const stuck = el("div", "stuck");
      stuck.appendChild(el("span", "badge", "Stuck"));
      stuck.appendChild(el("span", "stuck-text", learner.stuck_reason));
      who.appendChild(stuck);
    }
    if (learner.active) {
      const actions = el("div", "row-actions");
      actions.appendChild(el("span", "muted", "Watch"));
      learner.machines.forEach((machine) => {
        const button = el("button", "quiet small watch-button", machine.name);
        button.type = "button";
        button.dataset.machine = machine.name;
        button.disabled = machine.status !== "ready";
        button.title = machine.status === "ready" ? "See their terminal, live and read-only" : machine.status;
        button.addEventListener("click", () => openWatch(learner, machine.name));
        actions.appendChild(button);
      });
      who.appendChild(actions);
    }
    cells.push(who);

    const total = learner.tasks.length || 1;
    const progress = el("td", "progress-cell");
    const bar = el("div", "progress-bar");
    const fill = el("span");
    fill.style.width = `${(100 * learner.done) / total}%`;
    bar.appendChild(fill);
    progress.appendChild(el("div", "progress-text", `${learner.done}/${learner.tasks.length}`));
    progress.appendChild(bar);
    cells.push(progress);

    const active = el("td", "active-cell", learner.active ? ago(learner.last_active) : "ended");
    active.dataset.at = learner.last_active || "";
    active.title = `Joined ${clock(learner.joined_at)}; last active ${clock(learner.last_active)}`;
    cells.push(active);

    state.tasks.forEach((task) => {
      const t = learner.tasks.find((x) => x.id === task.id) || { status: "pending", feedback: [] };
      const td = el("td", "cell");
      td.dataset.task = task.id;
      td.dataset.status = t.status;
      if (t.status === "done") {
        td.appendChild(el("span", "done-mark", "✓"));
        td.appendChild(el("span", "done-at", clock(t.completed_at)));
        td.title = `Done at ${new Date(t.completed_at).toLocaleTimeString()}`;
      } else {
        const unmet = firstUnmet(t);
        if (unmet) {
          td.dataset.status = "trying";
          td.appendChild(el("span", "feedback-text", unmet));
          td.title = (t.feedback || []).map((f) => `${f.ok ? "✓" : "•"} ${f.message}`).join("\n");
        } else {
          td.appendChild(el("span", "not-yet", "—"));
          td.title = "Not started (or waiting for an earlier task)";
        }
      }
      cells.push(td);
    });
    tr.replaceChildren(...cells);
    return tr;
  }

  const sorters = {
    help: (a, b) => urgency(a) - urgency(b) || helpTime(a) - helpTime(b) || a.done - b.done || byName(a, b),
    progress: (a, b) => b.done - a.done || byName(a, b),
    behind: (a, b) => a.done - b.done || byName(a, b),
    name: (a, b) => byName(a, b),
    joined: (a, b) => (a.joined_at < b.joined_at ? -1 : a.joined_at > b.joined_at ? 1 : 0),
  };
  function urgency(l) { return !l.active ? 4 : l.help ? 0 : l.stuck ? 1 : l.done === l.tasks.length ? 3 : 2; }
  function helpTime(l) { return l.help ? new Date(l.help.at).getTime() : 0; }
  function byName(a, b) { return a.name.localeCompare(b.name); }

  function renderAll() {
    const learners = Array.from(state.learners.values()).sort(sorters[sortSelect.value] || sorters.help);
    body.replaceChildren(...learners.map(row));
    renderHead();
    renderSummary();
  }
  function update(learner) {
    const before = state.learners.get(learner.session);
    state.learners.set(learner.session, learner);
    const tr = row(learner);
    if (!before) body.appendChild(tr);
    for (const t of learner.tasks) {
      const old = before && before.tasks.find((x) => x.id === t.id);
      if (t.status === "done" && (!old || old.status !== "done")) {
        const cell = tr.querySelector(`td.cell[data-task="${t.id}"]`);
        if (cell) { cell.classList.add("just-done"); setTimeout(() => cell.classList.remove("just-done"), 1600); }
      }
    }
    // re-sort, unless the order is the same: rows move only when they must
    const sorted = Array.from(state.learners.values()).sort(sorters[sortSelect.value] || sorters.help);
    const current = Array.from(body.children).map((r) => r.dataset.session);
    if (sorted.some((l, i) => l.session !== current[i])) {
      body.replaceChildren(...sorted.map((l) => body.querySelector(`tr[data-session="${l.session}"]`) || row(l)));
    }
    renderHead();
    renderSummary();
  }
  sortSelect.addEventListener("change", () => {
    localStorage.setItem("berth.dashboardSort", sortSelect.value);
    renderAll();
  });

  // --- the workshop itself
  function showWorkshop(workshop) {
    state.workshop = { ...(state.workshop || {}), ...workshop };
    if (workshop.tasks) state.tasks = workshop.tasks;
    if (workshop.learners) {
      state.learners = new Map(workshop.learners.map((l) => [l.session, l]));
      renderAll();
    }
    showTime();
    const ended = Boolean(state.workshop.ended_at);
    root.dataset.ended = String(ended);
    document.getElementById("end-workshop").disabled = ended;
    document.getElementById("broadcast-message").disabled = ended;
    root.querySelector("#broadcast button").disabled = ended;
  }
  function showTime() {
    const node = document.getElementById("time-left");
    const w = state.workshop;
    if (!w) return;
    if (w.ended_at) { node.textContent = `Ended at ${clock(w.ended_at)}; the results are kept`; node.className = "ended"; return; }
    const left = Math.max(0, Math.round((new Date(w.expires_at).getTime() - Date.now()) / 60000));
    node.textContent = `Ends at ${clock(w.expires_at)} (${left >= 60 ? `${Math.floor(left / 60)} h ${left % 60} min` : `${left} min`} left)`;
  }
  setInterval(() => {
    showTime();
    body.querySelectorAll("td.active-cell").forEach((td) => {
      const learner = state.learners.get(td.parentElement.dataset.session);
      if (learner && learner.active) td.textContent = ago(learner.last_active);
    });
    body.querySelectorAll(".hand-text").forEach((span) => {
      const learner = state.learners.get(span.closest("tr").dataset.session);
      if (learner && learner.help) {
        span.textContent = handText(learner.help);
      }
    });
  }, 15000);

  // --- live
  const connection = document.getElementById("connection");
  function connectionState(name, text) { connection.dataset.state = name; connection.textContent = text; }
  const socket = window.io("/instructor", {
    transports: ["websocket", "polling"],
    auth: { workshop: workshopId, token },
  });
  socket.on("connect", () => connectionState("connected", "live"));
  socket.on("disconnect", () => connectionState("reconnecting", "reconnecting…"));
  socket.on("connect_error", (error) => connectionState("failed", (error && error.message) || "cannot connect"));
  socket.on("workshop", showWorkshop);
  socket.on("learner", update);
  window.BerthDashboard = { state, socket };

  // --- talk to the room, keep the results, end
  const status = document.getElementById("broadcast-status");
  document.getElementById("broadcast").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("broadcast-message");
    const message = input.value.trim();
    if (!message) return;
    const response = await api("/broadcast", { method: "POST", body: JSON.stringify({ message }) });
    const data = await response.json();
    if (response.ok) {
      status.textContent = `Sent to ${data.reached} ${data.reached === 1 ? "learner" : "learners"} at ${clock(new Date().toISOString())}: “${message}”`;
      input.value = "";
    } else {
      status.textContent = data.message;
    }
  });
  document.getElementById("end-workshop").addEventListener("click", async () => {
    const seated = Array.from(state.learners.values()).filter((l) => l.active).length;
    if (!window.confirm(`End the workshop? The ${seated} learners' machines are removed; their results are kept (Export results).`)) return;
    const button = document.getElementById("end-workshop");
    button.disabled = true;
    button.textContent = "Ending…";
    const response = await api("", { method: "DELETE" });
    button.textContent = response.ok ? "Ended" : "End workshop";
    if (!response.ok) { button.disabled = false; status.textContent = (await response.json()).message; }
  });
  async function refreshCapacity() {
    const response = await fetch("/api/capacity", { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) return;
    const c = await response.json();
    const free = c.memory && c.memory.available ? ` · ${(c.memory.available / 1073741824).toFixed(1)} GiB free` : "";
    document.getElementById("capacity-line").textContent = `${c.sessions}/${c.max_sessions} sessions · ${c.machines} machines${free}`;
  }
  setInterval(refreshCapacity, 15000);

  // --- look over a shoulder
  const watchPanel = document.getElementById("watch");
  let watching = null;
  function openWatch(learner, machine) {
    if (watching) watching.close();
    watchPanel.hidden = false;
    document.getElementById("watch-title").textContent = learner.name;
    const tabs = document.getElementById("watch-tabs");
    tabs.replaceChildren(...learner.machines.map((m) => {
      const tab = el("button", "tab", m.name);
      tab.type = "button";
      tab.dataset.machine = m.name;
      tab.setAttribute("aria-selected", String(m.name === machine));
      tab.addEventListener("click", () => openWatch(state.learners.get(learner.session) || learner, m.name));
      return tab;
    }));
    const host = document.getElementById("watch-term");
    host.replaceChildren();
    watchPanel.dataset.session = learner.session;
    watchPanel.dataset.machine = machine;
    const stateNode = document.getElementById("watch-state");
    watching = window.BerthWatch.open(host, {
      session: learner.session, machine, token,
      fitIn: () => ({ width: host.clientWidth - 16, height: window.innerHeight * 0.7 - 40 }),
      onStatus: (name, text) => { stateNode.dataset.state = name; stateNode.textContent = text; },
    });
  }
  document.getElementById("watch-close").addEventListener("click", () => {
    if (watching) watching.close();
    watching = null;
    watchPanel.hidden = true;
  });
  window.BerthDashboard.watching = () => watching;
})();
