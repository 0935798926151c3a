"""The gate in front of everything Berth serves (pages, API, previews, Socket.IO): it turns
away requests from learner machines' networks, and requests whose `Host` is not one Berth
answers to (a page of another site that made its own name point at Berth: DNS rebinding)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable

from .origins import OriginPolicy


def machine_address(address: str | None, networks: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """True when `address` is in the machines' networks, written plainly or as an
    IPv4-mapped IPv6 address (::ffff:10.213.0.5, what a dual-stack socket reports)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip in networks


class Gate:
    """WSGI middleware, outermost, so that Socket.IO is behind it too."""

    def __init__(self, wsgi_app: Callable, origins: OriginPolicy,
                 machine_networks: ipaddress.IPv4Network | ipaddress.IPv6Network):
        self.wsgi_app = wsgi_app
        self.origins = origins
        self.machine_networks = machine_networks

    def __call__(self, environ, start_response):
        # through a trusted proxy (BERTH_BEHIND_PROXY), the connection's own address counts
        # too: a machine cannot hide behind an X-Forwarded-For it sends itself
        peer = environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR")
        if any(machine_address(address, self.machine_networks) for address in (environ.get("REMOTE_ADDR"), peer)):
            return self._refuse(start_response, "from_machine", "Learner machines cannot use Berth.")
        if not self.origins.host_allowed(environ.get("HTTP_HOST")):
            return self._refuse(start_response, "unknown_host",
                                "Berth does not answer to this host name. Open it by localhost, by an IP "
                                "address, or by the name in BERTH_PUBLIC_URL.")
        return self.wsgi_app(environ, start_response)

    @staticmethod
    def _refuse(start_response, code: str, message: str) -> list[bytes]:
        body = json.dumps({"error": code, "message": message}).encode()
        start_response("403 FORBIDDEN", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
