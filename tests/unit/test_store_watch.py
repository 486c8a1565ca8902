"""The control-plane contract (revision, watch, leases), run against every backend.

The ``test_contract_*`` functions only use the ``backend`` and ``store`` fixtures, so
tests/integration/test_etcd_store.py runs the very same functions against a real
etcd by providing its own ``backend``. Here they run on memory and SQLite.
Every wait is bounded; timings allow for a slow, shared 2-core machine.
"""

from __future__ import annotations

import functools
import ipaddress
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlays import ipam
from overlays.engine import records
from overlays.errors import InvalidSpec
from overlays.model.specs import IPAddress, Network
from overlays.store import Compacted, Event, LeaseNotFound, MemoryStore, SqliteStore, Store, Txn, open_store, transact


@dataclass
class Backend:
    """How the contract tests reach one kind of store."""

    name: str
    open: Callable[[], Store]  # a new connection to the same store (memory: the same object)
    compact: Callable[[Store, int], None]  # forget history up to a revision (< the current one)
    lease_ttl: float  # a short TTL the backend honours
    slack: float  # how late an expiry may be noticed


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    opened: list[Store] = []
    if request.param == "memory":
        shared = MemoryStore()

        def open_memory() -> Store:
            return shared

        yield Backend("memory", open_memory, lambda s, r: shared.compact(r), 0.3, 1.0)
        return

    def open_sqlite() -> Store:
        s = SqliteStore(tmp_path / "state.db")
        opened.append(s)
        return s

    def compact_sqlite(s: Store, revision: int) -> None:
        assert isinstance(s, SqliteStore)
        s.compact(revision)

    yield Backend("sqlite", open_sqlite, compact_sqlite, 0.3, 1.0)
    for s in opened:
        s.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def put(store: Store, key: str, value: dict[str, object] | None = None, lease: int | None = None) -> int:
    """Write one key and return the revision it was written at."""
    assert store.commit({}, {key: value or {}}, [], leases={key: lease} if lease is not None else None)
    entry = store.get(key)
    assert entry is not None
    return entry.mod_revision


def delete(store: Store, key: str) -> None:
    assert store.commit({}, {}, [key])


def collect(store: Store, prefix: str, after: int, until: Callable[[list[Event]], bool], timeout: float) -> list[Event]:
    """Watch from ``after``, resuming after each batch, until ``until(events)`` or ``timeout`` (bounded)."""
    deadline = time.monotonic() + timeout
    events: list[Event] = []
    while not until(events):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        batch = store.watch(prefix, after, min(left, 1.0))
        if batch:
            assert batch[0].revision > after
            after = batch[-1].revision
            events += batch
    return events


def kinds(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.kind, e.key) for e in events]


# -- revision ------------------------------------------------------------------------------------------------------


def test_contract_revision_counts_changes_only(store: Store) -> None:
    start = store.revision()
    rev = put(store, "r/a")
    assert rev == store.revision() > start
    assert not store.commit({"r/a": 0}, {"r/b": {}}, [])  # failed compare
    assert store.commit({}, {}, ["r/missing"])  # deletes nothing
    assert store.revision() == rev
    assert store.commit({}, {"r/a": {"v": 2}, "r/b": {}}, ["r/c"])  # one commit, one revision
    assert store.revision() == rev + 1


# -- watch ---------------------------------------------------------------------------------------------------------


def test_contract_watch_sees_puts_and_deletes_after_a_revision(store: Store) -> None:
    put(store, "w/before", {"old": True})
    start = store.revision()
    first = put(store, "w/a", {"v": 1})
    put(store, "other/x")
    delete(store, "w/a")
    events = collect(store, "w/", start, lambda e: len(e) >= 2, 5)
    assert events == [Event("put", "w/a", {"v": 1}, first), Event("delete", "w/a", None, first + 2)]
    assert store.watch("w/", first, 5) == [Event("delete", "w/a", None, first + 2)]


def test_contract_one_commit_is_one_revision_puts_first(store: Store) -> None:
    put(store, "c/gone")
    start = store.revision()
    assert store.commit({}, {"c/b": {"n": 2}, "c/a": {"n": 1}}, ["c/gone"])
    events = store.watch("c/", start, 5)
    assert kinds(events) == [("put", "c/b"), ("put", "c/a"), ("delete", "c/gone")]
    assert {e.revision for e in events} == {start + 1}


def test_contract_resume_sees_nothing_twice(store: Store) -> None:
    start = store.revision()
    for n in range(5):
        put(store, f"s/{n}", {"n": n})
    seen: list[Event] = []
    after = start
    while batch := store.watch("s/", after, 0.2):
        seen += batch
        after = batch[-1].revision
    assert [e.key for e in seen] == [f"s/{n}" for n in range(5)]
    assert store.watch("s/", after, 0.2) == []
    put(store, "s/late")
    assert kinds(store.watch("s/", after, 5)) == [("put", "s/late")]


def test_contract_watch_times_out_empty(store: Store) -> None:
    put(store, "t/a")
    began = time.monotonic()
    assert store.watch("t/", store.revision(), 0.3) == []
    assert 0.25 <= time.monotonic() - began < 2.0


def test_contract_watch_prefix_is_literal(store: Store) -> None:
    start = store.revision()
    for key in ["p/a_b", "p/axb", "p/a%", "p/A_B"]:
        put(store, key)
    assert [e.key for e in collect(store, "p/a_", start, lambda e: len(e) >= 1, 2)] == ["p/a_b"]


def test_contract_watch_wakes_when_another_thread_puts(backend: Backend, store: Store) -> None:
    writer = backend.open()
    start = store.revision()
    timer = threading.Timer(0.2, lambda: put(writer, "x/late", {"v": 1}))
    began = time.monotonic()
    timer.start()
    try:
        events = store.watch("x/", start, 10)
    finally:
        timer.join(5)
    waited = time.monotonic() - began
    assert kinds(events) == [("put", "x/late")]
    assert 0.15 <= waited < 1.5, f"watch woke after {waited:.3f}s for a put at 0.2s"


def test_contract_watch_from_a_revision_too_old_raises_compacted(backend: Backend, store: Store) -> None:
    start = store.revision()
    for n in range(6):
        put(store, f"k/{n}")
    now = store.revision()
    backend.compact(store, now - 2)
    with pytest.raises(Compacted) as caught:
        store.watch("k/", start, 1)
    assert caught.value.compacted == now - 2
    # Resuming at the compaction point still works: exactly what came after it.
    assert [e.key for e in store.watch("k/", now - 2, 1)] == ["k/4", "k/5"]


# -- leases --------------------------------------------------------------------------------------------------------


def test_contract_lease_expiry_deletes_its_keys_with_delete_events(backend: Backend, store: Store) -> None:
    lease = store.grant_lease(backend.lease_ttl)
    start = store.revision()
    assert store.commit({}, {"h/a": {}, "h/b": {}, "h/keep": {}}, [], leases={"h/a": lease, "h/b": lease})
    began = time.monotonic()
    events = collect(store, "h/", start, lambda e: any(x.kind == "delete" for x in e), backend.lease_ttl + 10)
    took = time.monotonic() - began
    deletes = [e for e in events if e.kind == "delete"]
    assert sorted(e.key for e in deletes) == ["h/a", "h/b"]
    assert len({e.revision for e in deletes}) == 1
    assert backend.lease_ttl * 0.8 <= took <= backend.lease_ttl + backend.slack + 2
    assert store.get("h/a") is None
    assert store.get("h/keep") is not None
    assert not store.keepalive(lease)


def test_contract_keepalive_extends_a_lease(backend: Backend, store: Store) -> None:
    ttl = backend.lease_ttl
    lease = store.grant_lease(ttl)
    put(store, "ka/host", lease=lease)
    until = time.monotonic() + 2.5 * ttl
    while time.monotonic() < until:
        assert store.keepalive(lease)
        time.sleep(ttl / 4)
    assert store.get("ka/host") is not None, "a lease kept alive expired"
    start = store.revision()
    events = collect(store, "ka/", start, lambda e: bool(e), ttl + backend.slack + 2)
    assert kinds(events) == [("delete", "ka/host")]


def test_contract_revoke_deletes_at_once(store: Store) -> None:
    lease = store.grant_lease(60)
    put(store, "rv/a", lease=lease)
    start = store.revision()
    store.revoke_lease(lease)
    assert kinds(store.watch("rv/", start, 2)) == [("delete", "rv/a")]
    assert store.get("rv/a") is None
    assert not store.keepalive(lease)
    store.revoke_lease(lease)  # a lease that is gone: nothing to do


def test_contract_put_without_lease_detaches_the_key(store: Store) -> None:
    lease = store.grant_lease(60)
    put(store, "d/a", lease=lease)
    put(store, "d/a", {"v": 2})
    store.revoke_lease(lease)
    entry = store.get("d/a")
    assert entry is not None and entry.value == {"v": 2}


def test_contract_put_to_a_missing_lease(store: Store) -> None:
    lease = store.grant_lease(60)
    store.revoke_lease(lease)
    before = store.revision()
    # A failed compare is just False; past the compares, the missing lease is an error.
    assert not store.commit({"m/x": 123}, {"m/a": {}}, [], leases={"m/a": lease})
    with pytest.raises(LeaseNotFound):
        store.commit({}, {"m/a": {}}, [], leases={"m/a": lease})
    assert store.get("m/a") is None
    assert store.revision() == before


def test_contract_transact_puts_with_a_lease(store: Store) -> None:
    lease = store.grant_lease(60)
    transact(store, lambda txn: txn.put("tl/host", {"addr": "192.0.2.1"}, lease=lease))
    transact(store, lambda txn: txn.create("tl/ep", {}, lease=lease))
    assert len(store.range("tl/")) == 2
    store.revoke_lease(lease)
    assert store.range("tl/") == []


# -- global allocation ---------------------------------------------------------------------------------------------

NETWORK = Network(
    name="ov", driver="vxlan", subnet=ipaddress.ip_network("10.77.0.0/24"),
    gateway=ipaddress.ip_address("10.77.0.1"), ip_range=None, mtu=1450, bridge="ov-br", created=0.0,
)


def _allocate(owner: str, txn: Txn) -> IPAddress:
    return ipam.allocate(txn, records.get_network(txn, NETWORK.name), owner)


def allocate_from_hosts(stores: list[Store], each: int) -> list[IPAddress]:
    """Each store (a host) allocates ``each`` addresses on one network at once; all addresses given out."""
    transact(stores[0], lambda txn: txn.put(records.network_key(NETWORK.name), NETWORK.to_record()))
    got: list[IPAddress] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(len(stores))

    def host(n: int, store: Store) -> None:
        try:
            go.wait(10)
            for i in range(each):
                ip = transact(store, functools.partial(_allocate, f"h{n}-sandbox{i}"))
                with lock:
                    got.append(ip)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=host, args=(n, s)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "allocation threads still running after 120s"
    assert errors == []
    return got


def test_sqlite_three_connections_allocate_sixty_distinct_addresses(tmp_path: Path) -> None:
    stores: list[Store] = [SqliteStore(tmp_path / "state.db") for _ in range(3)]
    try:
        got = allocate_from_hosts(stores, 20)
        assert len(got) == 60 and len(set(got)) == 60
        assert len(stores[0].range("ipam/ov/")) == 60
    finally:
        for s in stores:
            s.close()


# -- SQLite specifics ----------------------------------------------------------------------------------------------


def test_sqlite_one_connection_writes_another_watches(tmp_path: Path) -> None:
    writer, watcher = SqliteStore(tmp_path / "state.db"), SqliteStore(tmp_path / "state.db")
    try:
        start = watcher.revision()
        timer = threading.Timer(0.2, lambda: put(writer, "n/a", {"v": 1}))
        began = time.monotonic()
        timer.start()
        events = watcher.watch("n/", start, 10)
        timer.join(5)
        assert kinds(events) == [("put", "n/a")]
        assert time.monotonic() - began < 1.5
        # A lease granted through one connection is reaped through the other, which alone is watching.
        lease = writer.grant_lease(0.3)
        put(writer, "n/b", lease=lease)
        after = events[-1].revision + 1
        assert kinds(collect(watcher, "n/", after, bool, 5)) == [("delete", "n/b")]
    finally:
        writer.close()
        watcher.close()


def test_sqlite_history_is_pruned(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", history=5)
    try:
        for n in range(12):
            put(store, f"k/{n}")
        now = store.revision()
        with pytest.raises(Compacted):
            store.watch("k/", 0, 1)
        assert [e.key for e in store.watch("k/", now - 5, 1)] == [f"k/{n}" for n in range(7, 12)]
    finally:
        store.close()


def test_memory_history_is_pruned() -> None:
    store = MemoryStore(history=5)
    for n in range(12):
        put(store, f"k/{n}")
    with pytest.raises(Compacted):
        store.watch("k/", 0, 1)
    assert [e.key for e in store.watch("k/", store.revision() - 5, 1)] == [f"k/{n}" for n in range(7, 12)]


def test_sqlite_upgrades_a_file_without_history(tmp_path: Path) -> None:
    """A state.db written before watch existed keeps its data; its old history counts as compacted."""
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, mod_revision INTEGER NOT NULL);"
        "CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 0), revision INTEGER NOT NULL);"
        "INSERT INTO meta VALUES (0, 7);"
        "INSERT INTO kv VALUES ('networks/a', '{\"name\": \"a\"}', 7);"
    )
    old.close()
    store = SqliteStore(path)
    try:
        entry = store.get("networks/a")
        assert entry is not None and entry.value == {"name": "a"} and entry.mod_revision == 7
        assert store.revision() == 7
        with pytest.raises(Compacted):
            store.watch("", 0, 0.1)
        assert kinds(store.watch("", 7, 0.1)) == []
        assert put(store, "networks/b") == 8
        assert kinds(store.watch("", 7, 1)) == [("put", "networks/b")]
    finally:
        store.close()


# -- open_store ----------------------------------------------------------------------------------------------------


def test_open_store_sqlite_path(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")
    try:
        assert isinstance(store, SqliteStore)
    finally:
        store.close()


def test_open_store_etcd_url_connects_lazily() -> None:
    from overlays.store.etcd import EtcdStore

    store = open_store("etcd://127.0.0.1:1,127.0.0.2:2")
    try:
        assert isinstance(store, EtcdStore)
        assert store.endpoints == ["127.0.0.1:1", "127.0.0.2:2"]
    finally:
        store.close()


@pytest.mark.parametrize("url", ["etcd://", "etcd://host", "etcd://host:port", "etcd://a:1,b", "etcd://:2379"])
def test_open_store_rejects_bad_etcd_urls(url: str) -> None:
    with pytest.raises(InvalidSpec, match="store URL"):
        open_store(url)


def test_import_store_does_not_load_the_etcd_client() -> None:
    code = "import sys, overlays.store; assert 'grpc' not in sys.modules and 'aetcd' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
