"""The overlay driver: one network across hosts (VXLAN), recorded once in the store's shared root.

An overlay network has one subnet, one VNI and one address pool for all hosts; each
endpoint is announced (an ``EndpointRegistration``) under its host's lease, so the
endpoints of a host that dies vanish with it everywhere (keys: see records.py).

A host has the network's bridge and VXLAN device only while it has endpoints on it:
the first attach makes them (and programs every remote endpoint at once, so a first
sandbox does not wait for the agent); the last leave removes them. Both happen under
the host's per-network lock, with the decision read inside it, so a leave never
removes devices an attach is about to use. The agent (overlays.agent) keeps every
host's FDB and neighbour entries in line with the registrations.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from overlays.drivers import bridge, vxlan
from overlays.engine import firewall, records
from overlays.engine.context import Context, NodeTxn
from overlays.engine.netdrivers.base import (
    HostFacts,
    NetworkDriver,
    check_new,
    check_new6,
    free_name,
    new_network,
    reserve_gateways,
)
from overlays.errors import Conflict, InvalidSpec, NotFound
from overlays.kernel.api import Links
from overlays.model.names import bridge_mac, overlay_bridge_names, veth_names, vxlan_name
from overlays.model.specs import EndpointRequest, NetworkSpec
from overlays.model.state import Endpoint, EndpointRegistration, HostRegistration, Network
from overlays.store.base import Txn
from overlays.undo import Undo

VNI_FIRST = 4096


class OverlayDriver(NetworkDriver):
    name = "overlay"
    needs_agent = True

    def host_links(self, network: Network) -> set[str]:
        return {network.bridge, vxlan_name(network.bridge)}

    def scope(self, txn: NodeTxn) -> Txn:
        return txn.root

    # -- the network -------------------------------------------------------------------------------------------------

    def facts(self, ctx: Context, host: Links, spec: NetworkSpec) -> HostFacts:
        facts = HostFacts(routes=(*host.route_prefixes(), *host.route_prefixes(6)), underlay=host.underlay())
        if spec.mtu is None and facts.underlay is None:
            raise InvalidSpec(f"network {spec.name}: host {ctx.node} has no underlay address to compute the MTU "
                              "from; give --mtu")
        return facts

    def record(self, txn: NodeTxn, ctx: Context, spec: NetworkSpec, facts: HostFacts) -> Network:
        root = txn.root
        records.bump_network_generation(root)  # creates on other hosts check against it too
        subnet = check_new(txn, spec, facts, routed_too=False)
        subnet6 = check_new6(txn, root, spec, facts, routed_too=False)
        mtu = spec.mtu or vxlan.overlay_mtu(facts.underlay.mtu if facts.underlay else 1500)
        bridge = free_name(overlay_bridge_names(spec.name), (n.bridge for n in records.list_networks(txn)))
        network = new_network(spec, subnet, mtu, bridge=bridge, vni=_take_vni(root, spec), subnet6=subnet6)
        root.put(records.network_key(network.name), network.to_record())
        reserve_gateways(root, network, "gateway (reserved)")
        return network

    def forget(self, txn: NodeTxn, ctx: Context, network: Network) -> None:
        super().forget(txn, ctx, network)
        if network.vni is not None:
            txn.root.delete(records.vni_key(network.vni))

    def users(self, txn: NodeTxn, ctx: Context, network: Network) -> list[str]:
        return sorted(f"{r.node}/{r.sandbox}" for r in records.registrations(txn.root, network.name))

    def check_removable(self, ctx: Context, network: Network, users: list[str]) -> None:
        elsewhere = [u for u in users if not u.startswith(f"{ctx.node}/")]
        if elsewhere:  # --force disconnects this host's sandboxes only: refuse before touching any
            raise Conflict(f"network {network.name} still has sandboxes on other hosts ({', '.join(elsewhere)});"
                           " disconnect them there first")

    def teardown(self, ctx: Context, host: Links, network: Network) -> None:
        vxlan.teardown_network(host, network, ctx.instance)

    # -- endpoints ---------------------------------------------------------------------------------------------------

    def owner(self, ctx: Context, sandbox: str) -> str:
        return f"{ctx.node}/{sandbox}"

    def host_ifnames(self, ctx: Context, network: Network, sandbox: str) -> Iterator[str]:
        return veth_names(sandbox, network.name, ctx.instance)

    def shared_reads(self, ctx: Context) -> list[str]:
        return [records.host_key(ctx.node)]  # live_host, below

    def allocate(self, txn: NodeTxn, ctx: Context, network: Network, sandbox: str, request: EndpointRequest,
                 ifname: str, hostname: str | None = None) -> Endpoint:
        ep = super().allocate(txn, ctx, network, sandbox, request, ifname, hostname)
        host = live_host(txn.root, ctx.node)
        registration = EndpointRegistration(network.name, ctx.node, sandbox, str(ep.ip), ep.mac, host.underlay,
                                            ep.aliases, hostname, ip6=str(ep.ip6) if ep.ip6 else None)
        txn.root.put(records.registration_key(network.name, ctx.node, sandbox), registration.to_record(),
                     lease=host.lease)
        return ep

    def release(self, txn: NodeTxn, ctx: Context, ep: Endpoint) -> None:
        super().release(txn, ctx, ep)
        txn.root.delete(records.registration_key(ep.network, ctx.node, ep.sandbox))

    def attach(self, ctx: Context, host: Links, inside: Links, inside_path: Path, network: Network, ep: Endpoint,
               undo: Undo) -> None:
        with ctx.lock(_lock_name(network)):
            if not vxlan.device_ready(host, network, ctx.instance):
                self._make_here(ctx, host, network)  # undone by release(): the last leave removes it
            bridge.attach_veth(host, inside, inside_path, network, ep, ctx.instance, undo, default_route=False)

    def _make_here(self, ctx: Context, host: Links, network: Network) -> None:
        """This host's bridge and VXLAN device for the network, with every remote endpoint programmed."""
        me = ctx.transact(lambda txn: live_host(txn.root, ctx.node))
        underlay = host.underlay()
        if underlay is None or underlay.ip != me.underlay:
            raise Conflict(f"host {ctx.node}: underlay address changed ({me.underlay} registered, "
                           f"{underlay.ip if underlay else 'none'} now); restart the agent")
        firewall.unfilter_bridged(ctx)
        vxlan.setup_network(host, network, underlay, ctx.instance, bridge_mac(network.name, ctx.node))
        sync_here(ctx, host, network, me.underlay)

    def clear_leftovers(self, ctx: Context, host: Links, ep: Endpoint) -> None:
        bridge.delete_leftover_veth(host, ep, ctx.instance)

    def detach(self, ctx: Context, host: Links, inside: Links | None, ep: Endpoint) -> None:
        bridge.detach_veth(host, ep)

    def left(self, ctx: Context, host: Links, network: Network) -> None:
        """The devices go with this host's last endpoint on the network (decided and done under its lock)."""
        with ctx.lock(_lock_name(network)):
            # This host's endpoint records, not its registrations: those vanish with an expired lease.
            if not ctx.transact(lambda txn: [e for e in records.all_endpoints(txn) if e.network == network.name]):
                vxlan.teardown_network(host, network, ctx.instance)

    def routes_out(self, network: Network) -> bool:
        return False  # east-west only: its bridges hold no address on the hosts

    def why_no_ports(self, network: Network) -> str:
        return f"overlay network {network.name} (east-west only: there is no way in from the host)"

    def endpoint_problems(self, ctx: Context, host: Links, inside: Links, network: Network, ep: Endpoint) -> list[str]:
        return bridge.veth_problems(host, network, ep) or bridge.inside_problems(inside, ep)


def _lock_name(network: Network) -> str:
    return f"overlay-{network.name}"


def _take_vni(root: Txn, spec: NetworkSpec) -> int:
    if spec.vni is not None:
        if not root.create(records.vni_key(spec.vni), {"network": spec.name}):
            holder = (root.get(records.vni_key(spec.vni)) or {}).get("network")
            raise Conflict(f"network {spec.name}: VNI {spec.vni} is taken by network {holder}")
        return spec.vni
    taken = {int(k.split("/")[1]) for k in root.range(records.VNI_PREFIX)}
    vni = next(v for v in range(VNI_FIRST, VNI_FIRST + len(taken) + 1) if v not in taken)
    root.create(records.vni_key(vni), {"network": spec.name})
    return vni


def live_host(root: Txn, node: str) -> HostRegistration:
    """This host's registration (by its agent); overlays need a running agent."""
    host = records.find_host(root, node)
    if host is None:
        raise NotFound(
            f"no overlays agent runs for host {node}: start one (overlays agent) before using overlay networks"
        )
    return host


# -- the control plane's side: what the agent and `up` ask of this host ------------------------------------------------


def remotes(root: Txn, network: str) -> list[vxlan.Remote]:
    return [vxlan.Remote(r.ip, r.mac, r.vtep, r.ip6) for r in records.registrations(root, network)]


def sync_here(ctx: Context, host: Links, network: Network, vtep: str, announce: bool = False) -> tuple[int, int]:
    """Program the network's device from the store; returns (added, removed).

    The agent announces what it adds (``announce``, see drivers/vxlan.py): its syncs follow
    endpoints that may be asked for already. A device made for a first sandbox has no one
    asking yet.

    The agent and engine commands both sync; under the host's lock, whoever syncs
    last reads the newest registrations, so an older view is never written over a newer one.
    The device must exist first: the agent skips networks without one, so reading before
    creating could miss an endpoint announced in between.
    """
    with ctx.lock("overlay"):
        found = ctx.transact(lambda txn: remotes(txn.root, network.name))
        return vxlan.sync(host, network, ctx.instance, vtep, found, announce)


def add_here(ctx: Context, host: Links, network: Network, vtep: str, found: EndpointRegistration) -> bool:
    """The agent's fast path: one new registration's entries on this host's device, announced, no store read.

    Under the same lock as ``sync_here``; the full sync that follows in the agent settles the rest.
    """
    with ctx.lock("overlay"):
        return vxlan.add_remote(host, network, vtep, vxlan.Remote(found.ip, found.mac, found.vtep, found.ip6),
                                announce=True)


def local_networks(txn: NodeTxn) -> dict[str, Network]:
    """The overlay networks that have an endpoint on this host."""
    names = {ep.network for ep in records.all_endpoints(txn) if ep.driver == OverlayDriver.name}
    found = records.networks_named(txn, sorted(names), missing_ok=True)
    return {name: net for name, net in found.items() if net.driver == OverlayDriver.name}


def reregister(txn: NodeTxn, node: str, vtep: str, lease: int) -> int:
    """This host's endpoint registrations, written again under a new lease and VTEP; returns how many."""
    local = local_networks(txn)
    if not local:
        return 0
    hostnames = {v["name"]: v.get("hostname") for v in txn.range(records.SANDBOXES_PREFIX).values()}
    moved = 0
    for ep in records.all_endpoints(txn):
        if ep.network in local:
            registration = EndpointRegistration(ep.network, node, ep.sandbox, str(ep.ip), ep.mac, vtep, ep.aliases,
                                                hostnames.get(ep.sandbox))
            txn.root.put(records.registration_key(ep.network, node, ep.sandbox), registration.to_record(),
                         lease=lease)
            moved += 1
    return moved


def converged(ctx: Context, host: Links) -> bool:
    """Whether every overlay device on this host matches the store (what the agent works towards)."""

    def read(txn: NodeTxn) -> tuple[HostRegistration | None, list[tuple[Network, list[vxlan.Remote]]]]:
        me = records.find_host(txn.root, ctx.node)
        return me, [(net, remotes(txn.root, net.name)) for net in local_networks(txn).values()]

    me, found = ctx.transact(read)
    return me is not None and all(vxlan.in_sync(host, net, ctx.instance, me.underlay, r) for net, r in found)
