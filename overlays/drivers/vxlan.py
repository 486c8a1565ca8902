"""The overlay driver: one bridge plus one VXLAN device per network on every host that has endpoints on it.

Design note. Sandboxes attach to a per-host Linux bridge exactly as with the bridge
driver, except that the bridge carries no address (an overlay network has no
gateway on any one host). A VXLAN device enslaved to the bridge carries frames to
the other hosts, wrapped in UDP (port 4789) between the hosts' underlay addresses
(VTEPs). How it learns where a MAC lives is the whole design, and it follows
flannel (``backend/vxlan/vxlan.go``) and Docker's overlay driver:

* **Static entries, written by the control plane.** The store knows every
  endpoint's IP, MAC and host. For each remote endpoint we program an FDB entry
  (MAC -> remote VTEP) and a permanent neighbour entry (IP -> MAC) on the VXLAN
  device. Learning is off (``nolearning``): a learned entry could outlive a moved
  or deleted endpoint, or be poisoned by any packet that reaches port 4789.
* **No multicast, no miss callbacks.** Multicast groups need a multicast-capable
  underlay (clouds have none), and L2/L3 miss notifications (flannel's first
  design) put a userspace round trip on the first packet to every peer and
  lose packets whenever the daemon is slow or restarting. Static entries are in
  place before the first packet to an endpoint known for a while, and survive the
  agent being down; for an endpoint only just made, see "Late entries" below.
* **ARP answered locally (``proxy``).** With proxy on, the VXLAN device answers
  ARP requests from its neighbour table itself and never sends them over the
  wire, so resolution costs no round trip and no flooding to every host.
* **One all-zero FDB entry per remote host** (appended: the kernel keeps a list)
  for what must still be flooded (broadcast, multicast such as IPv6 ND, unknown
  unicast): head-end replication, one unicast copy per remote VTEP.
* **MTU = underlay MTU - 50.** VXLAN adds 50 bytes (outer IPv4 20, UDP 8, VXLAN
  8, inner Ethernet 14). The kernel refuses (or silently clamps) a bigger MTU on
  the device, and if only the device had the smaller MTU, full-size packets from
  sandboxes with DF set would be dropped at the bridge without an ICMP error.
  So bridge, VXLAN device and sandbox veths all get the same reduced MTU, and a
  too-big DF packet fails loudly at the sandbox ("message too long").

**Late entries are announced.** An endpoint is usable on its own host before the
other hosts' agents have programmed it (a few ms later, through the store's watch).
A sandbox elsewhere that asks for it in between gets no answer from its VXLAN device,
and Linux would ask again only after ``retrans_time`` (1 s): that was the p99 of
overlay convergence, and with etcd on 3 hosts its median. So the agent, when it
writes a neighbour entry, also announces it into the bridge with one gratuitous ARP
reply (kernel/arp.py): the sandboxes still waiting resolve at once, the others ignore
it, and the device drops it (it never crosses hosts). Shorter ARP retries in every
sandbox would also have hidden the gap, at the price of ARP every few ms for any
address that does not answer, copied by the bridge to every port; an L3-miss
callback would still leave the asker waiting for its own retry.

``sync`` makes the device's tables exactly match a list of remote endpoints,
reading before writing, so the agent can call it on every change and on a timer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from overlays.drivers.bridge import network_alias, setup_bridge
from overlays.errors import InvalidSpec
from overlays.kernel.api import Links
from overlays.kernel.rtnl_types import Underlay
from overlays.model.names import vxlan_name
from overlays.model.specs import Network

VXLAN_OVERHEAD = 50  # outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14)
VXLAN_PORT = 4789
FLOOD_MAC = "00:00:00:00:00:00"


@dataclass(frozen=True)
class Remote:
    """An endpoint of an overlay network: its address, its MAC and the VTEP of the host it lives on."""

    ip: str
    mac: str
    vtep: str
    ip6: str | None = None  # a dual-stack endpoint's IPv6 address (its neighbour entry is answered by NDP proxy)

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip,) if self.ip6 is None else (self.ip, self.ip6)


def overlay_mtu(underlay_mtu: int) -> int:
    """The MTU of every link of an overlay network on an IPv4 underlay of ``underlay_mtu``."""
    return underlay_mtu - VXLAN_OVERHEAD


def _vni(net: Network) -> int:
    if net.vni is None:
        raise InvalidSpec(f"network {net.name}: an overlay network needs a VNI")
    return net.vni


def setup_network(host: Links, net: Network, underlay: Underlay, instance: str, bridge_mac: str) -> None:
    """The bridge (no address) and the VXLAN device exist, are up, and the device is a port of the bridge."""
    alias = network_alias(instance, net.name)
    setup_bridge(host, net, alias, bridge_mac, with_gateway=False)
    device = vxlan_name(net.bridge)
    host.ensure_vxlan(device, alias, _vni(net), underlay.ip, underlay.ifname, net.mtu, VXLAN_PORT)
    host.ensure_port(device, net.bridge)


def device_ready(host: Links, net: Network, instance: str) -> bool:
    """The usual case, in two lookups: the VXLAN device is up and a port of the network's bridge."""
    device, bridge = host.link(vxlan_name(net.bridge)), host.link(net.bridge)
    return device is not None and bridge is not None and device.master == bridge.index and device.up


def teardown_network(host: Links, net: Network, instance: str) -> None:
    """Remove the VXLAN device (and with it its FDB and neighbour entries), then the bridge."""
    host.delete_link(vxlan_name(net.bridge))
    host.delete_link(net.bridge)


def _wanted(local_vtep: str, remotes: Iterable[Remote]) -> tuple[set[tuple[str, str]], dict[str, str]]:
    """The FDB entries and neighbour entries that ``remotes`` call for on this host."""
    # Sorted, so that conflicting input (one IP or MAC listed twice) always resolves the same way.
    others = sorted({r for r in remotes if r.vtep != local_vtep}, key=lambda r: (r.ip, r.mac, r.vtep))
    # A unicast MAC points at one VTEP (the kernel replaces, it does not append): keep one per MAC.
    unicast = {r.mac.lower(): r.vtep for r in others}
    fdb = set(unicast.items()) | {(FLOOD_MAC, r.vtep) for r in others}
    neighbours = {ip: r.mac.lower() for r in others for ip in r.ips}
    return fdb, neighbours


def _announce(host: Links, net: Network, ip: str, mac: str) -> None:
    """A gratuitous ARP for an IPv4 entry; an IPv6 one waits for its neighbour solicitation (answered at once)."""
    if ":" not in ip:
        host.announce(net.bridge, ip, mac)


def add_remote(host: Links, net: Network, local_vtep: str, remote: Remote, announce: bool = False) -> bool:
    """One remote endpoint's entries, added to what the device has; False for an endpoint of this host.

    The agent's fast path for a new registration: no store read, nothing removed (``sync``,
    which the agent runs soon after, removes what an added entry replaced), and no read of
    the device either: its tables are dumped whole (5 ms for 400 FDB entries, against 0.4 ms
    a write), and each write is idempotent in the kernel (a unicast MAC and a neighbour are
    replaced, a flood entry is appended once per VTEP). With ``announce`` the neighbour is
    announced, as ``sync`` does for the entries it writes.
    """
    if remote.vtep == local_vtep:
        return False
    device, mac = vxlan_name(net.bridge), remote.mac.lower()
    host.ensure_fdb(device, mac, remote.vtep)
    host.ensure_fdb(device, FLOOD_MAC, remote.vtep)
    for ip in remote.ips:
        host.ensure_neigh(device, ip, mac)
        if announce:
            _announce(host, net, ip, mac)
    return True


def in_sync(host: Links, net: Network, instance: str, local_vtep: str, remotes: Iterable[Remote]) -> bool:
    """Read-only: whether the device's entries are exactly those ``remotes`` call for."""
    device = vxlan_name(net.bridge)
    want_fdb, want_neigh = _wanted(local_vtep, remotes)
    return host.fdb(device) == want_fdb and host.neighbours(device) == want_neigh


def sync(host: Links, net: Network, instance: str, local_vtep: str, remotes: Iterable[Remote],
         announce: bool = False) -> tuple[int, int]:
    """Make the device's static FDB and neighbour entries exactly those of ``remotes``; return (added, removed).

    Endpoints on ``local_vtep`` (this host) are skipped: the bridge reaches them directly.
    Only differences are written, additions first (so a moved MAC is re-pointed in place,
    without a gap), then stale entries are removed. With ``announce``, each neighbour
    entry written is also announced into the bridge (one gratuitous ARP reply), for the
    sandboxes that asked before it existed (see "Late entries" above).
    """
    device = vxlan_name(net.bridge)
    want_fdb, want_neigh = _wanted(local_vtep, remotes)
    have_fdb, have_neigh = host.fdb(device), host.neighbours(device)
    added = removed = 0
    for mac, vtep in sorted(want_fdb - have_fdb):
        host.ensure_fdb(device, mac, vtep)
        added += 1
    for ip, mac in sorted(want_neigh.items()):
        if have_neigh.get(ip) != mac:
            host.ensure_neigh(device, ip, mac)
            added += 1
            if announce:
                _announce(host, net, ip, mac)
    for mac, vtep in sorted(have_fdb - want_fdb):
        host.delete_fdb(device, mac, vtep)
        removed += 1
    for ip in sorted(set(have_neigh) - set(want_neigh)):
        host.delete_neigh(device, ip)
        removed += 1
    return added, removed
