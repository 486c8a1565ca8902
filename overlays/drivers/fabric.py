"""The fabric of a lab: simulated hosts on one machine, wired like real ones.

Each simulated host is a network namespace whose ``eth0`` is a veth into a fabric
namespace holding one bridge (``fabric0``): the lab's underlay, a switch all hosts
share. The optional *outside* peer is one more port on that switch, with the
first address of the fabric subnet; hosts route out through it, so it plays the
internet (for egress NAT) and a client (for published ports).

Without simulated hosts, the outside peer is wired straight to the host namespace.

The switch is a plain L2 switch: frames it bridges skip the IP firewall hooks
(``bridge-nf-call-*`` is 1 in every new namespace here, and with it each VXLAN
packet between two hosts crossed br_netfilter's prerouting, forward and
postrouting hooks for nothing: no rule lives in the fabric namespace).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from overlays.drivers.bridge import bridged_traffic_unfiltered
from overlays.kernel.api import Kernel
from overlays.model.names import bridge_mac, owner_alias, short_hash

FABRIC_BRIDGE = "fabric0"
UNDERLAY_IFNAME = "eth0"
HOST_OFFSET = 10  # hosts take .11, .12, ...; the outside peer takes .1


@dataclass(frozen=True)
class Wire:
    """A veth from namespace ``a`` (name ``a_if``) to namespace ``b`` (``b_if``, address ``b_ip``)."""

    a_netns: str | None
    a_if: str
    b_netns: str
    b_if: str
    b_ip: ipaddress.IPv4Address
    prefixlen: int
    a_ip: ipaddress.IPv4Address | None = None  # an address on a's end too (point-to-point wires)


def netns_of(lab: str, role: str) -> str:
    """Lab namespaces: ``ovl-<lab>-<host>``, ``ovl-<lab>-fabric``, ``ovl-<lab>-outside``."""
    return f"ovl-{lab}-{role}"


def host_address(fabric: ipaddress.IPv4Network, index: int) -> ipaddress.IPv4Address:
    return fabric.network_address + HOST_OFFSET + 1 + index


def outside_address(fabric: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return fabric.network_address + 1


def lab_alias(lab: str, what: str) -> str:
    return owner_alias("lab-" + short_hash(lab, length=6), what)


def _mac(ip: ipaddress.IPv4Address) -> str:
    return "02:6c:" + ":".join(f"{b:02x}" for b in ip.packed)


def ensure_namespace(kernel: Kernel, name: str) -> Path:
    """The namespace exists, with loopback up."""
    path = kernel.netns_path(name) if kernel.netns_exists(name) else kernel.create_netns(name)
    with kernel.open(name) as links:
        links.ensure_up("lo")
    return path


def ensure_switch(kernel: Kernel, lab: str) -> None:
    """The fabric namespace and its bridge, with bridged traffic kept out of the IP hooks (a switch filters nothing)."""
    ensure_namespace(kernel, netns_of(lab, "fabric"))
    bridged_traffic_unfiltered(kernel, netns_of(lab, "fabric"))
    with kernel.open(netns_of(lab, "fabric")) as fabric:
        fabric.ensure_bridge(FABRIC_BRIDGE, lab_alias(lab, "fabric"), 1500, bridge_mac(FABRIC_BRIDGE, lab))


def ensure_wire(kernel: Kernel, lab: str, wire: Wire, bridge: str | None, route_via: str | None) -> None:
    """Veth a<->b; a's end optionally on a bridge; b's end addressed and up, with a default route."""
    b_path = kernel.netns_path(wire.b_netns)
    with kernel.open(wire.a_netns) as a, kernel.open(wire.b_netns) as b:
        a.ensure_veth(wire.a_if, lab_alias(lab, f"wire={wire.b_netns}"), 1500, wire.b_if, b_path, _mac(wire.b_ip))
        if bridge:
            a.ensure_port(wire.a_if, bridge)
        else:
            a.ensure_up(wire.a_if)
        if wire.a_ip is not None:
            a.ensure_address(wire.a_if, str(wire.a_ip), wire.prefixlen)
        b.ensure_address(wire.b_if, str(wire.b_ip), wire.prefixlen)
        b.ensure_up(wire.b_if)
        if route_via:
            b.ensure_default_route(route_via)


def wire_is_up(kernel: Kernel, wire: Wire) -> bool:
    """Read-only: both namespaces exist and a's end of the wire is there."""
    if not kernel.netns_exists(wire.b_netns) or (wire.a_netns and not kernel.netns_exists(wire.a_netns)):
        return False
    with kernel.open(wire.a_netns) as a:
        return a.link(wire.a_if) is not None
