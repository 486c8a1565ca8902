"""An in-process store for unit tests: the same semantics as SQLite and etcd, nothing on disk.

One lock guards everything; a condition on it wakes watchers when a commit (or a
lease expiry) adds events. Expired leases are reaped lazily, by whichever call
comes first after the expiry, including a waiting watch.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence

from overlays.store.base import Compacted, Entry, Event, LeaseNotFound, Value

DEFAULT_HISTORY = 10_000  # events kept for watchers that resume


class MemoryStore:
    txn_ops: int | None = None

    def __init__(self, history: int = DEFAULT_HISTORY) -> None:
        self._data: dict[str, tuple[Value, int, int | None]] = {}  # key -> (value, mod_revision, lease)
        self._revision = 0
        self._events: deque[Event] = deque()
        self._history = history
        self._compacted = 0  # events up to this revision are gone
        self._leases: dict[int, tuple[float, float]] = {}  # id -> (ttl, expiry on the monotonic clock)
        self._lease_ids = itertools.count(1)
        self._changed = threading.Condition(threading.Lock())

    def get(self, key: str) -> Entry | None:
        with self._changed:
            self._reap()
            found = self._data.get(key)
            return Entry(key, found[0], found[1]) if found else None

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        with self._changed:
            self._reap()
            return {k: Entry(k, self._data[k][0], self._data[k][1]) for k in keys if k in self._data}

    def range(self, prefix: str) -> list[Entry]:
        with self._changed:
            self._reap()
            return [Entry(k, v, r) for k, (v, r, _) in sorted(self._data.items()) if k.startswith(prefix)]

    def commit(
        self,
        compares: Mapping[str, int],
        puts: Mapping[str, Value],
        deletes: Sequence[str],
        leases: Mapping[str, int] | None = None,
    ) -> bool:
        leases = leases or {}
        with self._changed:
            self._reap()
            for key, rev in compares.items():
                found = self._data.get(key)
                if (found[1] if found else 0) != rev:
                    return False
            for key in puts:
                lease = leases.get(key)
                if lease is not None and lease not in self._leases:
                    raise LeaseNotFound(f"put {key}: lease {lease:x} does not exist (expired or revoked?)")
            changes: list[Event] = [Event("put", k, v, 0) for k, v in puts.items()]
            changes += [Event("delete", k, None, 0) for k in deletes if k in self._data and k not in puts]
            if changes:
                self._apply(changes, {k: leases.get(k) for k in puts})
            return True

    def revision(self) -> int:
        with self._changed:
            self._reap()
            return self._revision

    def watch(self, prefix: str, after_revision: int, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                self._reap()
                if after_revision < self._compacted:
                    raise Compacted(prefix, after_revision, self._compacted)
                found = [e for e in self._events if e.revision > after_revision and e.key.startswith(prefix)]
                now = time.monotonic()
                if found or now >= deadline:
                    return found
                # Wake at the deadline or the next lease expiry, whichever is first.
                wake = min([deadline] + [expires for _, expires in self._leases.values()])
                self._changed.wait(max(wake - now, 0.001))

    def grant_lease(self, ttl: float) -> int:
        with self._changed:
            lease = next(self._lease_ids)
            self._leases[lease] = (ttl, time.monotonic() + ttl)
            return lease

    def keepalive(self, lease: int) -> bool:
        with self._changed:
            self._reap()
            found = self._leases.get(lease)
            if found is None:
                return False
            self._leases[lease] = (found[0], time.monotonic() + found[0])
            return True

    def revoke_lease(self, lease: int) -> None:
        with self._changed:
            self._reap()
            self._end_leases([lease])

    def compact(self, revision: int) -> None:
        """Forget the events up to ``revision``: watching after it still works, from earlier raises Compacted."""
        with self._changed:
            while self._events and self._events[0].revision <= revision:
                self._events.popleft()
            self._compacted = max(self._compacted, min(revision, self._revision))

    def close(self) -> None:
        pass

    # -- with the lock held ----------------------------------------------------------------------------------------

    def _apply(self, changes: list[Event], leases: Mapping[str, int | None]) -> None:
        """Write ``changes`` (revision 0 = to fill in) as one new revision, and record their events."""
        self._revision += 1
        rev = self._revision
        for change in changes:
            if change.value is None:
                self._data.pop(change.key, None)
            else:
                self._data[change.key] = (change.value, rev, leases.get(change.key))
            self._events.append(Event(change.kind, change.key, change.value, rev))
        while self._events and self._events[0].revision <= rev - self._history:
            self._compacted = self._events.popleft().revision
        self._changed.notify_all()

    def _reap(self) -> None:
        now = time.monotonic()
        self._end_leases([lease for lease, (_, expires) in self._leases.items() if expires <= now])

    def _end_leases(self, ended: list[int]) -> None:
        if not any(lease in self._leases for lease in ended):
            return
        for lease in ended:
            self._leases.pop(lease, None)
        gone = set(ended)
        doomed = [Event("delete", k, None, 0) for k, (_, _, lease) in sorted(self._data.items()) if lease in gone]
        if doomed:
            self._apply(doomed, {})
