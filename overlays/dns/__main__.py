"""``python -m overlays.dns --state-dir DIR [--host-netns NAME] [--node NAME]``: the DNS server alone.

The agent runs the same server (``overlays agent``, which the engine starts on demand);
this entry serves tests, benchmarks and debugging. It starts with no sandboxes: they
register over the control socket (``DIR/dns/NODE.sock``). Stops on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from overlays.errors import OverlaysError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m overlays.dns", description=__doc__)
    p.add_argument("--state-dir", type=Path, required=True, help="where the control socket goes (dns/NODE.sock)")
    p.add_argument("--host-netns", help="the namespace that plays the host (forwarding goes out from there)")
    p.add_argument("--node", help="this host's name (default: the host namespace's, else the machine's)")
    p.add_argument("--no-cache", action="store_true", help="answer every query from the table (for measurements)")
    p.add_argument("--quiet", action="store_true", help="no log lines on stderr")
    a = p.parse_args(argv)
    from overlays.dns.server import DnsServer
    from overlays.engine import default_node
    from overlays.kernel import dnsctl

    def log(line: str) -> None:
        if not a.quiet:
            print(f"{time.strftime('%H:%M:%S')} dns: {line}", file=sys.stderr, flush=True)

    try:
        control = dnsctl.socket_path(a.state_dir, a.node or default_node(a.host_netns))
        server = DnsServer(control, a.host_netns, log=log, cache=not a.no_cache)
    except OverlaysError as e:
        print(f"overlays dns: {e}", file=sys.stderr)
        return 1

    def on_signal(signum: int, frame: Any) -> None:
        server.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print("ready", flush=True)  # whoever started us may read this line: the control socket is up
    try:
        server.run()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
