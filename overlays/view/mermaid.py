"""Mermaid flowchart text of a Graph (GitHub and many editors draw it inline).

Mermaid's labels are quoted strings in which ``"`` cannot appear and ``#...;`` is an
entity, so text is written with entity codes for ``" # & < >``; lines are joined
with ``<br/>``. Node ids are generated (``n0``, ``n1``: Mermaid ids cannot hold ``:``),
hosts become subgraphs, and each kind gets a class for its colours.
"""

from __future__ import annotations

from overlays.view.dot import STYLE
from overlays.view.model import NODE_KINDS, Edge, Graph, Node

ENTITIES = {"#": "#35;", '"': "#quot;", "&": "#amp;", "<": "#lt;", ">": "#gt;"}
ARROWS = {"device": "---", "endpoint": "---", "publish": "-->", "underlay": "---", "overlay": "-.-"}


def text(value: str) -> str:
    """Text inside a Mermaid label."""
    return "".join(ENTITIES.get(c, c) for c in value)


def render(graph: Graph) -> str:
    ids = {node.id: f"n{i}" for i, node in enumerate(graph.nodes)}
    out = ["flowchart LR", f"  %% {graph.title.replace(chr(10), ' ')}"]
    for i, host in enumerate(graph.hosts):
        out.append(f'  subgraph h{i}["{text("host " + host)}"]')
        out += [f"    {_node(node, ids)}" for node in graph.on_host(host)]
        out.append("  end")
    out += [f"  {_node(node, ids)}" for node in graph.on_host(None)]
    out += [f"  {_edge(edge, ids)}" for edge in graph.edges]
    for kind, (fill, border, _) in STYLE.items():
        out.append(f"  classDef {kind} fill:{fill},stroke:{border},color:#222")
    for kind in NODE_KINDS:
        members = [ids[n.id] for n in graph.of_kind(kind)]
        if members:
            out.append(f"  class {','.join(members)} {kind}")
    return "\n".join(out) + "\n"


def _node(node: Node, ids: dict[str, str]) -> str:
    label = "<br/>".join([f"<b>{text(node.title)}</b>", *(text(line) for line in node.lines)])
    return f'{ids[node.id]}["{label}"]'


def _edge(edge: Edge, ids: dict[str, str]) -> str:
    arrow = ARROWS[edge.kind]
    label = f'|"{text(edge.label)}"|' if edge.label else ""
    return f"{ids[edge.source]} {arrow}{label} {ids[edge.target]}"
