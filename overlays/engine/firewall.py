"""The engine's side of the firewall: host settings, and one nft transaction per operation.

Scripts come from ``drivers.firewall`` (pure); this module decides when to apply
them and holds a per-host file lock while it does. The lock matters for one race
only: removing the last network deletes the table, which must not happen between
another process recording a network and adding it to the table. The decision (no
other network of the table recorded) and the deletion are made under the lock, and
every apply is made under it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from overlays.drivers import firewall
from overlays.drivers.bridge import bridged_traffic_unfiltered
from overlays.drivers.firewall import Publish
from overlays.engine import records
from overlays.engine.context import Context, NodeTxn
from overlays.model.state import Network

LOCK = "firewall"


def _apply(ctx: Context, script: str) -> None:
    if script:
        with ctx.lock(LOCK):
            ctx.kernel.nft_apply(ctx.host_netns, script)


def host_settings(ctx: Context, net: Network) -> None:
    """Forwarding on; bridged traffic kept out of the IP hooks; 127.0.0.1 publishes routable.

    br_netfilter (when loaded) passes frames bridged between two ports of one
    bridge through the IP hooks; we turn that off in a host namespace we manage,
    since traffic inside one network needs no filtering and the bridge ports are
    not in our sets anyway. On a real machine (no host namespace) other tools
    (Docker) may rely on it: we leave it as it is, and our rules work either way.
    route_localnet is set on our bridges only: it lets the host reach a port
    published on 127.0.0.1, and the ``input`` chain keeps sandboxes from using it.
    """
    ctx.kernel.set_sysctl(ctx.host_netns, "net.ipv4.ip_forward", "1")
    if any(s.version == 6 for s in net.subnets):
        ipv6_forwarding(ctx)
    unfilter_bridged(ctx)
    ctx.kernel.set_sysctl(ctx.host_netns, f"net/ipv4/conf/{net.bridge}/route_localnet", "1")


def ipv6_forwarding(ctx: Context) -> None:
    """IPv6 forwarding on in the host namespace, without costing the host its own IPv6 routes.

    A host that forwards ignores router advertisements on links with ``accept_ra`` 1, and
    would lose the default route its network advertises to it (as Docker hosts have): such
    links are moved to 2 ("accept them even when forwarding") first.
    """
    if ctx.kernel.sysctl(ctx.host_netns, "net.ipv6.conf.all.forwarding") == "1":
        return
    with ctx.open_host() as host:
        names = [link.name for link in host.links()]
    for name in names:
        key = f"net/ipv6/conf/{name}/accept_ra"
        if ctx.kernel.sysctl(ctx.host_netns, key) == "1":
            ctx.kernel.set_sysctl(ctx.host_netns, key, "2")
    ctx.kernel.set_sysctl(ctx.host_netns, "net.ipv6.conf.all.forwarding", "1")


def unfilter_bridged(ctx: Context) -> None:
    """In a host namespace we manage, frames bridged between ports skip the IP hooks (see host_settings)."""
    if ctx.host_netns is not None:
        bridged_traffic_unfiltered(ctx.kernel, ctx.host_netns)


def network_up(ctx: Context, net: Network) -> None:
    """The table exists with its rules, and ``net`` is in its sets."""
    host_settings(ctx, net)
    _apply(ctx, firewall.network_up(ctx.instance, net))


def network_down(ctx: Context, net: Network, in_table: Callable[[Network], bool]) -> None:
    """``net`` leaves the table; with no other network of the table recorded (``in_table``), the table goes."""
    with ctx.lock(LOCK):
        others = [n for n in ctx.transact(records.list_networks) if n.name != net.name and in_table(n)]
        if others:
            ctx.kernel.nft_apply(ctx.host_netns, firewall.network_down(ctx.instance, net))
        else:
            ctx.kernel.nft_delete_table(ctx.host_netns, firewall.FAMILY, firewall.table_name(ctx.instance))


def publish(ctx: Context, publishes: Iterable[Publish]) -> None:
    publishes = list(publishes)
    if publishes:
        _apply(ctx, firewall.publish(ctx.instance, publishes))


def unpublish(ctx: Context, publishes: Iterable[Publish]) -> None:
    publishes = list(publishes)
    if publishes:
        _apply(ctx, firewall.unpublish(ctx.instance, publishes))


def retarget(ctx: Context, old: list[Publish], new: list[Publish]) -> None:
    if old != new:
        _apply(ctx, firewall.retarget(ctx.instance, old, new))


# -- drift: our table against the records ------------------------------------------------------------------------------


def _wanted(ctx: Context) -> tuple[list[Network], list[Publish]]:
    """The networks in our table and the published ports, as the records say."""
    from overlays.engine import ports
    from overlays.engine.netdrivers import driver_for

    def read(txn: NodeTxn) -> tuple[list[Network], list[Publish]]:
        networks = records.list_networks(txn)
        by_name = {n.name: n for n in networks}
        publishes = [p for box in records.list_sandboxes(txn) for p in ports.published(box, by_name)]
        return [n for n in networks if driver_for(n).in_firewall], publishes

    return ctx.transact(read)


def problems(ctx: Context) -> list[str]:
    """Read-only: how our nft table differs from what the records call for ([] when it is as it should be)."""
    networks, publishes = _wanted(ctx)
    table = firewall.table_name(ctx.instance)
    live = ctx.kernel.nft_contents(ctx.host_netns, firewall.FAMILY, table)
    if live is None:
        return [f"nft table {firewall.FAMILY} {table} is missing"] if networks else []
    if not networks:
        return [f"nft table {firewall.FAMILY} {table} is left with no network in it"]
    found = []
    if live.rules != firewall.table_rules():
        found.append(f"the rules of nft table {firewall.FAMILY} {table} were changed")
    for name, want in firewall.table_elements(networks, publishes).items():
        have = live.elements.get(name, frozenset())
        found += [f"nft set {name} lacks {e}" for e in sorted(want - have)]
        found += [f"nft set {name} holds a stale {e}" for e in sorted(have - want)]
    return found


def repair(ctx: Context) -> None:
    """Our table made again from the records, whole, in one transaction (nothing stale survives it)."""
    with ctx.lock(LOCK):
        networks, publishes = _wanted(ctx)
        if networks:
            for net in networks:
                host_settings(ctx, net)
            ctx.kernel.nft_apply(ctx.host_netns, firewall.render_table(ctx.instance, networks, publishes))
        else:
            ctx.kernel.nft_delete_table(ctx.host_netns, firewall.FAMILY, firewall.table_name(ctx.instance))

