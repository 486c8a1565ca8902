"""EtcdStore against Debian's etcd: the shared store contract, global allocation, member failures.

The contract tests are the very functions of tests/unit/test_store_watch.py, run here
with an etcd ``backend``: one single-member server for the module, a fresh key root
per test. The fault tests start their own three-member cluster and kill -9 a member
(a follower, then the leader) while writers keep committing.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from overlays.store import Store, Txn, transact
from overlays.store.etcd import EtcdStore
from tests.integration.etcd import ETCD, MISSING, EtcdCluster, etcd_cluster
from tests.unit import test_store as _basic
from tests.unit.test_store_watch import (  # noqa: F401  (collected here against etcd)
    Backend,
    allocate_from_hosts,
    test_contract_keepalive_extends_a_lease,
    test_contract_lease_expiry_deletes_its_keys_with_delete_events,
    test_contract_one_commit_is_one_revision_puts_first,
    test_contract_put_to_a_missing_lease,
    test_contract_put_without_lease_detaches_the_key,
    test_contract_resume_sees_nothing_twice,
    test_contract_revision_counts_changes_only,
    test_contract_revoke_deletes_at_once,
    test_contract_transact_puts_with_a_lease,
    test_contract_watch_from_a_revision_too_old_raises_compacted,
    test_contract_watch_prefix_is_literal,
    test_contract_watch_sees_puts_and_deletes_after_a_revision,
    test_contract_watch_times_out_empty,
    test_contract_watch_wakes_when_another_thread_puts,
)

pytestmark = pytest.mark.skipif(ETCD is None, reason=MISSING)

# The basic store contract (get / range / commit / Txn / transact) of tests/unit/test_store.py too:
# every test there that needs nothing but a ``store`` runs here against etcd.
globals().update({
    name: fn for name, fn in vars(_basic).items()
    if name.startswith("test_") and callable(fn) and list(inspect.signature(fn).parameters) == ["store"]
})

_roots = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[EtcdCluster]:
    with etcd_cluster(1) as cluster:
        yield cluster


@pytest.fixture
def backend(server: EtcdCluster) -> Iterator[Backend]:
    """Connections to one etcd under a key root of this test's own."""
    root = f"/overlays-test/{next(_roots)}/"
    opened: list[EtcdStore] = []

    def open_etcd() -> Store:
        s = EtcdStore(server.endpoints, root=root)
        opened.append(s)
        return s

    def compact(store: Store, revision: int) -> None:
        # etcd keeps the compaction revision itself: compacting at r + 1 forgets up to r.
        server.compact(revision + 1)

    yield Backend("etcd", open_etcd, compact, lease_ttl=2.0, slack=2.0)
    for s in opened:
        s.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def test_three_hosts_allocate_sixty_distinct_addresses(backend: Backend) -> None:
    hosts = [backend.open() for _ in range(3)]
    got = allocate_from_hosts(hosts, 20)
    assert len(got) == 60 and len(set(got)) == 60
    # Every address handed out is recorded; a lost reply may leave an extra record, never a shared one.
    owners = {e.key: e.value["owner"] for e in hosts[0].range("ipam/ov/")}
    assert len(owners) >= 60 and len(set(owners.values())) == len(owners)


def test_resumed_watches_read_one_etcd_watch_kept_open(backend: Backend, store: Store) -> None:
    """etcd hands a watch made from a past revision its events only at its next catch-up (every 100 ms). An agent
    watches again after each batch while the store moves on (other keys change): each call must not make a new
    etcd watch from the past, but read the one kept open."""
    assert isinstance(store, EtcdStore)
    client = store._clients[store._current]
    made: list[int] = []
    real = client.watch

    async def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(kwargs["start_revision"])
        return await real(*args, **kwargs)

    client.watch = counting
    writer = backend.open()
    after = store.revision()
    for n in range(5):
        writer.commit({}, {f"r/{n}": {"n": n}}, [])
        writer.commit({}, {f"elsewhere/{n}": {"n": n}}, [])  # the store moves on past the watched prefix
        events = store.watch("r/", after, 5)
        assert [e.key for e in events] == [f"r/{n}"]
        after = events[-1].revision
    assert made == [made[0]]


def test_watch_resumes_with_the_revision_it_returned(backend: Backend, store: Store) -> None:
    """A watch resumed from the last revision it returned misses nothing and sees nothing twice."""
    writer = backend.open()
    start = store.revision()
    done = threading.Event()

    def write() -> None:
        for n in range(50):
            writer.commit({}, {f"q/{n:02d}": {"n": n}}, [])
        done.set()

    t = threading.Thread(target=write)
    t.start()
    seen: list[str] = []
    after = start
    deadline = time.monotonic() + 30
    while len(seen) < 50 and time.monotonic() < deadline:
        for e in store.watch("q/", after, 1):
            seen.append(e.key)
            after = e.revision
    t.join(10)
    assert done.is_set()
    assert seen == [f"q/{n:02d}" for n in range(50)]


# -- member failures -----------------------------------------------------------------------------------------------


class Writer:
    """Commits one new key after another through ``store`` and records each acknowledged one."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.acked: list[str] = []
        self.gaps: list[float] = []  # seconds each commit took
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "writer did not stop within 30s"

    def _run(self) -> None:
        try:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                key = f"w/{n:05d}"
                began = time.monotonic()
                transact(self.store, functools.partial(_create, key, n))
                self.gaps.append(time.monotonic() - began)
                self.acked.append(key)
        except BaseException as e:
            self.error = e

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count and self.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.error is None, f"writer failed: {self.error!r}"
        assert len(self.acked) >= count, f"only {len(self.acked)} of {count} commits within {timeout}s"


def _create(key: str, n: int, txn: Txn) -> bool:
    return txn.create(key, {"n": n})


class Watcher:
    """Watches ``prefix`` from a revision in a loop, resuming after each batch, until stopped."""

    def __init__(self, store: Store, prefix: str, after: int) -> None:
        self.store, self.prefix, self.after = store, prefix, after
        self.seen: list[str] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "watcher did not stop within 30s"

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for e in self.store.watch(self.prefix, self.after, 0.5):
                    self.seen.append(e.key)
                    self.after = e.revision
        except BaseException as e:
            self.error = e

    def wait_for(self, keys: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.seen[: len(keys)] != keys and self.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.error is None, f"watcher failed: {self.error!r}"
        assert self.seen[: len(keys)] == keys, f"watcher saw {len(self.seen)} of {len(keys)} writes in order"
        assert len(self.seen) == len(set(self.seen)), "watcher saw a write twice"


@pytest.mark.parametrize("victim", ["follower", "leader"])
def test_commits_go_on_when_a_member_is_killed(victim: str) -> None:
    with etcd_cluster(3) as cluster:
        leader = cluster.leader()
        target = leader if victim == "leader" else next(m for m in cluster.members if m is not leader)
        # Writer and watcher talk to the victim first, so the kill forces both onto another member,
        # the watcher in the middle of a wait.
        endpoints = [target.endpoint] + [m.endpoint for m in cluster.members if m is not target]
        store = EtcdStore(endpoints, root="/overlays-test/fault/")
        watching = EtcdStore(endpoints, root="/overlays-test/fault/")
        try:
            start = store.revision()
            with Watcher(watching, "w/", start) as watcher, Writer(store) as writer:
                writer.wait_for(20, 10)
                before = len(writer.acked)
                cluster.kill(target)
                killed_at = time.monotonic()
                writer.wait_for(before + 50, 20)
                recovered = time.monotonic() - killed_at
                acked = list(writer.acked)
                watcher.wait_for(acked, 20)
            longest = max(writer.gaps)
            assert longest < 5, f"a commit took {longest:.1f}s"
            # No acknowledged write is lost: the survivors have every one.
            assert {e.key for e in store.range("w/")} >= set(writer.acked)
            print(f"{victim} killed: 50 more commits within {recovered:.2f}s, longest commit {longest:.2f}s")
        finally:
            store.close()
            watching.close()


def test_removing_forty_sandboxes_at_once_fits_etcds_transaction_limit(
        store: Store, make_netns: Any, tmp_path: Any) -> None:
    """One transaction for all of them is "too many operations in txn request" (etcd's 128): batches."""
    from overlays import EndpointRequest, Engine, NetworkSpec, SandboxSpec

    host = make_netns("eh")
    engine = Engine(host_netns=host, state_dir=tmp_path / "state", store=store, dns=False)
    try:
        engine.create_network(NetworkSpec.parse("many", subnet="10.79.0.0/24"))
        names = [f"m{i}" for i in range(40)]
        for name in names:
            engine.create_sandbox(SandboxSpec.parse(name, [EndpointRequest.parse("many")]))
        engine.remove_sandboxes(names, force=True)
        assert engine.sandboxes() == []
    finally:
        for box in engine.sandboxes():
            engine.remove_sandbox(box.name, force=True)
        engine.remove_network("many")
        engine.close()
