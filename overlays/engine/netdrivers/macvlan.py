"""The macvlan driver: sandboxes straight on the segment of a host interface (the parent), as Docker's.

The network has no kernel object of its own (the parent is the user's and stays
untouched); each endpoint is a macvlan device made inside its sandbox. Its subnet is
the segment's: given with --subnet, or taken from the parent's own address. Its
gateway is the segment's router (by default the subnet's first address), reached
directly. Addresses are this host's to give out: the gateway and the parent's own
addresses are held back, and --ip-range keeps the rest clear of other machines on
the segment. The firewall plays no part: no NAT, no published ports.
"""

from __future__ import annotations

from ipaddress import IPv4Interface
from pathlib import Path

from overlays import ipam
from overlays.drivers import macvlan
from overlays.engine import records
from overlays.engine.context import Context, NodeTxn
from overlays.engine.netdrivers.base import HostFacts, NetworkDriver, check_new, new_network
from overlays.errors import InvalidSpec, NotFound
from overlays.kernel.api import Links
from overlays.model.specs import NetworkSpec
from overlays.model.state import Endpoint, Network
from overlays.undo import Undo


class MacvlanDriver(NetworkDriver):
    name = "macvlan"

    def facts(self, ctx: Context, host: Links, spec: NetworkSpec) -> HostFacts:
        parent = host.link(spec.parent or "")
        if parent is None:
            where = f" in {host.netns}" if host.netns else ""
            raise NotFound(f"network {spec.name}: parent interface {spec.parent} does not exist{where}")
        return HostFacts(parent=parent, parent_addresses=tuple(
            a for a in host.interface_addresses(parent.name) if isinstance(a, IPv4Interface)))

    def record(self, txn: NodeTxn, ctx: Context, spec: NetworkSpec, facts: HostFacts) -> Network:
        assert facts.parent is not None  # facts() found it
        own = facts.parent_addresses
        if spec.subnet is None and not own:
            raise InvalidSpec(f"network {spec.name}: give --subnet (parent {facts.parent.name} has no IPv4 address "
                              "to take the segment's subnet from)")
        subnet = check_new(txn, spec, facts, routed_too=False, subnet=own[0].network if own else None)
        if subnet is None:  # the spec refuses IPv6 on macvlan, so an IPv6-only one never gets here
            raise InvalidSpec(f"network {spec.name}: a macvlan network needs an IPv4 subnet")
        if spec.mtu is not None and spec.mtu > facts.parent.mtu:
            raise InvalidSpec(f"network {spec.name}: MTU {spec.mtu} is larger than parent {facts.parent.name}'s "
                              f"({facts.parent.mtu})")
        network = new_network(spec, subnet, spec.mtu or facts.parent.mtu, parent=facts.parent.name)
        txn.put(records.network_key(network.name), network.to_record())
        ipam.reserve(txn, network, network.gateway, "gateway")
        for address in own:
            if address.ip in subnet and address.ip != network.gateway:
                ipam.reserve(txn, network, address.ip, f"host interface {facts.parent.name}")
        return network

    def setup(self, ctx: Context, host: Links, network: Network, undo: Undo) -> None:
        macvlan.require_parent(host, network)

    def attach(self, ctx: Context, host: Links, inside: Links, inside_path: Path, network: Network, ep: Endpoint,
               undo: Undo) -> None:
        macvlan.attach(host, inside, inside_path, network, ep, undo, default_route=self.routes_out(network))

    def detach(self, ctx: Context, host: Links, inside: Links | None, ep: Endpoint) -> None:
        if inside is not None:
            macvlan.detach(inside, ep)

    def link_down(self, ctx: Context, host: Links, inside: Links, ep: Endpoint) -> None:
        inside.ensure_down(ep.ifname)  # no host end: the kernel drops its routes, link_up puts them back

    def link_up(self, ctx: Context, host: Links, inside: Links, ep: Endpoint, default_route: bool) -> None:
        inside.ensure_up(ep.ifname, ipv6=False)  # the subnet's route comes back with the address
        inside.wait_running(ep.ifname)
        if default_route:
            inside.ensure_default_route(str(ep.gateway))

    def why_no_ports(self, network: Network) -> str:
        return (f"macvlan network {network.name} (its sandboxes have addresses of their own on {network.parent}'s "
                "segment: reach them there)")

    def problems(self, ctx: Context, host: Links, network: Network) -> list[str]:
        if network.parent is not None and host.link(network.parent) is not None:
            return []
        return [f"parent interface {network.parent} of network {network.name} is missing"]

    def endpoint_problems(self, ctx: Context, host: Links, inside: Links, network: Network, ep: Endpoint) -> list[str]:
        return macvlan.problems(inside, ep)
