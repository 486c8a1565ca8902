"""``overlays network ...``: create, ls, inspect, rm, prune."""

from __future__ import annotations

import click

from overlays.cli import render
from overlays.cli.main import Settings, held_signals
from overlays.model.specs import NetworkSpec

pass_settings = click.make_pass_decorator(Settings)


@click.group()
def network() -> None:
    """Manage networks (a bridge per network, with its own subnet)."""


@network.command("create")
@click.argument("name")
@click.option("--subnet", metavar="CIDR", help="Subnet, e.g. 10.10.0.0/24 (default: a free /24).")
@click.option("--gateway", metavar="IP", help="Gateway address, held by the bridge (default: first host).")
@click.option("--ip-range", metavar="CIDR", help="Allocate sandbox addresses from this part of the subnet only.")
@click.option("--mtu", type=int,
              help="MTU of the bridge and every sandbox interface (default 1500; overlays: the underlay's - 50).")
@click.option("--internal", is_flag=True, help="No route out and no published ports: sandboxes reach each other only.")
@click.option("--masquerade/--no-masquerade", default=True, show_default=True,
              help="Masquerade traffic leaving the host; --no-masquerade routes sandbox addresses as they are.")
@click.option("-d", "--driver", type=click.Choice(["bridge", "overlay"]), default="bridge", show_default=True,
              help="bridge: this host only; overlay: one network across hosts (VXLAN), needs `overlays agent`.")
@click.option("--vni", type=int, help="VXLAN network identifier of an overlay network (default: a free one).")
@pass_settings
def create(s: Settings, name: str, subnet: str | None, gateway: str | None, ip_range: str | None,
           mtu: int | None, internal: bool, masquerade: bool, driver: str, vni: int | None) -> None:
    """Create a network NAME."""
    spec = NetworkSpec.parse(name, subnet=subnet, gateway=gateway, ip_range=ip_range, mtu=mtu,
                             internal=internal, masquerade=masquerade, driver=driver, vni=vni)
    with held_signals():
        net = s.engine().create_network(spec)
    if net.overlay:
        click.echo(f"overlay network {net.name} created: subnet {net.subnet}, VNI {net.vni}, MTU {net.mtu}")
        return
    mode = " (internal)" if net.internal else "" if net.masquerade else " (routed, no masquerade)"
    click.echo(f"network {net.name} created: subnet {net.subnet}, gateway {net.gateway}, bridge {net.bridge}{mode}")


@network.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
def ls(s: Settings, as_json: bool) -> None:
    """List networks."""
    nets = s.engine().networks()
    if as_json:
        render.emit_json([render.network_dict(n) for n in nets])
    else:
        click.echo(render.networks_table(nets))


@network.command("inspect")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
def inspect(s: Settings, name: str, as_json: bool) -> None:
    """Show a network: subnet, gateway, MTU, bridge, internal, masquerade, attached sandboxes."""
    net, users = s.engine().network(name)
    data = render.network_dict(net, users)
    if as_json:
        render.emit_json(data)
    else:
        click.echo(render.inspect_text(data))


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Disconnect attached sandboxes first.")
@pass_settings
def rm(s: Settings, names: tuple[str, ...], force: bool) -> None:
    """Remove networks (refused while sandboxes are attached, unless --force)."""
    for name in names:
        with held_signals():
            s.engine().remove_network(name, force=force)
        click.echo(f"network {name} removed")


@network.command("prune")
@pass_settings
def prune(s: Settings) -> None:
    """Remove every network that has no sandbox attached."""
    with held_signals():
        removed = s.engine().prune_networks()
    click.echo("removed: " + ", ".join(removed) if removed else "nothing to prune")
