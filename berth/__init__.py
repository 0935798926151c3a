"""Berth: hands-on Docker lessons with real machines, checked as you go.

`Berth` (root.py) builds and runs every part; `create_app` wires the web layer to one."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from werkzeug.middleware.proxy_fix import ProxyFix

from .config import Config
from .gate import Gate
from .machines import MachineBackend
from .root import Berth
from .sockets import socketio
from .web import BerthFlask

__all__ = ["Berth", "create_app", "socketio"]


def create_app(config: Config | None = None, backend: MachineBackend | None = None,
               start: bool = True) -> BerthFlask:
    """The application factory: `python app.py` serves what it returns."""
    config = config or Config.from_env()
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    berth = Berth(config, backend)
    app = BerthFlask(__name__, root_path=str(Path(__file__).resolve().parent.parent),
                     static_folder="static", template_folder="templates")
    app.berth = berth
    app.config.update(SECRET_KEY=berth.secret_key, MAX_CONTENT_LENGTH=1024 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    from . import assets, files, instructor, preview, sockets, views, web
    assets.init_app(app)
    web.init_app(app)
    views.init_app(app)
    preview.init_app(app)
    files.init_app(app)
    sockets.init_app(app, berth.bus)
    instructor.init_app(app)
    # Outermost, so that it also covers Socket.IO: learner machines may not use Berth
    # itself, even where it listens on an address their network routes to, and no other
    # site's name may stand for Berth's.
    app.wsgi_app = Gate(app.wsgi_app, berth.origins, berth.machine_networks)  # type: ignore[method-assign]
    if config.behind_proxy:  # one proxy in front: its X-Forwarded-* say who and where the client is
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    if start:
        berth.start()
    app.config["BERTH_STARTED_AT"] = time.time()
    return app
