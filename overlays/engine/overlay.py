"""Overlay networks across hosts: shared records, VXLAN devices, endpoint registrations.

What lives where (keys of the shared store; every host's own records are under
``nodes/<node>/``, see context.NodeTxn):

    networks/<name>                     an overlay network: subnet, VNI, MTU (one for all hosts)
    vni/<vni>                           which network holds a VNI (created only if absent)
    ipam/<network>/<ip>                 its addresses, allocated once for all hosts
    hosts/<node>                        a host's underlay address, under its agent's lease
    overlay/<network>/<node>/<sandbox>  an endpoint: IP, MAC and the VTEP that reaches it,
                                        under the same lease: when a host dies, its
                                        endpoints vanish with it, everywhere

A host has the network's bridge and VXLAN device only while it has endpoints on
it. The agent (overlays.agent) keeps every host's FDB and neighbour entries in
line with ``overlay/``; the engine also syncs a network right after creating its
device here, so a first sandbox does not wait for the agent.
"""

from __future__ import annotations

import time
from typing import Any

from overlays import ipam
from overlays.drivers import vxlan
from overlays.engine import firewall, records
from overlays.engine.context import Context, NodeTxn
from overlays.errors import Conflict, InvalidSpec, NotFound
from overlays.kernel.api import Links
from overlays.model.names import bridge_name, vxlan_name
from overlays.model.specs import IPNetwork, Network, NetworkSpec
from overlays.store.base import Txn

VNI_FIRST = 4096
GLOBAL_GENERATION = "meta/networks"


def host_key(node: str) -> str:
    return f"hosts/{node}"


def registration_key(network: str, node: str, sandbox: str) -> str:
    return f"overlay/{network}/{node}/{sandbox}"


def live_host(root: Txn, node: str) -> dict[str, Any]:
    """This host's registration (by its agent); overlays need a running agent."""
    host = root.get(host_key(node))
    if host is None:
        raise NotFound(
            f"no overlays agent runs for host {node}: start one (overlays agent) before using overlay networks"
        )
    return host


# -- networks -----------------------------------------------------------------------


def create(ctx: Context, spec: NetworkSpec) -> Network:
    """Record an overlay network for every host; devices appear where sandboxes join it."""
    with ctx.open_host() as host:
        routes = host.route_prefixes()
        underlay = host.underlay()
    if spec.mtu is None and underlay is None:
        raise InvalidSpec(f"network {spec.name}: host {ctx.node} has no underlay address to compute the MTU from;"
                          " give --mtu")
    mtu = spec.mtu or vxlan.overlay_mtu(underlay.mtu if underlay else 1500)
    return ctx.transact(lambda txn: _record(txn, spec, mtu, list(routes)))


def _record(txn: NodeTxn, spec: NetworkSpec, mtu: int, routes: list[IPNetwork]) -> Network:
    root = txn.root
    records.bump_network_generation(txn)
    root.put(GLOBAL_GENERATION, {"generation": (root.get(GLOBAL_GENERATION) or {"generation": 0})["generation"] + 1})
    if txn.get(records.network_key(spec.name)) or root.get(records.network_key(spec.name)):
        raise Conflict(f"network {spec.name} already exists")
    others = records.list_networks(txn)
    subnet = spec.subnet or ipam.free_subnet([n.subnet for n in others] + routes)
    spec.check_subnet(subnet)
    for other in others:
        if subnet.overlaps(other.subnet):  # type: ignore[arg-type]
            raise Conflict(f"network {spec.name}: subnet {subnet} overlaps network {other.name} ({other.subnet})")
    vni = _take_vni(root, spec)
    network = Network(
        name=spec.name, driver="overlay", subnet=subnet, gateway=spec.gateway or ipam.default_gateway(subnet),
        ip_range=spec.ip_range, mtu=mtu, bridge=bridge_name(spec.name, "overlay"), created=time.time(),
        internal=False, masquerade=False, vni=vni,
    )
    root.put(records.network_key(spec.name), network.to_record())
    ipam.reserve(root, network, network.gateway, "gateway (reserved)")
    return network


def _take_vni(root: Txn, spec: NetworkSpec) -> int:
    if spec.vni is not None:
        if not root.create(f"vni/{spec.vni}", {"network": spec.name}):
            holder = (root.get(f"vni/{spec.vni}") or {}).get("network")
            raise Conflict(f"network {spec.name}: VNI {spec.vni} is taken by network {holder}")
        return spec.vni
    taken = {int(k.split("/")[1]) for k in root.range("vni/")}
    vni = next(v for v in range(VNI_FIRST, VNI_FIRST + len(taken) + 1) if v not in taken)
    root.create(f"vni/{vni}", {"network": spec.name})
    return vni


def users(ctx: Context, name: str) -> list[str]:
    """Every endpoint on the network, on any host, as ``node/sandbox``."""
    found = ctx.transact(lambda txn: txn.root.range(f"overlay/{name}/"))
    return sorted(k.split("/", 2)[2] for k in found)


def remove(ctx: Context, network: Network) -> None:
    """Forget an overlay network; refused while any host still has a sandbox on it."""
    on_it = users(ctx, network.name)
    if on_it:
        raise Conflict(f"network {network.name} still has sandboxes ({', '.join(on_it)}); disconnect them first")

    def drop(txn: NodeTxn) -> None:
        root = txn.root
        root.delete(records.network_key(network.name))
        root.delete(f"vni/{network.vni}")
        ipam.release_all(root, network.name)

    ctx.transact(drop)
    with ctx.open_host() as host:
        vxlan.teardown_network(host, network, ctx.instance)


# -- endpoints ----------------------------------------------------------------------


def register(txn: NodeTxn, ctx: Context, network: Network, sandbox: str, ip: str, mac: str) -> None:
    """Announce an endpoint to every host, under this host's lease."""
    host = live_host(txn.root, ctx.node)
    value = {"ip": ip, "mac": mac, "vtep": host["underlay"], "node": ctx.node, "sandbox": sandbox}
    txn.root.put(registration_key(network.name, ctx.node, sandbox), value, lease=int(host["lease"]))


def unregister(txn: NodeTxn, ctx: Context, network: str, sandbox: str) -> None:
    txn.root.delete(registration_key(network, ctx.node, sandbox))


def remotes(root: Txn, network: str) -> list[vxlan.Remote]:
    return [vxlan.Remote(v["ip"], v["mac"], v["vtep"]) for v in root.range(f"overlay/{network}/").values()]


def ensure_here(ctx: Context, host: Links, network: Network) -> None:
    """This host has the network's bridge and VXLAN device, with every remote endpoint programmed."""
    me = ctx.transact(lambda txn: live_host(txn.root, ctx.node))
    device, bridge = host.link(vxlan_name(network.name, ctx.instance)), host.link(network.bridge)
    if device is not None and bridge is not None and device.master == bridge.index and device.up:
        sync_here(ctx, host, network, me["underlay"])  # the usual case: another sandbox made it already
        return
    underlay = host.underlay()
    if underlay is None or underlay.ip != me["underlay"]:
        raise Conflict(f"host {ctx.node}: underlay address changed ({me['underlay']} registered, "
                       f"{underlay.ip if underlay else 'none'} now); restart the agent")
    firewall.bridged_traffic_unfiltered(ctx)
    vxlan.setup_network(host, network, underlay, ctx.instance)
    sync_here(ctx, host, network, me["underlay"])


def sync_here(ctx: Context, host: Links, network: Network, vtep: str) -> tuple[int, int]:
    """Program the network's device from the store; returns (added, removed).

    The agent and engine commands both sync; under the host's lock, whoever syncs
    last reads the newest registrations, so an older view is never written over a newer one.
    The device must exist first: the agent skips networks without one, so reading before
    creating could miss an endpoint announced in between.
    """
    with ctx.lock("overlay"):
        found = ctx.transact(lambda txn: remotes(txn.root, network.name))
        return vxlan.sync(host, network, ctx.instance, vtep, found)


def converged(ctx: Context, host: Links) -> bool:
    """Whether every overlay device on this host matches the store (what the agent works towards)."""
    me = ctx.transact(lambda txn: txn.root.get(host_key(ctx.node)))
    if me is None:
        return False
    local = ctx.transact(lambda txn: {e.network for e in records.all_endpoints(txn) if e.overlay})
    for name in sorted(local):
        net = ctx.transact(lambda txn, n=name: records.get_network(txn, n))  # type: ignore[misc]
        found = ctx.transact(lambda txn, n=name: remotes(txn.root, n))  # type: ignore[misc]
        if not vxlan.in_sync(host, net, ctx.instance, me["underlay"], found):
            return False
    return True


def leave_if_unused(ctx: Context, host: Links, network: Network) -> None:
    """Remove the network's devices from this host once its last local endpoint has gone."""
    local = ctx.transact(lambda txn: [e for e in records.all_endpoints(txn) if e.network == network.name])
    if not local:
        vxlan.teardown_network(host, network, ctx.instance)
