"""An in-process store for unit tests: the same semantics as SQLite, nothing on disk."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from overlays.store.base import Entry, Value


class MemoryStore:
    def __init__(self) -> None:
        self._data: dict[str, tuple[Value, int]] = {}
        self._revision = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        with self._lock:
            found = self._data.get(key)
            return Entry(key, found[0], found[1]) if found else None

    def range(self, prefix: str) -> list[Entry]:
        with self._lock:
            return [Entry(k, v, r) for k, (v, r) in sorted(self._data.items()) if k.startswith(prefix)]

    def commit(self, compares: Mapping[str, int], puts: Mapping[str, Value], deletes: Sequence[str]) -> bool:
        with self._lock:
            for key, rev in compares.items():
                if self._data.get(key, (None, 0))[1] != rev:
                    return False
            self._revision += 1
            for key, value in puts.items():
                self._data[key] = (value, self._revision)
            for key in deletes:
                self._data.pop(key, None)
            return True

    def close(self) -> None:
        pass
