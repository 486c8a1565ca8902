"""Network operations: create, list, inspect, remove, prune."""

from __future__ import annotations

import time
from collections.abc import Callable

from overlays import ipam
from overlays.drivers import bridge
from overlays.engine import firewall, overlay, records, views
from overlays.engine.context import Context
from overlays.errors import Conflict, OverlaysError
from overlays.model.names import bridge_name
from overlays.model.specs import DEFAULT_MTU, IPNetwork, Network, NetworkSpec
from overlays.store.base import Txn
from overlays.undo import Undo


def create(ctx: Context, spec: NetworkSpec) -> Network:
    """Record the network (subnet checked against all others), then build its bridge."""
    if spec.driver == "overlay":
        return overlay.create(ctx, spec)
    with ctx.open_host() as host:
        host_routes = host.route_prefixes()
        network = ctx.transact(lambda txn: _record(txn, ctx, spec, list(host_routes)))
        undo = Undo()
        undo.push(f"forget network {spec.name}", _forget, ctx, network.name)
        try:
            undo.push(f"delete bridge {network.bridge}", bridge.teardown_network, host, network)
            bridge.setup_network(host, network, ctx.instance)
            undo.push(f"remove network {network.name} from the firewall", firewall.network_down, ctx, network)
            firewall.network_up(ctx, network)
        except BaseException:
            undo.rollback()
            raise
    return network


def _record(txn: Txn, ctx: Context, spec: NetworkSpec, host_routes: list[IPNetwork]) -> Network:
    records.bump_network_generation(txn)
    if txn.get(records.network_key(spec.name)) is not None:
        raise Conflict(f"network {spec.name} already exists")
    others = records.list_networks(txn)
    subnet = spec.subnet or ipam.free_subnet([n.subnet for n in others] + host_routes)
    spec.check_subnet(subnet)
    _check_overlaps(spec.name, subnet, others, host_routes if spec.subnet else [])
    bridge_dev = bridge_name(spec.name, ctx.instance)
    clash = next((n for n in others if n.bridge == bridge_dev), None)
    if clash:
        raise Conflict(f"network {spec.name}: its bridge name {bridge_dev} is taken by network {clash.name}")
    network = Network(
        name=spec.name,
        driver=spec.driver,
        subnet=subnet,
        gateway=spec.gateway or ipam.default_gateway(subnet),
        ip_range=spec.ip_range,
        mtu=spec.mtu or DEFAULT_MTU,
        bridge=bridge_dev,
        created=time.time(),
        internal=spec.internal,
        masquerade=spec.masquerade,
    )
    txn.put(records.network_key(network.name), network.to_record())
    ipam.reserve(txn, network, network.gateway, "gateway")
    return network


def _check_overlaps(name: str, subnet: IPNetwork, others: list[Network], host_routes: list[IPNetwork]) -> None:
    for other in others:
        if subnet.overlaps(other.subnet):  # type: ignore[arg-type]
            raise Conflict(f"network {name}: subnet {subnet} overlaps network {other.name} ({other.subnet})")
    ours = {o.subnet for o in others}
    for route in host_routes:
        if route not in ours and subnet.overlaps(route):  # type: ignore[arg-type]
            raise Conflict(f"network {name}: subnet {subnet} overlaps {route}, routed by the host")


def _forget(ctx: Context, name: str) -> None:
    def drop(txn: Txn) -> None:
        records.bump_network_generation(txn)
        txn.delete(records.network_key(name))
        ipam.release_all(txn, name)

    ctx.transact(drop)


list_all = views.networks


def inspect(ctx: Context, name: str) -> tuple[Network, list[str]]:
    """The network and the names of the sandboxes attached to it."""

    net, local = ctx.transact(lambda txn: (records.get_network(txn, name), _local_users(txn, name)))
    return net, (overlay.users(ctx, name) if net.overlay else local)


def _local_users(txn: Txn, name: str) -> list[str]:
    return sorted(e.sandbox for e in records.all_endpoints(txn) if e.network == name)


def remove(ctx: Context, name: str, force: bool = False) -> None:
    """Remove a network; with sandboxes attached only with ``force`` (they are disconnected)."""
    from overlays.engine import endpoints  # endpoints imports us for get_network

    network, everywhere = inspect(ctx, name)
    users = ctx.transact(lambda txn: _local_users(txn, name))
    if everywhere and not force:
        raise Conflict(f"network {name} has {len(everywhere)} sandbox(es) attached ({', '.join(everywhere)});"
                       " disconnect them or use --force")
    if network.overlay:  # --force disconnects this host's sandboxes only: refuse before touching any
        elsewhere = [u for u in everywhere if not u.startswith(f"{ctx.node}/")]
        if elsewhere:
            raise Conflict(f"network {name} still has sandboxes on other hosts ({', '.join(elsewhere)});"
                           " disconnect them there first")
    failures: list[str] = []
    for user in users:
        failures += _try(lambda user=user: endpoints.disconnect(ctx, name, user))  # type: ignore[misc]
    if network.overlay:  # other hosts' sandboxes are theirs to disconnect
        overlay.remove(ctx, network)  # refused while other hosts still have sandboxes on it
        return
    failures += _try(lambda: firewall.network_down(ctx, network))
    with ctx.open_host() as host:
        failures += _try(lambda: bridge.teardown_network(host, network))
    _forget(ctx, name)
    if failures:
        raise OverlaysError(f"network {name} removed, but cleanup reported: " + "; ".join(failures))


def prune(ctx: Context) -> list[str]:
    """Remove every network that has no sandbox attached; return their names."""
    removed = []
    for network in list_all(ctx):
        if not inspect(ctx, network.name)[1]:
            remove(ctx, network.name)
            removed.append(network.name)
    return removed


def _try(fn: Callable[[], object]) -> list[str]:
    try:
        fn()
    except OverlaysError as e:
        return [str(e)]
    return []

