"""Turning engine objects into lines, tables and JSON (kept apart from the commands)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from overlays.engine import views

if TYPE_CHECKING:
    from overlays.model.ports import PortMapping
    from overlays.model.state import Endpoint, Network, Sandbox


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by three spaces, like ``docker ps``."""
    cells = [list(headers)] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


_said = ""  # what starts each line of the command's own output on stdout ("# " with --explain)


def comment_output() -> None:
    """With --explain, stdout is a script of the kernel steps: the command's own lines become comments."""
    global _said
    _said = "# "


def echo(text: str, err: bool = False) -> None:
    """Print a line and flush it, so progress shows as it happens and in order with child processes' output."""
    if _said and not err:
        text = "\n".join(_said + line for line in text.split("\n"))
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False), flush=True)  # JSON stays JSON, --explain or not


def network_dict(net: Network, sandboxes_attached: list[str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": net.name,
        "driver": net.driver,
        "subnet": str(net.subnet),
        "gateway": str(net.gateway),
        "ip_range": str(net.ip_range) if net.ip_range else None,
        "mtu": net.mtu,
        "bridge": net.bridge,
        "internal": net.internal,
        "masquerade": net.masquerade,
    }
    if net.vni is not None:  # an overlay: no gateway on any host, no way out
        data.update(vni=net.vni, gateway=None, internal=None, masquerade=None)
    if net.parent is not None:  # a macvlan: no bridge, no NAT
        data.update(bridge=None, parent=net.parent, masquerade=None)
    if net.subnet6 is not None:
        data.update(subnet6=str(net.subnet6), gateway6=str(net.gateway6) if net.vni is None else None)
    if net.dns:
        data["dns"] = [str(s) for s in net.dns]
    if sandboxes_attached is not None:
        data["sandboxes"] = sandboxes_attached
    return data


def endpoint_dict(ep: Endpoint) -> dict[str, Any]:
    return {
        "network": ep.network,
        "interface": ep.ifname,
        "host_interface": ep.host_ifname or None,
        "ip": f"{ep.ip}/{ep.prefixlen}",
        "gateway": str(ep.gateway),
        **({"ip6": f"{ep.ip6}/{ep.prefixlen6}", "gateway6": str(ep.gateway6)} if ep.ip6 is not None else {}),
        "mac": ep.mac,
        "mtu": ep.mtu,
        "state": ep.state,
    }


def sandbox_dict(box: Sandbox, netns_path: str) -> dict[str, Any]:
    return {
        "name": box.name,
        "status": views.status(box),
        "netns": box.netns,
        "netns_path": netns_path,
        "pid": box.pid,
        "command": list(box.command),
        "hostname": box.hostname,
        "adopted": box.adopted,
        "endpoints": [endpoint_dict(ep) for ep in box.endpoints],
        "ports": [port_dict(p) for p in box.ports],
    }


def port_dict(p: PortMapping) -> dict[str, Any]:
    return {
        "host_ip": str(p.host_ip) if p.host_ip else "0.0.0.0",
        "host_port": p.host_port,
        "container_port": p.container_port,
        "protocol": p.protocol,
    }


def ports_text(ports: Sequence[PortMapping]) -> str:
    """One line per port, as ``docker port`` prints them: ``80/tcp -> 0.0.0.0:8080``."""
    return "\n".join(f"{p.container_port}/{p.protocol} -> {p.host_text}:{p.host_port}" for p in ports)


def networks_table(nets: list[Network]) -> str:
    rows = [(n.name, n.driver, ", ".join(map(str, n.subnets)), ", ".join(str(g) for _, g in n.pools), n.mtu,
             n.bridge or n.parent) for n in nets]
    return table(("NAME", "DRIVER", "SUBNET", "GATEWAY", "MTU", "BRIDGE"), rows)


def sandboxes_table(boxes: list[Sandbox]) -> str:
    rows = []
    for box in boxes:
        nets = ", ".join(f"{e.network}=" + ",".join(str(a) for a, _, _ in e.addresses) for e in box.endpoints) or "none"
        pid = box.pid if views.status(box) == "running" else ""
        rows.append((box.name, views.status(box), pid, nets, " ".join(box.command)))
    return table(("NAME", "STATUS", "PID", "NETWORKS", "COMMAND"), rows)


def inspect_text(data: dict[str, Any]) -> str:
    """A readable, indented view of a dict (the JSON shape, without the braces)."""
    lines: list[str] = []

    def walk(value: Any, indent: int, key: str) -> None:
        pad = "  " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            for k, v in value.items():
                walk(v, indent + 1, k)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{key}:")
            for item in value:
                lines.append(f"{pad}  -")
                for k, v in item.items():
                    walk(v, indent + 2, k)
        else:
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            lines.append(f"{pad}{key}: {'' if shown is None else shown}")

    for k, v in data.items():
        walk(v, 0, k)
    return "\n".join(lines)
