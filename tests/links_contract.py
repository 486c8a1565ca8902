"""The Links contract: what the engine relies on from a kernel handle, run against the fake and the real kernel.

tests/unit/test_links_contract.py runs these functions on the in-memory FakeKernel;
tests/integration/test_links_contract.py runs the very same ones on Linux, in
namespaces of the test's own. A behaviour the fake gets wrong fails in the unit run.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest

from overlays.errors import Conflict, KernelError
from overlays.kernel.api import Kernel, Links

MAC_A = "02:6e:00:00:00:0a"
MAC_B = "02:6f:0a:63:00:05"


@dataclass
class World:
    """A kernel with two namespaces of the test's own: one plays the host, one a sandbox."""

    kernel: Kernel
    host: str
    sandbox: str

    def open_host(self) -> Links:
        return self.kernel.open(self.host)

    def open_sandbox(self) -> Links:
        return self.kernel.open_path(self.sandbox, self.kernel.netns_path(self.sandbox))


def test_contract_a_missing_link_is_none_and_deleting_it_succeeds(world: World) -> None:
    with world.open_host() as host:
        assert host.link("nothing0") is None
        host.delete_link("nothing0")


def test_contract_a_bridge_is_up_with_its_alias_mtu_and_mac_and_verified_after(world: World) -> None:
    with world.open_host() as host:
        host.ensure_bridge("cbr0", "overlays:t:bridge", 1400, MAC_A)
        link = host.link("cbr0")
        assert link is not None
        assert (link.kind, link.alias, link.mtu, link.mac) == ("bridge", "overlays:t:bridge", 1400, MAC_A)
        assert link.up
        host.ensure_bridge("cbr0", "overlays:t:bridge", 1400, MAC_A)  # idempotent
        host.ensure_bridge("cbr0", "overlays:t:bridge", 1400, "02:6e:00:00:00:0b")  # a MAC that moved is set back
        assert (host.link("cbr0") or link).mac == "02:6e:00:00:00:0b"
        with pytest.raises(Conflict, match="not ours"):
            host.ensure_bridge("cbr0", "overlays:other:bridge", 1400, MAC_A)


def test_contract_a_veth_end_is_made_inside_the_sandbox_and_goes_with_its_peer(world: World) -> None:
    path = world.kernel.netns_path(world.sandbox)
    with world.open_host() as host, world.open_sandbox() as inside:
        host.ensure_bridge("cbr0", "overlays:t:bridge", 1500, MAC_A)
        host.ensure_veth("cv0", "overlays:t:veth", 1500, "eth0", path, MAC_B)
        host.ensure_veth("cv0", "overlays:t:veth", 1500, "eth0", path, MAC_B)  # idempotent
        peer = inside.link("eth0")
        assert peer is not None and (peer.mac, peer.mtu, peer.up) == (MAC_B, 1500, False)
        ours = host.link("cv0")
        assert ours is not None and (ours.kind, ours.alias, ours.master) == ("veth", "overlays:t:veth", None)
        host.ensure_port("cv0", "cbr0")
        ported = host.link("cv0")
        bridge = host.link("cbr0")
        assert ported is not None and bridge is not None and ported.master == bridge.index and ported.up
        host.delete_link("cv0")
        assert host.link("cv0") is None and inside.link("eth0") is None


def test_contract_a_port_that_drops_mld_reports_says_so(world: World) -> None:
    path = world.kernel.netns_path(world.sandbox)
    with world.open_host() as host:
        host.ensure_bridge("cbr0", "overlays:t:bridge", 1500, MAC_A)
        host.ensure_veth("cv0", "overlays:t:veth", 1500, "eth0", path, MAC_B)
        assert not host.drops_mld_reports("cv0")
        host.drop_mld_reports("cv0")
        host.drop_mld_reports("cv0")  # idempotent
        host.ensure_port("cv0", "cbr0")
        assert host.drops_mld_reports("cv0")
        with pytest.raises(KernelError):
            host.drops_mld_reports("cv9")


def test_contract_a_veth_of_that_name_made_for_another_is_not_ours(world: World) -> None:
    path = world.kernel.netns_path(world.sandbox)
    with world.open_host() as host:
        host.ensure_veth("cv0", "overlays:t:sandbox=a", 1500, "eth0", path, MAC_B)
        with pytest.raises(Conflict, match="not ours"):
            host.ensure_veth("cv0", "overlays:t:sandbox=b", 1500, "eth1", path, MAC_B)


def test_contract_a_veth_whose_peer_name_is_taken_is_refused(world: World) -> None:
    path = world.kernel.netns_path(world.sandbox)
    with world.open_host() as host:
        host.ensure_veth("cv0", "overlays:t:veth", 1500, "eth0", path, MAC_B)
        with pytest.raises(KernelError):
            host.ensure_veth("cv1", "overlays:t:veth", 1500, "eth0", path, MAC_B)
        assert host.link("cv1") is None


def test_contract_addresses_are_idempotent_listed_and_routed(world: World) -> None:
    path = world.kernel.netns_path(world.sandbox)
    with world.open_host() as host, world.open_sandbox() as inside:
        host.ensure_veth("cv0", "overlays:t:veth", 1500, "eth0", path, MAC_B)
        host.ensure_address("cv0", "10.99.1.1", 24)
        host.ensure_address("cv0", "10.99.1.1", 24)
        host.ensure_up("cv0")
        assert ipaddress.IPv4Address("10.99.1.1") in host.addresses()
        assert host.interface_addresses("cv0") == [ipaddress.IPv4Interface("10.99.1.1/24")]
        assert ipaddress.IPv4Network("10.99.1.0/24") in host.route_prefixes()
        host.ensure_address("cv0", "fd00:99:1::1", 64)
        routed6 = host.route_prefixes(6)
        assert ipaddress.IPv6Network("fd00:99:1::/64") in routed6 and not any(n.is_link_local for n in routed6)
        assert ipaddress.IPv6Network("fd00:99:1::/64") not in host.route_prefixes()
        inside.ensure_address("eth0", "10.99.1.5", 24)
        inside.ensure_up("eth0", ipv6=False)
        assert not inside.has_default_route()
        inside.ensure_default_route("10.99.1.1")
        inside.ensure_default_route("10.99.1.1")  # there already: nothing to do
        assert inside.has_default_route()


def test_contract_the_underlay_is_the_default_route_s_interface(world: World) -> None:
    path = world.kernel.netns_path(world.sandbox)
    with world.open_host() as host, world.open_sandbox() as inside:
        assert host.underlay() is None
        host.ensure_veth("cv0", "overlays:t:veth", 1500, "eth0", path, MAC_B)
        host.ensure_address("cv0", "10.99.2.1", 24)
        host.ensure_up("cv0")
        inside.ensure_address("eth0", "10.99.2.7", 24)
        inside.ensure_up("eth0")
        inside.ensure_default_route("10.99.2.1")
        found = inside.underlay()
        assert found is not None and (found.ifname, found.ip, found.mtu) == ("eth0", "10.99.2.7", 1500)


def test_contract_a_macvlan_is_made_inside_the_sandbox_on_its_parent(world: World) -> None:
    path = world.kernel.netns_path(world.sandbox)
    with world.open_host() as host, world.open_sandbox() as inside:
        host.ensure_bridge("cpar0", "overlays:t:parent", 1500, MAC_A)  # any interface can be a parent
        host.ensure_macvlan("cpar0", 1500, "eth3", path, MAC_B)
        made = inside.link("eth3")
        assert made is not None and (made.kind, made.mac, made.mtu) == ("macvlan", MAC_B, 1500)
        assert host.link("eth3") is None, "nothing of it in the host"
        with pytest.raises(KernelError, match="exists already"):
            host.ensure_macvlan("cpar0", 1500, "eth3", path, MAC_B)
        inside.delete_link("eth3")
        assert inside.link("eth3") is None


def test_contract_a_vxlan_device_keeps_exactly_its_static_entries(world: World) -> None:
    with world.open_host() as host:
        host.ensure_bridge("cul0", "overlays:t:underlay", 1500, MAC_A)
        host.ensure_address("cul0", "10.99.3.1", 24)
        host.ensure_vxlan("cvx0", "overlays:t:vxlan", 4242, "10.99.3.1", "cul0", 1450)
        host.ensure_vxlan("cvx0", "overlays:t:vxlan", 4242, "10.99.3.1", "cul0", 1450)  # idempotent
        with pytest.raises(Conflict):
            host.ensure_vxlan("cvx0", "overlays:t:vxlan", 4243, "10.99.3.1", "cul0", 1450)
        host.ensure_fdb("cvx0", "00:00:00:00:00:00", "10.99.3.2")
        host.ensure_fdb("cvx0", "00:00:00:00:00:00", "10.99.3.3")  # flood entries append
        host.ensure_fdb("cvx0", MAC_B, "10.99.3.2")
        host.ensure_fdb("cvx0", MAC_B, "10.99.3.3")  # a unicast MAC moves
        assert host.fdb("cvx0") == {("00:00:00:00:00:00", "10.99.3.2"), ("00:00:00:00:00:00", "10.99.3.3"),
                                    (MAC_B, "10.99.3.3")}
        assert host.fdb_dst("cvx0", MAC_B.upper()) == "10.99.3.3" and host.fdb_dst("cvx0", MAC_A) is None
        assert host.fdb_dst("cvx0", "00:00:00:00:00:00") in {"10.99.3.2", "10.99.3.3"}  # one of its VTEPs
        assert host.neighbour("cvx0", "10.80.0.5") is None
        host.ensure_neigh("cvx0", "10.80.0.5", MAC_B)
        host.ensure_neigh("cvx0", "fd00:80::5", MAC_B)
        assert host.neighbours("cvx0") == {"10.80.0.5": MAC_B, "fd00:80::5": MAC_B}
        assert host.neighbour("cvx0", "10.80.0.5") == MAC_B and host.neighbour("cvx0", "fd00:80::5") == MAC_B
        assert host.neighbour("cvx0", "10.80.0.6") is None
        host.delete_neigh("cvx0", "fd00:80::5")
        host.delete_fdb("cvx0", MAC_B, "10.99.3.3")
        host.delete_neigh("cvx0", "10.80.0.5")
        host.delete_neigh("cvx0", "10.80.0.5")  # missing is success
        assert MAC_B not in {mac for mac, _ in host.fdb("cvx0")} and host.neighbours("cvx0") == {}
        # Made again by another handle (another process): this one's single-entry reads find the new device.
        with world.open_host() as other:
            other.delete_link("cvx0")
            other.ensure_vxlan("cvx0", "overlays:t:vxlan", 4242, "10.99.3.1", "cul0", 1450)
            other.ensure_fdb("cvx0", MAC_B, "10.99.3.4")
            other.ensure_neigh("cvx0", "10.80.0.7", MAC_B)
        assert host.fdb_dst("cvx0", MAC_B) == "10.99.3.4" and host.neighbour("cvx0", "10.80.0.7") == MAC_B


def test_contract_a_deleted_namespace_takes_its_veth_ends_away(world: World) -> None:
    kernel = world.kernel
    made = kernel.create_netns(world.sandbox + "x")
    try:
        assert kernel.netns_exists(world.sandbox + "x")
        with world.open_host() as host:
            host.ensure_veth("cv9", "overlays:t:veth", 1500, "eth0", made, MAC_B)
            kernel.delete_netns(world.sandbox + "x")
            assert not kernel.netns_exists(world.sandbox + "x")
            assert kernel.wait_links_gone(host, ["cv9"]) == []
            assert host.link("cv9") is None
    finally:
        kernel.delete_netns(world.sandbox + "x")
