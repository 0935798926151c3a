/* Live tasks: the page joins its session on the Socket.IO namespace /session and is sent
 * `tasks` (the task list of the API) and `machines` ([{name, status, message}]) at once and
 * whenever they change. This file ticks tasks, shows each task's feedback, the progress and
 * the machines' states in the top bar.
 *
 * window.BerthTasks.start(page) with page = {session, ...} (lesson.js). */
(function () {
  "use strict";

  function byData(selector, key, value) {
    return Array.from(document.querySelectorAll(selector)).filter((el) => el.dataset[key] === value);
  }

  function showFeedback(list, feedback) {
    const items = feedback.map((item) => {
      const li = document.createElement("li");
      li.className = item.tip ? "tip" : item.ok ? "ok" : "missing"; // a tip is advice, not a tick
      li.textContent = item.message; // text, never HTML: messages quote what the learner typed
      return li;
    });
    list.replaceChildren(...items);
  }

  function showTasks(tasks) {
    let done = 0;
    tasks.forEach((task) => {
      if (task.status === "done") done += 1;
      byData("[data-task]", "task", task.id).forEach((el) => {
        const was = el.dataset.status;
        el.dataset.status = task.status;
        if (task.completed_at) el.dataset.completedAt = task.completed_at;
        if (was !== "done" && task.status === "done" && el.tagName === "SECTION") {
          el.classList.add("just-done");
          setTimeout(() => el.classList.remove("just-done"), 1500);
        }
        const list = el.querySelector(".feedback");
        if (list) showFeedback(list, task.feedback || []);
      });
    });
    const progress = document.getElementById("progress");
    if (progress) {
      progress.textContent = tasks.length ? `${done} of ${tasks.length} tasks done` : "";
      progress.dataset.done = String(done);
      progress.dataset.total = String(tasks.length);
    }
  }

  function showMachines(machines) {
    machines.forEach((machine) => {
      byData(".machine-state", "machine", machine.name).forEach((el) => {
        el.dataset.status = machine.status;
        el.title = machine.message || machine.status;
      });
    });
  }

  function start(page) {
    if (!window.io) return null;
    // What the server rendered is the state until the first push.
    const initial = Array.from(document.querySelectorAll("#tasklist [data-task]"))
      .map((el) => ({ status: el.dataset.status }));
    const progress = document.getElementById("progress");
    if (progress && initial.length) {
      const done = initial.filter((t) => t.status === "done").length;
      progress.textContent = `${done} of ${initial.length} tasks done`;
    }
    const socket = window.io("/session", {
      transports: ["websocket", "polling"],
      auth: { session: page.session },  // with the lesson cookie
    });
    socket.on("tasks", showTasks);
    socket.on("machines", showMachines);
    socket.on("connect_error", (error) => {
      console.warn("tasks: cannot connect:", error && error.message);
      // Refused (the session ended or the token is wrong): say so; otherwise it retries.
      if (error && error.message && !socket.active) {
        if (progress) progress.textContent = error.message;
      }
    });
    // The page's sockets share one connection (manager); the terminal creates it first,
    // without connecting at once, so this socket is connected explicitly.
    socket.connect();
    page.tasksSocket = socket;
    return socket;
  }

  window.BerthTasks = { start, showTasks, showMachines };
})();
