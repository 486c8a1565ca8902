"""``overlays trace SRC DST``: whether sandbox SRC reaches DST, hop by hop, then one real traced probe."""

from __future__ import annotations

import argparse

from overlays.cli.main import Command, Settings, json_flag
from overlays.cli.render import echo, emit_json


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="The sandbox the packet leaves.")
    p.add_argument("dst", metavar="DST",
                   help="A sandbox (here or on another host of an overlay network), an address, or a published "
                   "HOST_IP:PORT[/udp].")
    p.add_argument("--port", metavar="N/tcp|udp", help="Probe this port (default: ping).")
    family = p.add_mutually_exclusive_group()
    family.add_argument("-4", dest="version", action="store_const", const=4,
                        help="A sandbox DST by its IPv4 address (the default where it has one).")
    family.add_argument("-6", dest="version", action="store_const", const=6,
                        help="A sandbox DST by its IPv6 address (dual-stack networks).")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="Only read the state: send no packet.")
    json_flag(p)


def trace(s: Settings, a: argparse.Namespace) -> int:
    """Why can (or can't) SRC reach DST: route, neighbour, bridge or VXLAN entry, firewall, MTU, then a probe."""
    found = s.engine().trace(a.src, a.dst, a.port, probe=a.probe, version=a.version)
    if a.as_json:
        emit_json(found.to_json())
    else:
        what = f"{found.port}" if found.port else "ping (ICMP echo)"
        lines = [f"trace {found.src} -> {found.target.label}, {what}"]
        width = max([len(w) for w, _ in found.steps] + [8])
        lines += [f"  {where.ljust(width)}  {text}" for where, text in found.steps]
        if found.probe:
            lines.append(f"  {'probe'.ljust(width)}  {found.probe}")
        lines += [f"  {'nftrace'.ljust(width)}  {line}" for line in found.firewall]
        lines.append(found.verdict)
        echo("\n".join(lines))
    return 0 if found.reachable or (found.reachable is None and found.expected is None) else 1


COMMANDS = {"trace": Command(trace, _arguments)}
