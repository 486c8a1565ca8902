"""``overlays agent``: run the per-host control-plane agent in the foreground."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import click

from overlays.cli.main import Settings

pass_settings = click.make_pass_decorator(Settings)


@click.command()
@click.option("--ttl", type=click.FloatRange(1, 3600), default=10.0, show_default=True,
              help="Lease time in seconds: a host silent this long has its entries removed everywhere.")
@click.option("--resync", type=click.FloatRange(1, 86400), default=30.0, show_default=True,
              help="Seconds between full re-syncs (heals entries removed by hand).")
@pass_settings
def agent(s: Settings, ttl: float, resync: float) -> None:
    """Keep this host registered and its overlay FDB/neighbour entries in line with the store."""
    from overlays.agent import Agent

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    engine = s.engine()

    def log(line: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} agent {engine.ctx.node}: {line}", err=True)

    Agent(engine, ttl=ttl, resync_every=resync, log=log).run(stop)
    log("stopped")
