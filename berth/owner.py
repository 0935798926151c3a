"""Which Berth made something on the engine, and whether that Berth still runs.

A running Berth holds a lock on `berth.lock` in its data folder (so two Berths never share
one), and labels everything it makes with its data folder and host. `./run clean` removes
what a Berth left behind only when it can tell that Berth is not running: on this host,
its data folder is gone or nobody holds the lock."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "berth.lock"
LABEL_DATA = "berth.data"  # the data folder of the Berth that made it
LABEL_HOST = "berth.host"  # the host name where that Berth ran


class DataFolderInUse(Exception):
    """Another running Berth holds the data folder's lock."""


def owner_labels(data_dir: Path) -> dict[str, str]:
    """Labels that tell `./run clean` where to look for the lock of the Berth that made it."""
    return {LABEL_DATA: str(data_dir), LABEL_HOST: socket.gethostname()}


class DataFolderLock:
    """Held for as long as a Berth runs on a data folder; the kernel lets go when the
    process ends, however it ends (SIGKILL too)."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        for attempt in range(5):  # `./run clean` may be testing the lock this very moment
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.1 * attempt)
        else:
            os.close(fd)
            raise DataFolderInUse(f"another Berth is running on the data folder {self.path.parent} "
                                  f"(it holds {self.path}); stop it or set BERTH_DATA_DIR") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_held(data_dir: Path) -> bool:
    """True while a running Berth holds the lock of this data folder."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing lets go of the lock taken just to test it
    return False


def still_running(labels: dict[str, str]) -> bool | None:
    """Whether the Berth that labelled something runs: True or False when this host can
    tell, None when it cannot (made on another host or in a container, or before Berth
    labelled its data folder)."""
    data, host = labels.get(LABEL_DATA), labels.get(LABEL_HOST)
    if not data or host != socket.gethostname():
        return None
    folder = Path(data)
    if not folder.is_dir():
        return False
    return is_held(folder)
