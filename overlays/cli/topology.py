"""``overlays up | plan | down | check | schema``: topology files."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from overlays.cli import render
from overlays.cli.main import Settings, held_signals

pass_settings = click.make_pass_decorator(Settings)
FILE = click.option("-f", "--file", "path", default="overlays.yaml", show_default=True, metavar="FILE",
                    help="Topology file.")


@contextmanager
def _lab(s: Settings, path: str) -> Iterator[Any]:
    """The file's lab, closed afterwards; a bad file fails here, before any engine is opened."""
    from overlays.topology import Lab, load

    lab = Lab(load(path), host_netns=s.host_netns, state_dir=s.state_dir, store_url=s.store)
    try:
        yield lab
    finally:
        lab.close()


@contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A progress bar on a terminal (for large topologies); plain lines otherwise."""
    if not sys.stderr.isatty() or total < 10:
        yield lambda action: click.echo(f"  {action}")
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("converging", total=total)

        def step(action: Any) -> None:
            bar.update(task, advance=1, description=str(action)[:50])

        yield step


@click.command()
@FILE
@pass_settings
def up(s: Settings, path: str) -> None:
    """Converge to the topology file: create, change and remove only what it owns."""
    with _lab(s, path) as lab:
        planned = lab.plan()
        if not planned:
            click.echo(f"topology {lab.name}: up to date, no changes")
            return
        click.echo(f"topology {lab.name}: {len(planned)} change(s)")
        with _progress(len(planned)) as step, held_signals():
            lab.up(progress=step)
        click.echo(f"topology {lab.name} is up")


@click.command()
@FILE
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
def plan(s: Settings, path: str, as_json: bool) -> None:
    """Show what `up` would do, changing nothing."""
    with _lab(s, path) as lab:
        actions = lab.plan()
    if as_json:
        render.emit_json([a.to_dict() for a in actions])
    elif not actions:
        click.echo(f"topology {lab.name}: up to date, no changes")
    else:
        click.echo("\n".join(f"  {a}" for a in actions))


@click.command()
@FILE
@pass_settings
def down(s: Settings, path: str) -> None:
    """Remove everything the topology created, and nothing else."""
    with _lab(s, path) as lab, held_signals():
        actions = lab.down(progress=lambda a: click.echo(f"  {a}"))
    click.echo(f"topology {lab.name} is down ({len(actions)} removed)")


@click.command()
@FILE
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
def check(s: Settings, path: str, as_json: bool) -> int:
    """Test the running topology: who must reach whom, who must not, published ports."""
    with _lab(s, path) as lab:
        report = lab.check()
    if as_json:
        render.emit_json(report.to_dict())
    else:
        click.echo(report.matrix())
        failed = report.failures()
        click.echo(f"{len(report.probes) - len(failed)}/{len(report.probes)} expectations met")
        for p in failed:
            want = "reach" if p.expect else "not reach"
            click.echo(f"FAIL: {p.source} should {want} {p.target} ({p.address}) {p.detail}".rstrip())
    return 0 if report.passed else 1


@click.command()
def schema() -> None:
    """Print the JSON Schema of topology files (for editors)."""
    from overlays.topology.schema import topology_schema

    click.echo(json.dumps(topology_schema(), indent=2))


COMMANDS = [up, plan, down, check, schema]
