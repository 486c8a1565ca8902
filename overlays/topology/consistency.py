"""What a topology file must agree with itself on, checked when it is resolved (before anything is built).

Each declaration can be valid alone and the whole still impossible: two sandboxes
asking for one address, a static address outside its subnet, two networks of one host
whose subnets overlap (or one overlapping the lab's fabric), one port published twice
on a host, more sandboxes on a network than its pool (or a bridge) holds. ``up`` would
only find these halfway; here they are errors of the file, naming the path in it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from overlays import ipam
from overlays.drivers.bridge import BRIDGE_PORTS_MAX
from overlays.model.ports import PortMapping
from overlays.model.specs import EndpointRequest, IPAddress, IPNetwork, NetworkSpec

if TYPE_CHECKING:
    from overlays.topology.spec import NetworkDecl, SandboxDecl, Topology, TopologyError

EVERYWHERE_SCOPE = "*"  # where an overlay network's addresses must be unique: on every host


Fail = Callable[[str, str], "TopologyError"]


@dataclass(frozen=True)
class _Use:
    """One endpoint of the file: which sandbox, on which network, where (a host, or everywhere)."""

    box: SandboxDecl
    request: EndpointRequest
    net: NetworkDecl

    @property
    def scope(self) -> str:
        """Where its address and MAC must be unique: its host, or every host for an overlay."""
        return EVERYWHERE_SCOPE if self.net.overlay else self.box.host

    @property
    def path(self) -> str:
        return f"sandboxes.{self.box.spec.name}.networks.{self.request.network}"


def check(topo: Topology, fail: Fail) -> None:
    """Raise the first inconsistency of the file, as ``fail(path, message)`` makes it."""
    _networks(topo, fail)
    uses = list(_uses(topo))
    _static_addresses(uses, fail)
    _macs(uses, fail)
    _capacity(topo, uses, fail)
    _ports(topo, fail)


def _uses(topo: Topology) -> Iterator[_Use]:
    by_name = {n.spec.name: n for n in topo.networks}
    for box in topo.sandboxes:
        for request in box.spec.networks:
            yield _Use(box, request, by_name[request.network])


def _hosts_of(net: NetworkDecl, topo: Topology) -> set[str]:
    return set(topo.host_names()) if net.overlay else set(net.hosts)


def declared_subnets(net: NetworkDecl) -> tuple[IPNetwork, ...]:
    """The subnets the file gives a network: its IPv4 one, its IPv6 one, or both."""
    return tuple(s for s in (net.spec.subnet, net.spec.subnet6) if s is not None)


def _networks(topo: Topology, fail: Fail) -> None:
    for i, b in enumerate(topo.networks):
        for subnet in declared_subnets(b):
            if topo.lab and subnet.version == 4 and subnet.overlaps(topo.fabric):  # type: ignore[arg-type]
                raise fail(f"networks.{b.spec.name}.subnet",
                           f"subnet {subnet} overlaps the lab's fabric {topo.fabric}")
            for a in topo.networks[:i]:
                shared = _hosts_of(a, topo) & _hosts_of(b, topo)
                other = next((o for o in declared_subnets(a) if o.version == subnet.version), None)
                if shared and other is not None and subnet.overlaps(other):  # type: ignore[arg-type]
                    raise fail(f"networks.{b.spec.name}.subnet", f"subnet {subnet} overlaps network "
                               f"{a.spec.name} ({other}) on host {sorted(shared)[0]}")
    vnis: dict[int, str] = {}
    for n in topo.networks:
        if n.spec.vni is not None:
            if n.spec.vni in vnis:
                raise fail(f"networks.{n.spec.name}.vni", f"VNI {n.spec.vni} is also network {vnis[n.spec.vni]}'s")
            vnis[n.spec.vni] = n.spec.name


def _static_addresses(uses: list[_Use], fail: Fail) -> None:
    taken: dict[tuple[str, str, IPAddress], str] = {}
    for use in uses:
        for version, key in ((4, "ip"), (6, "ip6")):
            ip = use.request.static(version)
            if ip is not None:
                _check_static(use, ip, version, f"{use.path}.{key}", fail)
                where = (use.net.spec.name, use.scope, ip)
                if where in taken:
                    raise fail(f"{use.path}.{key}", f"address {ip} on network {use.net.spec.name} is also "
                               f"sandbox {taken[where]}'s")
                taken[where] = use.box.spec.name


def _check_static(use: _Use, ip: IPAddress, version: int, path: str, fail: Fail) -> None:
    """A static address must be a host address of its family's subnet, and not the gateway."""
    spec = use.net.spec
    subnet, gateway = (spec.subnet, spec.gateway) if version == 4 else (spec.subnet6, spec.gateway6)
    if subnet is None:
        served = spec.ipv4 if version == 4 else spec.ipv6
        if not served:
            raise fail(path, f"network {spec.name} has no IPv{version} subnet ({_subnets_text(use.net)})")
        which = "IPv6 " if version == 6 else ""  # "its subnet" has meant the IPv4 one since before IPv6
        raise fail(path, f"a static address needs network {spec.name}'s {which}subnet in the file")
    if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
        raise fail(path, f"address {ip} is not a host address of network {spec.name}'s subnet {subnet}")
    if ip == (gateway or ipam.default_gateway(subnet)):
        raise fail(path, f"address {ip} is network {spec.name}'s gateway")


def _subnets_text(net: NetworkDecl) -> str:
    return ", ".join(str(s) for s in declared_subnets(net)) or "a free one, chosen at up"


def _macs(uses: list[_Use], fail: Fail) -> None:
    taken: dict[tuple[str, str, str], str] = {}
    for use in uses:
        if use.request.mac is None:
            continue
        key = (use.net.spec.name, use.scope, use.request.mac)
        if key in taken:
            raise fail(f"{use.path}.mac", f"MAC {use.request.mac} on network {use.net.spec.name} is also "
                       f"sandbox {taken[key]}'s")
        taken[key] = use.box.spec.name


def _pool(spec_subnet: IPNetwork | None, ip_range: IPNetwork | None, gateway: IPAddress | None) -> int:
    """How many sandboxes one pool can address (a free /24 when no subnet is given)."""
    subnet = spec_subnet or ipaddress.ip_network(f"10.0.0.0/{ipam.DEFAULT_PREFIX}")
    pool = ip_range or subnet
    gw = gateway or ipam.default_gateway(subnet)
    reserved = {subnet.network_address, subnet.broadcast_address, gw}
    return pool.num_addresses - sum(1 for a in reserved if a in pool)


def _capacity_of(spec: NetworkSpec) -> int:
    """How many sandboxes a network can address: its smallest pool (an endpoint takes one of each family)."""
    pools = []
    if spec.ipv4:
        pools.append(_pool(spec.subnet, spec.ip_range, spec.gateway))
    if spec.subnet6 is not None:  # a free IPv6 pool is a /64: never the smaller one
        pools.append(_pool(spec.subnet6, spec.ip_range if spec.ip_range and spec.ip_range.version == 6 else None,
                           spec.gateway6))
    return min(pools, default=ipaddress.IPv6Network("::/64").num_addresses)


def _capacity(topo: Topology, uses: list[_Use], fail: Fail) -> None:
    counts: dict[tuple[str, str], int] = {}
    per_host: dict[tuple[str, str], int] = {}
    for use in uses:
        counts[(use.net.spec.name, use.scope)] = counts.get((use.net.spec.name, use.scope), 0) + 1
        per_host[(use.net.spec.name, use.box.host)] = per_host.get((use.net.spec.name, use.box.host), 0) + 1
    for net in topo.networks:
        spec = net.spec
        pool = _capacity_of(spec)
        for (name, scope), count in sorted(counts.items()):
            if name == spec.name and count > pool:
                where = "" if scope == EVERYWHERE_SCOPE else f" on host {scope}"
                raise fail(f"networks.{name}", f"{count} sandboxes{where}, but its pool holds {pool} addresses")
        if spec.driver == "macvlan":
            continue
        for (name, host), count in sorted(per_host.items()):
            if name == spec.name and count > BRIDGE_PORTS_MAX:
                raise fail(f"networks.{name}", f"{count} sandboxes on host {host}, but a Linux bridge takes at "
                           f"most {BRIDGE_PORTS_MAX} ports: split them over several networks")


def _ports(topo: Topology, fail: Fail) -> None:
    published: dict[tuple[str, str, int], list[tuple[PortMapping, str]]] = {}
    for box in topo.sandboxes:
        for m in box.spec.ports:
            key = (box.host, m.protocol, m.host_port)
            for other, holder in published.get(key, []):
                if m.host_ip is None or other.host_ip is None or m.host_ip == other.host_ip:
                    where = f" on host {box.host}" if topo.lab else ""
                    raise fail(f"sandboxes.{box.spec.name}.ports",
                               f"port {m.host_port}/{m.protocol} is also published by sandbox {holder}{where}")
            published.setdefault(key, []).append((m, box.spec.name))
