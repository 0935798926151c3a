"""Which web origins may use Berth with the learner's cookie: Berth's own, plus those
named in BERTH_ALLOWED_ORIGINS. Used by the API (against cross-site requests) and by
Socket.IO (against foreign pages opening terminals)."""

from __future__ import annotations


def own_origin(environ: dict) -> str:
    """Berth's origin as this request reached it. Behind a proxy (BERTH_BEHIND_PROXY),
    ProxyFix has already put the proxy's X-Forwarded-Proto and -Host here; otherwise
    those headers are anyone's to send and count for nothing."""
    return f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"


class OriginPolicy:
    def __init__(self, allowed: tuple[str, ...]):
        self.allowed = {origin.rstrip("/") for origin in allowed}

    def __call__(self, origin: str | None, environ: dict) -> bool:
        """True when a request from `origin` may act with the learner's credentials.
        Requests without an Origin header (not from a browser page) pass: they must
        bring a token anyway."""
        if not origin:
            return True
        origin = origin.rstrip("/")
        return origin == own_origin(environ) or origin in self.allowed
