"""Berth's one configuration surface: BERTH_* environment variables, each with a default
and help text in one place (the README's table is checked against this list)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A BERTH_* variable holds a value Berth cannot use."""


def parse_size(text: str) -> int:
    """'512m', '10G', '1048576' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise ValueError(f"not a size: {text!r} (use for example 512m or 10g)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit or " "))


def parse_duration(text: str) -> int:
    """'90', '90s', '15m', '4h', '2d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text.lower())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use for example 90s, 15m or 4h)")
    number, unit = match.groups()
    return int(number) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def parse_bool(text: str) -> bool:
    """'1', 'true', 'yes', 'on' -> True; '0', 'false', 'no', 'off', '' -> False."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"not a yes or no: {text!r} (use 1 or 0)")


def parse_threads(text: str) -> int:
    number = int(text)
    if not 4 <= number <= 1000:
        raise ValueError("use between 4 and 1000 threads")
    return number


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str
    parse: Callable[[str], object] = str


SETTINGS: tuple[Setting, ...] = (
    Setting("BERTH_HOST", "127.0.0.1", "Address the web server listens on; 0.0.0.0 for a classroom server."),
    Setting("BERTH_PORT", "5000", "Port the web server listens on.", int),
    Setting("BERTH_THREADS", "100", "Most requests and WebSockets served at once (each open terminal holds one thread; docs/deploy.md sizes it for a class).", parse_threads),
    Setting("BERTH_CLIENT_TIMEOUT", "30s", "A client that has not sent a whole request head in this long is dropped (slow or stalled clients).", parse_duration),
    Setting("BERTH_BEHIND_PROXY", "0", "1: Berth sits behind one reverse proxy and trusts its X-Forwarded-For, -Proto and -Host headers (docs/deploy.md); 0: they are ignored.", parse_bool),
    Setting("BERTH_KEEP_ON_STOP", "0", "1: stopping Berth leaves sessions' machines, networks, disks and the mirror running, and the next start takes them over; 0: stopping removes them.", parse_bool),
    Setting("BERTH_DEBUG", "0", "1: serve on Werkzeug's development server (one thread per connection, no timeouts) instead of gunicorn; for working on Berth only.", parse_bool),
    Setting("BERTH_DATA_DIR", "instance", "Where the progress store (SQLite), keys and certificates live; relative to the project folder.", str),
    Setting("BERTH_LESSONS_DIR", "lessons", "Folder of lessons, one sub-folder each; relative to the project folder.", str),
    Setting("BERTH_BASE_IMAGE", "ubuntu:latest", "The base image lessons use (what the learner runs). `./run` sets debian:bookworm when no registry answers.", str),
    Setting("BERTH_MACHINES", "docker", "The machines backend: docker (machines are containers on DOCKER_HOST's engine), or module:Class of another (docs/architecture.md).", str),
    Setting("BERTH_MACHINE_IMAGE", "berth-machine:latest", "Image of a learner machine (built from machine/ by `./run`).", str),
    Setting("BERTH_MIRROR_IMAGE", "berth-mirror:latest", "Image of the registry mirror that serves lesson images to machines (built from mirror/); empty: no mirror.", str),
    Setting("BERTH_MAX_SESSIONS", "20", "Most sessions at once; more are refused with 503 until one ends.", int),
    Setting("BERTH_SESSION_TTL", "4h", "A session ends this long after it started.", parse_duration),
    Setting("BERTH_SESSION_IDLE", "1h", "A session ends after this long without the learner's browser or API calls.", parse_duration),
    Setting("BERTH_MACHINE_MEMORY", "1g", "Memory limit of one machine, its containers included.", parse_size),
    Setting("BERTH_MACHINE_CPUS", "1.0", "CPUs one machine may use.", float),
    Setting("BERTH_MACHINE_PIDS", "1024", "Most processes in one machine, its containers included.", int),
    Setting("BERTH_MACHINE_DISK", "10g", "Most disk one machine may use: its files, uploads and its engine's images and containers together; empty: unbounded.", str),
    Setting("BERTH_ISOLATION", "", "How machines are kept from the host: userns (root in a machine is not root on the host), sysbox, or trusted (root in a machine can reach the host: only for a single-user laptop); empty: sysbox where the engine has it, else userns.", str),
    Setting("BERTH_MACHINE_RUNTIME", "", "OCI runtime for machines, e.g. sysbox-runc; empty: the engine's default (sysbox-runc when the engine has it).", str),
    Setting("BERTH_NETWORK_POOL", "10.213.0.0/16", "Address range for sessions' private networks (a /27 each).", str),
    Setting("BERTH_ALLOWED_NETWORKS", "", "Private address ranges machines may reach, comma-separated (e.g. a site's package cache); by default they reach their own session, the mirror and public addresses only.", parse_list),
    Setting("BERTH_ALLOWED_ORIGINS", "", "Origins besides Berth's own that may open terminals and call the API with the cookie, comma-separated (never *).", parse_list),
    Setting("BERTH_SHELLS_PER_MACHINE", "4", "Most terminal shells open at once in one machine.", int),
    Setting("BERTH_SHELL_LINGER", "30m", "How long a shell lives on with no browser attached before it is ended.", parse_duration),
    Setting("BERTH_REAP_INTERVAL", "30s", "How often expired and idle sessions are ended and leftovers removed.", parse_duration),
    Setting("BERTH_CHECK_INTERVAL", "10s", "How often tasks are checked when nothing else prompts a check.", parse_duration),
    Setting("BERTH_UPLOAD_LIMIT", "1g", "Largest file a learner may upload into or copy between machines.", parse_size),
    Setting("BERTH_LOG_LEVEL", "INFO", "Log level: DEBUG, INFO, WARNING or ERROR.", str),
    Setting("BERTH_INSTRUCTOR_TOKEN", "", "Token of the instructor (workshops and their dashboard); empty: Berth makes one, keeps it in the data folder (instructor-token) and prints an instructor link at start-up.", str),
    Setting("BERTH_STUCK_AFTER", "10m", "A workshop learner counts as stuck after this long without progress (a task done, or a change in what its checks say).", parse_duration),
    Setting("BERTH_STUCK_TRIES", "6", "A workshop learner counts as stuck when the same checks have failed through this many commands in a row.", int),
)


@dataclass(frozen=True)
class Config:
    """Typed settings; build with Config.from_env()."""

    host: str = "127.0.0.1"
    port: int = 5000
    threads: int = 100
    client_timeout: int = 30
    behind_proxy: bool = False
    keep_on_stop: bool = False
    debug: bool = False
    data_dir: Path = PROJECT_DIR / "instance"
    lessons_dir: Path = PROJECT_DIR / "lessons"
    base_image: str = "ubuntu:latest"
    machines: str = "docker"
    machine_image: str = "berth-machine:latest"
    mirror_image: str = "berth-mirror:latest"
    max_sessions: int = 20
    session_ttl: int = 4 * 3600
    session_idle: int = 3600
    machine_memory: int = 1024**3
    machine_cpus: float = 1.0
    machine_pids: int = 1024
    machine_disk: str = "10g"
    isolation: str = ""
    machine_runtime: str = ""
    network_pool: str = "10.213.0.0/16"
    allowed_networks: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    shells_per_machine: int = 4
    shell_linger: int = 1800
    reap_interval: int = 30
    check_interval: int = 10
    upload_limit: int = 1024**3
    log_level: str = "INFO"
    instructor_token: str = ""
    stuck_after: int = 600
    stuck_tries: int = 6

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> Config:
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, object] = {}
        for setting in SETTINGS:
            raw = environ.get(setting.name, setting.default)
            try:
                value = setting.parse(raw)
            except ValueError as error:
                raise ConfigError(f"{setting.name}={raw!r}: {error}") from None
            key = setting.name.removeprefix("BERTH_").lower()
            if key in ("data_dir", "lessons_dir"):
                value = (PROJECT_DIR / str(value)).resolve()
            values[key] = value
        if values["client_timeout"] < 1:  # type: ignore[operator]
            raise ConfigError("BERTH_CLIENT_TIMEOUT: use at least 1s")
        if values["machine_disk"]:
            try:
                parse_size(str(values["machine_disk"]))
            except ValueError as error:
                raise ConfigError(f"BERTH_MACHINE_DISK: {error}") from None
        for key, name in (("network_pool", "BERTH_NETWORK_POOL"), ("allowed_networks", "BERTH_ALLOWED_NETWORKS")):
            raw = values[key]
            for network in (raw,) if isinstance(raw, str) else raw:  # type: ignore[union-attr]
                try:
                    ipaddress.ip_network(network)
                except ValueError as error:
                    raise ConfigError(f"{name}: {error}") from None
        if "*" in values["allowed_origins"]:  # type: ignore[operator]
            raise ConfigError("BERTH_ALLOWED_ORIGINS may not contain '*': name each origin")
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
