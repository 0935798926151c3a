"""Who may use Berth from a browser: which `Host` names Berth answers to, and which web
origins may act with the learner's cookie (Berth's own, plus BERTH_ALLOWED_ORIGINS). Used by
the gate in front of everything (gate.py), the API (against cross-site requests) and
Socket.IO (against foreign pages opening terminals)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

# Names that always mean this computer. A page of another site can make its own name point
# here (DNS rebinding) and so send requests that the browser thinks are its own: Berth
# answers only to the names below, to IP addresses (which no other site can make its own),
# and to the name of BERTH_PUBLIC_URL, as Jupyter's server answers only to local names.
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def host_name(host: str) -> str:
    """'Example.org:5000' -> 'example.org'; '[::1]:5000' -> '::1'; '' when it is no host."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, _ = host[1:].partition("]")
        return name if bracket else ""
    if host.count(":") > 1:  # a bare IPv6 address, no port
        return host
    return host.partition(":")[0].rstrip(".")


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def own_origin(environ: dict) -> str:
    """Berth's origin as this request reached it. Behind a proxy (BERTH_BEHIND_PROXY),
    ProxyFix has already put the proxy's X-Forwarded-Proto and -Host here; otherwise
    those headers are anyone's to send and count for nothing."""
    return f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"


class OriginPolicy:
    def __init__(self, allowed: tuple[str, ...], public_url: str = "", listen_host: str = ""):
        self.allowed = {origin.rstrip("/") for origin in allowed}
        parts = urlsplit(public_url)
        self.public_origin = f"{parts.scheme}://{parts.netloc}".lower() if public_url else ""
        self.names = set(LOCAL_NAMES)
        if public_url:
            self.names.add(host_name(parts.netloc))
        if listen_host and not is_ip(listen_host):
            self.names.add(host_name(listen_host))

    def host_allowed(self, host: str | None) -> bool:
        """True when Berth answers to a request with this `Host` header."""
        name = host_name(host or "")
        return bool(name) and (name in self.names or name.endswith(".localhost") or is_ip(name))

    def __call__(self, origin: str | None, environ: dict) -> bool:
        """True when a request from `origin` may act with the learner's credentials.
        Requests without an Origin header (not from a browser page) pass: they must
        bring a token anyway."""
        if not origin:
            return True
        origin = origin.rstrip("/")
        if origin.lower() == self.public_origin:
            return True
        return (origin == own_origin(environ) and self.host_allowed(environ.get("HTTP_HOST"))) \
            or origin in self.allowed
