"""State stores behind one protocol: SQLite (default, one machine), etcd (several machines), memory (tests).

``open_store`` picks one from a ``--store`` value. The etcd client (gRPC) is
imported only when an etcd store is opened, and the memory store only when asked
for, so ``import overlays.store`` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlays.store.base import Compacted, Entry, Event, LeaseNotFound, Store, Txn, transact
from overlays.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from overlays.store.etcd import EtcdStore
    from overlays.store.memory import MemoryStore

__all__ = [
    "Compacted",
    "Entry",
    "EtcdStore",
    "Event",
    "LeaseNotFound",
    "MemoryStore",
    "SqliteStore",
    "Store",
    "Txn",
    "open_store",
    "transact",
]


def open_store(url_or_path: str | Path) -> Store:
    """``etcd://HOST:PORT[,HOST:PORT...]`` opens etcd; anything else is the path of a SQLite file."""
    if isinstance(url_or_path, str) and url_or_path.startswith("etcd://"):
        from overlays.store.etcd import EtcdStore

        return EtcdStore.from_url(url_or_path)
    return SqliteStore(Path(url_or_path))


def __getattr__(name: str) -> Any:
    # ``from overlays.store import EtcdStore`` works, and only then pays for the gRPC import.
    if name == "EtcdStore":
        from overlays.store.etcd import EtcdStore

        return EtcdStore
    if name == "MemoryStore":
        from overlays.store.memory import MemoryStore

        return MemoryStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
