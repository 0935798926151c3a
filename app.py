"""Serve Berth: `python app.py` (./run serve sets everything up first)."""

from __future__ import annotations

import socket

from werkzeug.serving import WSGIRequestHandler

from berth import create_app, socketio
from berth.config import Config, ConfigError


class NoDelayRequestHandler(WSGIRequestHandler):
    """Send small writes at once: without TCP_NODELAY, Nagle's algorithm and delayed ACKs
    add about 44 ms to every keystroke's echo."""

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def main() -> None:
    try:
        config = Config.from_env()
    except ConfigError as error:
        raise SystemExit(f"berth: {error}") from None
    app = create_app(config)
    print(f"Berth is serving on http://{config.host}:{config.port}/", flush=True)
    workshops = app.berth.workshops
    if workshops.token_made:  # as Jupyter does: the instructor's way in, with its token
        print(f"Instructor: http://{config.host}:{config.port}/instructor?token={workshops.token}", flush=True)
    else:
        print(f"Instructor: http://{config.host}:{config.port}/instructor (token: BERTH_INSTRUCTOR_TOKEN)", flush=True)
    socketio.run(app, host=config.host, port=config.port, request_handler=NoDelayRequestHandler,
                 allow_unsafe_werkzeug=True, use_reloader=False, log_output=False)


if __name__ == "__main__":
    main()
