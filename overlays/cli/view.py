"""``overlays graph`` and ``overlays ui``: a picture of the state, once or live in a browser.

``graph`` only reads: it imports neither pyroute2 nor the web server; ``-f`` loads
the topology file's resolver only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from overlays.cli.main import Command, Settings
from overlays.cli.render import echo
from overlays.errors import InvalidSpec, OverlaysError

DEFAULT_LISTEN = "127.0.0.1:8700"


def _graph_arguments(p: argparse.ArgumentParser) -> None:
    from overlays.view.render import FORMATS

    p.add_argument("-f", "--file", dest="path", metavar="FILE",
                   help="Draw this topology file's plan instead of the live state.")
    p.add_argument("--format", choices=FORMATS, metavar="|".join(FORMATS),
                   help="Output format (default: from -o's suffix, else dot).")
    p.add_argument("-o", "--output", metavar="FILE", help="Write here instead of to standard output.")


def _format(a: argparse.Namespace) -> str:
    from overlays.view.render import SUFFIXES

    if a.format:
        return str(a.format)
    if a.output:
        suffix = Path(a.output).suffix.lower()
        if suffix not in SUFFIXES:
            raise InvalidSpec(f"graph: cannot tell the format of {a.output} from its suffix; give --format")
        return SUFFIXES[suffix]
    return "dot"


def graph(s: Settings, a: argparse.Namespace) -> None:
    """Draw hosts, networks, sandboxes, published ports and overlay tunnels (live, or a file's plan with -f)."""
    from overlays.view.render import render

    fmt = _format(a)
    if a.path:
        from overlays.topology.spec import load
        from overlays.view.plan import plan_graph

        picture = plan_graph(load(a.path), s.host_netns, s.state_dir)
    else:
        from overlays.view.live import live_graph

        picture = live_graph(s.engine())
    text = render(picture, fmt)
    if a.output:
        try:
            Path(a.output).write_text(text)
        except OSError as e:
            raise OverlaysError(f"graph: cannot write {a.output}: {e.strerror}") from e
    else:
        sys.stdout.write(text)


def _ui_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDRESS:PORT",
                   help=f"Where to serve the page (default: {DEFAULT_LISTEN}). It has no login: an address other "
                   "than loopback is served only when named here.")


def ui(s: Settings, a: argparse.Namespace) -> None:
    """Serve a live picture of this host in the browser: it changes as sandboxes come and go."""
    from overlays.view.server import is_loopback, parse_listen, serve

    host, port = parse_listen(a.listen)
    if not is_loopback(host):
        echo(f"overlays ui: warning: serving on {host}, which is not loopback, with no login: "
             "whoever reaches it sees this host's networks", err=True)
    serve(s.engine(), host, port, lambda line: echo(line, err=True))


COMMANDS = {"graph": Command(graph, _graph_arguments), "ui": Command(ui, _ui_arguments)}
