"""``overlays agent``: run the per-host agent (overlay control plane, DNS server) in the foreground."""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Callable
from typing import Any

from overlays.cli.main import Command, Settings
from overlays.cli.render import echo


def _seconds(low: float, high: float) -> Callable[[str], float]:
    """A number of seconds from ``low`` to ``high``, as an argument type."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in the range {low:g}<=x<={high:g}")
        return value

    return parse


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ttl", type=_seconds(1, 3600), default=10.0, metavar="SECONDS",
                   help="Lease time in seconds: a host silent this long has its entries removed everywhere "
                   "(default: 10, 1 to 3600).")
    p.add_argument("--resync", type=_seconds(1, 86400), default=30.0, metavar="SECONDS",
                   help="Seconds between full re-syncs (heals entries removed by hand) (default: 30, 1 to 86400).")
    p.add_argument("--on-demand", action="store_true", help=argparse.SUPPRESS)  # started by the engine


def agent(s: Settings, a: argparse.Namespace) -> None:
    """Serve this host's DNS names; keep it registered and its overlay FDB/neighbour entries in line.

    The engine starts one by itself when a sandbox needs it (and stops it with the host's last
    sandbox and network); one started here takes over from that one and stays until stopped.
    """
    from overlays.agent import Agent

    engine = s.engine()

    def log(line: str) -> None:
        # Each line follows a batch of kernel steps (a sync): journaled as one operation of the agent.
        s.journal(f"overlays agent: {line}")
        echo(f"{time.strftime('%H:%M:%S')} agent {engine.node}: {line}", err=True)

    runner = Agent(engine, ttl=a.ttl, resync_every=a.resync, log=log, on_demand=a.on_demand)

    def on_signal(signum: int, frame: Any) -> None:
        runner.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    runner.run()
    log("stopped")


COMMANDS = {"agent": Command(agent, _arguments)}
