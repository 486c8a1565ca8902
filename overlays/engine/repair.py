"""Drift: read-only checks of what the store says against the kernel, and repair.

``problems`` only reads (a second ``overlays up`` on a healthy topology must not
change anything); ``repair`` re-runs the drivers' idempotent steps, which recreate
exactly what is missing and leave what is there untouched.
"""

from __future__ import annotations

from overlays.engine import endpoints, hostdns, records
from overlays.engine.context import Context, NodeTxn
from overlays.engine.netdrivers import driver_for
from overlays.model.state import Network, Sandbox
from overlays.undo import Undo


def _network(ctx: Context, name: str) -> Network:
    return ctx.transact(lambda txn: records.get_network(txn, name))


def _sandbox(ctx: Context, name: str) -> tuple[Sandbox, dict[str, Network]]:
    def read(txn: NodeTxn) -> tuple[Sandbox, dict[str, Network]]:
        box = records.get_sandbox(txn, name)
        return box, records.networks_named(txn, [e.network for e in box.endpoints], missing_ok=True)

    return ctx.transact(read)


def network_problems(ctx: Context, name: str) -> list[str]:
    net = _network(ctx, name)
    with ctx.open_host() as host:
        return driver_for(net).problems(ctx, host, net)


def sandbox_problems(ctx: Context, name: str) -> list[str]:
    box, nets = _sandbox(ctx, name)
    if not ctx.kernel.netns_exists(box.netns):
        return [f"namespace {box.netns} of sandbox {name} is missing"]
    found = []
    with ctx.open_host() as host, ctx.kernel.open_path(box.netns, ctx.kernel.netns_path(box.netns)) as inside:
        for ep in box.endpoints:
            net = nets.get(ep.network)
            if net is None:
                found.append(f"network {ep.network} of sandbox {name} is missing")
                continue
            found += driver_for(net).endpoint_problems(ctx, host, inside, net, ep)
        routed = any(driver_for(net).routes_out(net) for net in nets.values())
        if routed and not inside.has_default_route():
            found.append(f"sandbox {name} has no default route")
    return found


def repair_network(ctx: Context, name: str) -> None:
    net = _network(ctx, name)
    with ctx.open_host() as host:
        driver_for(net).setup(ctx, host, net, Undo())


def repair_sandbox(ctx: Context, name: str) -> None:
    """Recreate a missing namespace and re-wire every endpoint (idempotently); its names served again."""
    box, nets = _sandbox(ctx, name)
    path = ctx.kernel.netns_path(box.netns)
    if not ctx.kernel.netns_exists(box.netns):
        path = ctx.kernel.create_netns(box.netns)
    with ctx.open_host() as host, ctx.kernel.open_path(box.netns, path) as inside:
        inside.ensure_up("lo")
        endpoints.wire(ctx, host, inside, path, [e for e in box.endpoints if e.network in nets], nets, Undo())
    if hostdns.prepare(ctx) and hostdns.announce(ctx, box, nets):  # a new namespace needs new sockets
        hostdns.settle(ctx)
