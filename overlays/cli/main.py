"""The ``overlays`` command: global options, error handling, command groups.

Errors from overlays become one line on stderr and exit code 1 (125 for ``run``
and ``exec``, whose own codes pass through the command's, as Docker does).
Signals are held while an operation changes state, so Ctrl-C cannot leave a
half-built sandbox: it takes effect once the step list is done or rolled back.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from overlays.errors import OverlaysError

HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class Settings:
    """Global options, and the engine they describe (built on first use)."""

    def __init__(self, host_netns: str | None, state_dir: str | None, store: str | None = None,
                 node: str | None = None) -> None:
        self.host_netns = host_netns
        self.state_dir = state_dir
        self.store = store
        self.node = node
        self._engine: Any = None

    def engine(self) -> Any:
        if self._engine is None:
            from overlays.engine import Engine

            state = Path(self.state_dir) if self.state_dir else None
            self._engine = Engine(host_netns=self.host_netns, state_dir=state, store_url=self.store, node=self.node)
        return self._engine


@contextmanager
def held_signals() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP until the block is done (they are delivered after)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class OverlaysGroup(click.Group):
    """Lists commands in the order they were added (a tour, not the alphabet)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=OverlaysGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host-netns", envvar="OVERLAYS_HOST_NETNS", metavar="NAME",
              help="Network namespace that plays the host (default: the real machine).")
@click.option("--state-dir", envvar="OVERLAYS_STATE_DIR", metavar="DIR",
              help="Where state is kept (default: /var/lib/overlays).")
@click.option("--store", envvar="OVERLAYS_STORE", metavar="URL",
              help="State shared by hosts: etcd://HOST:PORT[,...] or a SQLite file (default: in the state dir).")
@click.option("--node", envvar="OVERLAYS_NODE", metavar="NAME",
              help="This host's name in a shared store (default: the host namespace's, else the machine's).")
@click.version_option(package_name="overlays")
@click.pass_context
def cli(ctx: click.Context, host_netns: str | None, state_dir: str | None, store: str | None,
        node: str | None) -> None:
    """overlays: container networks from real Linux parts.

    Bridges, veth pairs, namespaces and addresses, one command each.
    """
    ctx.obj = Settings(host_netns or None, state_dir, store or None, node or None)
    ctx.call_on_close(lambda: ctx.obj._engine and ctx.obj._engine.close())


def _register() -> None:
    from overlays.cli import agent, networks, sandboxes, topology

    cli.add_command(networks.network)
    for command in [*sandboxes.COMMANDS, *topology.COMMANDS, agent.agent]:
        cli.add_command(command)


_register()

FOREGROUND_COMMANDS = {"run", "exec"}


def _command_of(args: list[str]) -> str | None:
    """The subcommand named in ``args``, skipping the global options and their values."""
    rest = iter(args)
    for arg in rest:
        if arg in ("--host-netns", "--state-dir", "--store", "--node"):
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn our errors into one clear line."""
    args = sys.argv[1:] if argv is None else argv
    try:
        result = cli.main(args=args, prog_name="overlays", standalone_mode=False)
    except OverlaysError as e:
        click.echo(f"overlays: error: {e}", err=True)
        return 125 if _command_of(args) in FOREGROUND_COMMANDS else 1
    except click.exceptions.Abort:
        click.echo("overlays: aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("overlays: interrupted", err=True)
        return 130
    return result if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
