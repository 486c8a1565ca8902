"""The network-driver interface, and what the drivers of this host's own networks share.

Design note. The engine's operations (networks.py, sandboxes.py, endpoints.py) are
lists of named steps that never ask "which kind of network is this?" themselves: each
step asks the network's driver, chosen once from its record (``driver_for``). As with
netavark's driver trait (validate / setup / teardown), a driver has two halves:

* store steps, run inside the operation's transaction: where the network's record
  and its addresses live (``scope``: this host's records, or the store's root for a
  network shared by hosts), recording and forgetting it, giving out and taking back
  an endpoint's address (and announcing it, for an overlay);
* kernel steps, handed open netlink handles: making the network ready on this host,
  attaching and detaching an endpoint, what follows the last endpoint's leaving,
  removing it; and read-only checks of drift (``problems``).

It also says what its networks allow: published ports, a default route out.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Interface, IPv4Network, IPv6Network
from pathlib import Path
from typing import ClassVar

from overlays import ipam
from overlays.engine import records
from overlays.engine.context import Context, NodeTxn
from overlays.errors import Conflict, InvalidSpec
from overlays.kernel.api import Links
from overlays.kernel.rtnl_types import Link, Underlay
from overlays.model.names import endpoint_mac
from overlays.model.specs import EndpointRequest, NetworkSpec
from overlays.model.state import Endpoint, IPNetwork, Network
from overlays.store.base import Txn
from overlays.undo import Undo


@dataclass(frozen=True)
class HostFacts:
    """What creating a network reads from the host first (read-only), for its record step."""

    routes: tuple[IPv4Network | IPv6Network, ...] = ()
    underlay: Underlay | None = None
    parent: Link | None = None
    parent_addresses: tuple[IPv4Interface, ...] = ()


class NetworkDriver:
    """One kind of network. Subclasses say what differs; the defaults suit a network of this host only."""

    name: ClassVar[str]
    in_firewall: ClassVar[bool] = False  # its networks are elements of our nft table's sets
    needs_agent: ClassVar[bool] = False  # its endpoints are programmed on other hosts by their agents

    # -- store steps (inside a transaction) --------------------------------------------------------------------------

    def scope(self, txn: NodeTxn) -> Txn:
        """Where the network's record and addresses live: this host's records."""
        return txn

    def record(self, txn: NodeTxn, ctx: Context, spec: NetworkSpec, facts: HostFacts) -> Network:
        """Check ``spec`` against what is recorded, and record the network as pending."""
        raise NotImplementedError

    def forget(self, txn: NodeTxn, ctx: Context, network: Network) -> None:
        scope = self.scope(txn)
        records.bump_network_generation(txn)
        scope.delete(records.network_key(network.name))
        ipam.release_all(scope, network.name)
        for key in scope.range(records.mac_key(network.name, "")):
            scope.delete(key)

    def users(self, txn: NodeTxn, ctx: Context, network: Network) -> list[str]:
        """The sandboxes attached to the network (``node/sandbox`` where it spans hosts)."""
        return sorted(e.sandbox for e in records.all_endpoints(txn) if e.network == network.name)

    def allocate(self, txn: NodeTxn, ctx: Context, network: Network, sandbox: str, request: EndpointRequest,
                 ifname: str, hostname: str | None = None) -> Endpoint:
        """Take an address on ``network`` for ``sandbox`` (whose ``hostname`` is a DNS name too) and record
        the endpoint as pending."""
        self._prefetch(txn, ctx, network, sandbox)
        scope, owner = self.scope(txn), self.owner(ctx, sandbox)
        if txn.get(records.endpoint_key(sandbox, network.name)) is not None:
            raise Conflict(f"sandbox {sandbox} is already connected to network {network.name}")
        _check_families(network, request)
        ip = ipam.allocate(scope, network, owner, request.static(network.subnet.version), request.exclude)
        ip6 = (ipam.allocate(scope, network, owner, request.ip6, request.exclude, version=6)
               if network.subnet6 is not None else None)
        if request.mac is not None:  # a MAC asked for is claimed on the network (derived ones are unique by address)
            _claim_mac(scope, network, request.mac, owner)
        elif ip.version == 6:  # ... but one derived from an IPv6 address keeps only its last 32 bits: claimed too
            _claim_mac(scope, network, endpoint_mac(ip), owner, f" (derived from {ip}'s last 32 bits; give --mac)")
        host_ifname = next((n for n in self.host_ifnames(ctx, network, sandbox)
                            if txn.create(records.ifname_key(n), {"owner": f"{sandbox}/{network.name}"})), "")
        ep = Endpoint(sandbox=sandbox, network=network.name, ifname=ifname, host_ifname=host_ifname, ip=ip,
                      prefixlen=network.subnet.prefixlen, gateway=network.gateway, mac=request.mac or endpoint_mac(ip),
                      mtu=network.mtu, driver=self.name, aliases=request.aliases, mac_given=request.mac is not None,
                      ip6=ip6, prefixlen6=network.subnet6.prefixlen if network.subnet6 else 0,
                      gateway6=network.gateway6 if ip6 else None)
        txn.put(records.endpoint_key(sandbox, network.name), ep.to_record())
        return ep

    def _prefetch(self, txn: NodeTxn, ctx: Context, network: Network, sandbox: str) -> None:
        """What ``allocate`` reads first, in one request: the endpoint's key, the first interface name it will
        try, the address hints, and what the driver reads of the shared root (etcd: one round trip, not four)."""
        mine = [records.endpoint_key(sandbox, network.name)]
        mine += [records.ifname_key(n) for n in itertools.islice(self.host_ifnames(ctx, network, sandbox), 1)]
        shared = self.shared_reads(ctx)
        (mine if self.scope(txn) is txn else shared).extend(ipam.hint_keys(network))
        txn.prefetch(mine, root=shared)

    def shared_reads(self, ctx: Context) -> list[str]:
        """Keys of the shared root that ``allocate`` reads besides the addresses' (prefetched with them)."""
        return []

    def owner(self, ctx: Context, sandbox: str) -> str:
        """Who holds an address, as its allocation records it."""
        return sandbox

    def host_ifnames(self, ctx: Context, network: Network, sandbox: str) -> Iterator[str]:
        """Candidate names of the endpoint's interface in the host namespace (none: it has none there).

        ``allocate`` takes the first one no other endpoint of this host holds, and the record
        carries it: two endpoints never get one name, however their names are cut to fit.
        """
        return iter(())

    def release(self, txn: NodeTxn, ctx: Context, ep: Endpoint) -> None:
        """Forget the endpoint and free its address (its network may be gone already)."""
        txn.delete(records.endpoint_key(ep.sandbox, ep.network))
        if ep.host_ifname:
            txn.delete(records.ifname_key(ep.host_ifname))
        for ip in (ep.ip, ep.ip6):
            if ip is not None:
                ipam.release(self.scope(txn), ep.network, ip)
        if ep.mac_given or ep.ip.version == 6:
            self.scope(txn).delete(records.mac_key(ep.network, ep.mac))

    # -- kernel steps ------------------------------------------------------------------------------------------------

    def facts(self, ctx: Context, host: Links, spec: NetworkSpec) -> HostFacts:
        """What ``record`` needs to know of the host (read-only)."""
        return HostFacts(routes=(*host.route_prefixes(), *host.route_prefixes(6)))

    def setup(self, ctx: Context, host: Links, network: Network, undo: Undo) -> None:
        """The network's own kernel objects on this host (at create, and again to repair drift)."""

    def teardown(self, ctx: Context, host: Links, network: Network) -> None:
        """Remove the network's own kernel objects from this host."""

    def check_removable(self, ctx: Context, network: Network, users: list[str]) -> None:
        """Refuse a removal this host cannot carry out alone (with --force, before anything changes)."""

    def attach(self, ctx: Context, host: Links, inside: Links, inside_path: Path, network: Network, ep: Endpoint,
               undo: Undo) -> None:
        raise NotImplementedError

    def clear_leftovers(self, ctx: Context, host: Links, ep: Endpoint) -> None:
        """Before a new sandbox's endpoint is made: remove what an earlier one of the same name left behind."""

    def detach(self, ctx: Context, host: Links, inside: Links | None, ep: Endpoint) -> None:
        """Remove the endpoint's kernel objects (``inside`` is None when the sandbox's namespace is gone)."""
        raise NotImplementedError

    def left(self, ctx: Context, host: Links, network: Network) -> None:
        """After endpoints of ``network`` went from this host (the driver decides whether that was the last)."""

    def link_down(self, ctx: Context, host: Links, inside: Links, ep: Endpoint) -> None:
        """Take the endpoint's link down, keeping its address, routes and published ports (a fault).

        The host end of its veth goes down: the sandbox's interface loses its carrier and
        keeps its routes (taking it down itself would make the kernel delete them).
        """
        host.ensure_down(ep.host_ifname)

    def link_up(self, ctx: Context, host: Links, inside: Links, ep: Endpoint, default_route: bool) -> None:
        """Bring the endpoint's link back (``default_route``: it is the one that carries the sandbox's).

        Returns once both ends pass packets again (the kernel applies a carrier up to a second late).
        """
        host.ensure_up(ep.host_ifname)
        host.wait_running(ep.host_ifname)
        inside.wait_running(ep.ifname)

    # -- what its networks allow -------------------------------------------------------------------------------------

    def host_links(self, network: Network) -> set[str]:
        """The network's own links in the host namespace (not its endpoints')."""
        return {network.bridge} if network.bridge else set()

    def publishes(self, network: Network) -> bool:
        """Whether ports published by a sandbox can lead to its endpoint on this network."""
        return False

    def why_no_ports(self, network: Network) -> str:
        return f"{self.name} network {network.name}"

    def routes_out(self, network: Network) -> bool:
        """Whether an endpoint on this network gives its sandbox the default route."""
        return True

    # -- drift (read-only) -------------------------------------------------------------------------------------------

    def problems(self, ctx: Context, host: Links, network: Network) -> list[str]:
        return []

    def endpoint_problems(self, ctx: Context, host: Links, inside: Links, network: Network, ep: Endpoint) -> list[str]:
        return []


def _check_families(network: Network, request: EndpointRequest) -> None:
    """A static address of a family the network does not serve is refused, naming both."""
    for option, ip in (("--ip", request.ip), ("--ip6", request.ip6)):
        if ip is not None and network.pool(ip.version) is None:
            raise InvalidSpec(f"{option} {ip}: network {network.name} has no IPv{ip.version} subnet "
                              f"({', '.join(str(s) for s in network.subnets)})")


def _claim_mac(scope: Txn, network: Network, mac: str, owner: str, why: str = "") -> None:
    if not scope.create(records.mac_key(network.name, mac), {"owner": owner}):
        holder = (scope.get(records.mac_key(network.name, mac)) or {}).get("owner", "?")
        raise Conflict(f"MAC {mac} on network {network.name} is already taken by {holder}{why}")


def mark_ready(driver: NetworkDriver, txn: NodeTxn, network: Network) -> Network:
    """Inside a transaction: the network's kernel objects exist (compared: it may have been removed meanwhile)."""
    scope = driver.scope(txn)
    if scope.get(records.network_key(network.name)) is None:
        raise Conflict(f"network {network.name} was removed while it was being created")
    ready = replace(network, state="ready")
    scope.put(records.network_key(network.name), ready.to_record())
    return ready


def check_new(txn: NodeTxn, spec: NetworkSpec, facts: HostFacts, routed_too: bool,
              subnet: IPNetwork | None = None) -> IPNetwork | None:
    """The IPv4 subnet a new network gets (given, else ``subnet``, else a free /24; None for an
    IPv6-only network), checked against every network recorded and, with ``routed_too``, against
    the host's routes. Bumps the networks' generation first, so two concurrent creates cannot both
    pass this check."""
    records.bump_network_generation(txn)
    if records.find_network(txn, spec.name) is not None:
        raise Conflict(f"network {spec.name} already exists")
    if not spec.ipv4:
        return None
    others = records.list_networks(txn)
    subnet = spec.subnet or subnet or ipam.free_subnet([n.subnet for n in others] + list(facts.routes))
    _check_clear(spec, subnet, others, facts if routed_too and spec.subnet else None)
    return subnet


def check_new6(txn: NodeTxn, scope: Txn, spec: NetworkSpec, facts: HostFacts, routed_too: bool) -> IPNetwork | None:
    """The IPv6 subnet of a new network with IPv6 (given, else a free /64 of ``scope``'s ULA prefix), checked
    as ``check_new`` checks the IPv4 one; None for a network without IPv6."""
    if not spec.ipv6:
        return None
    others = records.list_networks(txn)
    subnet = spec.subnet6 or ipam.free_subnet6(scope, [s for n in others for s in n.subnets] + list(facts.routes))
    _check_clear(spec, subnet, others, facts if routed_too and spec.subnet6 else None)
    return subnet


def _check_clear(spec: NetworkSpec, subnet: IPNetwork, others: list[Network], facts: HostFacts | None) -> None:
    spec.check_subnet(subnet)
    for other in others:
        for theirs in other.subnets:
            if theirs.version == subnet.version and subnet.overlaps(theirs):  # type: ignore[arg-type]
                raise Conflict(f"network {spec.name}: subnet {subnet} overlaps network {other.name} ({theirs})")
    if facts is not None:
        ours = {s for o in others for s in o.subnets}
        for route in facts.routes:
            if route not in ours and route.version == subnet.version and subnet.overlaps(route):  # type: ignore[arg-type]
                raise Conflict(f"network {spec.name}: subnet {subnet} overlaps {route}, routed by the host")


def free_name(candidates: Iterable[str], taken: Iterable[str]) -> str:
    """The first candidate no one holds."""
    held = set(taken)
    return next(name for name in candidates if name not in held)


def new_network(spec: NetworkSpec, subnet: IPNetwork | None, mtu: int, bridge: str = "", vni: int | None = None,
                parent: str | None = None, subnet6: IPNetwork | None = None) -> Network:
    """The record of a network being created (pending until its kernel objects exist).

    ``subnet`` is None for an IPv6-only network: its IPv6 pool is then the record's first.
    """
    gateway6 = (spec.gateway6 or ipam.default_gateway(subnet6)) if subnet6 is not None else None
    if subnet is None:
        if subnet6 is None or gateway6 is None:
            raise ValueError("a network needs a subnet of one family at least")
        subnet, gateway, subnet6, gateway6 = subnet6, gateway6, None, None
    else:
        gateway = spec.gateway or ipam.default_gateway(subnet)
    return Network(name=spec.name, driver=spec.driver, subnet=subnet, gateway=gateway, ip_range=spec.ip_range,
                   mtu=mtu, bridge=bridge, created=time.time(), internal=spec.internal, masquerade=spec.masquerade,
                   vni=vni, parent=parent, state="pending", dns=spec.dns, subnet6=subnet6, gateway6=gateway6)


def reserve_gateways(scope: Txn, network: Network, owner: str = "gateway") -> None:
    """The gateway address of each family is taken on the network's pools."""
    for _, gateway in network.pools:
        ipam.reserve(scope, network, gateway, owner)
