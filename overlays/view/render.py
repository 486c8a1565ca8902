"""A Graph in each output format: DOT, SVG (Graphviz's ``dot`` lays it out), Mermaid, JSON."""

from __future__ import annotations

import json
import subprocess

from overlays.errors import NotFound, OverlaysError
from overlays.view import dot, mermaid
from overlays.view.model import Graph

FORMATS = ("svg", "dot", "mermaid", "json")
SUFFIXES = {".svg": "svg", ".dot": "dot", ".gv": "dot", ".mmd": "mermaid", ".mermaid": "mermaid", ".json": "json"}
DOT_TIMEOUT = 30.0


def render(graph: Graph, fmt: str) -> str:
    if fmt == "dot":
        return dot.render(graph)
    if fmt == "svg":
        return svg(dot.render(graph))
    if fmt == "mermaid":
        return mermaid.render(graph)
    if fmt == "json":
        return json.dumps(graph.to_json(), indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}")


def svg(dot_text: str) -> str:
    """Lay out and draw DOT text with Graphviz's ``dot -Tsvg``."""
    try:
        done = subprocess.run(["dot", "-Tsvg"], input=dot_text, capture_output=True, text=True,
                              timeout=DOT_TIMEOUT, check=False)
    except FileNotFoundError as e:
        raise NotFound("graph: Graphviz's dot program is not installed (apt-get install graphviz); "
                       "or ask for --format dot or mermaid") from e
    except subprocess.TimeoutExpired as e:
        raise OverlaysError(f"graph: dot took more than {DOT_TIMEOUT:g} s to lay the picture out") from e
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise OverlaysError(f"graph: dot refused the picture: {first}")
    return done.stdout
