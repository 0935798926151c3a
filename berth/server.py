"""Serving Berth: gunicorn's threaded worker in production, Werkzeug's development server
when BERTH_DEBUG asks for it.

One worker process only: Socket.IO's rooms and Berth's threads (terminals, checker,
reaper) live in one process. The app, and with it Berth, is made in that worker after
the fork, never in the master. Each open WebSocket holds one of the worker's threads for
its lifetime (BERTH_THREADS bounds them); TCP_NODELAY is on for every connection (gunicorn
sets it on the listening socket, which accepted ones inherit), so a keystroke's echo is not
held back by Nagle's algorithm.

Stopping (SIGTERM, or Ctrl-C, which reaches the master and the worker): the master stops
listening and tells the worker; the worker ends Berth (Berth.shutdown: sessions ended and
their machines removed, unless BERTH_KEEP_ON_STOP), closes the WebSockets it still holds
and exits. If the master dies without stopping (SIGKILL), the kernel kills the worker with
it: a crash does no clean-up, so sessions come back on the next start."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker
from werkzeug.serving import WSGIRequestHandler

from .config import Config
from .owner import DataFolderInUse, DataFolderLock

log = logging.getLogger(__name__)

KEEPALIVE = 5  # seconds an idle HTTP connection is kept open for the browser's next request
# The most that stopping may take, clean-up included, before the master kills the worker.
# Ending sessions and removing a class's machines (several at a time) takes a few seconds.
STOP_TIMEOUT = 25
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent (the master) dies, so that
    a killed master never leaves a worker serving on, holding the port and the data folder."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the worker still notices its parent is gone within a second


class SlowClientNote(logging.Filter):
    """gunicorn logs a client dropped at the request-head deadline as a socket error with
    its traceback; one line says it (a stalled client is no fault of Berth's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TimeoutError):
            record.msg, record.args = "dropped a client that sent no whole request in time (BERTH_CLIENT_TIMEOUT)", ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class BerthWorker(ThreadWorker):
    """gunicorn's gthread worker, with Berth's way of stopping and a deadline on reading a
    request's head (a client sending half a request is dropped, not waited for)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stopper: threading.Thread | None = None
        self._orderly = False
        self._serving: set = set()  # connections a thread is serving now (WebSockets among them)
        self._serving_lock = threading.Lock()

    def init_process(self) -> None:
        self.log.error_log.addFilter(SlowClientNote())
        die_with_parent()
        if os.getppid() != self.ppid:  # the master died before the line above
            os._exit(0)
        super().init_process()

    # --- stopping

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self._begin_stop()

    def handle_quit(self, sig, frame) -> None:
        """Ctrl-C (SIGINT to master and worker) and the master's quick stop (SIGQUIT) clean
        up as SIGTERM does: removing what Berth made is the point of stopping it."""
        self.handle_exit(sig, frame)

    def _begin_stop(self) -> None:
        if self._stopper is None:
            self._orderly = True
            self._stopper = threading.Thread(target=self._stop_berth, name="berth-stop", daemon=True)
            self._stopper.start()

    def _stop_berth(self) -> None:
        app = self.wsgi
        try:
            app.berth.shutdown()
        except Exception:
            log.exception("stopping Berth failed")
        finally:
            from .sockets import socketio
            try:  # Socket.IO clients are told goodbye (and long-polls answered) ...
                socketio.server.eio.disconnect()
            except Exception:
                log.exception("closing the Socket.IO connections failed")
            with self._serving_lock:  # ... and WebSockets closed: their threads end with them
                serving = list(self._serving)
            for conn in serving:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def run(self) -> None:
        super().run()
        if not self._orderly:  # the master is gone without telling: a crash, no clean-up
            log.warning("the master process is gone; leaving without clean-up")
            os._exit(1)
        if self._stopper is not None:
            self._stopper.join(STOP_TIMEOUT)
        # A thread still held by a client (a WebSocket that did not close) would keep the
        # process from exiting: give them a moment, then leave regardless.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(
                t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
            time.sleep(0.1)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    # --- slow clients

    def handle(self, conn):
        """Reading a request's head has a deadline (BERTH_CLIENT_TIMEOUT): a client that
        sends half a request and waits holds a thread that long at most."""
        if not getattr(conn, "berth_deadline", False):
            conn.berth_deadline = True
            init = conn.init

            def init_with_deadline() -> None:
                init()
                conn.sock.settimeout(self.cfg.timeout)
            conn.init = init_with_deadline
        with self._serving_lock:
            self._serving.add(conn)
        try:
            return super().handle(conn)
        finally:
            with self._serving_lock:
                self._serving.discard(conn)

    def handle_request(self, req, conn):
        conn.sock.settimeout(None)  # the head is in; WebSockets and bodies take their time
        return super().handle_request(req, conn)


class BerthServer(BaseApplication):
    """gunicorn's documented custom application: its settings come from Berth's Config,
    not from gunicorn's command line, so `python app.py` stays the one way to serve."""

    def __init__(self, config: Config):
        self.config = config
        super().__init__()

    def load_config(self) -> None:
        config = self.config
        settings = {
            "bind": [f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"],
            "workers": 1,
            "worker_class": "berth.server.BerthWorker",
            "threads": config.threads,
            "worker_connections": max(1000, config.threads * 2),
            "timeout": config.client_timeout,  # the worker's heartbeat and the request-head deadline
            "keepalive": KEEPALIVE,
            "graceful_timeout": STOP_TIMEOUT,
            "preload_app": False,  # the app and Berth's threads are made in the worker
            "accesslog": None,
            "errorlog": "-",
            "loglevel": config.log_level.lower(),
            "proc_name": "berth",
            # X-Forwarded-* are Berth's business (BERTH_BEHIND_PROXY, Werkzeug's ProxyFix)
            "forwarded_allow_ips": "",
            "secure_scheme_headers": {},
            "control_socket_disable": True,  # one per user by default: two Berths would share it
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from . import create_app
        try:
            app = create_app(self.config)
        except DataFolderInUse as error:
            print(f"berth: {error}", file=sys.stderr, flush=True)
            sys.exit(3)  # gunicorn's "worker failed to boot": the master exits too
        announce(app, self.config)
        return app


def announce(app, config: Config) -> None:
    print(f"Berth is serving on http://{config.host}:{config.port}/", flush=True)
    workshops = app.berth.workshops
    if workshops.token_made:  # as Jupyter does: the instructor's way in, with its token
        print(f"Instructor: http://{config.host}:{config.port}/instructor?token={workshops.token}", flush=True)
    else:
        print(f"Instructor: http://{config.host}:{config.port}/instructor (token: BERTH_INSTRUCTOR_TOKEN)", flush=True)


class NoDelayRequestHandler(WSGIRequestHandler):
    """Send small writes at once: without TCP_NODELAY, Nagle's algorithm and delayed ACKs
    add about 44 ms to every keystroke's echo."""

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def serve_debug(config: Config) -> None:
    """Werkzeug's development server (BERTH_DEBUG=1): one process, a thread per connection,
    no timeouts. Stopping cleans up as under gunicorn."""
    from . import create_app, socketio
    app = create_app(config)
    announce(app, config)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # through the finally below
    try:
        socketio.run(app, host=config.host, port=config.port, request_handler=NoDelayRequestHandler,
                     allow_unsafe_werkzeug=True, use_reloader=False, log_output=False)
    except KeyboardInterrupt:
        pass
    finally:
        app.berth.shutdown()


def serve(config: Config) -> None:
    """Serve Berth until stopped."""
    if config.debug:
        serve_debug(config)
        return
    probe = DataFolderLock(config.data_dir)  # say it now, not after the fork
    config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        probe.acquire()
    except DataFolderInUse as error:
        raise SystemExit(f"berth: {error}") from None
    probe.release()
    BerthServer(config).run()
