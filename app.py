"""Serve Berth: `python app.py` (./run serve sets everything up first). Production serving
on gunicorn's threaded worker; BERTH_DEBUG=1 for Werkzeug's development server
(berth/server.py)."""

from __future__ import annotations

from berth.config import Config, ConfigError
from berth.server import serve


def main() -> None:
    try:
        config = Config.from_env()
    except ConfigError as error:
        raise SystemExit(f"berth: {error}") from None
    serve(config)


if __name__ == "__main__":
    main()
