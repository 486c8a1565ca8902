"""The picture of what exists: one engine's networks and sandboxes, and what its store shares.

What this host has comes through the engine's public reads (``networks()``,
``sandboxes()``); what other hosts announce comes from the shared store, read
only: their registrations (``hosts/<node>``: the underlay address their agent
found) and their overlay endpoints (``overlay/<network>/<node>/<sandbox>``), which
is all that one host knows of another's sandboxes. Nothing here touches the kernel.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from overlays.engine import views
from overlays.model.names import vxlan_name
from overlays.view.build import Builder, host_id, network_id, pairs, sandbox_id
from overlays.view.model import Graph

if TYPE_CHECKING:
    from overlays.engine import Engine
    from overlays.model.state import Endpoint, Network, Sandbox


@dataclass(frozen=True)
class Shared:
    """What the shared store says about every host: registrations and overlay endpoints."""

    hosts: dict[str, dict[str, Any]]  # node -> {underlay, ifname, mtu, lease, ...}
    endpoints: list[dict[str, Any]]  # {network, node, sandbox, ip, mac, vtep}

    @classmethod
    def read(cls, engine: Engine) -> Shared:
        hosts = {h.node: h.to_record() for h in engine.shared_hosts()}
        return cls(hosts, [r.to_record() for r in engine.shared_endpoints()])


def live_graph(engine: Engine) -> Graph:
    """The picture of ``engine``'s host now, with the other hosts its store shares."""
    return build(engine.node, engine.host_netns, engine.networks(), engine.sandboxes(), Shared.read(engine),
                 instance=engine.instance)


def build(me: str, host_netns: str | None, networks: Sequence[Network], boxes: Sequence[Sandbox],
          shared: Shared, instance: str | None = None) -> Graph:
    b = Builder(f"overlays on {me}", "live")
    _hosts(b, me, host_netns, shared)
    by_name = {n.name: n for n in networks}
    for net in networks:
        _network(b, me, net)
    for box in sorted(boxes, key=lambda x: x.name):
        _sandbox(b, me, box, by_name, shared, instance)
    _remote_endpoints(b, me, shared, by_name)
    return b.graph()


def _hosts(b: Builder, me: str, host_netns: str | None, shared: Shared) -> None:
    for node in [me, *sorted(n for n in shared.hosts if n != me)]:
        reg = shared.hosts.get(node)
        lines = []
        if node == me:
            lines.append(f"netns {host_netns}" if host_netns else "the machine's own namespace")
        if reg:
            lines.append(f"underlay {reg.get('ifname', '?')} {reg.get('underlay', '?')}")
        details = pairs([
            ("node", node),
            ("namespace", (host_netns or "the machine's own") if node == me else None),
            ("underlay", f"{reg.get('underlay')} on {reg.get('ifname')}, mtu {reg.get('mtu')}" if reg else None),
            ("agent", "registered (lease alive)" if reg else ("none registered" if node == me else None)),
            ("seen from", "this engine" if node == me else "the shared store"),
        ])
        b.host(node, lines, details)


def _network(b: Builder, me: str, net: Network) -> None:
    subnets = ", ".join(str(x) for x in net.subnets)
    gateways = ", ".join(str(g) for _, g in net.pools)
    common = [("driver", net.driver), ("subnet", subnets), ("mtu", net.mtu), ("bridge", net.bridge),
              ("ip range", net.ip_range), ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(net.created)))]
    if net.parent is not None:
        details = pairs([*common, ("parent", net.parent), ("gateway", f"{net.gateway} (on the segment)")])
        b.macvlan_network(me, net.name, subnets, net.parent, details)
        return
    if net.driver == "overlay":
        details = pairs([*common, ("vni", net.vni), ("gateway", f"{gateways} (reserved; no address on hosts)"),
                         ("way out", "none: east-west only")])
        b.overlay_network(net.name, subnets, str(net.vni), details)
        return
    flags = [f for f, on in (("internal: no way out", net.internal), ("routed: no masquerade", not net.masquerade))
             if on]
    details = pairs([*common, ("gateway", gateways), ("internal", net.internal), ("masquerade", net.masquerade)])
    b.bridge_network(me, net.name, subnets, gateways, net.bridge, details, flags)


def _sandbox(b: Builder, me: str, box: Sandbox, networks: dict[str, Network], shared: Shared,
             instance: str | None) -> None:
    status = views.status(box)
    command = " ".join(box.command)
    lines = [status + (f": {_cut(command, 32)}" if command and status == "running" else "")]
    details = pairs([("status", status), ("netns", box.netns), ("pid", box.pid if status == "running" else None),
                     ("command", command), ("hostname", box.hostname), ("adopted", box.adopted or None),
                     ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(box.created)))])
    node = b.sandbox(me, box.name, lines, details)
    for ep in box.endpoints:
        net = networks.get(ep.network)
        if net is None:
            continue
        if net.driver == "overlay":
            vtep = str((shared.hosts.get(me) or {}).get("underlay", "unknown: no agent registered"))
            device = vxlan_name(net.bridge)
            _leg(b, me, net, vtep, device)
        b.interface(node, network_id(ep.network, me), ep.ifname, _addresses(ep), _endpoint_details(ep))
    b.published(me, box.name, box.ports)


def _leg(b: Builder, host: str, net: Network, vtep: str, device: str | None = None) -> None:
    """An overlay network's bridge and VXLAN device on ``host`` (they exist while it has endpoints on it)."""
    if not b.has(network_id(net.name, host)):
        b.overlay_leg(host, net.name, str(net.vni), vtep, net.bridge,
                      pairs([("host", host), ("network", net.name), ("bridge", net.bridge), ("vxlan device", device),
                             ("vni", net.vni), ("vtep", vtep), ("mtu", net.mtu)]))


def _addresses(ep: Endpoint) -> str:
    return " ".join(f"{ip}/{prefixlen}" for ip, prefixlen, _ in ep.addresses)


def _endpoint_details(ep: Endpoint) -> tuple[tuple[str, str], ...]:
    return pairs([("network", ep.network), ("interface", ep.ifname), ("address", _addresses(ep)),
                  ("gateway", " ".join(str(g) for _, _, g in ep.addresses)), ("mac", ep.mac),
                  ("host veth", ep.host_ifname), ("mtu", ep.mtu),
                  ("state", ep.state)])


def _remote_endpoints(b: Builder, me: str, shared: Shared, networks: dict[str, Network]) -> None:
    """Sandboxes of other hosts: what their overlay registrations say (address, MAC, VTEP)."""
    for reg in sorted(shared.endpoints, key=lambda r: (r["node"], r["sandbox"], r["network"])):
        node, name, net = reg["node"], reg["sandbox"], networks.get(reg["network"])
        if node == me or net is None or not b.has(host_id(node)):
            continue  # ours are drawn from the engine; a host whose lease lapsed is gone with its endpoints
        box = sandbox_id(node, name)
        if not b.has(box):
            b.sandbox(node, name, ["remote: from its overlay registration"],
                      pairs([("host", node), ("seen from", "the shared store")]))
        _leg(b, node, net, str(reg.get("vtep")))
        address = f"{reg.get('ip')}/{net.subnet.prefixlen}"
        if reg.get("ip6") and net.subnet6 is not None:
            address += f" {reg.get('ip6')}/{net.subnet6.prefixlen}"
        b.interface(box, network_id(net.name, node), "", address,
                    pairs([("network", net.name), ("address", address), ("mac", reg.get("mac")),
                           ("vtep", reg.get("vtep")), ("registered by", node)]))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
