"""Drift: read-only checks of what the store says against the kernel, and repair.

``problems`` only reads (a second ``overlays up`` on a healthy topology must not
change anything); ``repair`` re-runs the drivers' idempotent steps, which recreate
exactly what is missing and leave what is there untouched.
"""

from __future__ import annotations

from dataclasses import replace

from overlays.engine import endpoints, hostdns, records
from overlays.engine.context import Context, NodeTxn
from overlays.engine.netdrivers import driver_for, mark_ready
from overlays.model.state import Network, Sandbox
from overlays.undo import Undo


def _network(ctx: Context, name: str) -> Network:
    return ctx.transact(lambda txn: records.get_network(txn, name))


def _sandbox(ctx: Context, name: str) -> tuple[Sandbox, dict[str, Network], set[str]]:
    """The sandbox, its networks, and those of its endpoints whose link a fault took down (not drift)."""

    def read(txn: NodeTxn) -> tuple[Sandbox, dict[str, Network], set[str]]:
        box = records.get_sandbox(txn, name)
        down = {k.rsplit("/", 1)[1] for k in txn.range(records.LINKS_DOWN_PREFIX + name + "/")}
        return box, records.networks_named(txn, [e.network for e in box.endpoints], missing_ok=True), down

    return ctx.transact(read)


def network_problems(ctx: Context, name: str) -> list[str]:
    net = _network(ctx, name)
    unfinished = [f"network {name} was left {net.state} by an interrupted operation"] if net.state != "ready" else []
    with ctx.open_host() as host:
        return unfinished + driver_for(net).problems(ctx, host, net)


def sandbox_problems(ctx: Context, name: str) -> list[str]:
    box, nets, down = _sandbox(ctx, name)
    found = _unfinished(box)
    if not ctx.kernel.netns_exists(box.netns):
        return [*found, f"namespace {box.netns} of sandbox {name} is missing"]
    with ctx.open_host() as host, ctx.kernel.open_path(box.netns, ctx.kernel.netns_path(box.netns)) as inside:
        for ep in box.endpoints:
            if ep.network in down:
                continue  # taken down on purpose (overlays link down): its fault's, not drift
            net = nets.get(ep.network)
            if net is None:
                found.append(f"network {ep.network} of sandbox {name} is missing")
                continue
            found += driver_for(net).endpoint_problems(ctx, host, inside, net, ep)
        routed = {s.version for net in nets.values() if driver_for(net).routes_out(net) for s in net.subnets}
        for version in sorted(routed):
            if not inside.has_default_route(version):
                found.append(f"sandbox {name} has no {'IPv6 ' if version == 6 else ''}default route")
    return found


def _unfinished(box: Sandbox) -> list[str]:
    """What an operation killed halfway left: records still pending (a create, a connect) or removing."""
    found = [f"sandbox {box.name} was left {box.state} by an interrupted operation"] if box.state != "ready" else []
    return found + [f"endpoint of sandbox {box.name} on {e.network} was left {e.state} by an interrupted operation"
                    for e in box.endpoints if e.state != "ready"]


def repair_network(ctx: Context, name: str) -> None:
    """Make the network's kernel objects again (idempotently), and mark it ready."""
    net = _network(ctx, name)
    with ctx.open_host() as host:
        driver_for(net).setup(ctx, host, net, Undo())
    if net.state != "ready":
        ctx.transact(lambda txn: mark_ready(driver_for(net), txn, net))


def repair_sandbox(ctx: Context, name: str) -> None:
    """Finish what an interrupted operation began (a disconnect), recreate a missing namespace, re-wire every
    endpoint (idempotently), mark the whole ready, serve its names again and put its faults back."""
    from overlays.engine import faults

    box, nets, _ = _sandbox(ctx, name)
    for ep in box.endpoints:
        if ep.state == "removing":
            endpoints.disconnect(ctx, ep.network, name)
    box, nets, down = _sandbox(ctx, name)
    _rewire(ctx, box, nets, down)
    if box.state != "ready" or any(e.state != "ready" for e in box.endpoints):
        ctx.transact(lambda txn: _ready(txn, box))
    if hostdns.prepare(ctx) and hostdns.announce(ctx, box, nets):  # a new namespace needs new sockets
        hostdns.settle(ctx)
    faults.remake(ctx, {name})


def _ready(txn: NodeTxn, box: Sandbox) -> None:
    if txn.get(records.sandbox_key(box.name)) is None:
        return  # removed meanwhile: nothing to mark
    txn.put(records.sandbox_key(box.name), replace(box, state="ready").to_record())
    endpoints.mark(txn, [e for e in box.endpoints if e.state != "ready"], "ready")


def _rewire(ctx: Context, box: Sandbox, nets: dict[str, Network], down: set[str]) -> None:
    path = ctx.kernel.netns_path(box.netns)
    if not ctx.kernel.netns_exists(box.netns):
        path = ctx.kernel.create_netns(box.netns)
    with ctx.open_host() as host, ctx.kernel.open_path(box.netns, path) as inside:
        inside.ensure_up("lo")
        eps = [e for e in box.endpoints if e.network in nets]
        for ep in eps:  # a broken endpoint is made again: what is left of it (an untagged veth, say) goes first
            net = nets[ep.network]
            if ep.network not in down and driver_for(net).endpoint_problems(ctx, host, inside, net, ep):
                driver_for(net).clear_leftovers(ctx, host, ep)
        endpoints.wire(ctx, host, inside, path, eps, nets, Undo())
