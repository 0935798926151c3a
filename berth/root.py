"""Berth, the composition root: one object builds every part, wires who hears what on the
event bus, and starts and stops them all. Parts get what they need in their constructor
and never look each other up; the web layer (create_app) is wired to a Berth from outside."""

from __future__ import annotations

import importlib
import ipaddress
import logging
import secrets
import threading
from pathlib import Path

from .certs import CertificateAuthority
from .check_framework import CheckRunner
from .checker import Checker
from .checks import KINDS
from .config import Config
from .events import Bus, LearnerActivity, MachineTrouble, SessionEnded, SessionReady, TasksChanged, WorkshopChanged
from .lessons import Library
from .machines import MachineBackend, MachineError
from .origins import OriginPolicy
from .owner import DataFolderLock
from .pool import Pool
from .ports import PortWatch
from .sessions import Sessions
from .store import Store
from .terminal import Terminals
from .trouble import MachineCare
from .workshops import JoinLimiter, Workshops, load_instructor_token

log = logging.getLogger("berth")

# Machines backends by the name BERTH_MACHINES gives; any other value is "module:Class".
BACKENDS = {"docker": "berth.machines:DockerMachines"}
STOP_TIMEOUT = 10  # seconds to wait for each thread when Berth stops


def backend_class(name: str) -> type[MachineBackend]:
    """The MachineBackend that BERTH_MACHINES names, as JupyterHub finds its spawner class."""
    module_name, _, class_name = BACKENDS.get(name, name).partition(":")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise MachineError(f"BERTH_MACHINES={name}: no such machines backend "
                           f"(known: {', '.join(BACKENDS)}, or module:Class).") from None
    if not (isinstance(found, type) and issubclass(found, MachineBackend)):
        raise MachineError(f"BERTH_MACHINES={name} is not a MachineBackend.")
    return found


def make_private(folder: Path) -> None:
    """The data folder holds the progress store, Berth's secret key, the instructor token
    and the machines' certificate authority: Berth's user alone may enter it (so whatever is
    made in it later is out of others' reach too), and files an earlier Berth left readable
    are closed."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else path.stat().st_mode & 0o700)


class Berth:
    """The running parts of one Berth: built here, top to bottom, in the order they need
    each other; `start` runs them, `stop` ends every thread they started."""

    def __init__(self, config: Config, backend: MachineBackend | None = None):
        self.config = config
        make_private(config.data_dir)
        self.lock = DataFolderLock(config.data_dir)
        self.lock.acquire()  # DataFolderInUse if another Berth runs on this folder
        self.store = Store(config.data_dir / "berth.sqlite3", config.store_wait)
        self.instance_id = self.store.meta("instance_id", lambda: secrets.token_hex(4))
        self.secret_key = self.store.meta("secret_key", lambda: secrets.token_hex(32))
        self.bus = Bus()
        self.library = Library(config.lessons_dir, settings={"BERTH_BASE_IMAGE": config.base_image},
                               known_kinds={name: kind.params for name, kind in KINDS.items()})
        self.authority = CertificateAuthority(config.data_dir / "certs")
        self.backend = backend or backend_class(config.machines)(config, self.instance_id, self.authority)
        starts = threading.BoundedSemaphore(config.starts_at_once)  # turns to make machines, learners' and the pool's
        self.pool = Pool(config, self.store, self.backend, self.library, starts=starts)
        self.sessions = Sessions(config, self.store, self.backend, self.library, self.bus, starts=starts, pool=self.pool)
        self.pool.room_problem = self.sessions.room_problem
        self.runner = CheckRunner(KINDS)
        self.checker = Checker(config, self.store, self.library, self.backend, self.runner, self.bus)
        self.terminals = Terminals(config, self.sessions, self.backend, self.bus)
        self.care = MachineCare(config, self.store, self.backend, self.sessions, self.bus)
        self.ports = PortWatch(self.backend)
        self.origins = OriginPolicy(config.allowed_origins, config.public_url, config.host)
        token, token_made = load_instructor_token(config)
        self.workshops = Workshops(config, self.store, self.sessions, self.library, self.checker.task_list,
                                   self.bus, token=token, token_made=token_made)
        self.pool.extra = self.workshops.open_seats  # a workshop's seats are made ahead of time too
        self.join_limiter = JoinLimiter()
        self.machine_networks = ipaddress.ip_network(config.network_pool)
        self.state = "starting"  # starting | ready | failed
        self.problem = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

        # Who hears what. The web layer subscribes too, to forward events to the pages.
        self.bus.subscribe(SessionReady, lambda event: self.checker.watch(event.session_id))
        self.bus.subscribe(SessionEnded, lambda event: self.checker.forget(event.session_id))
        self.bus.subscribe(SessionEnded, lambda event: self.terminals.end_session(event.session_id))
        self.bus.subscribe(LearnerActivity, self.checker.on_activity)
        self.bus.subscribe(MachineTrouble, self._machine_trouble)
        self.bus.subscribe(LearnerActivity, self._learner_active)
        self.bus.subscribe(TasksChanged, lambda event: self.workshops.on_tasks(event.session_id, event.tasks))
        self.bus.subscribe(LearnerActivity, self.workshops.on_activity)
        self.bus.subscribe(SessionReady, lambda event: self.workshops.on_session(event.session_id))
        self.bus.subscribe(SessionEnded, lambda event: self.workshops.on_session(event.session_id))
        self.bus.subscribe(SessionEnded, lambda event: self.pool.nudge())  # room for a kit, or a seat to refill
        self.bus.subscribe(WorkshopChanged, lambda event: self.pool.nudge())

    def _machine_trouble(self, event: MachineTrouble) -> None:
        if event.what == "stopped":  # checks wait for the machine (SessionReady resumes them)
            self.checker.forget(event.session_id)

    def _learner_active(self, event: LearnerActivity) -> None:
        if event.what == "enter":  # typing in a terminal keeps a session from being reaped as idle
            self.sessions.touch(event.session_id)

    # --- running

    def start(self) -> None:
        """Run the parts; prepare the machines side in the background (pages answer meanwhile)."""
        self.checker.start()
        self.terminals.start()
        self.workshops.start()
        self._spawn(self._startup, "startup")

    def prepare(self) -> None:
        """Make the machines backend ready and take over the sessions it still has."""
        self.backend.prepare([self.config.base_image, *self.library.images()])
        self.sessions.adopt()
        self.state, self.problem = "ready", ""

    def stop(self) -> None:
        """Stop every part and wait for the threads Berth started; the pool's unclaimed kits
        are removed (they are nobody's sessions)."""
        self._stop.set()
        self.pool.stop()
        self.workshops.stop()
        self.terminals.stop()
        self.checker.stop()
        self.runner.close()
        for thread in self._threads:
            thread.join(STOP_TIMEOUT)
        self.care.join(STOP_TIMEOUT)
        self.backend.close()
        self.lock.release()

    def shutdown(self) -> None:
        """Berth is stopping for good (SIGTERM, Ctrl-C): end every session and remove
        every machine, network, disk and the mirror, unless BERTH_KEEP_ON_STOP keeps them
        for the next start to take over. Then stop every part."""
        self._stop.set()  # no reaping, no startup retries from here on
        drained = self.pool.stop()  # before anything else: no kit is made after this
        if drained:
            log.info("stopping: removed %d unclaimed kit(s) of the pool", len(drained))
        if self.config.keep_on_stop:
            log.info("stopping; machines are kept for the next start (BERTH_KEEP_ON_STOP)")
            self.stop()
            return
        ended = self.sessions.end_all()
        try:
            removed = self.backend.remove_all()
            log.info("stopped: %d session(s) ended; removed %d thing(s) from the engine", len(ended), len(removed))
        except MachineError as error:
            log.error("stopping: could not remove the machines: %s (./run clean removes them later)", error.message)
        except Exception:
            log.exception("stopping: could not remove the machines (./run clean removes them later)")
        self.stop()

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _startup(self) -> None:
        while not self._stop.is_set():
            try:
                self.prepare()
                break
            except MachineError as error:
                if self._stop.is_set():
                    return  # stopped while preparing: what failed is being removed anyway
                self.state, self.problem = "failed", error.message
                log.error("not ready: %s %s", error.message, error.detail)
            if self._stop.wait(5):
                return
        if not self._stop.is_set():
            self._start_pool()
            self._spawn(self._reap_forever, "reaper")
            self._spawn(self._follow_machines, "machines-follow")

    def _start_pool(self) -> None:
        """Before the pool makes kits: remove what an earlier run left on the backend that
        no session of this one owns (its unclaimed kits, if it did not stop cleanly)."""
        try:
            left = self.sessions.remove_leftovers()
            if left:
                log.info("removed %d earlier session(s) or kit(s) nobody owns", len(left))
        except MachineError as error:
            log.warning("could not look for leftovers: %s", error.message)
        self.pool.start()

    def _follow_machines(self) -> None:
        """Hear what happens to the machines (out of memory, stopped, the engine restarted)
        for as long as Berth runs."""
        while not self._stop.is_set():
            try:
                self.care.run(self._stop)
            except Exception:
                log.exception("following the machines failed")
                self._stop.wait(5)

    def _reap_forever(self) -> None:
        while not self._stop.wait(self.config.reap_interval):
            try:
                self.sessions.reap()
            except MachineError as error:
                log.warning("reaper: %s", error.message)
            except Exception:
                log.exception("reaper failed")
