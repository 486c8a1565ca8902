"""Endpoints: a sandbox's attachment to a network (connect, disconnect).

Protocol of one attach, in two store transactions: (1) one reads everything the
operation needs (the sandbox, its networks), allocates the address and records the
endpoint as *pending*, naming each kernel object it is about to make; (2) after the
driver has made the kernel match (pushing an undo step after each change), the
endpoint is marked *ready*. Any failure runs the undo steps and releases the record,
so nothing is left half-built. A detach marks the endpoint *removing* first, then
releases it once its kernel objects are gone. Both tell the host's DNS server the
sandbox's names anew (hostdns) before their last commit, and wait for it after.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from overlays.engine import firewall, hostdns, ports, records
from overlays.engine.context import Context, NodeTxn
from overlays.engine.netdrivers import driver_for, driver_named
from overlays.errors import Conflict, NotFound
from overlays.kernel.api import Links
from overlays.model.names import sandbox_ifname
from overlays.model.specs import EndpointRequest
from overlays.model.state import Endpoint, IPAddress, Network, Sandbox
from overlays.undo import Undo

Networks = Mapping[str, Network]


def allocate(txn: NodeTxn, ctx: Context, network: Network, sandbox: str, request: EndpointRequest,
             ifname: str, hostname: str | None = None) -> Endpoint:
    """Inside a store transaction: take an address and record the endpoint as pending."""
    return driver_for(network).allocate(txn, ctx, network, sandbox, request, ifname, hostname)


def drop_records(txn: NodeTxn, ctx: Context, eps: Iterable[Endpoint]) -> None:
    """Inside a store transaction: forget the endpoints and free their addresses (then: ``left``)."""
    for ep in eps:
        driver_named(ep.driver).release(txn, ctx, ep)


def mark(txn: NodeTxn, eps: Iterable[Endpoint], state: str) -> None:
    """Inside a store transaction: the endpoints' new state (compared: a removed one stays removed)."""
    eps = list(eps)
    txn.prefetch([records.endpoint_key(ep.sandbox, ep.network) for ep in eps])
    for ep in eps:
        key = records.endpoint_key(ep.sandbox, ep.network)
        if txn.get(key) is None:
            raise NotFound(f"sandbox {ep.sandbox} was disconnected from {ep.network} meanwhile")
        txn.put(key, replace(ep, state=state).to_record())


def wire(ctx: Context, host: Links, inside: Links, inside_path: Path, eps: Sequence[Endpoint], networks: Networks,
         undo: Undo) -> None:
    """Make the kernel match the pending endpoints ``eps`` (each network made ready here first, if need be)."""
    for ep in eps:
        network = networks[ep.network]
        driver_for(network).attach(ctx, host, inside, inside_path, network, ep, undo)


def left(ctx: Context, eps: Iterable[Endpoint], networks: Networks) -> None:
    """After endpoints went away: each of their networks' drivers does what follows (e.g. drops unused devices)."""
    gone = sorted({ep.network for ep in eps if ep.network in networks})
    if not gone or not ctx.host_exists():
        return
    with ctx.open_host() as host:
        for name in gone:
            driver_for(networks[name]).left(ctx, host, networks[name])


def ifnames(sandbox: str, requests: Sequence[EndpointRequest], used: Iterable[str] = ()) -> list[str]:
    """The interface each request gets in the sandbox: the name asked for, else the next free ethN."""
    taken = set(used)
    for r in requests:
        if r.ifname in taken:
            raise Conflict(f"sandbox {sandbox} already has an interface {r.ifname}")
    taken |= {r.ifname for r in requests if r.ifname}
    free = (name for name in map(sandbox_ifname, itertools.count()) if name not in taken)
    return [r.ifname or next(free) for r in requests]


def connect(ctx: Context, sandbox: str, request: EndpointRequest) -> Endpoint:
    """Attach a sandbox to one more network; it appears as the interface asked for, or the next free ethN."""
    network = request.network

    def record(txn: NodeTxn) -> tuple[Sandbox, Endpoint, dict[str, Network]]:
        box = records.get_sandbox(txn, sandbox)
        nets = records.networks_named(txn, [e.network for e in box.endpoints] + [network], missing_ok=True)
        if network not in nets:
            records.get_network(txn, network)  # raises NotFound
        if box.endpoint(network) is not None:
            raise Conflict(f"sandbox {sandbox} is already connected to network {network}")
        (ifname,) = ifnames(sandbox, [request], (e.ifname for e in box.endpoints))
        ep = allocate(txn, ctx, nets[network], sandbox, request, ifname, box.hostname)
        txn.put(records.sandbox_key(sandbox), box.to_record())  # a concurrent rm of the sandbox now conflicts
        return box, ep, nets

    with ctx.open_host() as host:
        named = hostdns.prepare(ctx)
        box, ep, nets = ctx.transact(record)
        undo = Undo()
        undo.push(f"release endpoint {sandbox}/{network}", release, ctx, [ep], nets)
        try:
            if named:  # now: the server works while we wire and commit
                undo.push(f"give {sandbox} its names back", _renamed, ctx, box, nets)
                named = hostdns.announce(ctx, _with(box, ep), nets)
            path = ctx.kernel.netns_path(box.netns)
            with ctx.kernel.open_path(box.netns, path) as inside:
                wire(ctx, host, inside, path, [ep], nets, undo)
            # Published ports follow the sandbox's first endpoint that takes them, which may now be this one.
            before, after = ports.published(box, nets), ports.published(_with(box, ep), nets)
            undo.push(f"move the ports of {sandbox} back", firewall.retarget, ctx, after, before)
            firewall.retarget(ctx, before, after)
            ctx.transact(lambda txn: mark(txn, [ep], "ready"))
        except BaseException:
            undo.rollback()
            raise
    if named:
        hostdns.settle(ctx)
    return replace(ep, state="ready")


def _renamed(ctx: Context, box: Sandbox, nets: Networks) -> None:
    """Undo step: the server knows the sandbox by the names it had before."""
    if hostdns.announce(ctx, box, nets, start=False):
        hostdns.settle(ctx)


def _with(box: Sandbox, ep: Endpoint) -> Sandbox:
    return replace(box, endpoints=(*box.endpoints, ep))


def release(ctx: Context, eps: list[Endpoint], networks: Networks) -> None:
    ctx.transact(lambda txn: drop_records(txn, ctx, eps))
    left(ctx, eps, networks)


def disconnect(ctx: Context, network: str, sandbox: str) -> None:
    """Detach a sandbox from a network; its default route moves to a remaining network."""

    def begin(txn: NodeTxn) -> tuple[Sandbox, Endpoint, dict[str, Network]]:
        box = records.get_sandbox(txn, sandbox)
        ep = box.endpoint(network)
        if ep is None:
            records.get_network(txn, network)  # a clearer error if the network is unknown
            raise NotFound(f"sandbox {sandbox} is not connected to network {network}")
        nets = records.networks_named(txn, [e.network for e in box.endpoints], missing_ok=True)
        mark(txn, [ep], "removing")
        return box, ep, nets

    box, ep, nets = ctx.transact(begin)
    remaining = replace(box, endpoints=tuple(e for e in box.endpoints if e.network != network))
    # Ports leading to this endpoint move to the next endpoint that takes them, or wait for a connect.
    firewall.retarget(ctx, ports.published(box, nets), ports.published(remaining, nets))
    inside_exists = ctx.kernel.netns_exists(box.netns)
    with ctx.open_host() as host:
        inside = ctx.kernel.open_path(box.netns, ctx.kernel.netns_path(box.netns)) if inside_exists else None
        try:
            driver_named(ep.driver).detach(ctx, host, inside, ep)
            if inside is not None:
                _move_default_route(inside, remaining, nets)
        finally:
            if inside is not None:
                inside.close()
    named = inside_exists and hostdns.announce(ctx, remaining, nets, start=False)  # its names there are gone
    release(ctx, [ep], nets)
    if named:
        hostdns.settle(ctx)


def _routable(box: Sandbox, nets: Networks) -> list[Endpoint]:
    """The sandbox's endpoints on networks that give it a default route (the first one's gateway is used)."""
    return [e for e in box.endpoints if e.network in nets and driver_for(nets[e.network]).routes_out(nets[e.network])]


def _move_default_route(inside: Links, box: Sandbox, nets: Networks) -> None:
    """Each family's default route goes via the first endpoint left that routes out with an address of it."""
    routable = _routable(box, nets)
    for version in (4, 6):
        gateway = next((g for e in routable for a, _, g in e.addresses if a.version == version), None)
        if gateway is not None:
            inside.ensure_default_route(str(gateway))


def default_gateway(ctx: Context, sandbox: str) -> IPAddress | None:
    """Where the sandbox's default route goes as its networks give it; None if none routes out (an overlay)."""

    def read(txn: NodeTxn) -> tuple[Sandbox, dict[str, Network]]:
        box = records.get_sandbox(txn, sandbox)
        return box, records.networks_named(txn, [e.network for e in box.endpoints], missing_ok=True)

    routable = _routable(*ctx.transact(read))
    return routable[0].gateway if routable else None
