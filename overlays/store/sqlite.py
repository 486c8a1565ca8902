"""The embedded default store: one SQLite file in the state dir.

WAL mode lets readers run beside a writer; each commit is a ``BEGIN IMMEDIATE``
transaction, so concurrent CLI processes serialise their writes and the compares
in ``commit`` see the latest state. Several simulated hosts may share one file.

Watch and leases without a server: every change also writes rows to ``events``
(revision, seq, key, value or NULL for a delete) in the same transaction, and a
watch polls the one-row ``meta`` table every few milliseconds (a commit through
the same ``SqliteStore`` wakes it at once) and then reads the new events. Events
older than ``history`` revisions are pruned; ``meta.compacted`` says up to which
revision, and a watch that would need them gets ``Compacted``. Leases live in
``leases`` with an expiry in wall-clock time (``time.time()``, shared by every
process on the machine); whichever process first notices an expired lease (in a
commit, a read, a keepalive or a watch poll) deletes its keys, with delete events,
in a write transaction of its own, so exactly one process reaps each lease.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from overlays.errors import StoreError
from overlays.store.base import Compacted, Entry, Event, LeaseNotFound, Value

DEFAULT_HISTORY = 10_000  # revisions of events kept for watchers that resume
POLL_INTERVAL = 0.005  # how often a watch looks for commits made by other connections
# How often reads look for expired leases (a query of its own): expiry may lag its TTL by about
# a second anyway (see base.py), and a transaction's reads then cost one query each, not two.
REAP_CHECK_INTERVAL = 0.1
_IN_CHUNK = 500  # keys per "IN (...)" query (SQLite allows 999 parameters on old builds)
SCHEMA_VERSION = 2

_SCHEMA_V1 = [
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, mod_revision INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), revision INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta (id, revision) VALUES (0, 0)",
]
# Version 2 adds watch history and leases. The history before the upgrade was never
# kept, so it counts as compacted.
_SCHEMA_V2 = [
    "CREATE TABLE IF NOT EXISTS events (revision INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL,"
    " value TEXT, PRIMARY KEY (revision, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY AUTOINCREMENT, ttl REAL NOT NULL,"
    " expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases (expires)",
    "CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease IS NOT NULL",
    "UPDATE meta SET compacted = revision",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
]


class SqliteStore:
    txn_ops: int | None = None

    def __init__(self, path: Path, history: int = DEFAULT_HISTORY) -> None:
        self.path = path
        self._history = history
        # One connection, shared by this object's threads: the lock keeps their transactions apart.
        self._lock = threading.RLock()
        # Bumped after each local commit, so a local watch wakes at once instead of at its next poll.
        self._local = threading.Condition(threading.Lock())
        self._local_commits = 0
        self._reap_checked = -REAP_CHECK_INTERVAL  # monotonic time of the last look for expired leases
        try:
            self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as e:
            raise StoreError(f"cannot open state store {path}: {e}") from e

    # -- reads -----------------------------------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        self._reap_if_due()
        rows = self._rows("SELECT value, mod_revision FROM kv WHERE key = ?", (key,))
        return Entry(key, json.loads(rows[0][0]), rows[0][1]) if rows else None

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        self._reap_if_due()
        found: dict[str, Entry] = {}
        for i in range(0, len(keys), 500):  # well under SQLite's limit of bound parameters
            part = keys[i:i + 500]
            rows = self._rows(f"SELECT key, value, mod_revision FROM kv WHERE key IN ({','.join('?' * len(part))})",
                              tuple(part))
            found.update({k: Entry(k, json.loads(v), r) for k, v, r in rows})
        return found

    def range(self, prefix: str) -> list[Entry]:
        self._reap_if_due()
        # key >= prefix AND key < prefix + U+FFFF: an index range scan, unlike LIKE.
        rows = self._rows(
            "SELECT key, value, mod_revision FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, prefix + "\uffff"),
        )
        return [Entry(k, json.loads(v), r) for k, v, r in rows]

    def revision(self) -> int:
        self._reap_if_due()
        return int(self._rows("SELECT revision FROM meta WHERE id = 0", ())[0][0])

    # -- writes ----------------------------------------------------------------------------------------------------

    def commit(
        self,
        compares: Mapping[str, int],
        puts: Mapping[str, Value],
        deletes: Sequence[str],
        leases: Mapping[str, int] | None = None,
    ) -> bool:
        leases = leases or {}
        with self._write("commit") as db:
            if self._reap_due():
                self._reap(db)
            have = _revisions(db, list(compares))
            if any(have.get(key, 0) != rev for key, rev in compares.items()):
                return False
            for key in puts:
                lease = leases.get(key)
                if lease is not None and not db.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone():
                    raise LeaseNotFound(f"put {key}: lease {lease:x} does not exist (expired or revoked?)")
            gone = [k for k in deletes if k not in puts]
            present = sorted(_revisions(db, gone)) if gone else []
            if puts or present:
                rev = self._next_revision(db)
                encoded = {k: json.dumps(v, sort_keys=True) for k, v in puts.items()}
                db.executemany(
                    "INSERT OR REPLACE INTO kv (key, value, mod_revision, lease) VALUES (?, ?, ?, ?)",
                    [(k, v, rev, leases.get(k)) for k, v in encoded.items()],
                )
                db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in present])
                self._record(db, rev, [*encoded.items(), *((k, None) for k in present)])
            return True

    def grant_lease(self, ttl: float) -> int:
        with self._write("grant lease") as db:
            cur = db.execute("INSERT INTO leases (ttl, expires) VALUES (?, ?)", (ttl, time.time() + ttl))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def keepalive(self, lease: int) -> bool:
        with self._write("keep lease alive") as db:
            self._reap(db)
            cur = db.execute("UPDATE leases SET expires = ? + ttl WHERE id = ?", (time.time(), lease))
            return cur.rowcount == 1

    def revoke_lease(self, lease: int) -> None:
        with self._write("revoke lease") as db:
            self._reap(db)
            self._end_leases(db, [lease])

    def compact(self, revision: int) -> None:
        """Forget the events up to ``revision``: watching after it still works, from earlier raises Compacted."""
        with self._write("compact") as db:
            db.execute("DELETE FROM events WHERE revision <= ?", (revision,))
            db.execute("UPDATE meta SET compacted = MAX(compacted, MIN(?, revision)) WHERE id = 0", (revision,))

    # -- watch -----------------------------------------------------------------------------------------------------

    def watch(self, prefix: str, after_revision: int, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        scanned = after_revision  # no event under prefix up to here
        looked_at: tuple[int, int] | None = None  # (data_version, local commits) when we last looked
        next_expiry: float | None = None
        while True:
            with self._local:
                local_commits = self._local_commits
            # data_version changes when another connection commits: until then, nothing to read.
            now_at = (int(self._rows("PRAGMA data_version", ())[0][0]), local_commits)
            if now_at != looked_at or (next_expiry is not None and next_expiry <= time.time()):
                looked_at = now_at
                ((revision, compacted, next_expiry),) = self._rows(
                    "SELECT revision, compacted, (SELECT MIN(expires) FROM leases) FROM meta WHERE id = 0", ()
                )
                if next_expiry is not None and next_expiry <= time.time():
                    self._reap_if_due(force=True)
                    continue
                if scanned < compacted:
                    raise Compacted(prefix, after_revision, compacted)
                if revision > scanned:
                    found = self._events_after(prefix, scanned)
                    if found:
                        return found
                    scanned = revision
            now = time.monotonic()
            if now >= deadline:
                return []
            with self._local:
                if self._local_commits == local_commits:
                    self._local.wait(min(POLL_INTERVAL, deadline - now))

    def _events_after(self, prefix: str, revision: int) -> list[Event]:
        rows = self._rows(
            "SELECT revision, key, value FROM events WHERE revision > ? AND key >= ? AND key < ?"
            " ORDER BY revision, seq",
            (revision, prefix, prefix + "\uffff"),
        )
        return [
            Event("put", k, json.loads(v), r) if v is not None else Event("delete", k, None, r) for r, k, v in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- inside a write transaction --------------------------------------------------------------------------------

    def _next_revision(self, db: sqlite3.Connection) -> int:
        return int(db.execute("UPDATE meta SET revision = revision + 1 WHERE id = 0 RETURNING revision").fetchone()[0])

    def _record(self, db: sqlite3.Connection, rev: int, changes: Iterable[tuple[str, str | None]]) -> None:
        """Write the events of revision ``rev`` (key, JSON or None for a delete); prune what falls out."""
        db.executemany(
            "INSERT INTO events (revision, seq, key, value) VALUES (?, ?, ?, ?)",
            [(rev, i, k, v) for i, (k, v) in enumerate(changes)],
        )
        oldest_kept = rev - self._history
        if oldest_kept > 0:
            db.execute("DELETE FROM events WHERE revision <= ?", (oldest_kept,))
            db.execute("UPDATE meta SET compacted = MAX(compacted, ?) WHERE id = 0", (oldest_kept,))

    def _reap(self, db: sqlite3.Connection) -> None:
        expired = db.execute("SELECT id FROM leases WHERE expires <= ?", (time.time(),)).fetchall()
        self._end_leases(db, [lease for (lease,) in expired])

    def _end_leases(self, db: sqlite3.Connection, ended: list[int]) -> None:
        """Delete the leases ``ended`` and their keys, as one revision (if any key goes)."""
        if not ended:
            return
        marks = ",".join("?" * len(ended))
        db.execute(f"DELETE FROM leases WHERE id IN ({marks})", ended)
        keys = [k for (k,) in db.execute(f"SELECT key FROM kv WHERE lease IN ({marks}) ORDER BY key", ended)]
        if keys:
            rev = self._next_revision(db)
            db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in keys])
            self._record(db, rev, [(k, None) for k in keys])

    # -- plumbing --------------------------------------------------------------------------------------------------

    def _reap_due(self) -> bool:
        """Whether to look for expired leases now: at most every REAP_CHECK_INTERVAL seconds."""
        now = time.monotonic()
        if now - self._reap_checked < REAP_CHECK_INTERVAL:
            return False
        self._reap_checked = now
        return True

    def _reap_if_due(self, force: bool = False) -> None:
        """Reap expired leases if there are any (looked for at most every REAP_CHECK_INTERVAL seconds)."""
        if not (self._reap_due() or force):
            return
        if self._rows("SELECT 1 FROM leases WHERE expires <= ? LIMIT 1", (time.time(),)):
            with self._write("reap expired leases") as db:
                self._reap(db)

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed if the body returns, rolled back if it raises."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StoreError(f"state store {self.path}: {what} failed: {e}") from e
        with self._local:
            self._local_commits += 1
            self._local.notify_all()

    def _rows(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        """All rows of one read, fetched under the lock (a half-read cursor would pin an old snapshot)."""
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"state store {self.path}: read failed: {e}") from e

    def _migrate(self) -> None:
        """Bring the file to ``SCHEMA_VERSION``; racing openers serialise on the write lock."""
        if self._db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                for sql in _SCHEMA_V1:
                    db.execute(sql)
                if "lease" not in _columns(db, "kv"):
                    db.execute("ALTER TABLE kv ADD COLUMN lease INTEGER")
                if "compacted" not in _columns(db, "meta"):
                    db.execute("ALTER TABLE meta ADD COLUMN compacted INTEGER NOT NULL DEFAULT 0")
                for sql in _SCHEMA_V2:
                    db.execute(sql)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def _revisions(db: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
    """The mod_revision of each of ``keys`` that exists, in a query or a few."""
    found: dict[str, int] = {}
    for start in range(0, len(keys), _IN_CHUNK):
        chunk = keys[start : start + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        found.update(db.execute(f"SELECT key, mod_revision FROM kv WHERE key IN ({marks})", chunk).fetchall())
    return found


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
