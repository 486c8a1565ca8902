"""The one small protocol every state store implements, and transactions over it.

A store is a flat map of string keys to JSON objects. Each key carries the store
revision that last modified it (``mod_revision``; 0 means absent). Writes happen
only through ``commit``: a list of compares (key must still be at the revision we
read) and a batch of puts and deletes, applied atomically or not at all. That is
exactly an etcd v3 transaction, so SQLite, memory and etcd share the engine code.

``transact`` runs a function against a ``Txn`` that records what it read, then
commits with a compare on each of those keys and retries on conflict. Allocation
stays safe under concurrency because every allocated address is a key of its own
that is created only if absent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from overlays.errors import StoreError

Value = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    key: str
    value: Value
    mod_revision: int


class Store(Protocol):
    def get(self, key: str) -> Entry | None: ...

    def range(self, prefix: str) -> list[Entry]: ...

    def commit(
        self, compares: Mapping[str, int], puts: Mapping[str, Value], deletes: Sequence[str]
    ) -> bool: ...

    def close(self) -> None: ...


class Txn:
    """A read-your-writes view of a store; commit compares every key it read."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.compares: dict[str, int] = {}
        self.puts: dict[str, Value] = {}
        self.deletes: set[str] = set()

    def get(self, key: str) -> Value | None:
        if key in self.puts:
            return self.puts[key]
        if key in self.deletes:
            return None
        entry = self._store.get(key)
        self.compares.setdefault(key, entry.mod_revision if entry else 0)
        return entry.value if entry else None

    def range(self, prefix: str) -> dict[str, Value]:
        """Keys under ``prefix``; not compared (guard the keys that matter with get/create)."""
        found = {e.key: e.value for e in self._store.range(prefix) if e.key not in self.deletes}
        found.update({k: v for k, v in self.puts.items() if k.startswith(prefix)})
        return dict(sorted(found.items()))

    def put(self, key: str, value: Value) -> None:
        self.deletes.discard(key)
        self.puts[key] = value

    def create(self, key: str, value: Value) -> bool:
        """Put ``key`` only if it is absent (at commit time too); False if it exists now."""
        if self.get(key) is not None:
            return False
        self.put(key, value)
        return True

    def delete(self, key: str) -> None:
        self.puts.pop(key, None)
        self.deletes.add(key)


def transact(store: Store, fn: Callable[[Txn], T], attempts: int = 200) -> T:
    """Run ``fn`` in a transaction, retrying when another writer got there first."""
    for attempt in range(attempts):
        txn = Txn(store)
        result = fn(txn)
        if not txn.puts and not txn.deletes:
            return result
        if store.commit(txn.compares, txn.puts, sorted(txn.deletes)):
            return result
        # Someone committed a key we read: back off a little, with jitter, and redo.
        time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
    raise StoreError(f"store stayed busy: gave up after {attempts} conflicting attempts")
