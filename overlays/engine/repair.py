"""Drift: read-only checks of what the store says against the kernel, and repair.

``problems`` only reads (a second ``overlays up`` on a healthy topology must not
change anything); ``repair`` re-runs the idempotent ensure_* steps, which
recreate exactly what is missing and leave what is there untouched.
"""

from __future__ import annotations

from overlays.drivers import bridge
from overlays.engine import endpoints, records, sandboxes
from overlays.engine.context import Context
from overlays.undo import Undo


def network_problems(ctx: Context, name: str) -> list[str]:
    net = ctx.transact(lambda txn: records.get_network(txn, name))
    with ctx.open_host() as host:
        link = host.link(net.bridge)
    return [] if link is not None and link.up else [f"bridge {net.bridge} of network {name} is missing or down"]


def sandbox_problems(ctx: Context, name: str) -> list[str]:
    box = sandboxes.get(ctx, name)
    if not ctx.kernel.netns_exists(box.netns):
        return [f"namespace {box.netns} of sandbox {name} is missing"]
    found = []
    with ctx.open_host() as host:
        for ep in box.endpoints:
            net = ctx.transact(lambda txn, ep=ep: records.get_network(txn, ep.network))  # type: ignore[misc]
            veth, br = host.link(ep.host_ifname), host.link(net.bridge)
            if veth is None or br is None or veth.master != br.index or not veth.up:
                found.append(f"veth {ep.host_ifname} of sandbox {name} on {ep.network} is missing or detached")
    return found


def repair_network(ctx: Context, name: str) -> None:
    net = ctx.transact(lambda txn: records.get_network(txn, name))
    with ctx.open_host() as host:
        bridge.setup_network(host, net, ctx.instance)


def repair_sandbox(ctx: Context, name: str) -> None:
    """Recreate a missing namespace and re-wire every endpoint (idempotently)."""
    box = sandboxes.get(ctx, name)
    path = ctx.kernel.netns_path(box.netns)
    if not ctx.kernel.netns_exists(box.netns):
        path = ctx.kernel.create_netns(box.netns)
    with ctx.open_host() as host, ctx.kernel.open_path(box.netns, path) as inside:
        inside.ensure_up("lo")
        endpoints.wire(ctx, host, inside, path, list(box.endpoints), Undo())
