"""Building a Graph step by step: what the live view and the plan view share.

Both sources say the same things (a host, a network on it, a sandbox with an
interface on that network, its published ports, a VXLAN tunnel between two hosts);
this module turns each into nodes and edges with one wording, so a file's plan and
the state it leads to draw alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from overlays.model.ports import PortMapping
from overlays.view.model import Details, Edge, EdgeKind, Graph, Node, NodeKind, Source

VXLAN_PORT = 4789


def host_id(host: str) -> str:
    return f"host:{host}"


def network_id(name: str, host: str | None) -> str:
    """A bridge network lives on one host; an overlay network (host None) spans them."""
    return f"net:{host}:{name}" if host is not None else f"net:{name}"


def sandbox_id(host: str, name: str) -> str:
    return f"box:{host}:{name}"


def ports_id(host: str, name: str) -> str:
    return f"ports:{host}:{name}"


def pairs(items: Iterable[tuple[str, object]]) -> Details:
    """Details as text, without the empty ones."""
    return tuple((k, _text(v)) for k, v in items if v is not None and v != "" and v != ())


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@dataclass
class Builder:
    title: str
    source: Source
    _hosts: list[str] = field(default_factory=list)
    _nodes: dict[str, Node] = field(default_factory=dict)
    _edges: dict[str, Edge] = field(default_factory=dict)

    def has(self, node_id: str) -> bool:
        return node_id in self._nodes

    def node(self, node_id: str, kind: NodeKind, title: str, lines: Sequence[str] = (), details: Details = (),
             host: str | None = None) -> str:
        self._nodes[node_id] = Node(node_id, kind, title, tuple(lines), details, host)
        return node_id

    def edge(self, source: str, target: str, kind: EdgeKind, label: str = "", details: Details = ()) -> None:
        edge = Edge(source, target, kind, label, details)
        self._edges[edge.id] = edge

    def host(self, name: str, lines: Sequence[str], details: Details) -> str:
        if name not in self._hosts:
            self._hosts.append(name)
        return self.node(host_id(name), "host", name, lines, details, host=name)

    def bridge_network(self, host: str, name: str, subnet: str, gateway: str, bridge: str, details: Details,
                       flags: Sequence[str] = ()) -> str:
        """A bridge on one host, which holds the gateway address on it (an edge between them)."""
        node = self.node(network_id(name, host), "network", name, [f"bridge {bridge}", subnet, *flags], details,
                         host=host)
        self.edge(host_id(host), node, "device", gateway,
                  (("bridge", bridge), ("host address", gateway), ("role", "the sandboxes' default gateway")))
        return node

    def macvlan_network(self, host: str, name: str, subnet: str, parent: str, details: Details) -> str:
        """A macvlan network on one host: its sandboxes sit straight on the parent interface's segment."""
        node = self.node(network_id(name, host), "network", name, [f"macvlan on {parent}", subnet], details,
                         host=host)
        self.edge(host_id(host), node, "device", f"parent {parent}",
                  (("parent", parent), ("role", "the segment the sandboxes join, with addresses of their own")))
        return node

    def overlay_network(self, name: str, subnet: str, vni: str, details: Details) -> str:
        """An overlay network: one segment across hosts, drawn between them."""
        lines = [f"overlay, VNI {vni}", subnet]
        return self.node(network_id(name, None), "network", name, lines, details)

    def overlay_leg(self, host: str, name: str, vni: str, vtep: str, bridge: str, details: Details) -> str:
        """An overlay network's bridge and VXLAN device on one host, tunnelled to the segment from its VTEP."""
        node = self.node(network_id(name, host), "network", name, [f"bridge {bridge}", f"VXLAN VNI {vni}"],
                         details, host=host)
        self.edge(host_id(host), node, "device", "", (("device", f"VXLAN on the host's underlay, VTEP {vtep}"),))
        self.edge(network_id(name, None), node, "overlay", f"VXLAN to {vtep}",
                  (("host", host), ("vtep", vtep), ("udp port", str(VXLAN_PORT)),
                   ("how", "static FDB and neighbour entries per remote endpoint, a flood entry per remote host")))
        return node

    def sandbox(self, host: str, name: str, lines: Sequence[str], details: Details) -> str:
        return self.node(sandbox_id(host, name), "sandbox", name, lines, details, host=host)

    def interface(self, box: str, network: str, ifname: str, address: str, details: Details) -> None:
        """A sandbox's interface on a network: what ``ip addr`` shows inside it.

        Edges run from the outside in (fabric, host, network, sandbox): Graphviz lays them
        out left to right in that order."""
        self.edge(network, box, "endpoint", f"{ifname} {address}".strip(), details)


    def published(self, host: str, box_name: str, ports: Sequence[PortMapping]) -> None:
        """The sandbox's published ports, as one node on its host pointing at it."""
        if not ports:
            return
        lines = port_lines(ports)
        node = self.node(ports_id(host, box_name), "ports", "published", lines,
                         tuple((f"port {i + 1}", line) for i, line in enumerate(lines)), host=host)
        self.edge(host_id(host), node, "publish", "host ports", (("where", f"the addresses of host {host}"),))
        self.edge(node, sandbox_id(host, box_name), "publish", "DNAT",
                  (("how", "nftables DNAT map elements on the host"),))

    def graph(self) -> Graph:
        return Graph(self.title, self.source, tuple(self._hosts), tuple(self._nodes.values()),
                     tuple(self._edges.values()))


def port_lines(ports: Sequence[PortMapping]) -> list[str]:
    """``0.0.0.0:8080 → 80/tcp``, one line per run of consecutive ports (a range of 1,000 is one line)."""
    runs: list[list[PortMapping]] = []
    for p in sorted(ports, key=lambda m: (m.protocol, str(m.host_ip), m.host_port)):
        last = runs[-1][-1] if runs else None
        if (last is not None and (last.protocol, last.host_ip) == (p.protocol, p.host_ip)
                and p.host_port == last.host_port + 1 and p.container_port == last.container_port + 1):
            runs[-1].append(p)
        else:
            runs.append([p])
    return [_run_text(run) for run in runs]


def _run_text(run: list[PortMapping]) -> str:
    first, last = run[0], run[-1]
    host = first.host_text
    if len(run) == 1:
        return f"{host}:{first.host_port} → {first.container_port}/{first.protocol}"
    return (f"{host}:{first.host_port}-{last.host_port} → "
            f"{first.container_port}-{last.container_port}/{first.protocol}")
