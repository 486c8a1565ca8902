"""Two hosts joined by a VXLAN overlay network, each with one sandbox on it (root only).

The underlay is a veth between two host namespaces (10.201.0.0/24, MTU 1500); the
overlay subnet is 10.202.0.0/24 with MTU 1450. We act through overlays (Rtnl and
drivers.vxlan) and check through ``ip -j`` / ``bridge -j`` and ping.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import pytest

from overlays.drivers import vxlan
from overlays.drivers.vxlan import Remote
from overlays.errors import Conflict, KernelError
from overlays.kernel import netns
from overlays.kernel.rtnl import Rtnl
from overlays.kernel.rtnl_types import Underlay
from overlays.model.names import bridge_name, vxlan_name
from overlays.model.specs import Network

from .conftest import can_ping, ip_json, sh, unique

UNDERLAY_MTU = 1500
MTU = 1450
VNI = 4242
ZERO = "00:00:00:00:00:00"


@dataclass
class Side:
    """One simulated host: its namespace, its VTEP, and its sandbox's address and MAC."""

    host: str
    sandbox: str
    vtep: str
    ip: str
    mac: str

    @property
    def remote(self) -> Remote:
        return Remote(self.ip, self.mac, self.vtep)


def bridge_json(netns_name: str, *args: str) -> list[dict[str, object]]:
    """``bridge -j`` in a namespace (the independent view of FDB entries)."""
    out = subprocess.run(["bridge", "-j", "-n", netns_name, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def fdb_view(side: Side, device: str) -> set[tuple[str, str]]:
    return {
        (str(e["mac"]), str(e["dst"]))
        for e in bridge_json(side.host, "fdb", "show", "dev", device)
        if "dst" in e and "self" in e.get("flags", []) and e.get("state") == "permanent"  # type: ignore[operator]
    }


def neigh_view(side: Side, device: str) -> dict[str, str]:
    return {
        str(e["dst"]): str(e["lladdr"])
        for e in ip_json(side.host, "neigh", "show", "dev", device)
        if "PERMANENT" in e.get("state", [])  # type: ignore[operator]
    }


@pytest.fixture
def overlay(make_netns: Callable[[str], str]) -> Iterator[tuple[Network, str, Side, Side]]:
    """Two hosts on one underlay, the overlay network set up on both, one sandbox on each (not yet synced).

    Every namespace comes from make_netns, so everything (links, entries) goes with it, also on failure.
    """
    instance = unique("i")
    name = unique("n")
    net = Network(
        name=name, driver="overlay", subnet=ipaddress.ip_network("10.202.0.0/24"),
        gateway=ipaddress.ip_address("10.202.0.254"), ip_range=None, mtu=MTU,
        bridge=bridge_name(name, instance), created=0.0, vni=VNI,
    )
    h1, h2 = make_netns("h1"), make_netns("h2")
    subprocess.run(["ip", "link", "add", "ul0", "netns", h1, "mtu", str(UNDERLAY_MTU), "type", "veth",
                    "peer", "name", "ul0", "netns", h2, "mtu", str(UNDERLAY_MTU)], check=True)
    sides = []
    for n, host in enumerate((h1, h2), start=1):
        subprocess.run(["ip", "-n", host, "addr", "add", f"10.201.0.{n}/24", "dev", "ul0"], check=True)
        subprocess.run(["ip", "-n", host, "link", "set", "ul0", "up"], check=True)
        side = Side(host, make_netns(f"s{n}"), f"10.201.0.{n}", f"10.202.0.{n}", f"02:42:0a:ca:00:0{n}")
        with Rtnl.open(host) as links, Rtnl.open(side.sandbox) as box:
            under = links.underlay()
            assert under == Underlay("ul0", side.vtep, UNDERLAY_MTU)
            assert vxlan.overlay_mtu(under.mtu) == MTU
            vxlan.setup_network(links, net, under, instance, "02:6e:00:00:00:01")
            vxlan.setup_network(links, net, under, instance, "02:6e:00:00:00:01")  # idempotent
            veth = unique("v")
            links.ensure_veth(veth, f"overlays:{instance}:test", MTU, "eth0", netns.path_of(side.sandbox), side.mac)
            links.ensure_port(veth, net.bridge)
            box.ensure_address("eth0", side.ip, 24)
            box.ensure_up("eth0")
        sides.append(side)
    yield net, instance, sides[0], sides[1]


def sync(side: Side, net: Network, instance: str, remotes: list[Remote]) -> tuple[int, int]:
    with Rtnl.open(side.host) as links:
        return vxlan.sync(links, net, instance, side.vtep, remotes)


def test_devices_as_designed(overlay: tuple[Network, str, Side, Side]) -> None:
    net, _, one, _ = overlay
    device = vxlan_name(net.bridge)
    (dev,) = ip_json(one.host, "-d", "link", "show", "dev", device)
    data = dev["linkinfo"]["info_data"]  # type: ignore[index]
    assert (data["id"], data["local"], data["link"], data["port"]) == (VNI, one.vtep, "ul0", 4789)
    assert data["learning"] is False and data["proxy"] is True
    assert dev["mtu"] == MTU and dev["master"] == net.bridge and "UP" in dev["flags"]  # type: ignore[operator]
    (br,) = ip_json(one.host, "addr", "show", "dev", net.bridge)
    addrs = cast(list[dict[str, object]], br["addr_info"])
    assert br["mtu"] == MTU and not [a for a in addrs if a["family"] == "inet"]


def test_ping_across_hosts_after_sync(overlay: tuple[Network, str, Side, Side]) -> None:
    net, instance, one, two = overlay
    device = vxlan_name(net.bridge)
    everyone = [one.remote, two.remote]

    # (a) nothing programmed: ARP is suppressed and nothing is flooded, so no path.
    assert not can_ping(one.sandbox, two.ip)

    # (b) the control plane's view on both hosts (local endpoints included, to be skipped).
    assert sync(one, net, instance, everyone) == (3, 0)
    assert sync(two, net, instance, everyone) == (3, 0)
    assert sync(one, net, instance, everyone) == (0, 0)
    assert can_ping(one.sandbox, two.ip, count=2)
    assert can_ping(two.sandbox, one.ip, count=2)

    # (e) what the kernel holds, through an independent view.
    assert fdb_view(one, device) == {(two.mac, two.vtep), (ZERO, two.vtep)}
    assert neigh_view(one, device) == {two.ip: two.mac}
    with Rtnl.open(one.host) as links:
        assert links.fdb(device) == fdb_view(one, device)
        assert links.neighbours(device) == neigh_view(one, device)
    # ARP is answered on the host from the neighbour table (proxy), not across the wire:
    # without any flood entry the sandboxes still resolve each other.
    for side, other in ((one, two), (two, one)):
        subprocess.run(["bridge", "-n", side.host, "fdb", "del", ZERO, "dev", device, "dst", other.vtep],
                       check=True)
        sh(side.sandbox, "ip", "neigh", "flush", "dev", "eth0")
    assert can_ping(one.sandbox, two.ip)
    (entry,) = ip_json(one.sandbox, "neigh", "show", "dev", "eth0", two.ip)
    assert entry["lladdr"] == two.mac
    assert sync(one, net, instance, everyone) == (1, 0)  # the flood entry comes back
    assert sync(two, net, instance, everyone) == (1, 0)

    # (d) the remote leaves: its entries go, and so does the path.
    assert sync(one, net, instance, [one.remote]) == (0, 3)
    assert fdb_view(one, device) == set() and neigh_view(one, device) == {}
    assert not can_ping(one.sandbox, two.ip)
    assert not can_ping(two.sandbox, one.ip)


def test_mtu_fails_loudly_at_the_sandbox(overlay: tuple[Network, str, Side, Side]) -> None:
    net, instance, one, two = overlay
    for side in (one, two):
        sync(side, net, instance, [one.remote, two.remote])
    biggest = MTU - 28  # IPv4 header 20 + ICMP header 8
    fits = sh(one.sandbox, "ping", "-c", "1", "-W", "1", "-M", "do", "-s", str(biggest), two.ip, check=False)
    assert fits.returncode == 0, fits.stdout + fits.stderr
    for size in (biggest + 1, UNDERLAY_MTU - 28):
        done = sh(one.sandbox, "ping", "-c", "1", "-W", "1", "-M", "do", "-s", str(size), two.ip, check=False)
        assert done.returncode != 0
        assert "message too long" in (done.stdout + done.stderr).lower(), done.stdout + done.stderr


def test_teardown_removes_both_devices(overlay: tuple[Network, str, Side, Side]) -> None:
    net, instance, one, _ = overlay
    with Rtnl.open(one.host) as links:
        vxlan.teardown_network(links, net, instance)
        vxlan.teardown_network(links, net, instance)  # missing is fine
    names = {str(link["ifname"]) for link in ip_json(one.host, "link", "show")}
    assert not names & {net.bridge, vxlan_name(net.bridge)}


def test_underlay_follows_the_default_route(make_netns: Callable[[str], str]) -> None:
    host = make_netns("u")
    with Rtnl.open(host) as links:
        assert links.underlay() is None  # only loopback
        for n, (name, mtu) in enumerate((("ua", 1500), ("ub", 9000)), start=1):
            subprocess.run(["ip", "-n", host, "link", "add", name, "mtu", str(mtu), "type", "veth", "peer", f"{name}p"],
                           check=True)
            subprocess.run(["ip", "-n", host, "addr", "add", f"10.201.{n}.1/24", "dev", name], check=True)
            subprocess.run(["ip", "-n", host, "addr", "add", f"10.201.{n}.2/24", "dev", name], check=True)  # secondary
            subprocess.run(["ip", "-n", host, "link", "set", name, "up"], check=True)
        assert links.underlay() == Underlay("ua", "10.201.1.1", 1500)  # no default route: the first one up
        subprocess.run(["ip", "-n", host, "route", "add", "default", "via", "10.201.2.254"], check=True)
        assert links.underlay() == Underlay("ub", "10.201.2.1", 9000)


def test_vxlan_refusals(overlay: tuple[Network, str, Side, Side]) -> None:
    net, instance, one, _ = overlay
    device = vxlan_name(net.bridge)
    alias = f"overlays:{instance}:network={net.name}"
    with Rtnl.open(one.host) as links:
        with pytest.raises(Conflict, match=device):
            links.ensure_vxlan(device, alias, VNI + 1, one.vtep, "ul0", MTU)
        with pytest.raises(Conflict, match=device):
            links.ensure_vxlan(device, "someone else", VNI, one.vtep, "ul0", MTU)
        # The kernel would silently clamp the MTU to 1450: we refuse and leave nothing behind.
        with pytest.raises(KernelError, match="MTU 1500"):
            links.ensure_vxlan("ovx-toobig", alias, VNI + 2, one.vtep, "ul0", UNDERLAY_MTU)
        assert links.link("ovx-toobig") is None
        with pytest.raises(KernelError, match="invalid MAC"):
            links.ensure_fdb(device, "not-a-mac", "10.201.0.9")
        links.delete_fdb(device, "02:00:00:00:00:09", "10.201.0.9")  # missing is success
        links.delete_neigh(device, "10.202.0.9")
        links.delete_fdb("nosuchdev", ZERO, "10.201.0.9")
