"""The picture as data: nodes, edges and the hosts that group them, with no layout.

Both sources (the live state of an engine, a topology file's plan) build this
model, and every renderer (DOT, Mermaid, JSON, the browser's details panel) reads
only it, so they cannot disagree. Positions are never part of it: Graphviz lays
the picture out.

Node ids name what a node stands for, so they stay the same across changes of
state and the browser can keep a selection: ``host:h1``, ``net:h1:front`` (a bridge
network lives on one host), ``net:mesh`` (an overlay spans hosts), ``box:h1:web``,
``ports:h1:web``, ``fabric``, ``outside``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

NodeKind = Literal["host", "network", "sandbox", "ports", "fabric", "outside"]
EdgeKind = Literal["device", "endpoint", "publish", "underlay", "overlay"]
Source = Literal["live", "plan"]
NODE_KINDS: tuple[NodeKind, ...] = ("host", "network", "sandbox", "ports", "fabric", "outside")
EDGE_KINDS: tuple[EdgeKind, ...] = ("device", "endpoint", "publish", "underlay", "overlay")
SOURCES: tuple[Source, ...] = ("live", "plan")

Details = tuple[tuple[str, str], ...]


class GraphError(ValueError):
    """A graph that does not hold together (an edge to a node that is not there, a duplicate id)."""


@dataclass(frozen=True)
class Node:
    """One thing in the picture: ``title`` and ``lines`` are drawn; ``details`` are shown on demand."""

    id: str
    kind: NodeKind
    title: str
    lines: tuple[str, ...] = ()
    details: Details = ()
    host: str | None = None  # the host it is drawn inside; None: between hosts (fabric, overlay networks)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "title": self.title, "lines": list(self.lines),
                "details": dict(self.details), "host": self.host}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        return cls(data["id"], _kind(data["kind"], NODE_KINDS), data["title"], tuple(data["lines"]),
                   tuple(data["details"].items()), data["host"])


@dataclass(frozen=True)
class Edge:
    """A link between two nodes: a sandbox's interface on a network, a published port, a wire, a tunnel."""

    source: str
    target: str
    kind: EdgeKind
    label: str = ""
    details: Details = ()

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.source}>{self.target}"

    @property
    def directed(self) -> bool:
        """Published ports point at their sandbox; the rest are links with no direction."""
        return self.kind == "publish"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "target": self.target, "kind": self.kind,
                "label": self.label, "details": dict(self.details)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Edge:
        return cls(data["source"], data["target"], _kind(data["kind"], EDGE_KINDS), data["label"],
                   tuple(data["details"].items()))


@dataclass(frozen=True)
class Graph:
    """A whole picture; checked on creation (every edge joins two nodes, every host is declared)."""

    title: str
    source: Source
    hosts: tuple[str, ...]
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...] = ()
    _index: dict[str, Node] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for node in self.nodes:
            if node.id in self._index:
                raise GraphError(f"graph {self.title}: node {node.id} appears twice")
            if node.host is not None and node.host not in self.hosts:
                raise GraphError(f"graph {self.title}: node {node.id} is on undeclared host {node.host}")
            self._index[node.id] = node
        seen: set[str] = set()
        for edge in self.edges:
            for end in (edge.source, edge.target):
                if end not in self._index:
                    raise GraphError(f"graph {self.title}: edge {edge.id} names no node {end}")
            if edge.id in seen:
                raise GraphError(f"graph {self.title}: edge {edge.id} appears twice")
            seen.add(edge.id)

    def node(self, node_id: str) -> Node:
        return self._index[node_id]

    def of_kind(self, kind: NodeKind) -> list[Node]:
        return [n for n in self.nodes if n.kind == kind]

    def on_host(self, host: str | None) -> list[Node]:
        return [n for n in self.nodes if n.host == host]

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "source": self.source, "hosts": list(self.hosts),
                "nodes": [n.to_json() for n in self.nodes], "edges": [e.to_json() for e in self.edges]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Graph:
        return cls(data["title"], _kind(data["source"], SOURCES), tuple(data["hosts"]),
                   tuple(Node.from_json(n) for n in data["nodes"]), tuple(Edge.from_json(e) for e in data["edges"]))

    def digest(self) -> str:
        """Changes exactly when the picture does: the browser redraws only then."""
        import hashlib  # loads OpenSSL (~10 ms): only the live view asks

        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _kind(value: str, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed:
        raise GraphError(f"unknown kind {value!r} (known: {', '.join(allowed)})")
    return value
