"""Each operation reads once, acts, and commits once: store transactions counted through the store protocol.

Every transaction the engine opens goes through ``context.transact`` (counted here);
every write it makes is one ``commit`` of the store protocol (counted by the store).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from overlays import EndpointRequest, Engine, NetworkSpec, SandboxSpec
from overlays.engine import context, records
from overlays.kernel.rtnl_types import Link
from overlays.model import parse_publish
from overlays.model.state import HostRegistration
from overlays.store import MemoryStore
from overlays.store.base import Value

from .fakes import FakeKernel

HOST = "fakehost"


class CountingStore(MemoryStore):
    """A memory store that counts commits (the writes a transaction ends with)."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    def commit(self, compares: Mapping[str, int], puts: Mapping[str, Value], deletes: Sequence[str],
               leases: Mapping[str, int] | None = None) -> bool:
        self.commits += 1
        return super().commit(compares, puts, deletes, leases)


class Counter:
    def __init__(self, store: CountingStore) -> None:
        self.store = store
        self.transactions = 0

    def __call__(self, operation: Callable[[], object]) -> tuple[int, int]:
        """(transactions, commits) of one operation."""
        self.transactions, self.store.commits = 0, 0
        operation()
        return self.transactions, self.store.commits


@pytest.fixture
def count(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counter = Counter(CountingStore())
    real = context.transact

    def counting(store: object, fn: object, *args: object) -> object:
        counter.transactions += 1
        return real(store, fn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(context, "transact", counting)
    return counter


def engine(tmp_path: Path, store: CountingStore, kernel: object = None) -> Engine:
    return Engine(host_netns=HOST, state_dir=tmp_path, store=store, node=HOST, check_root=False,
                  kernel=kernel or FakeKernel(HOST))  # type: ignore[arg-type]


def test_create_connect_disconnect_take_two_transactions_and_remove_one(tmp_path: Path, count: Counter) -> None:
    eng = engine(tmp_path, count.store)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    eng.create_network(NetworkSpec.parse("back", subnet="10.2.0.0/24"))
    spec = SandboxSpec.parse("a", [EndpointRequest.parse("front")], ports=parse_publish("8080:80"))

    assert count(lambda: eng.create_sandbox(spec)) == (2, 2)  # pending, then ready
    assert count(lambda: eng.connect("back", "a")) == (2, 2)  # pending, then ready
    assert count(lambda: eng.disconnect("front", "a")) == (2, 2)  # removing, then released
    assert count(lambda: eng.remove_sandbox("a")) == (1, 1)  # read, tear down, forget
    assert eng.sandboxes() == []


def test_creating_a_network_takes_two_transactions(tmp_path: Path, count: Counter) -> None:
    eng = engine(tmp_path, count.store)
    assert count(lambda: eng.create_network(NetworkSpec.parse("n", subnet="10.3.0.0/24"))) == (2, 2)
    assert eng.networks()[0].state == "ready"


def test_overlay_sandboxes_read_more_only_where_the_host_joins_or_leaves(tmp_path: Path, count: Counter) -> None:
    kernel = FakeKernel(HOST)
    with kernel.open(HOST) as host:  # an underlay: eth0 with the default route
        host.ns.links["eth0"] = Link(2, "eth0", "veth", "", 1500, None, True, None)
        host.ensure_address("eth0", "10.254.0.11", 24)
        host.ensure_default_route("10.254.0.1")
    lease = count.store.grant_lease(60)
    me = HostRegistration(HOST, "10.254.0.11", "eth0", 1500, lease, 0.0)
    count.store.commit({}, {records.host_key(HOST): me.to_record()}, [], {records.host_key(HOST): lease})
    eng = engine(tmp_path, count.store, kernel)
    eng.create_network(NetworkSpec.parse("mesh", subnet="10.80.0.0/24", driver="overlay"))

    # The first sandbox makes the host's devices: one read of the host's registration, one sync.
    assert count(lambda: eng.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("mesh")]))) == (4, 2)
    assert count(lambda: eng.create_sandbox(SandboxSpec.parse("b", [EndpointRequest.parse("mesh")]))) == (2, 2)
    # A leave reads, under the host's lock, whether it was the last endpoint here.
    assert count(lambda: eng.remove_sandbox("b")) == (2, 1)
    assert "ovx-mesh" in kernel.namespaces[HOST].links
    assert count(lambda: eng.remove_sandbox("a")) == (2, 1)
    assert "ovx-mesh" not in kernel.namespaces[HOST].links, "the devices go with the host's last endpoint"


def test_explaining_adds_no_transaction(tmp_path: Path, count: Counter) -> None:
    """--explain reads the kernel around each step and keeps its commands in memory: never in the store."""
    from overlays.kernel.explain import Explaining, Recorder

    recorder = Recorder()
    eng = engine(tmp_path, count.store, Explaining(FakeKernel(HOST), recorder))  # type: ignore[arg-type]
    assert count(lambda: eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))) == (2, 2)
    eng.create_network(NetworkSpec.parse("back", subnet="10.2.0.0/24"))
    spec = SandboxSpec.parse("a", [EndpointRequest.parse("front")], ports=parse_publish("8080:80"))
    assert count(lambda: eng.create_sandbox(spec)) == (2, 2)
    assert count(lambda: eng.connect("back", "a")) == (2, 2)
    assert count(lambda: eng.disconnect("front", "a")) == (2, 2)
    assert count(lambda: eng.remove_sandbox("a")) == (1, 1)
    assert any(c.startswith("ip netns add") for c in recorder.commands)
