"""One lock per key (a session, a shell, a check's question), made when first wanted and
dropped when nobody holds it or waits for it, so that a long-running Berth does not keep a
lock for every session it ever saw."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0  # holding it or waiting for it


class KeyedLocks:
    """`with locks.hold(key):` lets one thread at a time in per key; other keys go on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}

    @contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._lock:
                entry.users -= 1
                if not entry.users:
                    del self._entries[key]

    def __len__(self) -> int:
        """How many keys are held or waited for now."""
        with self._lock:
            return len(self._entries)
