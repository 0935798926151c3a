/* Looking over a learner's shoulder: their shell, live and read-only, on /terminal with
 * auth {session, machine, token: the instructor token, mode: "watch"}. The server sends
 * the recent output first (their scrollback), then what comes, at the learner's own
 * terminal size (`attached` carries it, `size` follows changes); it accepts no input from
 * a watcher, and this terminal takes none either.
 *
 * window.BerthWatch.open(host, {session, machine, token, onStatus}) returns {terminal, socket, close()}. */
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
    socket.on("attached", (info) => {
      if (info.epoch !== epoch) { epoch = info.epoch; term.reset(); processed = acked = info.offset; }
      if (info.cols && info.rows) term.resize(info.cols, info.rows);
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
    socket.on("size", (size) => term.resize(size.cols, size.rows));
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
