"""Keeping a learner's page under its preview address: root-relative links in its HTML and
redirects to the learner's own server get the preview's prefix. Pure functions of bytes
and strings."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

from .machines import Machine
from .ports import PublishedPort

LOCAL_NAMES = {"localhost", "127.0.0.1", "0.0.0.0", "::1", "[::1]"}


def rewrite_location(value: str, prefix: str, machine: Machine, published: PublishedPort) -> str:
    """Keep redirects under the prefix when they point at the learner's own server (the
    machine by any of its names, on the published port or the container's)."""
    url = urlsplit(value)
    if not url.scheme and not url.netloc:
        return prefix + value if value.startswith("/") else value
    if url.scheme not in ("http", "https", ""):
        return value
    host = (url.hostname or "").lower()
    try:
        port = url.port
    except ValueError:
        return value
    if host in LOCAL_NAMES | {machine.address, machine.name.lower()} and port in (
            None, published.port, published.container_port):
        rest = (url.path or "/") + (f"?{url.query}" if url.query else "") + (f"#{url.fragment}" if url.fragment else "")
        return prefix + rest
    return value


HOLD = 48  # bytes kept back between chunks: longer than any attribute prefix matched below


def rewrite_html(chunks: Iterable[bytes], prefix: bytes, session_id: bytes) -> Iterator[bytes]:
    """Root-relative links (`href="/about"`) of a page, kept under the preview's prefix.
    A streaming rewrite of attribute values only; scripts building URLs are left alone."""
    pattern = re.compile(rb"""(\s(?:href|src|action|formaction|poster|data)\s{0,4}=\s{0,4}["']?)/"""
                         rb"""(?![/\\]|s/""" + re.escape(session_id) + rb")", re.I)
    tail = b""
    for chunk in chunks:
        data = tail + chunk
        cut = max(0, len(data) - HOLD)
        out, position = [], 0
        for match in pattern.finditer(data):
            if match.start() >= cut:
                break
            out += [data[position:match.end() - 1], prefix, b"/"]
            position = match.end()
        cut = max(cut, position)
        out.append(data[position:cut])
        tail = data[cut:]
        if out:
            yield b"".join(out)
    if tail:
        yield pattern.sub(lambda m: m.group(1) + prefix + b"/", tail)
