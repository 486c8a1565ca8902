"""Endpoints: a sandbox's attachment to a network (connect, disconnect).

Protocol of one attach: (1) a store transaction allocates the address and records
the endpoint as *pending*; (2) the driver makes the kernel match, pushing an undo
step after each change; (3) the endpoint is marked *ready*. Any failure runs the
undo steps and releases the record, so nothing is left half-built.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from overlays import ipam
from overlays.drivers import bridge
from overlays.engine import firewall, overlay, ports, records
from overlays.engine.context import Context, NodeTxn
from overlays.errors import Conflict, NotFound
from overlays.kernel.api import Links
from overlays.model.names import sandbox_ifname, veth_name
from overlays.model.specs import Endpoint, EndpointRequest, IPAddress, Network, Sandbox
from overlays.store.base import Txn
from overlays.undo import Undo


def mac_for(ip: IPAddress) -> str:
    """A locally administered MAC derived from the address: stable across re-use, so ARP caches stay right."""
    return "02:6f:" + ":".join(f"{b:02x}" for b in ip.packed[-4:])


def allocate(txn: Txn, ctx: Context, sandbox: str, request: EndpointRequest, ifname: str) -> Endpoint:
    """Inside a store transaction: take an address and record the endpoint as pending."""
    network = records.get_network(txn, request.network)
    if txn.get(records.endpoint_key(sandbox, network.name)) is not None:
        raise Conflict(f"sandbox {sandbox} is already connected to network {network.name}")
    if network.overlay:
        assert isinstance(txn, NodeTxn)
        ip = ipam.allocate(txn.root, network, f"{ctx.node}/{sandbox}", request.ip)
        overlay.register(txn, ctx, network, sandbox, str(ip), mac_for(ip))
    else:
        ip = ipam.allocate(txn, network, sandbox, request.ip)
    ep = Endpoint(
        sandbox=sandbox,
        network=network.name,
        ifname=ifname,
        host_ifname=veth_name(sandbox, network.name, ctx.instance),
        ip=ip,
        prefixlen=network.subnet.prefixlen,
        gateway=network.gateway,
        mac=mac_for(ip),
        mtu=network.mtu,
        overlay=network.overlay,
    )
    txn.put(records.endpoint_key(sandbox, network.name), ep.to_record())
    return ep


def release(ctx: Context, eps: list[Endpoint]) -> None:
    ctx.transact(lambda txn: drop_records(txn, ctx, eps))
    leave_overlays(ctx, eps)


def drop_records(txn: NodeTxn, ctx: Context, eps: list[Endpoint]) -> None:
    """Inside a store transaction: forget the endpoints and free their addresses (then: leave_overlays)."""
    for ep in eps:
        txn.delete(records.endpoint_key(ep.sandbox, ep.network))
        if ep.overlay:
            ipam.release(txn.root, ep.network, ep.ip)
            overlay.unregister(txn, ctx, ep.network, ep.sandbox)
        else:
            ipam.release(txn, ep.network, ep.ip)


def mark_ready(txn: Txn, eps: list[Endpoint]) -> None:
    for ep in eps:
        txn.put(records.endpoint_key(ep.sandbox, ep.network), replace(ep, state="ready").to_record())


def wire(ctx: Context, host: Links, sandbox: Links, sandbox_path: Path, eps: list[Endpoint], undo: Undo) -> None:
    """Make the kernel match the pending endpoints ``eps`` (their bridges first)."""
    networks = ctx.transact(lambda txn: {ep.network: records.get_network(txn, ep.network) for ep in eps})
    for ep in eps:
        network: Network = networks[ep.network]
        if network.overlay:
            overlay.ensure_here(ctx, host, network)  # undone by release(), which leaves unused overlays
        elif not _bridge_ready(host, network):
            bridge.setup_network(host, network, ctx.instance)  # completes a network left half-made
        bridge.attach(host, sandbox, sandbox_path, network, ep, ctx.instance, undo)


def _bridge_ready(host: Links, network: Network) -> bool:
    """The usual case, checked with one lookup: the bridge is there and up (its address came with it)."""
    link = host.link(network.bridge)
    return link is not None and link.up


def connect(ctx: Context, network: str, sandbox: str, ip: IPAddress | None = None) -> Endpoint:
    """Attach a sandbox to one more network; it appears as the next free ethN."""
    request = EndpointRequest(network, ip)

    def record(txn: Txn) -> Endpoint:
        box = records.get_sandbox(txn, sandbox)
        used = {e.ifname for e in box.endpoints}
        ifname = next(sandbox_ifname(i) for i in range(len(used) + 1) if sandbox_ifname(i) not in used)
        return allocate(txn, ctx, sandbox, request, ifname)

    with ctx.open_host() as host:
        ep = ctx.transact(record)
        undo = Undo()
        undo.push(f"release endpoint {sandbox}/{network}", release, ctx, [ep])
        try:
            box = ctx.transact(lambda txn: records.get_sandbox(txn, sandbox))
            path = ctx.kernel.netns_path(box.netns)
            with ctx.kernel.open_path(box.netns, path) as inside:
                wire(ctx, host, inside, path, [ep], undo)
            # Published ports follow the sandbox's first non-internal endpoint, which may now be this one.
            others = tuple(e for e in box.endpoints if e.network != network)
            before = ports.published(ctx, replace(box, endpoints=others))
            after = ports.published(ctx, box)
            undo.push(f"move the ports of {sandbox} back", firewall.retarget, ctx, after, before)
            firewall.retarget(ctx, before, after)
            ctx.transact(lambda txn: mark_ready(txn, [ep]))
        except BaseException:
            undo.rollback()
            raise
    return replace(ep, state="ready")


def disconnect(ctx: Context, network: str, sandbox: str) -> None:
    """Detach a sandbox from a network; its default route moves to a remaining network."""

    def read(txn: Txn) -> tuple[Endpoint, Sandbox]:
        box = records.get_sandbox(txn, sandbox)
        ep = next((e for e in box.endpoints if e.network == network), None)
        if ep is None:
            records.get_network(txn, network)  # a clearer error if the network is unknown
            raise NotFound(f"sandbox {sandbox} is not connected to network {network}")
        return ep, box

    ep, box = ctx.transact(read)
    remaining = [e for e in box.endpoints if e.network != network]
    netns_name = box.netns
    # Ports leading to this endpoint move to the next non-internal one, or wait for a connect.
    firewall.retarget(ctx, ports.published(ctx, box), ports.published(ctx, replace(box, endpoints=tuple(remaining))))
    with ctx.open_host() as host:
        bridge.detach(host, ep)
    routable = [e for e in remaining if not e.overlay]
    if routable and ctx.kernel.netns_exists(netns_name):
        with ctx.kernel.open_path(netns_name, ctx.kernel.netns_path(netns_name)) as inside:
            inside.ensure_default_route(str(routable[0].gateway))
    release(ctx, [ep])


def leave_overlays(ctx: Context, eps: list[Endpoint]) -> None:
    """After endpoints went away: drop the devices of overlay networks this host no longer uses."""
    names = sorted({ep.network for ep in eps if ep.overlay})
    if not names or not ctx.host_exists():
        return
    with ctx.open_host() as host:
        for name in names:
            found = ctx.transact(lambda txn, name=name: _maybe_network(txn, name))  # type: ignore[misc]
            if found is not None:
                overlay.leave_if_unused(ctx, host, found)


def _maybe_network(txn: Txn, name: str) -> Network | None:
    try:
        return records.get_network(txn, name)
    except NotFound:
        return None
