"""Berth: hands-on Docker lessons with real machines, checked as you go."""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from flask_socketio import SocketIO

from .certs import CertificateAuthority
from .config import Config
from .images import Mirror
from .lessons import Library
from .machines import DockerMachines, MachineBackend, MachineError
from .origins import OriginPolicy
from .sessions import Sessions
from .store import Store

log = logging.getLogger("berth")

# Threading is set explicitly: an installed eventlet would otherwise be picked, and
# eventlet is winding down. Each WebSocket holds a thread for its lifetime.
socketio = SocketIO(async_mode="threading")


class Berth:
    """The running parts of one Berth, wired together (the composition root)."""

    def __init__(self, config: Config, backend: MachineBackend | None = None):
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.data_dir / "berth.sqlite3")
        self.instance_id = self.store.meta("instance_id", lambda: secrets.token_hex(4))
        self.secret_key = self.store.meta("secret_key", lambda: secrets.token_hex(32))
        self.authority = CertificateAuthority(config.data_dir / "certs")
        self.backend = backend or DockerMachines(config, self.instance_id, self.authority)
        self.library = Library(config.lessons_dir, settings={"BERTH_BASE_IMAGE": config.base_image},
                               known_kinds=_check_kinds())
        self._subscribers: dict[str, list[Callable[..., None]]] = defaultdict(list)
        self.sessions = Sessions(config, self.store, self.backend, self.library, self.notify)
        self.origins = OriginPolicy(config.allowed_origins)
        self._machine_networks = ipaddress.ip_network(config.network_pool)
        self.mirror: Mirror | None = None
        self.state = "starting"  # starting | ready | failed
        self.problem = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # typing in a terminal keeps a session from being reaped as idle
        self.subscribe("enter", lambda session_id, machine=None: self.sessions.touch(session_id))

    # A small in-process event bus between the parts, e.g. the terminal bridge tells the
    # checker `notify("command", session_id, machine)` when a command has finished, and
    # sessions tell everyone `notify("ready" | "ended", session_id)`.

    def subscribe(self, event: str, callback: Callable[..., None]) -> None:
        self._subscribers[event].append(callback)

    def notify(self, event: str, *args) -> None:
        for callback in self._subscribers.get(event, ()):
            try:
                callback(*args)
            except Exception:
                log.exception("%s subscriber %r failed", event, callback)

    def from_machine(self, address: str | None) -> bool:
        """True when a request comes from a learner machine's network."""
        try:
            return ipaddress.ip_address(address or "") in self._machine_networks
        except ValueError:
            return False

    def start(self) -> None:
        """Prepare the engine side in the background: the page answers meanwhile."""
        self._spawn(self._startup, "startup")

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _startup(self) -> None:
        while not self._stop.is_set():
            try:
                self.prepare()
                break
            except MachineError as error:
                self.state, self.problem = "failed", error.message
                log.error("not ready: %s %s", error.message, error.detail)
            if self._stop.wait(5):
                return
        self._spawn(self._reap_forever, "reaper")

    def prepare(self) -> None:
        backend = self.backend
        if isinstance(backend, DockerMachines):
            backend.ping()
            backend.check_own_container()
            if self.config.mirror_image:
                self.mirror = Mirror(backend.host, self.config, self.instance_id)
                backend.mirror_container = self.mirror.start([self.config.base_image, *self.library.images()])
            backend.apply_firewall()
            backend.detect_profile()
        self.sessions.adopt()
        self.state, self.problem = "ready", ""

    def _reap_forever(self) -> None:
        while not self._stop.wait(self.config.reap_interval):
            try:
                self.sessions.reap()
            except MachineError as error:
                log.warning("reaper: %s", error.message)
            except Exception:
                log.exception("reaper failed")

    def stop(self) -> None:
        self._stop.set()


class RefuseMachines:
    """WSGI middleware: 403 for any request from a learner machine's network."""

    def __init__(self, wsgi_app, berth: Berth):
        self.wsgi_app = wsgi_app
        self.berth = berth

    def __call__(self, environ, start_response):
        if self.berth.from_machine(environ.get("REMOTE_ADDR")):
            body = json.dumps({"error": "from_machine", "message": "Learner machines cannot use Berth."}).encode()
            start_response("403 FORBIDDEN", [("Content-Type", "application/json"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        return self.wsgi_app(environ, start_response)


def _check_kinds():
    try:
        from .checks import KINDS
    except ImportError:  # the check library is optional until it lands
        return None
    return {name: kind.params for name, kind in KINDS.items()}


def create_app(config: Config | None = None, backend: MachineBackend | None = None,
               start: bool = True) -> Flask:
    """The application factory: `python app.py` serves what it returns."""
    config = config or Config.from_env()
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__, root_path=str(Path(__file__).resolve().parent.parent),
                static_folder="static", template_folder="templates")
    berth = Berth(config, backend)
    app.config.update(SECRET_KEY=berth.secret_key, MAX_CONTENT_LENGTH=1024 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["berth"] = berth

    from . import assets, views
    assets.init_app(app)
    views.init_app(app)
    from . import files, preview
    preview.init_app(app)
    files.init_app(app)
    socketio.init_app(app, cors_allowed_origins=berth.origins, async_mode="threading",
                      max_http_buffer_size=1024 * 1024)
    from . import terminal
    terminal.init_app(app)
    from . import checker
    checker.init_app(app)
    from . import instructor
    instructor.init_app(app)
    # Outermost, so that it also covers Socket.IO: learner machines may not use Berth
    # itself, even where it listens on an address their network routes to.
    app.wsgi_app = RefuseMachines(app.wsgi_app, berth)  # type: ignore[method-assign]
    if start:
        berth.start()
    app.config["BERTH_STARTED_AT"] = time.time()
    return app
