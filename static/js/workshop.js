/* A workshop learner's lesson page: the instructor's messages (`notice` on the page's
 * /session socket) and the raise-hand button (POST/DELETE /api/sessions/ID/help; `help`
 * on the socket says when the instructor has lowered it). Only on pages of a workshop
 * session (#workshop-seat); loaded after lesson.js, whose /session socket it listens to. */
(function () {
  "use strict";
  const seat = document.getElementById("workshop-seat");
  const page = window.BerthPage;
  if (!seat || !page) return;
  const notices = document.getElementById("notices");
  const button = document.getElementById("raise-hand");
  const form = document.getElementById("hand-form");
  const input = document.getElementById("hand-message");

  function showNotice(notice) {
    if (!notice || !notice.message) return;
    const box = document.createElement("div");
    box.className = "notice";
    box.setAttribute("role", "status");
    const text = document.createElement("span");
    text.className = "notice-text";
    text.textContent = notice.message; // text, never HTML
    const when = document.createElement("span");
    when.className = "notice-when";
    when.textContent = notice.at ? new Date(notice.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
    const close = document.createElement("button");
    close.type = "button";
    close.className = "quiet";
    close.textContent = "OK";
    close.addEventListener("click", () => {
      box.remove();
      if (notice.at) localStorage.setItem(`berth.notice.${page.session}`, notice.at);
    });
    const label = document.createElement("strong");
    label.textContent = "Instructor: ";
    box.append(label, text, when, close);
    notices.prepend(box);
    while (notices.children.length > 3) notices.lastElementChild.remove();
  }
  // The latest message from before this page loaded, unless the learner has seen it.
  if (seat.dataset.notice && localStorage.getItem(`berth.notice.${page.session}`) !== seat.dataset.noticeAt) {
    showNotice({ message: seat.dataset.notice, at: seat.dataset.noticeAt });
  }

  function showHand(raised) {
    seat.dataset.hand = String(raised);
    button.textContent = raised ? "Hand raised · lower it" : "Raise hand";
    button.setAttribute("aria-pressed", String(raised));
    if (raised) form.hidden = true;
  }
  showHand(seat.dataset.hand === "true");

  async function call(method, body) {
    const response = await fetch(`/api/sessions/${page.session}/help`, {
      method,
      headers: { "Content-Type": "application/json" },  // the lesson cookie authenticates it
      body: body ? JSON.stringify(body) : undefined,
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      showNotice({ message: data.message || "That did not work; try again." });
      return false;
    }
    return true;
  }
  button.addEventListener("click", async () => {
    if (seat.dataset.hand === "true") {
      if (await call("DELETE")) showHand(false);
    } else {
      form.hidden = !form.hidden;
      if (!form.hidden) input.focus();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (await call("POST", { message: input.value })) { input.value = ""; showHand(true); }
  });
  document.getElementById("hand-cancel").addEventListener("click", () => { form.hidden = true; });

  function listen(socket) {
    socket.on("notice", showNotice);
    socket.on("help", (data) => showHand(Boolean(data && data.help)));
  }
  if (page.tasksSocket) listen(page.tasksSocket);
})();
