"""Berth's one configuration surface: BERTH_* environment variables. Each setting is declared
once, in `Config`, with its type, default and help; pydantic-settings reads it from the
environment, and the README's table is checked against the same declarations."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError
from pydantic_settings.sources.utils import parse_env_vars

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFIX = "BERTH_"


class ConfigError(ValueError):
    """A BERTH_* variable holds a value Berth cannot use."""


# --- the kinds of value a setting takes, written as an operator would

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


def parse_list(text: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c')."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_pool(text: str) -> dict[str, int]:
    """'1' -> {'*': 1}; 'docker-images=2, image-basics=0' -> by lesson; '1,docker-images=3'
    -> both ('*' is every lesson not named)."""
    sizes: dict[str, int] = {}
    for item in parse_list(text):
        slug, _, number = item.rpartition("=")
        slug = slug.strip() or "*"
        if not number.strip().isdigit() or not re.fullmatch(r"\*|[a-z][a-z0-9-]{0,30}", slug):
            raise ValueError(f"not a pool size: {item!r} (use a number for every lesson, or LESSON=NUMBER, "
                             "for example docker-images=2,image-basics=1)")
        sizes[slug] = int(number)
    return sizes


def _text_or(parse):
    """Parse text; a value already parsed (a default, a test's override) passes as it is."""
    return lambda value: parse(value) if isinstance(value, str) else value


def _network(text: str) -> str:
    ipaddress.ip_network(text)  # ValueError says what is wrong with it
    return text


def _networks(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_network(item) for item in items)


def _size_or_empty(text: str) -> str:
    if text:
        parse_size(text)
    return text


def _project_path(path: Path) -> Path:
    return (PROJECT_DIR / path).resolve()


def _web_address(text: str) -> str:
    parts = urlsplit(text)
    if text and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise ValueError("not an http:// or https:// address")
    return text


def _no_wildcard(origins: tuple[str, ...]) -> tuple[str, ...]:
    if "*" in origins:
        raise ValueError("may not contain '*': name each origin")
    return origins


Size = Annotated[int, BeforeValidator(_text_or(parse_size))]
Duration = Annotated[int, BeforeValidator(_text_or(parse_duration))]
CommaList = Annotated[tuple[str, ...], BeforeValidator(_text_or(parse_list))]
Network = Annotated[str, AfterValidator(_network)]
Networks = Annotated[CommaList, AfterValidator(_networks)]
Origins = Annotated[CommaList, AfterValidator(_no_wildcard)]
ProjectPath = Annotated[Path, AfterValidator(_project_path)]
WebAddress = Annotated[str, AfterValidator(_web_address)]
PoolSizes = Annotated[dict[str, int], BeforeValidator(_text_or(parse_pool))]
OptionalSize = Annotated[str, AfterValidator(_size_or_empty)]  # kept as text: the machine's disk tool reads it


def setting(default: Any, help: str) -> Any:
    """One setting's default (as the operator would write it) and help."""
    return Field(default, description=help, validate_default=True)


# --- where the values come from

_environ: ContextVar[Mapping[str, str] | None] = ContextVar("berth_environ", default=None)


class Environment(EnvSettingsSource):
    """The process's environment, or the mapping given to Config.from_env (tests, the
    self-test), read the same way."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _environ.get()
        return parse_env_vars(os.environ if environ is None else environ, self.case_sensitive,
                              self.env_ignore_empty, self.env_parse_none_str)


class Config(BaseSettings):
    """Typed settings; build with Config.from_env(). A field `port` is the variable BERTH_PORT."""

    model_config = SettingsConfigDict(
        alias_generator=lambda name: PREFIX + name.upper(), case_sensitive=True, enable_decoding=False,
        extra="ignore", frozen=True,
    )

    host: str = setting("127.0.0.1", "Address the web server listens on; 0.0.0.0 for a classroom server.")
    port: int = setting(5000, "Port the web server listens on.")
    threads: Annotated[int, Field(ge=4, le=1000)] = setting(100, "Most requests and WebSockets served at once (each open terminal holds one thread; docs/deploy.md sizes it for a class).")
    client_timeout: Annotated[Duration, Field(ge=1)] = setting("30s", "A client that has not sent a whole request head in this long is dropped (slow or stalled clients).")
    behind_proxy: bool = setting("0", "1: Berth sits behind one reverse proxy and trusts its X-Forwarded-For, -Proto and -Host headers (docs/deploy.md); 0: they are ignored.")
    keep_on_stop: bool = setting("0", "1: stopping Berth leaves sessions' machines, networks, disks and the mirror running, and the next start takes them over; 0: stopping removes them.")
    debug: bool = setting("0", "1: serve on Werkzeug's development server (one thread per connection, no timeouts) instead of gunicorn; for working on Berth only.")
    public_url: WebAddress = setting("", "The address learners open, e.g. https://berth.school.example, when it is a name (not localhost or an IP address): Berth answers only to localhost, IP addresses and this name (against DNS rebinding), and takes its origin as its own.")
    data_dir: ProjectPath = setting("instance", "Where the progress store (SQLite), keys and certificates live; relative to the project folder.")
    lessons_dir: ProjectPath = setting("lessons", "Folder of lessons, one sub-folder each; relative to the project folder.")
    base_image: str = setting("ubuntu:latest", "The base image lessons use (what the learner runs). `./run` sets debian:bookworm when no registry answers.")
    engine_timeout: Annotated[Duration, Field(ge=1)] = setting("60s", "How long Berth waits for an answer from the host's Docker engine before it tells the learner that the engine does not answer (a heavily loaded host may need more).")
    machines: str = setting("docker", "The machines backend: docker (machines are containers on DOCKER_HOST's engine), or module:Class of another (docs/architecture.md).")
    machine_image: str = setting("berth-machine:latest", "Image of a learner machine (built from machine/ by `./run`).")
    mirror_image: str = setting("berth-mirror:latest", "Image of the registry mirror that serves lesson images to machines (built from mirror/); empty: no mirror.")
    package_cache_image: str = setting("berth-packages:latest", "Image of the package cache (Debian's apt-cacher-ng, built from packages/) through which apt in machines' containers fetches Debian's packages, each once for the class; empty: no cache, apt fetches from Debian directly.")
    package_cache_size: OptionalSize = setting("4g", "Most disk the package cache may use (where the engine can bound a container's disk); empty: unbounded.")
    max_sessions: int = setting(20, "Most sessions at once; more are refused with 503 until one ends.")
    starts_at_once: Annotated[int, Field(ge=1, le=100)] = setting(4, "Most sessions whose machines are being made at once, the pool's included; more wait their turn, in order (a class arriving together would otherwise slow every start past its deadline).")
    sessions_per_client: int = setting(6, "Most sessions started from one client address at once (a learner's lessons), answered 429 beyond; workshop seats do not count; 0: no limit. Behind a shared address (a school's NAT) raise it, or use workshops.")
    pool: PoolSizes = setting("1", "Sessions made ahead of time for each lesson (machines ready, lesson images pulled), taken by the next learners so that they start at once and refilled behind them: a number for every lesson, LESSON=NUMBER pairs, or both (`1,docker-images=3`); 0: none (workshops' seats neither). They count against BERTH_MAX_SESSIONS and give way to learners' sessions; a workshop adds its open seats.")
    session_ttl: Duration = setting("4h", "A session ends this long after it started.")
    session_idle: Duration = setting("1h", "A session ends after this long without the learner's browser or API calls.")
    machine_memory: Size = setting("1g", "Memory limit of one machine, its containers included.")
    machine_cpus: float = setting(1.0, "CPUs one machine may use.")
    machine_pids: int = setting(1024, "Most processes in one machine, its containers included.")
    machine_disk: OptionalSize = setting("10g", "Most disk one machine may use: its files, uploads and its engine's images and containers together; empty: unbounded.")
    isolation: str = setting("", "How machines are kept from the host: `userns` (root in a machine is not root on the host), `sysbox`, or `trusted` (root in a machine can reach the host: only for a single-user laptop); empty: sysbox where the engine has it, else userns. See [docs/security.md](docs/security.md).")
    machine_runtime: str = setting("", "OCI runtime for machines, e.g. sysbox-runc; empty: the engine's default (sysbox-runc when the engine has it).")
    network_pool: Network = setting("10.213.0.0/16", "Address range for sessions' private networks (a /27 each).")
    allowed_networks: Networks = setting("", "Private address ranges machines may reach, comma-separated (e.g. a site's package cache); by default they reach their own session, the mirror and public addresses only.")
    allowed_origins: Origins = setting("", "Origins besides Berth's own that may open terminals and call the API with the cookie, comma-separated (never *).")
    shells_per_machine: int = setting(4, "Most terminal shells open at once in one machine.")
    shell_linger: Duration = setting("30m", "How long a shell lives on with no browser attached before it is ended.")
    reap_interval: Duration = setting("30s", "How often expired and idle sessions are ended and leftovers removed.")
    store_wait: Annotated[Duration, Field(ge=1)] = setting("30s", "How long a request waits for the progress store while another program (a backup, an sqlite3 shell) holds its lock; past it the request is answered 503 store_busy and nothing is lost.")
    check_interval: Duration = setting("10s", "How often tasks are checked when nothing else prompts a check.")
    min_free_disk: Size = setting("5g", "New sessions are refused (503) while the engine's disk has less free; 0: no watermark.")
    min_free_memory: Size = setting("2g", "New sessions are refused (503) while the host has less memory available; 0: no watermark.")
    upload_limit: Size = setting("1g", "Largest file a learner may upload into or copy between machines.")
    log_level: str = setting("INFO", "Log level: DEBUG, INFO, WARNING or ERROR.")
    instructor_token: str = setting("", "Token of the instructor (workshops and their dashboard); empty: Berth makes one, keeps it in the data folder (`instructor-token`) and prints an instructor link at start-up.")
    stuck_after: Duration = setting("10m", "A workshop learner counts as stuck after this long without progress (a task done, or a change in what its checks say).")
    stuck_tries: int = setting(6, "A workshop learner counts as stuck when the same checks have failed through this many commands in a row.")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (Environment(settings_cls),)  # the environment alone: no .env or secrets files

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Settings from `environ` (os.environ by default); `overrides` (by field name) win.
        A value Berth cannot use raises ConfigError naming the variable."""
        token = _environ.set(environ)
        try:
            config = cls()
        except ValidationError as error:
            raise ConfigError(_explain(error, os.environ if environ is None else environ)) from None
        except SettingsError as error:
            raise ConfigError(str(error)) from None
        finally:
            _environ.reset(token)
        return config.model_copy(update=overrides) if overrides else config


def _explain(error: ValidationError, environ: Mapping[str, str]) -> str:
    """One line, each bad variable with its value and why: `BERTH_PORT='x': Input should be ...`."""
    lines = []
    for problem in error.errors(include_url=False):
        name = str(problem["loc"][0]) if problem["loc"] else "BERTH_*"
        message = problem["msg"].removeprefix("Value error, ")
        raw = environ.get(name)
        lines.append(f"{name}={raw!r}: {message}" if raw is not None else f"{name}: {message}")
    return "; ".join(lines)


# --- the settings as the README's table shows them

@dataclass(frozen=True)
class Setting:
    name: str
    default: str  # as written in the table: '' for an empty default
    help: str


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(str(field.alias), "" if field.default in ("", None) else str(field.default), str(field.description))
    for field in Config.model_fields.values()
)
