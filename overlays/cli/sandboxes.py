"""Sandbox commands: run, ps, inspect, port, rm, connect, disconnect, exec, attach."""

from __future__ import annotations

import secrets
import signal

import click

from overlays.cli import render
from overlays.cli.main import Settings, held_signals
from overlays.errors import InvalidSpec
from overlays.model.ports import PortMapping, parse_publish
from overlays.model.specs import EndpointRequest, SandboxSpec, parse_ip

pass_settings = click.make_pass_decorator(Settings)
ARGS = {"ignore_unknown_options": False, "allow_interspersed_args": False}


def _argv(cmd: tuple[str, ...]) -> tuple[str, ...]:
    """The command after an optional ``--`` (click keeps it once a positional came first)."""
    return cmd[1:] if cmd[:1] == ("--",) else cmd


def _requests(networks: tuple[str, ...], ip: str | None) -> list[EndpointRequest]:
    nets = [n for n in networks if n != "none"]
    if "none" in networks and nets:
        raise InvalidSpec("--network none cannot be combined with other networks")
    if ip and len(nets) != 1:
        raise InvalidSpec("--ip needs exactly one --network")
    return [EndpointRequest.parse(n, ip if i == 0 else None) for i, n in enumerate(nets)]


@click.command(context_settings=ARGS)
@click.option("--name", metavar="NAME", help="Sandbox name (default: a generated one).")
@click.option("--network", "networks", multiple=True, metavar="NET",
              help="Network to join (repeatable); 'none' gives loopback only (the default).")
@click.option("--ip", metavar="IP", help="Static address on the network.")
@click.option("--hostname", metavar="H", help="Hostname seen by the sandbox's processes.")
@click.option("-p", "--publish", "publish", multiple=True, metavar="[IP:]HOST:PORT[/PROTO]",
              help="Publish a port (repeatable; ranges like 8000-8010:8000-8010; /tcp or /udp, default tcp).")
@click.option("-d", "--detach", is_flag=True, help="Run CMD in the background and print the sandbox name.")
@click.option("--rm", "remove_after", is_flag=True, help="Remove the sandbox when CMD exits (foreground only).")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@pass_settings
def run(s: Settings, name: str | None, networks: tuple[str, ...], ip: str | None, hostname: str | None,
        publish: tuple[str, ...], detach: bool, remove_after: bool, cmd: tuple[str, ...]) -> int:
    """Create a sandbox and, with CMD, run it inside: overlays run --name web --network front -- CMD..."""
    cmd = _argv(cmd)
    if detach and remove_after:
        raise InvalidSpec("--rm and -d cannot be combined")
    if detach and not cmd:
        raise InvalidSpec("-d needs a command to run (overlays run -d --name web -- CMD...)")
    ports: list[PortMapping] = [m for text in publish for m in parse_publish(text)]
    spec = SandboxSpec.parse(name or f"sb-{secrets.token_hex(3)}", _requests(networks, ip), hostname, ports)
    engine = s.engine()
    with held_signals():
        box = engine.create_sandbox(spec)
    if not cmd:
        nets = ", ".join(f"{e.ifname} {e.ip}/{e.prefixlen} on {e.network}" for e in box.endpoints) or "loopback only"
        click.echo(f"sandbox {box.name} created ({nets})")
        return 0
    try:
        if detach:
            engine.start(box.name, cmd)
            click.echo(box.name)
            return 0
        proc = engine.start_foreground(box.name, cmd)
    except BaseException:
        with held_signals():
            engine.remove_sandbox(box.name, force=True)
        raise
    return _wait_foreground(s, box.name, proc, remove_after)


def _wait_foreground(s: Settings, name: str, proc: object, remove_after: bool) -> int:
    # The terminal sends Ctrl-C to the child too; we wait for it to finish and pass its code on.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = proc.wait()  # type: ignore[attr-defined]
    finally:
        signal.signal(signal.SIGINT, previous)
    if remove_after:
        with held_signals():
            s.engine().remove_sandbox(name, force=True)
    return int(code) if code >= 0 else 128 - int(code)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
def ps(s: Settings, as_json: bool) -> None:
    """List sandboxes."""
    boxes = s.engine().sandboxes()
    if as_json:
        engine = s.engine()
        render.emit_json([render.sandbox_dict(b, str(engine.ctx.kernel.netns_path(b.netns))) for b in boxes])
    else:
        click.echo(render.sandboxes_table(boxes))


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
def inspect(s: Settings, name: str, as_json: bool) -> None:
    """Show a sandbox: netns, pid, and each endpoint's interface, IP, MAC and network."""
    engine = s.engine()
    box = engine.sandbox(name)
    data = render.sandbox_dict(box, str(engine.ctx.kernel.netns_path(box.netns)))
    if as_json:
        render.emit_json(data)
    else:
        click.echo(render.inspect_text(data))


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
def port(s: Settings, name: str, as_json: bool) -> None:
    """List the ports sandbox NAME publishes: CONTAINER_PORT/PROTO -> HOST_IP:HOST_PORT."""
    box = s.engine().sandbox(name)
    if as_json:
        render.emit_json([render.port_dict(p) for p in box.ports])
    else:
        click.echo(render.ports_text(box.ports))


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Stop a running process first.")
@pass_settings
def rm(s: Settings, names: tuple[str, ...], force: bool) -> None:
    """Remove sandboxes: stop the process, remove endpoints, release addresses, delete the netns."""
    for name in names:
        with held_signals():
            s.engine().remove_sandbox(name, force=force)
        click.echo(f"sandbox {name} removed")


@click.command()
@click.argument("network")
@click.argument("sandbox")
@click.option("--ip", metavar="IP", help="Static address on the network.")
@pass_settings
def connect(s: Settings, network: str, sandbox: str, ip: str | None) -> None:
    """Connect SANDBOX to NETWORK (its next interface: eth0, eth1, ...)."""
    addr = parse_ip(f"--ip for network {network}", ip) if ip else None
    with held_signals():
        ep = s.engine().connect(network, sandbox, addr)
    click.echo(f"sandbox {sandbox} connected to {network}: {ep.ifname} {ep.ip}/{ep.prefixlen}")


@click.command()
@click.argument("network")
@click.argument("sandbox")
@pass_settings
def disconnect(s: Settings, network: str, sandbox: str) -> None:
    """Disconnect SANDBOX from NETWORK."""
    with held_signals():
        s.engine().disconnect(network, sandbox)
    click.echo(f"sandbox {sandbox} disconnected from {network}")


@click.command("exec", context_settings=ARGS)
@click.argument("name")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_settings
def exec_(s: Settings, name: str, cmd: tuple[str, ...]) -> int:
    """Run CMD inside sandbox NAME's network namespace; its exit code is passed through."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code: int = s.engine().execute(name, _argv(cmd))
    finally:
        signal.signal(signal.SIGINT, previous)
    return code if code >= 0 else 128 - code


@click.command()
@click.argument("name")
@click.option("--pid", type=int, help="Adopt the network namespace of this process.")
@click.option("--netns", "netns_path", metavar="PATH", help="Adopt the namespace at PATH (e.g. /run/netns/x).")
@pass_settings
def attach(s: Settings, name: str, pid: int | None, netns_path: str | None) -> None:
    """Adopt an existing namespace (a container's) as sandbox NAME, so connect works on it."""
    with held_signals():
        box = s.engine().adopt(name, pid=pid, netns_path=netns_path)
    click.echo(f"sandbox {box.name} adopted ({'pid ' + str(pid) if pid else netns_path})")


COMMANDS = [run, ps, inspect, port, rm, connect, disconnect, exec_, attach]
