"""Published ports: which TCP ports the containers in a learner's machine publish, read
from that machine's own engine (what `docker ps` shows in its PORTS column), for the
preview, its diagnosis and the checks."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

PORTS_TTL = 2.0  # seconds a listing of published ports is reused: a page of twenty files asks once


@dataclass(frozen=True)
class PublishedPort:
    """A TCP port of the machine that a container in it publishes (`-p 3000:80`)."""

    port: int  # on the machine
    container: str
    container_id: str
    container_port: int  # inside the container
    host_ip: str  # the address inside the machine it is published on; 0.0.0.0 = all
    state: str  # running or paused

    @property
    def loopback_only(self) -> bool:
        return self.host_ip.startswith("127.") or self.host_ip == "::1"


def list_published(engine) -> list[PublishedPort]:
    """The TCP ports the running containers of one machine's engine publish, by port."""
    return published_in(engine.api.containers())


def published_in(summaries: list[dict]) -> list[PublishedPort]:
    """The TCP ports in an engine's list of containers (`GET /containers/json`), by port."""
    found: dict[int, PublishedPort] = {}
    for summary in summaries:
        name = (summary.get("Names") or ["/?"])[0].lstrip("/")
        for entry in summary.get("Ports") or []:
            public = entry.get("PublicPort")
            if entry.get("Type") != "tcp" or not public:
                continue
            candidate = PublishedPort(int(public), name, summary["Id"], int(entry.get("PrivatePort") or 0),
                                      entry.get("IP") or "0.0.0.0", summary.get("State") or "running")
            known = found.get(candidate.port)
            # 0.0.0.0 and :: are listed apart; one reachable entry is enough.
            if known is None or (known.loopback_only and not candidate.loopback_only):
                found[candidate.port] = candidate
    return sorted(found.values(), key=lambda p: p.port)


def port_bindings(attrs: dict) -> dict[int, list[tuple[str, int]]]:
    """An inspected container's TCP port bindings: container port -> [(host address, host
    port)]. A running container's actual ones, else those it was created with."""
    running = attrs["State"].get("Running")
    ports = (attrs["NetworkSettings"].get("Ports") if running else None) or attrs["HostConfig"].get("PortBindings") or {}
    found: dict[int, list[tuple[str, int]]] = {}
    for key, entries in ports.items():
        number, _, protocol = key.partition("/")
        if protocol not in ("", "tcp"):
            continue
        for binding in entries or []:
            if binding.get("HostPort"):
                found.setdefault(int(number), []).append((binding.get("HostIp") or "", int(binding["HostPort"])))
    return found


@dataclass
class _Listing:
    at: float
    ports: list[PublishedPort] = field(default_factory=list)


class PortSource(Protocol):
    """What the port watch asks: the machines backend (this module stands below it)."""

    def published_ports(self, machine: Any) -> list[PublishedPort]: ...


class PortWatch:
    """Published ports per machine, asked of the machines backend and remembered for a
    moment (PORTS_TTL)."""

    def __init__(self, backend: PortSource, ttl: float = PORTS_TTL):
        self.backend = backend
        self.ttl = ttl
        self._lock = threading.Lock()
        self._listings: dict[str, _Listing] = {}

    def ports(self, machine: Any, fresh: bool = False) -> list[PublishedPort]:
        """The machine's (a machines.Machine) published ports; MachineError if its engine
        does not answer."""
        now = time.monotonic()
        with self._lock:
            listing = self._listings.get(machine.container_id)
        if listing is not None and not fresh and now - listing.at < self.ttl:
            return listing.ports
        ports = self.backend.published_ports(machine)
        with self._lock:
            if len(self._listings) > 1000:  # machines come and go; never grow without bound
                self._listings.clear()
            self._listings[machine.container_id] = _Listing(now, ports)
        return ports

    def port(self, machine: Any, number: int) -> PublishedPort | None:
        return next((p for p in self.ports(machine) if p.port == number), None)
