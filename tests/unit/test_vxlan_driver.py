"""The overlay driver on the fake kernel: setup, teardown and the FDB/neighbour sync."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from overlays.drivers import vxlan
from overlays.drivers.vxlan import Remote
from overlays.errors import Conflict, InvalidSpec, KernelError
from overlays.kernel.rtnl_types import Link, Underlay
from overlays.model.names import IFNAME_MAX, bridge_name, vxlan_name
from overlays.model.specs import Network

from .fakes import FakeKernel, FakeLinks

INSTANCE = "i1"
LOCAL = "10.201.0.1"
MAC = "02:6e:00:00:00:01"
ZERO = "00:00:00:00:00:00"


class Recording:
    """Passes every call through to a FakeLinks and records the ones that change something."""

    def __init__(self, inner: FakeLinks) -> None:
        self._inner = inner
        self.netns = inner.netns
        self.changes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not name.startswith(("ensure_", "delete_")):
            return attr

        def call(*args: Any) -> Any:
            self.changes.append(f"{name}{args}")
            return attr(*args)

        return call


def network(name: str = "ovl", vni: int | None = 4242, mtu: int = 1450) -> Network:
    return Network(
        name=name, driver="overlay", subnet=ipaddress.ip_network("10.202.0.0/24"),
        gateway=ipaddress.ip_address("10.202.0.254"), ip_range=None, mtu=mtu,
        bridge=bridge_name(name, INSTANCE), created=0.0, vni=vni,
    )


@pytest.fixture
def host() -> FakeLinks:
    kernel = FakeKernel("h1")
    links = kernel.open("h1")
    links.ns.links["u0"] = Link(2, "u0", "veth", "", 1500, None, True, None)
    links.ensure_address("u0", LOCAL, 24)
    return links


@pytest.fixture
def net(host: FakeLinks) -> Network:
    n = network()
    vxlan.setup_network(host, n, Underlay("u0", LOCAL, 1500), INSTANCE, MAC)
    return n


DEV = vxlan_name(bridge_name("ovl", INSTANCE))
A = Remote("10.202.0.2", "AA:00:00:00:00:02", "10.201.0.2")
B = Remote("10.202.0.3", "aa:00:00:00:00:03", "10.201.0.2")
C = Remote("10.202.0.4", "aa:00:00:00:00:04", "10.201.0.3")
C_FDB = ("aa:00:00:00:00:04", "10.201.0.3")
MINE = Remote("10.202.0.1", "aa:00:00:00:00:01", LOCAL)


def test_names_and_mtu() -> None:
    assert vxlan_name(bridge_name("front", INSTANCE)) == "ovx-front"
    long = vxlan_name(bridge_name("a-very-long-network-name", INSTANCE))
    assert long.startswith("ovx-") and len(long) <= IFNAME_MAX
    assert long != vxlan_name(bridge_name("a-very-long-network-name2", INSTANCE))
    assert vxlan.overlay_mtu(1500) == 1450


def test_setup_makes_an_addressless_bridge_with_the_vxlan_port(host: FakeLinks, net: Network) -> None:
    bridge, dev = host.link(net.bridge), host.link(DEV)
    assert bridge and dev and bridge.kind == "bridge" and dev.kind == "vxlan"
    assert dev.master == bridge.index and dev.up and dev.mtu == bridge.mtu == 1450
    assert not host.ns.addrs.get(net.bridge)
    assert host.ns.vnis[DEV] == 4242
    vxlan.setup_network(host, net, Underlay("u0", LOCAL, 1500), INSTANCE, MAC)  # idempotent
    with pytest.raises(Conflict):
        vxlan.setup_network(host, network(vni=7), Underlay("u0", LOCAL, 1500), INSTANCE, MAC)


def test_setup_refuses_a_network_without_vni_or_too_big_an_mtu(host: FakeLinks) -> None:
    with pytest.raises(InvalidSpec):
        vxlan.setup_network(host, network("nv", vni=None), Underlay("u0", LOCAL, 1500), INSTANCE, MAC)
    with pytest.raises(KernelError):
        vxlan.setup_network(host, network("big", mtu=1500), Underlay("u0", LOCAL, 1500), INSTANCE, MAC)


def test_teardown_removes_both_and_tolerates_missing(host: FakeLinks, net: Network) -> None:
    vxlan.teardown_network(host, net, INSTANCE)
    assert host.link(DEV) is None and host.link(net.bridge) is None
    vxlan.teardown_network(host, net, INSTANCE)


def test_sync_adds_entries_for_remote_endpoints_only(host: FakeLinks, net: Network) -> None:
    added, removed = vxlan.sync(host, net, INSTANCE, LOCAL, [A, B, C, MINE])
    assert host.fdb(DEV) == {
        ("aa:00:00:00:00:02", "10.201.0.2"), ("aa:00:00:00:00:03", "10.201.0.2"),
        ("aa:00:00:00:00:04", "10.201.0.3"),
        (ZERO, "10.201.0.2"), (ZERO, "10.201.0.3"),  # one flood entry per remote VTEP
    }
    assert host.neighbours(DEV) == {
        "10.202.0.2": "aa:00:00:00:00:02", "10.202.0.3": "aa:00:00:00:00:03", "10.202.0.4": "aa:00:00:00:00:04",
    }
    assert (added, removed) == (8, 0)


def test_second_sync_changes_nothing(host: FakeLinks, net: Network) -> None:
    vxlan.sync(host, net, INSTANCE, LOCAL, [A, B, C, MINE])
    rec = Recording(host)
    assert vxlan.sync(rec, net, INSTANCE, LOCAL, [MINE, C, B, A]) == (0, 0)
    assert rec.changes == []


def test_sync_removes_stale_entries(host: FakeLinks, net: Network) -> None:
    vxlan.sync(host, net, INSTANCE, LOCAL, [A, B, C])
    host.ensure_fdb(DEV, "aa:00:00:00:00:99", "10.201.0.9")  # left over from an earlier run
    host.ensure_neigh(DEV, "10.202.0.99", "aa:00:00:00:00:99")
    rec = Recording(host)
    assert vxlan.sync(rec, net, INSTANCE, LOCAL, [A]) == (0, 7)
    assert host.fdb(DEV) == {("aa:00:00:00:00:02", "10.201.0.2"), (ZERO, "10.201.0.2")}
    assert host.neighbours(DEV) == {"10.202.0.2": "aa:00:00:00:00:02"}
    assert all(c.startswith("delete_") for c in rec.changes)
    assert vxlan.sync(host, net, INSTANCE, LOCAL, []) == (0, 3)
    assert host.fdb(DEV) == set() and host.neighbours(DEV) == {}


def test_sync_follows_an_endpoint_that_moved(host: FakeLinks, net: Network) -> None:
    vxlan.sync(host, net, INSTANCE, LOCAL, [A, C])
    moved = Remote(A.ip, A.mac, C.vtep)
    assert vxlan.sync(host, net, INSTANCE, LOCAL, [moved, C]) == (1, 2)  # re-point MAC; old MAC and flood go
    assert host.fdb(DEV) == {("aa:00:00:00:00:02", "10.201.0.3"), C_FDB, (ZERO, "10.201.0.3")}
    renumbered = Remote(A.ip, "aa:00:00:00:00:22", C.vtep)
    assert vxlan.sync(host, net, INSTANCE, LOCAL, [renumbered, C]) == (2, 1)
    assert host.neighbours(DEV)[A.ip] == "aa:00:00:00:00:22"


def test_underlay_prefers_the_default_route(host: FakeLinks) -> None:
    assert host.underlay() == Underlay("u0", LOCAL, 1500)
    host.ns.links["u1"] = Link(3, "u1", "veth", "", 9000, None, True, None)
    host.ensure_address("u1", "192.0.2.1", 24)
    host.ensure_default_route("192.0.2.254")
    assert host.underlay() == Underlay("u1", "192.0.2.1", 9000)


def test_sync_announces_the_neighbours_it_writes_when_asked(host: FakeLinks, net: Network) -> None:
    vxlan.sync(host, net, INSTANCE, LOCAL, [A])  # the engine's sync of a new device: nobody asking yet
    assert host.ns.announced == []
    vxlan.sync(host, net, INSTANCE, LOCAL, [A, B, C, MINE], announce=True)
    # Into the bridge, where the sandboxes are; the entry already there and this host's own are not announced.
    assert host.ns.announced == [(net.bridge, B.ip, B.mac), (net.bridge, C.ip, C.mac)]
    vxlan.sync(host, net, INSTANCE, LOCAL, [A, B, C, MINE], announce=True)
    assert len(host.ns.announced) == 2


def test_add_remote_adds_one_endpoint_and_removes_nothing(host: FakeLinks, net: Network) -> None:
    vxlan.sync(host, net, INSTANCE, LOCAL, [A, C])
    moved = Remote(A.ip, A.mac, "10.201.0.9")
    rec = Recording(host)
    assert vxlan.add_remote(rec, net, LOCAL, moved, announce=True)
    assert all(c.startswith("ensure_") for c in rec.changes)  # nothing removed
    assert (A.mac.lower(), "10.201.0.9") in host.fdb(DEV) and (ZERO, "10.201.0.9") in host.fdb(DEV)
    assert (ZERO, "10.201.0.2") in host.fdb(DEV)  # left to sync
    assert vxlan.add_remote(host, net, LOCAL, B, announce=True)
    assert host.ns.announced == [(net.bridge, A.ip, A.mac.lower()), (net.bridge, B.ip, B.mac)]
    assert not vxlan.add_remote(host, net, LOCAL, MINE, announce=True)
    assert vxlan.sync(host, net, INSTANCE, LOCAL, [moved, B, C]) == (0, 0)  # what the registrations say, exactly
