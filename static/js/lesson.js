/* The lesson page: wires the terminal, tasks and preview parts together, and owns the
 * layout (divider, machine tabs) and the Run / Copy buttons of code blocks. */
(function () {
  "use strict";
  const root = document.getElementById("lesson");
  if (!root) return;

  const page = {
    session: root.dataset.session,
    lesson: root.dataset.lesson,
    machines: root.dataset.machines.split(",").filter(Boolean),
    active: null,
    terminals: {},
    listeners: [],
    /** Called with the machine name whenever the active tab changes. */
    onMachineChange(fn) { this.listeners.push(fn); },
  };
  window.BerthPage = page;

  // --- tabs: one terminal per machine
  const tabs = Array.from(document.querySelectorAll("#tabs .tab"));
  const hosts = Array.from(document.querySelectorAll("#terminals .terminal-host"));

  function activate(machine) {
    page.active = machine;
    tabs.forEach((tab) => tab.setAttribute("aria-selected", String(tab.dataset.machine === machine)));
    hosts.forEach((host) => { host.hidden = host.dataset.machine !== machine; });
    const terminal = page.terminals[machine];
    if (terminal) { terminal.fit(); terminal.focus(); }
    page.listeners.forEach((fn) => fn(machine));
  }
  tabs.forEach((tab) => tab.addEventListener("click", () => activate(tab.dataset.machine)));

  // --- the divider between text and terminal
  const divider = document.getElementById("divider");
  const textPane = document.getElementById("text-pane");
  function fitAll() { Object.values(page.terminals).forEach((t) => t.fit()); }
  function setWidth(px) {
    const min = 260, max = root.clientWidth - 320;
    textPane.style.flexBasis = Math.max(min, Math.min(max, px)) + "px";
    fitAll();
  }
  const saved = Number(localStorage.getItem("berth.textWidth"));
  if (saved) setWidth(saved);
  divider.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    divider.setPointerCapture(event.pointerId);
    root.classList.add("dragging");
    const move = (e) => setWidth(e.clientX - root.getBoundingClientRect().left);
    const up = () => {
      root.classList.remove("dragging");
      divider.removeEventListener("pointermove", move);
      divider.removeEventListener("pointerup", up);
      localStorage.setItem("berth.textWidth", String(textPane.getBoundingClientRect().width));
    };
    divider.addEventListener("pointermove", move);
    divider.addEventListener("pointerup", up);
  });
  divider.addEventListener("keydown", (event) => {
    const step = event.key === "ArrowLeft" ? -40 : event.key === "ArrowRight" ? 40 : 0;
    if (step) setWidth(textPane.getBoundingClientRect().width + step);
  });
  window.addEventListener("resize", fitAll);
  if (window.ResizeObserver) new ResizeObserver(fitAll).observe(document.getElementById("terminals"));

  // --- code blocks: Copy, and Run (types the command into a terminal)
  function addCodeButtons(pre) {
    const code = pre.querySelector("code");
    if (!code || pre.querySelector(".code-actions")) return;
    const language = (code.className.match(/language-(\S+)/) || [])[1] || "";
    const actions = document.createElement("div");
    actions.className = "code-actions";
    const copy = document.createElement("button");
    copy.type = "button"; copy.className = "quiet"; copy.textContent = "Copy";
    copy.addEventListener("click", () => {
      navigator.clipboard.writeText(code.textContent.replace(/\n$/, "")).then(() => {
        copy.textContent = "Copied"; setTimeout(() => { copy.textContent = "Copy"; }, 1200);
      });
    });
    actions.appendChild(copy);
    if (["sh", "bash", "shell", "console"].includes(language)) {
      const run = document.createElement("button");
      run.type = "button"; run.className = "run";
      const target = pre.dataset.machine || "";
      run.textContent = target ? `Run on ${target}` : "Run";
      run.addEventListener("click", () => {
        const machine = target || page.active;
        if (page.active !== machine) activate(machine);
        const terminal = page.terminals[machine];
        if (terminal) terminal.type(code.textContent.replace(/\n+$/, "") + "\r");
      });
      actions.appendChild(run);
    }
    pre.appendChild(actions);
  }
  document.querySelectorAll(".lesson-text pre").forEach(addCodeButtons);

  // --- hints, one at a time
  document.querySelectorAll(".hints").forEach((box) => {
    const button = box.querySelector(".show-hint");
    const hints = Array.from(box.querySelectorAll(".hint"));
    button.addEventListener("click", () => {
      const next = hints.find((h) => h.hidden);
      if (next) next.hidden = false;
      if (!hints.some((h) => h.hidden)) button.hidden = true;
      else button.textContent = "Show another hint";
    });
  });

  // --- the parts
  const connection = document.getElementById("connection");
  function connectionState(machine, state, text) {
    if (machine !== page.active && state !== "failed") return;
    connection.dataset.state = state;
    connection.textContent = text || state;
  }
  page.onMachineChange((machine) => {
    const terminal = page.terminals[machine];
    if (terminal && terminal.state) connectionState(machine, terminal.state.name, terminal.state.text);
  });
  if (window.BerthTerminal) {
    hosts.forEach((host) => {
      const machine = host.dataset.machine;
      page.terminals[machine] = window.BerthTerminal.open(host, {
        session: page.session, machine,  // the lesson cookie is the credential
        onStatus: (name, text) => connectionState(machine, name, text),
      });
    });
  }
  if (window.BerthTasks) window.BerthTasks.start(page);
  // A machine's trouble (out of memory, stopped, running again) is a line in its terminal.
  if (page.tasksSocket) {
    page.tasksSocket.on("trouble", (trouble) => {
      const terminal = page.terminals[trouble.machine];
      if (!terminal) return;
      terminal.notice(trouble.message);
      if (trouble.what === "running") terminal.wake();
    });
  }
  if (window.BerthPreview) window.BerthPreview.start(page);
  if (window.BerthEngine) window.BerthEngine.start(page);
  activate(page.machines[0]);
})();
