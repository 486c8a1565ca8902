"""State stores behind one protocol: SQLite (default), memory (tests); etcd later."""

from overlays.store.base import Entry, Store, Txn, transact
from overlays.store.memory import MemoryStore
from overlays.store.sqlite import SqliteStore

__all__ = ["Entry", "MemoryStore", "SqliteStore", "Store", "Txn", "transact"]
