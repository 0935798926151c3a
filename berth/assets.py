"""Browser assets through Flask-Assets: xterm.js and Socket.IO from node_modules (installed
by npm, never copied into the repository) and Berth's own scripts and styles, bundled into
static/gen/ with a content hash in the file name for cache-busting."""

from __future__ import annotations

from flask import Flask
from flask_assets import Bundle, Environment

from .config import PROJECT_DIR

NODE_MODULES = PROJECT_DIR / "node_modules"

VENDOR_JS = (
    "@xterm/xterm/lib/xterm.js",
    "@xterm/addon-fit/lib/addon-fit.js",
    "@xterm/addon-web-links/lib/addon-web-links.js",
    "socket.io-client/dist/socket.io.min.js",
)
# Berth's scripts; lesson.js wires the ones before it into the page, workshop.js adds to it.
BERTH_JS = ("js/terminal.js", "js/tasks.js", "js/preview.js", "js/engine.js", "js/lesson.js", "js/workshop.js")
INSTRUCTOR_JS = ("js/watch.js", "js/instructor.js")  # the workshop dashboard
CSS = ("@xterm/xterm/css/xterm.css", "css/berth.css", "css/workshops.css")


class AssetsMissing(RuntimeError):
    pass


def init_app(app: Flask) -> Environment:
    missing = [name for name in VENDOR_JS if not (NODE_MODULES / name).exists()]
    if missing:
        raise AssetsMissing(f"browser packages are missing ({', '.join(missing)}): run `npm ci` (./run does)")
    assets = Environment(app)
    assets.load_path = [str(PROJECT_DIR / "static"), str(NODE_MODULES)]
    assets.directory = str(PROJECT_DIR / "static")
    assets.url = app.static_url_path
    assets.url_expire = False  # the hash is in the file name
    assets.cache = False
    assets.manifest = "json:gen/manifest.json"
    assets.auto_build = False  # built here, once; pages only ask for the URLs
    assets.register("vendor_js", Bundle(*VENDOR_JS, output="gen/vendor.%(version)s.js"))
    assets.register("berth_js", Bundle(*BERTH_JS, output="gen/berth.%(version)s.js"))
    assets.register("instructor_js", Bundle(*INSTRUCTOR_JS, output="gen/instructor.%(version)s.js"))
    assets.register("berth_css", Bundle(*CSS, output="gen/berth.%(version)s.css"))
    # made here, not by webassets, whose makedirs fails when another Berth of the same
    # checkout makes the folder at the same moment (two test workers starting at once)
    (PROJECT_DIR / "static" / "gen").mkdir(parents=True, exist_ok=True)
    for bundle in assets:
        bundle.build(force=True)  # once at start-up, not racing on the first page view
    return assets
