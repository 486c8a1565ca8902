"""The embedded default store: one SQLite file in the state dir.

WAL mode lets readers run beside a writer; each commit is a ``BEGIN IMMEDIATE``
transaction, so concurrent CLI processes serialise their writes and the compares
in ``commit`` see the latest state. Several simulated hosts may share one file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from overlays.errors import StoreError
from overlays.store.base import Entry, Value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, mod_revision INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), revision INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (id, revision) VALUES (0, 0);
"""


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open state store {path}: {e}") from e

    def get(self, key: str) -> Entry | None:
        row = self._query("SELECT value, mod_revision FROM kv WHERE key = ?", (key,)).fetchone()
        return Entry(key, json.loads(row[0]), row[1]) if row else None

    def range(self, prefix: str) -> list[Entry]:
        # key >= prefix AND key < prefix + U+FFFF: an index range scan, unlike LIKE.
        rows = self._query(
            "SELECT key, value, mod_revision FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, prefix + "\uffff"),
        ).fetchall()
        return [Entry(k, json.loads(v), r) for k, v, r in rows]

    def commit(self, compares: Mapping[str, int], puts: Mapping[str, Value], deletes: Sequence[str]) -> bool:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for key, rev in compares.items():
                    row = db.execute("SELECT mod_revision FROM kv WHERE key = ?", (key,)).fetchone()
                    if (row[0] if row else 0) != rev:
                        db.execute("ROLLBACK")
                        return False
                db.execute("UPDATE meta SET revision = revision + 1 WHERE id = 0")
                (revision,) = db.execute("SELECT revision FROM meta WHERE id = 0").fetchone()
                db.executemany(
                    "INSERT OR REPLACE INTO kv (key, value, mod_revision) VALUES (?, ?, ?)",
                    [(k, json.dumps(v, sort_keys=True), revision) for k, v in puts.items()],
                )
                db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in deletes])
                db.execute("COMMIT")
                return True
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"state store {self.path}: commit failed: {e}") from e

    def close(self) -> None:
        self._db.close()

    def _query(self, sql: str, args: tuple[str, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as e:
            raise StoreError(f"state store {self.path}: read failed: {e}") from e
