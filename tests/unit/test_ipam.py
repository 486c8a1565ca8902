"""Address and subnet allocation over the store protocol."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

import pytest

from overlays import ipam
from overlays.errors import Conflict, Exhausted, InvalidSpec
from overlays.model import Network
from overlays.model.specs import IPAddress
from overlays.store import Entry, MemoryStore, SqliteStore, Store, Txn, transact


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def make_network(
    store: Store, subnet: str = "10.1.0.0/24", ip_range: str | None = None, name: str = "front"
) -> Network:
    """A network as the engine records it: its gateway (first host) reserved."""
    net = ipaddress.ip_network(subnet)
    network = Network(
        name=name,
        driver="bridge",
        subnet=net,
        gateway=ipam.default_gateway(net),
        ip_range=ipaddress.ip_network(ip_range) if ip_range else None,
        mtu=1500,
        bridge=f"ovb-{name}",
        created=0.0,
    )
    transact(store, lambda txn: ipam.reserve(txn, network, network.gateway, "gateway"))
    return network


def allocate(store: Store, network: Network, owner: str, requested: str | None = None) -> IPAddress:
    return transact(store, lambda txn: ipam.allocate(txn, network, owner, ip(requested) if requested else None))


def release(store: Store, network: Network, addr: IPAddress) -> None:
    transact(store, lambda txn: ipam.release(txn, network.name, addr))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


# -- allocation ----------------------------------------------------------------------------------------------------


def test_sequential_allocation_skips_network_address_and_gateway(store: Store) -> None:
    network = make_network(store)
    got = [allocate(store, network, f"box{i}") for i in range(3)]
    assert got == [ip("10.1.0.2"), ip("10.1.0.3"), ip("10.1.0.4")]


def test_allocation_records_the_owner(store: Store) -> None:
    network = make_network(store)
    addr = allocate(store, network, "web")
    entry = store.get(f"ipam/front/{addr}")
    assert entry and entry.value == {"owner": "web"}


def test_allocation_never_hands_out_the_broadcast_address(store: Store) -> None:
    network = make_network(store, "10.1.0.0/29")  # .0 net, .1 gateway, .7 broadcast
    got = [allocate(store, network, f"box{i}") for i in range(5)]
    assert got == [ip(f"10.1.0.{n}") for n in range(2, 7)]
    with pytest.raises(Exhausted):
        allocate(store, network, "one-too-many")


def test_a_gateway_elsewhere_in_the_subnet_is_skipped(store: Store) -> None:
    network = make_network(store, "10.1.0.0/29")
    transact(store, lambda txn: ipam.reserve(txn, network, ip("10.1.0.3"), "gateway"))
    got = [allocate(store, network, f"box{i}") for i in range(3)]
    assert got == [ip("10.1.0.2"), ip("10.1.0.4"), ip("10.1.0.5")]


def test_ip_range_restricts_allocation(store: Store) -> None:
    network = make_network(store, "10.1.0.0/24", ip_range="10.1.0.128/30")
    got = [allocate(store, network, f"box{i}") for i in range(4)]
    assert got == [ip(f"10.1.0.{n}") for n in range(128, 132)]
    with pytest.raises(Exhausted, match=r"10\.1\.0\.128/30"):
        allocate(store, network, "one-too-many")


def test_ip_range_at_the_end_of_the_subnet_skips_the_broadcast(store: Store) -> None:
    network = make_network(store, "10.1.0.0/24", ip_range="10.1.0.252/30")
    got = [allocate(store, network, f"box{i}") for i in range(3)]
    assert got == [ip("10.1.0.252"), ip("10.1.0.253"), ip("10.1.0.254")]
    with pytest.raises(Exhausted):
        allocate(store, network, "one-too-many")


def test_exhausted_30(store: Store) -> None:
    network = make_network(store, "10.1.0.0/30")  # .1 gateway, .2 the only host left
    assert allocate(store, network, "web") == ip("10.1.0.2")
    with pytest.raises(Exhausted, match=r"network front: no free address left in 10\.1\.0\.0/30"):
        allocate(store, network, "db")
    assert store.get("ipam/front/10.1.0.3") is None


def test_exhausted_is_a_conflict() -> None:
    assert issubclass(Exhausted, Conflict)


def test_networks_allocate_independently(store: Store) -> None:
    front = make_network(store, "10.1.0.0/24", name="front")
    back = make_network(store, "10.2.0.0/24", name="back")
    assert allocate(store, front, "web") == ip("10.1.0.2")
    assert allocate(store, back, "web") == ip("10.2.0.2")
    assert allocate(store, front, "db") == ip("10.1.0.3")


def test_allocate_and_reserve_in_one_txn_do_not_collide(store: Store) -> None:
    network = make_network(store)

    def two(txn: Txn) -> tuple[IPAddress, IPAddress]:
        return ipam.allocate(txn, network, "a"), ipam.allocate(txn, network, "b")

    assert transact(store, two) == (ip("10.1.0.2"), ip("10.1.0.3"))


# -- static addresses ----------------------------------------------------------------------------------------------


def test_static_address_inside_the_subnet_is_honoured(store: Store) -> None:
    network = make_network(store, "10.1.0.0/24", ip_range="10.1.0.128/25")
    assert allocate(store, network, "web", "10.1.0.50") == ip("10.1.0.50")  # outside the range is fine
    assert allocate(store, network, "db") == ip("10.1.0.128")


def test_static_address_is_skipped_by_later_dynamic_allocation(store: Store) -> None:
    network = make_network(store)
    allocate(store, network, "web", "10.1.0.2")
    assert allocate(store, network, "db") == ip("10.1.0.3")


@pytest.mark.parametrize("requested", ["10.2.0.5", "10.1.0.0", "10.1.0.255"])
def test_static_address_not_a_host_of_the_subnet_is_invalid(store: Store, requested: str) -> None:
    network = make_network(store)
    with pytest.raises(InvalidSpec, match="front"):
        allocate(store, network, "web", requested)
    assert store.get(f"ipam/front/{requested}") is None


def test_static_address_taken_names_the_holder(store: Store) -> None:
    network = make_network(store)
    allocate(store, network, "web", "10.1.0.9")
    with pytest.raises(Conflict, match=r"10\.1\.0\.9 on network front is already taken by web"):
        allocate(store, network, "db", "10.1.0.9")


def test_static_gateway_address_is_taken_by_the_gateway(store: Store) -> None:
    network = make_network(store)
    with pytest.raises(Conflict, match="taken by gateway"):
        allocate(store, network, "web", "10.1.0.1")


# -- release -------------------------------------------------------------------------------------------------------


def test_release_makes_an_address_reusable(store: Store) -> None:
    network = make_network(store, "10.1.0.0/29")
    first, second, _ = (allocate(store, network, f"box{i}") for i in range(3))
    release(store, network, first)
    assert store.get(f"ipam/front/{first}") is None
    # Round the pool from the last address given out (.4): .5, .6, then back to the released .2.
    assert [str(allocate(store, network, f"next{i}")) for i in range(3)] == ["10.1.0.5", "10.1.0.6", str(first)]
    release(store, network, second)
    assert allocate(store, network, "db", str(second)) == second


def test_allocation_goes_on_from_the_last_address_given(store: Store) -> None:
    network = make_network(store, "10.1.0.0/24")
    given = [allocate(store, network, f"box{i}") for i in range(5)]
    release(store, network, given[0])
    assert str(allocate(store, network, "next")) == "10.1.0.7"


def test_a_crowded_pool_is_searched_past_the_probes(store: Store) -> None:
    """More than PROBES taken addresses right after the hint: the rest of the pool is still found."""
    network = make_network(store, "10.1.0.0/24")
    for i in range(2, 2 + ipam.PROBES + 5):
        allocate(store, network, f"static{i}", f"10.1.0.{i}")
    assert str(allocate(store, network, "dynamic")) == f"10.1.0.{2 + ipam.PROBES + 5}"


def test_the_hint_wraps_round_to_free_addresses_at_the_start(store: Store) -> None:
    network = make_network(store, "10.1.0.0/28")
    given = [allocate(store, network, f"box{i}") for i in range(13)]  # .2 to .14: the pool is full
    assert str(given[-1]) == "10.1.0.14"
    release(store, network, given[3])
    assert allocate(store, network, "again") == given[3]
    with pytest.raises(Exhausted):
        allocate(store, network, "one too many")


def test_release_all_frees_every_address_of_one_network(store: Store) -> None:
    front = make_network(store, "10.1.0.0/24", name="front")
    back = make_network(store, "10.2.0.0/24", name="back")
    allocate(store, front, "web")
    allocate(store, back, "web")
    transact(store, lambda txn: ipam.release_all(txn, "front"))
    assert store.range("ipam/front/") == []
    assert store.get("ipam-next/front") is None
    assert [e.key for e in store.range("ipam/back/")] == ["ipam/back/10.2.0.1", "ipam/back/10.2.0.2"]


# -- subnets -------------------------------------------------------------------------------------------------------


def nets(*texts: str) -> list[ipaddress.IPv4Network]:
    return [ipaddress.IPv4Network(t) for t in texts]


def test_free_subnet_takes_the_first_of_the_pool() -> None:
    assert ipam.free_subnet([]) == ipaddress.ip_network("10.88.0.0/24")


def test_free_subnet_skips_overlapping_subnets() -> None:
    taken = nets("10.88.0.0/24", "10.88.1.0/25", "10.88.2.128/26")
    assert ipam.free_subnet(taken) == ipaddress.ip_network("10.88.3.0/24")


def test_free_subnet_skips_host_routes() -> None:
    taken = nets("10.88.0.7/32", "10.88.0.0/23", "10.88.2.1/32")
    assert ipam.free_subnet(taken) == ipaddress.ip_network("10.88.3.0/24")


def test_free_subnet_skips_a_covering_route() -> None:
    assert ipam.free_subnet(nets("10.88.0.0/16")) == ipaddress.ip_network("10.89.0.0/24")


def test_free_subnet_ignores_unrelated_routes() -> None:
    assert ipam.free_subnet(nets("192.168.1.0/24", "10.0.0.0/16")) == ipaddress.ip_network("10.88.0.0/24")


def test_free_subnet_tries_the_next_pool() -> None:
    pools = nets("10.0.0.0/24", "10.5.0.0/23")
    assert ipam.free_subnet(nets("10.0.0.0/24"), pools) == ipaddress.ip_network("10.5.0.0/24")


def test_free_subnet_exhausted() -> None:
    with pytest.raises(Exhausted, match="--subnet"):
        ipam.free_subnet(nets("10.0.0.0/8"), nets("10.1.0.0/23"))


# -- concurrency ---------------------------------------------------------------------------------------------------


THREADS = 16


def _allocate_at_once(path: Path) -> tuple[dict[str, IPAddress], list[BaseException]]:
    """THREADS threads, each with its own SQLite connection to one file, allocate at the same moment."""
    setup = SqliteStore(path)
    network = make_network(setup)
    setup.close()
    start = threading.Barrier(THREADS)
    got: dict[str, IPAddress] = {}
    errors: list[BaseException] = []

    def work(owner: str) -> None:
        store = SqliteStore(path)
        try:
            start.wait()
            got[owner] = allocate(store, network, owner)
        except BaseException as e:
            errors.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(f"box{i}",)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got, errors


def _recorded_owners(path: Path) -> dict[str, str]:
    store = SqliteStore(path)
    try:
        return {e.key.rsplit("/", 1)[1]: e.value["owner"] for e in store.range("ipam/front/")}
    finally:
        store.close()


def test_concurrent_allocations_never_hand_out_one_address_twice(tmp_path: Path) -> None:
    got, errors = _allocate_at_once(tmp_path / "state.db")
    assert all(isinstance(e, Conflict) for e in errors), errors  # never a store error or a lock timeout
    assert len(set(got.values())) == len(got)
    assert _recorded_owners(tmp_path / "state.db") == {"10.1.0.1": "gateway"} | {str(a): o for o, a in got.items()}


def test_concurrent_allocations_all_succeed(tmp_path: Path) -> None:
    got, errors = _allocate_at_once(tmp_path / "state.db")
    assert errors == []
    assert sorted(got.values()) == [ip(f"10.1.0.{n}") for n in range(2, 2 + THREADS)]


class _RacingStore(MemoryStore):
    """A store where another writer takes ``steal`` right after the allocator read its hint
    (or, in a crowded pool, the list of taken addresses)."""

    def __init__(self, after: str = "hint") -> None:
        super().__init__()
        self.steal: str | None = None
        self.after = after

    def _race(self) -> None:
        if self.steal is not None:
            key, self.steal = self.steal, None
            assert self.commit({key: 0}, {key: {"owner": "racer"}}, [])

    def get(self, key: str) -> Entry | None:
        found = super().get(key)
        if key.startswith("ipam-next/") and self.after == "hint":
            self._race()
        return found

    def range(self, prefix: str) -> list[Entry]:
        found = super().range(prefix)
        if self.after == "range":
            self._race()
        return found


def test_dynamic_allocation_survives_a_racing_writer() -> None:
    store = _RacingStore()
    network = make_network(store)
    store.steal = "ipam/front/10.1.0.2"
    assert allocate(store, network, "web") == ip("10.1.0.3")


def test_dynamic_allocation_in_a_crowded_pool_survives_a_racing_writer() -> None:
    store = _RacingStore(after="range")
    network = make_network(store)
    for n in range(2, 2 + ipam.PROBES):
        allocate(store, network, f"static{n}", f"10.1.0.{n}")
    taken_next = 2 + ipam.PROBES
    store.steal = f"ipam/front/10.1.0.{taken_next}"  # taken between the range read and our create
    assert allocate(store, network, "web") == ip(f"10.1.0.{taken_next + 1}")
