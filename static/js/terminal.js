/* The web terminal: xterm.js in the page, bridged to a shell in a learner machine over the
 * Socket.IO namespace /terminal (protocol: docs/api.md).
 *
 * window.BerthTerminal.open(host, {session, token?, machine, onStatus(name, text)}) returns
 * (without a token the connection carries the lesson cookie)
 * {fit(), focus(), type(text), notice(text), wake(), state}. Output carries absolute byte offsets: the page
 * acknowledges what xterm.js has processed (the server's credit window), and on reconnect
 * tells the server where it left off so that nothing is shown twice. */
(function () {
  "use strict";
  const CHUNK = 64 * 1024; // bytes per input message, far below Engine.IO's 1 MB limit
  const ACK_EVERY = 32 * 1024; // acknowledge output at least this often ...
  const ACK_DELAY = 30; // ... and this many ms after the output pauses
  const RETRY_MIN = 500, RETRY_MAX = 8000; // backoff when the server refuses for now
  const encoder = new TextEncoder();
  const DIM = "\x1b[2m", RESET = "\x1b[0m";

  const THEME = {
    background: "#0f1419", foreground: "#d6dee8", cursor: "#f0f6fc", cursorAccent: "#0f1419",
    selectionBackground: "#3b5a80", black: "#1b222c", red: "#ff7b72", green: "#3fb950",
    yellow: "#d29922", blue: "#58a6ff", magenta: "#d2a8ff", cyan: "#39c5cf", white: "#c9d1d9",
    brightBlack: "#6e7681", brightRed: "#ffa198", brightGreen: "#56d364", brightYellow: "#e3b341",
    brightBlue: "#79c0ff", brightMagenta: "#e2c5ff", brightCyan: "#56d4dd", brightWhite: "#f0f6fc",
  };

  function open(host, options) {
    const onStatus = options.onStatus || function () {};
    const term = new window.Terminal({
      cursorBlink: true,
      fontFamily: '"DejaVu Sans Mono", ui-monospace, Menlo, Consolas, monospace',
      fontSize: 14,
      scrollback: 5000,
      theme: THEME,
    });
    const fitAddon = new window.FitAddon.FitAddon();
    term.loadAddon(fitAddon);
    term.loadAddon(new window.WebLinksAddon.WebLinksAddon());
    term.open(host);

    const handle = {
      state: { name: "connecting", text: "connecting…" },
      terminal: term,
      socket: null, // set below; tests use it
      fit,
      focus: () => term.focus(),
      type,
      notice: (text) => notice(text),
      wake, // the machine runs again: a shell that ended with it starts anew
    };
    function status(name, text) {
      handle.state = { name, text };
      host.dataset.state = name;
      onStatus(name, text);
    }
    function notice(text) {
      term.write("\r\n" + DIM + "[" + text + "]" + RESET + "\r\n");
    }

    // --- where this page is in the shell's output
    let epoch = null; // the shell attachment the offsets belong to
    let position = 0; // offset after the last byte received
    let processed = 0; // offset after the last byte xterm.js has processed
    let acked = 0; // last offset acknowledged
    let generation = 0; // bumped when offsets restart (a new attachment)
    let ackTimer = null;
    let seq = 0; // numbers input and resize messages: the server applies them in order
    let ended = false; // the shell ended: Enter opens a new one
    let retry = RETRY_MIN;
    let retryTimer = null;
    const waiting = []; // text typed by Run buttons before the terminal was connected

    const socket = window.io("/terminal", {
      autoConnect: false,
      transports: ["websocket", "polling"],
      reconnectionDelay: RETRY_MIN,
      reconnectionDelayMax: RETRY_MAX,
      auth: (cb) => {
        seq = 0;
        cb({
          session: options.session, token: options.token, machine: options.machine,
          cols: term.cols, rows: term.rows, epoch, offset: position,
        });
      },
    });

    handle.socket = socket;

    function sendAck() {
      clearTimeout(ackTimer);
      ackTimer = null;
      if (socket.connected && processed > acked) {
        acked = processed;
        socket.emit("ack", processed);
      }
    }
    function maybeAck() {
      if (processed - acked >= ACK_EVERY) sendAck();
      else if (!ackTimer) ackTimer = setTimeout(sendAck, ACK_DELAY);
    }

    socket.on("attached", (info) => {
      retry = RETRY_MIN;
      if (info.epoch !== epoch) {
        const hadShell = epoch !== null;
        epoch = info.epoch;
        generation += 1;
        position = processed = acked = info.offset;
        if (hadShell) {
          notice(info.shell === "new" ? "The previous shell had ended: this is a new one."
            : "Reconnected to your shell.");
        }
      } else {
        acked = Math.max(acked, info.offset);
      }
      status("connected", "connected");
      while (waiting.length && socket.connected) send(waiting.shift());
    });
    socket.on("connect", () => {
      ended = false;
      while (waiting.length) send(waiting.shift());
    });

    socket.on("output", (data, offset) => {
      let bytes = new Uint8Array(data);
      if (offset < position) { // already shown: keep only what is new
        bytes = bytes.subarray(position - offset);
        offset = position;
        if (!bytes.length) return;
      } else if (offset > position && position > 0) {
        notice("some output was skipped: this window was behind");
      }
      position = offset + bytes.length;
      const end = position, mine = generation;
      term.write(bytes, () => {
        if (mine !== generation) return;
        processed = Math.max(processed, end);
        maybeAck();
      });
    });

    socket.on("notice", (info) => notice(info.message));

    socket.on("ended", (info) => {
      ended = true;
      notice(info.message + " Press Enter to start a new shell.");
      status("disconnected", "shell ended — press Enter in the terminal");
    });

    socket.on("disconnect", (reason) => {
      socket.sendBuffer = [];
      if (ended) return;
      if (reason === "io server disconnect") {
        status("disconnected", "disconnected by the server");
        scheduleConnect();
      } else {
        status("reconnecting", "reconnecting…");
      }
    });
    socket.io.on("reconnect_attempt", (attempt) => {
      status("reconnecting", attempt > 1 ? `reconnecting (attempt ${attempt})…` : "reconnecting…");
    });

    socket.on("connect_error", (error) => {
      const data = error && error.data;
      if (data && [400, 401, 403, 404].includes(data.status)) {
        status("failed", error.message);
        notice(error.message);
        return; // a wrong token or a session that is gone: retrying cannot help
      }
      if (data) { // refused for now: the machine is starting, Berth is busy, ...
        status("connecting", error.message);
        scheduleConnect();
      } else if (!socket.active) {
        status("reconnecting", "reconnecting…");
        scheduleConnect();
      } else {
        status("reconnecting", "cannot reach Berth; retrying…");
      }
    });

    function scheduleConnect() {
      clearTimeout(retryTimer);
      retryTimer = setTimeout(() => { if (!socket.connected) socket.connect(); }, retry);
      retry = Math.min(RETRY_MAX, retry * 2);
    }

    // --- input
    function send(bytes) {
      if (!socket.connected) return false;
      for (let i = 0; i < bytes.length; i += CHUNK) {
        socket.emit("input", bytes.slice(i, i + CHUNK), seq++);
      }
      return true;
    }
    term.onData((text) => {
      if (ended) {
        if (text.includes("\r")) { ended = false; status("connecting", "starting a new shell…"); socket.connect(); }
        return;
      }
      send(encoder.encode(text));
    });
    term.onBinary((text) => { // some mouse reports: one byte per character
      const bytes = new Uint8Array(text.length);
      for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i) & 255;
      send(bytes);
    });
    term.onResize(({ cols, rows }) => {
      if (socket.connected) socket.emit("resize", { cols, rows }, seq++);
    });
    function wake() {
      if (!ended) return;
      ended = false;
      status("connecting", "starting a new shell…");
      socket.connect();
    }
    function type(text) {
      const bytes = encoder.encode(text);
      if (!send(bytes)) waiting.push(bytes);
      term.focus();
    }

    // --- copy and paste: Ctrl+Shift+C / Ctrl+Insert copy; Ctrl+Shift+V / Shift+Insert are
    // left to the browser, whose paste event xterm.js turns into input (no permission
    // prompt). Every other key, Ctrl+C and Ctrl+P included, goes to the shell.
    function copySelection() {
      const text = term.getSelection();
      if (!text) return;
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).catch(() => document.execCommand("copy"));
      } else {
        document.execCommand("copy"); // xterm.js fills the copy event with the selection
      }
    }
    term.attachCustomKeyEventHandler((event) => {
      const copy = (event.ctrlKey && event.shiftKey && event.code === "KeyC")
        || (event.ctrlKey && !event.shiftKey && event.code === "Insert");
      const paste = (event.ctrlKey && event.shiftKey && event.code === "KeyV")
        || (event.shiftKey && !event.ctrlKey && event.code === "Insert");
      if (copy) {
        event.preventDefault(); // Ctrl+Shift+C would open the browser's element picker
        if (event.type === "keydown") copySelection();
        return false;
      }
      return !paste;
    });

    function fit() {
      if (!host.offsetWidth || !host.offsetHeight) return; // hidden tab: fit when shown
      try { fitAddon.fit(); } catch (error) { /* not laid out yet */ }
    }

    fit();
    status("connecting", "connecting…");
    socket.connect();
    return handle;
  }

  window.BerthTerminal = { open };
})();
