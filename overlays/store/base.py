"""The one small protocol every state store implements, and transactions over it.

A store is a flat map of string keys to JSON objects. Each key carries the store
revision that last modified it (``mod_revision``; 0 means absent). Writes happen
only through ``commit``: a list of compares (key must still be at the revision we
read) and a batch of puts and deletes, applied atomically or not at all, as one new
revision. That is exactly an etcd v3 transaction, so SQLite, memory and etcd share
the engine code.

``transact`` runs a function against a ``Txn`` that records what it read, then
commits with a compare on each of those keys and retries on conflict. Allocation
stays safe under concurrency because every allocated address is a key of its own
that is created only if absent.

Control plane (the multi-host part): every change is also an ``Event`` kept for a
while, so ``watch(prefix, after_revision, timeout)`` can long-poll for what changed
since a revision the caller has seen; a watcher that fell too far behind gets
``Compacted`` and re-lists. To start (or restart) watching without missing a change:
read ``revision()`` *first*, then ``range(prefix)``, then watch after that revision;
changes in between may arrive twice, so apply events idempotently. A lease
(``grant_lease``) ties keys to a host's liveness: the host calls ``keepalive`` more
often than the TTL, and when it stops (or ``revoke_lease``), its keys are deleted,
with delete events, as if by a commit.

Semantics every backend keeps (the contract tests run against all of them):
  - one successful commit that changes something is one revision; a failed compare
    changes nothing and does not raise the revision; a commit that changes nothing
    (no puts, deletes of absent keys only) does not raise it either (etcd's rule);
  - events come in revision order; one revision's events come together, puts first
    in the order given, then deletes;
  - a put names at most one lease; a put without a lease detaches the key from any
    lease; a put to a lease that does not exist raises ``LeaseNotFound`` (after the
    compares passed: a failed compare still just returns False);
  - lease TTLs are seconds; a backend may round them up (etcd: whole seconds, and a
    cluster-dependent minimum of about 2 s); expiry may lag the TTL by about a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from overlays.errors import StoreError

Value = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    key: str
    value: Value
    mod_revision: int


@dataclass(frozen=True)
class Event:
    """One change of one key: a put (with the new value) or a delete (value None)."""

    kind: Literal["put", "delete"]
    key: str
    value: Value | None
    revision: int


class Compacted(StoreError):
    """A watch asked for history the store no longer keeps: re-list, then watch from the new revision."""

    def __init__(self, prefix: str, after_revision: int, compacted: int) -> None:
        super().__init__(
            f"store history before revision {compacted + 1} is gone: cannot watch {prefix!r} "
            f"after revision {after_revision}; re-list and resume"
        )
        self.after_revision = after_revision
        self.compacted = compacted


class LeaseNotFound(StoreError):
    """A put named a lease that does not exist (never granted, expired or revoked)."""


class Store(Protocol):
    txn_ops: int | None  # the most compares (or puts and deletes) one commit may hold; None: no limit

    def get(self, key: str) -> Entry | None: ...

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]: ...  # one read of several keys; absent ones left out

    def range(self, prefix: str) -> list[Entry]: ...

    def commit(
        self,
        compares: Mapping[str, int],
        puts: Mapping[str, Value],
        deletes: Sequence[str],
        leases: Mapping[str, int] | None = None,
    ) -> bool: ...

    def revision(self) -> int: ...

    def watch(self, prefix: str, after_revision: int, timeout: float) -> list[Event]: ...

    def grant_lease(self, ttl: float) -> int: ...

    def keepalive(self, lease: int) -> bool: ...

    def revoke_lease(self, lease: int) -> None: ...

    def close(self) -> None: ...


class Txn:
    """A read-your-writes view of a store; commit compares every key it read.

    Each key is read from the store once per transaction (a second ``get`` answers from
    what the first read), and ``prefetch`` reads several keys an operation is about to
    need in one request: with etcd, one round trip instead of one per key.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.compares: dict[str, int] = {}
        self.puts: dict[str, Value] = {}
        self.deletes: set[str] = set()
        self.leases: dict[str, int] = {}
        self._read: dict[str, Entry | None] = {}

    def prefetch(self, keys: Sequence[str]) -> None:
        """Read ``keys`` now, in one request; later gets and peeks of them answer from it (no compare yet)."""
        known = self._read.keys() | self.puts.keys() | self.deletes
        wanted = [k for k in dict.fromkeys(keys) if k not in known]
        if len(wanted) == 1:
            self._read[wanted[0]] = self._store.get(wanted[0])
        elif wanted:
            found = self._store.get_many(wanted)
            self._read.update({k: found.get(k) for k in wanted})

    def _entry(self, key: str) -> Entry | None:
        if key not in self._read:
            self._read[key] = self._store.get(key)
        return self._read[key]

    def get(self, key: str) -> Value | None:
        if key in self.puts:
            return self.puts[key]
        if key in self.deletes:
            return None
        entry = self._entry(key)
        self.compares.setdefault(key, entry.mod_revision if entry else 0)
        return entry.value if entry else None

    def peek(self, key: str) -> Value | None:
        """``get`` without the compare: for hints whose staleness is harmless (a commit does not
        fail because another writer changed them)."""
        if key in self.puts:
            return self.puts[key]
        if key in self.deletes:
            return None
        entry = self._entry(key)
        return entry.value if entry else None

    def range(self, prefix: str) -> dict[str, Value]:
        """Keys under ``prefix``; not compared (guard the keys that matter with get/create)."""
        found = {e.key: e.value for e in self._store.range(prefix) if e.key not in self.deletes}
        found.update({k: v for k, v in self.puts.items() if k.startswith(prefix)})
        return dict(sorted(found.items()))

    def put(self, key: str, value: Value, lease: int | None = None) -> None:
        """Write ``key``; with ``lease``, the key goes away when that lease ends."""
        self.deletes.discard(key)
        self.puts[key] = value
        if lease is None:
            self.leases.pop(key, None)
        else:
            self.leases[key] = lease

    def create(self, key: str, value: Value, lease: int | None = None) -> bool:
        """Put ``key`` only if it is absent (at commit time too); False if it exists now."""
        if self.get(key) is not None:
            return False
        self.put(key, value, lease)
        return True

    def delete(self, key: str) -> None:
        self.puts.pop(key, None)
        self.leases.pop(key, None)
        self.deletes.add(key)


def transact(store: Store, fn: Callable[[Txn], T], attempts: int = 200) -> T:
    """Run ``fn`` in a transaction, retrying when another writer got there first."""
    for attempt in range(attempts):
        txn = Txn(store)
        result = fn(txn)
        if not txn.puts and not txn.deletes:
            return result
        deletes = sorted(txn.deletes)
        # Only pass leases when there are some, so stores written before leases keep working.
        done = (
            store.commit(txn.compares, txn.puts, deletes, leases=txn.leases)
            if txn.leases
            else store.commit(txn.compares, txn.puts, deletes)
        )
        if done:
            return result
        # Someone committed a key we read: back off a little, with jitter, and redo.
        import random  # only on a conflict

        time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
    raise StoreError(f"store stayed busy: gave up after {attempts} conflicting attempts")
