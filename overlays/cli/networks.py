"""``overlays network ...``: create, ls, inspect, rm, prune."""

from __future__ import annotations

import argparse

from overlays.cli import render
from overlays.cli.main import Command, Group, Settings, held_signals, json_flag
from overlays.cli.render import echo


def _create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument("--subnet", metavar="CIDR", action="append",
                   help="Subnet, e.g. 10.10.0.0/24 (default: a free /24); give it twice, IPv4 and IPv6, for a "
                   "dual-stack network; an IPv6 subnet alone makes an IPv6-only network.")
    p.add_argument("--gateway", metavar="IP", action="append",
                   help="Gateway address, held by the bridge (default: first host); once per family.")
    p.add_argument("--ipv6", action="store_true",
                   help="Dual-stack: an IPv6 subnet too (default: a free /64 of this host's ULA prefix).")
    p.add_argument("--ip-range", metavar="CIDR", help="Allocate sandbox addresses from this part of the subnet only.")
    p.add_argument("--mtu", type=int,
                   help="MTU of the bridge and every sandbox interface (default 1500; overlays: the underlay's - 50).")
    p.add_argument("--internal", action="store_true",
                   help="No route out and no published ports: sandboxes reach each other only.")
    p.add_argument("--masquerade", action=argparse.BooleanOptionalAction, default=True,
                   help="Masquerade traffic leaving the host; --no-masquerade routes sandbox addresses as they are "
                   "(default: masquerade).")
    p.add_argument("-d", "--driver", choices=["bridge", "overlay", "macvlan"], default="bridge",
                   help="bridge: this host only; overlay: one network across hosts (VXLAN), needs `overlays agent`; "
                   "macvlan: sandboxes straight on the segment of --parent (default: bridge).")
    p.add_argument("--vni", type=int, help="VXLAN network identifier of an overlay network (default: a free one).")
    p.add_argument("--parent", metavar="IFACE",
                   help="macvlan: the host interface whose segment sandboxes join (left untouched).")
    p.add_argument("--dns", metavar="IP", action="append", default=[],
                   help="Resolver for names that are not the network's own (repeatable; default: the host's).")


def create(s: Settings, a: argparse.Namespace) -> None:
    """Create a network NAME."""
    from overlays.model.specs import NetworkSpec  # only here: ls and inspect do not need the spec classes

    spec = NetworkSpec.parse(a.name, subnet=a.subnet, gateway=a.gateway, ip_range=a.ip_range, mtu=a.mtu,
                             internal=a.internal, masquerade=a.masquerade, driver=a.driver, vni=a.vni,
                             parent=a.parent, dns=a.dns, ipv6=a.ipv6)
    with held_signals():
        net = s.engine().create_network(spec)
    subnets = " and ".join(str(s) for s in net.subnets)
    if net.vni is not None:
        echo(f"overlay network {net.name} created: subnet {subnets}, VNI {net.vni}, MTU {net.mtu}")
        return
    if net.parent is not None:
        echo(f"macvlan network {net.name} created: subnet {net.subnet}, gateway {net.gateway}, parent {net.parent}")
        return
    mode = " (internal)" if net.internal else "" if net.masquerade else " (routed, no masquerade)"
    gateways = " and ".join(str(g) for _, g in net.pools)
    echo(f"network {net.name} created: subnet {subnets}, gateway {gateways}, bridge {net.bridge}{mode}")


def ls(s: Settings, a: argparse.Namespace) -> None:
    """List networks."""
    nets = s.engine().networks()
    if a.as_json:
        render.emit_json([render.network_dict(n) for n in nets])
    else:
        echo(render.networks_table(nets))


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    json_flag(p)


def inspect(s: Settings, a: argparse.Namespace) -> None:
    """Show a network: subnet, gateway, MTU, bridge, internal, masquerade, attached sandboxes."""
    net, users = s.engine().network(a.name)
    data = render.network_dict(net, users)
    if a.as_json:
        render.emit_json(data)
    else:
        echo(render.inspect_text(data))


def _rm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", metavar="NAME", nargs="+")
    p.add_argument("-f", "--force", action="store_true", help="Disconnect attached sandboxes first.")


def rm(s: Settings, a: argparse.Namespace) -> None:
    """Remove networks (refused while sandboxes are attached, unless --force)."""
    for name in a.names:
        with held_signals():
            s.engine().remove_network(name, force=a.force)
        echo(f"network {name} removed")


def prune(s: Settings, a: argparse.Namespace) -> None:
    """Remove every network that has no sandbox attached."""
    with held_signals():
        removed = s.engine().prune_networks()
    echo("removed: " + ", ".join(removed) if removed else "nothing to prune")


COMMANDS = {
    "network": Group("Manage networks (a bridge per network, with its own subnet).", {
        "create": Command(create, _create_arguments),
        "ls": Command(ls, json_flag),
        "inspect": Command(inspect, _inspect_arguments),
        "rm": Command(rm, _rm_arguments),
        "prune": Command(prune),
    }),
}
