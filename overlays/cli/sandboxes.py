"""Sandbox commands: run, ps, inspect, port, rm, connect, disconnect, exec, attach.

The commands that take input import the spec classes when they run: ``ps``,
``inspect`` and ``port`` only read, and should not pay for building them.
"""

from __future__ import annotations

import argparse
import signal
from typing import TYPE_CHECKING

from overlays.cli import render
from overlays.cli.main import Command, Settings, held_signals, json_flag
from overlays.cli.render import echo
from overlays.errors import InvalidSpec

if TYPE_CHECKING:
    import subprocess

    from overlays.model.specs import Endpoint, EndpointRequest


class _CommandLine(argparse.Action):
    """CMD...: every word after the options (argparse's remainder), less a leading ``--``.

    Options end at CMD's first word, so CMD's own options stay its own, ``--`` or not.
    """

    needed = False

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        words = list(values) if isinstance(values, list) else []
        cmd = tuple(words[1:] if words[:1] == ["--"] else words)
        if self.needed and not cmd:
            raise argparse.ArgumentError(self, "a command to run is required")
        setattr(namespace, self.dest, cmd)


class _NeededCommandLine(_CommandLine):
    """CMD... that may not be empty (``exec``)."""

    needed = True


def _requests(networks: list[str], ip: str | None, mac: str | None, aliases: list[str],
              ip6: str | None = None) -> list[EndpointRequest]:
    from overlays.model.specs import EndpointRequest

    nets = [n for n in networks if n != "none"]
    if "none" in networks and nets:
        raise InvalidSpec("--network none cannot be combined with other networks")
    for option, given in (("--ip", ip), ("--ip6", ip6), ("--mac", mac)):
        if given and len(nets) != 1:
            raise InvalidSpec(f"{option} needs exactly one --network")
    if aliases and not nets:
        raise InvalidSpec("--alias needs a --network")
    return [EndpointRequest.parse(n, ip if i == 0 else None, mac if i == 0 else None, aliases=aliases,
                                  ip6=ip6 if i == 0 else None)
            for i, n in enumerate(nets)]


def _addresses(ep: Endpoint) -> str:
    return " ".join(f"{ip}/{prefixlen}" for ip, prefixlen, _ in ep.addresses)


def _endpoint_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ip", metavar="IP", help="Static IPv4 address on the network.")
    p.add_argument("--ip6", metavar="IP6", help="Static IPv6 address on the network (dual-stack or IPv6-only).")
    p.add_argument("--mac", metavar="MAC", help="Static MAC address of the interface (default: derived from its IP).")
    p.add_argument("--alias", dest="aliases", metavar="NAME", action="append", default=[],
                   help="Another name the sandbox answers to on its network(s) (repeatable).")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", metavar="NAME", help="Sandbox name (default: a generated one).")
    p.add_argument("--network", dest="networks", metavar="NET", action="append",
                   help="Network to join (repeatable); 'none' gives loopback only (the default).")
    _endpoint_options(p)
    p.add_argument("--hostname", metavar="H", help="Hostname seen by the sandbox's processes.")
    p.add_argument("-p", "--publish", metavar="[IP:]HOST:PORT[/PROTO]", action="append",
                   help="Publish a port (repeatable; ranges like 8000-8010:8000-8010; /tcp or /udp, default tcp).")
    p.add_argument("-d", "--detach", action="store_true", help="Run CMD in the background and print the sandbox name.")
    p.add_argument("--rm", dest="remove_after", action="store_true",
                   help="Remove the sandbox when CMD exits (foreground only).")
    p.add_argument("cmd", metavar="CMD", nargs=argparse.REMAINDER, action=_CommandLine,
                   help="The command to run in the sandbox.")


def run(s: Settings, a: argparse.Namespace) -> int:
    """Create a sandbox and, with CMD, run it inside: overlays run --name web --network front -- CMD..."""
    from overlays.model.ports import parse_publish
    from overlays.model.specs import SandboxSpec

    cmd = a.cmd
    if a.detach and a.remove_after:
        raise InvalidSpec("--rm and -d cannot be combined")
    if a.detach and not cmd:
        raise InvalidSpec("-d needs a command to run (overlays run -d --name web -- CMD...)")
    ports = [m for text in a.publish or () for m in parse_publish(text)]
    requests = _requests(a.networks or [], a.ip, a.mac, a.aliases, a.ip6)
    spec = SandboxSpec.parse(a.name or _generated_name(), requests, a.hostname, ports)
    engine = s.engine()
    with held_signals():
        box = engine.create_sandbox(spec)
    if not cmd:
        nets = ", ".join(f"{e.ifname} {_addresses(e)} on {e.network}" for e in box.endpoints) or "loopback only"
        echo(f"sandbox {box.name} created ({nets})")
        return 0
    try:
        if a.detach:
            engine.start(box.name, cmd)
            echo(box.name)
            return 0
        proc = engine.start_foreground(box.name, cmd)
    except BaseException:
        with held_signals():
            engine.remove_sandbox(box.name, force=True)
        raise
    return _wait_foreground(s, box.name, proc, a.remove_after)


def _generated_name() -> str:
    import secrets  # only here: base64 and hmac come with it

    return f"sb-{secrets.token_hex(3)}"


def _wait_foreground(s: Settings, name: str, proc: subprocess.Popen[bytes], remove_after: bool) -> int:
    # The terminal sends Ctrl-C to the child too; we wait for it to finish and pass its code on.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if remove_after:
        with held_signals():
            s.engine().remove_sandbox(name, force=True)
    return code if code >= 0 else 128 - code


def ps(s: Settings, a: argparse.Namespace) -> None:
    """List sandboxes."""
    boxes = s.engine().sandboxes()
    if a.as_json:
        engine = s.engine()
        render.emit_json([render.sandbox_dict(b, str(engine.namespace_path(b.netns))) for b in boxes])
    else:
        echo(render.sandboxes_table(boxes))


def _name_and_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    json_flag(p)


def inspect(s: Settings, a: argparse.Namespace) -> None:
    """Show a sandbox: netns, pid, and each endpoint's interface, IP, MAC and network."""
    engine = s.engine()
    box = engine.sandbox(a.name)
    data = render.sandbox_dict(box, str(engine.namespace_path(box.netns)))
    if a.as_json:
        render.emit_json(data)
    else:
        echo(render.inspect_text(data))


def port(s: Settings, a: argparse.Namespace) -> None:
    """List the ports sandbox NAME publishes: CONTAINER_PORT/PROTO -> HOST_IP:HOST_PORT."""
    box = s.engine().sandbox(a.name)
    if a.as_json:
        render.emit_json([render.port_dict(p) for p in box.ports])
    else:
        echo(render.ports_text(box.ports))


def _rm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", metavar="NAME", nargs="+")
    p.add_argument("-f", "--force", action="store_true", help="Stop a running process first.")


def rm(s: Settings, a: argparse.Namespace) -> None:
    """Remove sandboxes: stop the process, remove endpoints, release addresses, delete the netns."""
    for name in a.names:
        with held_signals():
            s.engine().remove_sandbox(name, force=a.force)
        echo(f"sandbox {name} removed")


def _network_and_sandbox(p: argparse.ArgumentParser) -> None:
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("sandbox", metavar="SANDBOX")


def _connect_arguments(p: argparse.ArgumentParser) -> None:
    _network_and_sandbox(p)
    _endpoint_options(p)


def connect(s: Settings, a: argparse.Namespace) -> None:
    """Connect SANDBOX to NETWORK (its next interface: eth0, eth1, ...)."""
    from overlays.model.specs import EndpointRequest

    request = EndpointRequest.parse(a.network, a.ip, a.mac, aliases=a.aliases, ip6=a.ip6)
    with held_signals():
        ep = s.engine().connect(request, a.sandbox)
    echo(f"sandbox {a.sandbox} connected to {a.network}: {ep.ifname} {_addresses(ep)}")


def disconnect(s: Settings, a: argparse.Namespace) -> None:
    """Disconnect SANDBOX from NETWORK."""
    with held_signals():
        s.engine().disconnect(a.network, a.sandbox)
    echo(f"sandbox {a.sandbox} disconnected from {a.network}")


def _exec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument("cmd", metavar="CMD", nargs=argparse.REMAINDER, action=_NeededCommandLine,
                   help="The command to run.")


def exec_(s: Settings, a: argparse.Namespace) -> int:
    """Run CMD inside sandbox NAME's network namespace; its exit code is passed through."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code: int = s.engine().execute(a.name, a.cmd)
    finally:
        signal.signal(signal.SIGINT, previous)
    return code if code >= 0 else 128 - code


def _attach_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument("--pid", type=int, help="Adopt the network namespace of this process.")
    p.add_argument("--netns", dest="netns_path", metavar="PATH",
                   help="Adopt the namespace at PATH (e.g. /run/netns/x).")


def attach(s: Settings, a: argparse.Namespace) -> None:
    """Adopt an existing namespace (a container's) as sandbox NAME, so connect works on it."""
    with held_signals():
        box = s.engine().adopt(a.name, pid=a.pid, netns_path=a.netns_path)
    echo(f"sandbox {box.name} adopted ({'pid ' + str(a.pid) if a.pid else a.netns_path})")


COMMANDS = {
    "run": Command(run, _run_arguments),
    "ps": Command(ps, json_flag),
    "inspect": Command(inspect, _name_and_json),
    "port": Command(port, _name_and_json),
    "rm": Command(rm, _rm_arguments),
    "connect": Command(connect, _connect_arguments),
    "disconnect": Command(disconnect, _network_and_sandbox),
    "exec": Command(exec_, _exec_arguments),
    "attach": Command(attach, _attach_arguments),
}
