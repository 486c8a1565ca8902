"""Graphviz DOT text of a Graph: one cluster per host, the shared things between them.

All visible text goes into HTML-like labels (``label=<...>``), escaped as XML, and
every attribute value that is a string is double-quoted with ``"`` and ``\\``
escaped, so a name can never break the file. Each node and edge carries its model
id as its SVG ``id`` and its kind as its SVG ``class``: the browser finds the
object behind a click from them.
"""

from __future__ import annotations

from overlays.view.model import Edge, Graph, Node

FONT = "DejaVu Sans"
STYLE = {  # kind: (fill colour, border colour, shape)
    "host": ("#e8eef7", "#4a6fa5", "box"),
    "network": ("#fff4d6", "#b8860b", "box"),
    "sandbox": ("#e3f4e1", "#3b8b3b", "box"),
    "ports": ("#fde8e8", "#b03a3a", "box"),
    "fabric": ("#eeeeee", "#666666", "box"),
    "outside": ("#f0e6f6", "#7a4b94", "box"),
}
EDGE_STYLE = {  # kind: attributes
    "device": 'color="#b8860b"',
    "endpoint": 'color="#3b8b3b"',
    "publish": 'color="#b03a3a", style="bold"',
    "underlay": 'color="#666666"',
    "overlay": 'color="#4a6fa5", style="dashed", penwidth="2"',
}


def quote(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def html(text: str) -> str:
    """Text inside an HTML-like label."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def render(graph: Graph) -> str:
    """The whole graph as DOT text."""
    ids = {node.id: f"n{i}" for i, node in enumerate(graph.nodes)}
    out = [
        "graph overlays {",
        f"  graph [label=<<B>{html(graph.title)}</B>>, labelloc=t, fontname={quote(FONT)}, rankdir=LR,"
        ' nodesep="0.3", ranksep="0.9", newrank=true, bgcolor="white", pad="0.2"];',
        f'  node [fontname={quote(FONT)}, fontsize="10", shape=box, style="rounded,filled", margin="0.12,0.06"];',
        f'  edge [fontname={quote(FONT)}, fontsize="9"];',
    ]
    for host in graph.hosts:
        out.append(f"  subgraph {quote('cluster_' + host)} {{")
        out.append(f'    label=<<B>{html("host " + host)}</B>>; style="rounded,dashed"; color="#4a6fa5";'
                   f' id={quote("cluster:" + host)};')
        out += [f"    {_node(node, ids)}" for node in graph.on_host(host)]
        out.append("  }")
    out += [f"  {_node(node, ids)}" for node in graph.on_host(None)]
    out += [f"  {_edge(edge, ids)}" for edge in graph.edges]
    out.append("}")
    return "\n".join(out) + "\n"


def _node(node: Node, ids: dict[str, str]) -> str:
    fill, border, shape = STYLE[node.kind]
    lines = "".join(f"<BR/>{html(line)}" for line in node.lines)
    label = f"<<B>{html(node.title)}</B>{lines}>"
    tooltip = "\n".join(f"{k}: {v}" for k, v in node.details) or node.title
    return (f"{ids[node.id]} [id={quote(node.id)}, class={quote(node.kind)}, label={label}, shape={shape},"
            f" fillcolor={quote(fill)}, color={quote(border)}, tooltip={quote(tooltip)}];")


def _edge(edge: Edge, ids: dict[str, str]) -> str:
    attrs = [f"id={quote(edge.id)}", f"class={quote(edge.kind)}", EDGE_STYLE[edge.kind]]
    if edge.label:
        attrs.append(f"label=<{html(edge.label)}>")
    if edge.directed:
        attrs.append("dir=forward")
    tooltip = "\n".join(f"{k}: {v}" for k, v in edge.details)
    if tooltip:
        attrs.append(f"tooltip={quote(tooltip)}")
    return f"{ids[edge.source]} -- {ids[edge.target]} [{', '.join(attrs)}];"
