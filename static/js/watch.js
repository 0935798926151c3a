/* Looking over a learner's shoulder: their shell, live and read-only, on /terminal with
 * auth {session, machine, token: the instructor token, mode: "watch"}. The server sends
 * the recent output first (their scrollback), then what comes, at the learner's own
 * terminal size (`attached` carries it, `size` follows changes); it accepts no input from
 * a watcher, and this terminal takes none either.
 *
 * window.BerthWatch.open(host, {session, machine, token, onStatus, fitIn}) returns {terminal, socket,
 * close()}; fitIn() gives the {width, height} the terminal may take. */
(function () {
  "use strict";
  const ACK_DELAY = 30;

  function open(host, options) {
    const onStatus = options.onStatus || function () {};
    const term = new window.Terminal({
      disableStdin: true,
      cursorBlink: false,
      fontFamily: '"DejaVu Sans Mono", ui-monospace, Menlo, Consolas, monospace',
      fontSize: 13,
      scrollback: 5000,
      theme: { background: "#0f1419", foreground: "#d6dee8", cursor: "#f0f6fc" },
    });
    term.open(host);
    let processed = 0, acked = 0, ackTimer = null, epoch = null;

    const socket = window.io("/terminal", {
      forceNew: true, // its own connection: closing it leaves the dashboard's alone
      transports: ["websocket", "polling"],
      auth: { session: options.session, machine: options.machine, token: options.token, mode: "watch" },
    });
    function sendAck() {
      ackTimer = null;
      if (processed > acked) { acked = processed; socket.emit("ack", processed); }
    }
    // The learner's terminal, whole: a smaller font where their size does not fit the space
    // the page gives (options.fitIn), never a scrolled-off part of it.
    function showSize(cols, rows) {
      term.resize(cols, rows);
      const room = options.fitIn ? options.fitIn() : null;
      if (!room) return;
      for (let size = 13; size >= 7; size -= 1) {
        term.options.fontSize = size;
        const screen = host.querySelector(".xterm-screen");
        if (!screen || (screen.offsetWidth <= room.width && screen.offsetHeight <= room.height)) break;
      }
    }
    socket.on("attached", (info) => {
      if (info.epoch !== epoch) { epoch = info.epoch; term.reset(); processed = acked = info.offset; }
      if (info.cols && info.rows) showSize(info.cols, info.rows);
      onStatus("connected", "watching live");
    });
    socket.on("output", (data, offset) => {
      const bytes = new Uint8Array(data);
      const end = offset + bytes.length;
      term.write(bytes, () => {
        processed = Math.max(processed, end);
        if (!ackTimer) ackTimer = setTimeout(sendAck, ACK_DELAY);
      });
    });
    socket.on("size", (size) => showSize(size.cols, size.rows));
    socket.on("ended", (info) => onStatus("disconnected", info.message));
    socket.on("disconnect", () => onStatus("reconnecting", "reconnecting…"));
    socket.on("connect_error", (error) => onStatus("failed", (error && error.message) || "cannot connect"));

    return {
      terminal: term,
      socket,
      close() { socket.disconnect(); term.dispose(); },
    };
  }

  window.BerthWatch = { open };
})();
