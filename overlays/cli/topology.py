"""``overlays up | plan | down | check | schema``: topology files."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from overlays.cli import render
from overlays.cli.main import Command, Settings, held_signals, json_flag
from overlays.cli.render import echo


def _file(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", dest="path", default="overlays.yaml", metavar="FILE",
                   help="Topology file (default: overlays.yaml).")


def _file_and_json(p: argparse.ArgumentParser) -> None:
    _file(p)
    json_flag(p)


@contextmanager
def _lab(s: Settings, path: str) -> Iterator[Any]:
    """The file's lab, closed afterwards; a bad file fails here, before any engine is opened."""
    from overlays.topology import Lab, load

    lab = Lab(load(path), host_netns=s.host_netns, state_dir=s.state_dir, store_url=s.store, kernel=s.kernel())
    try:
        yield lab
    finally:
        lab.close()


@contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A progress bar on a terminal (for large topologies); plain lines otherwise."""
    if not sys.stderr.isatty() or total < 10:
        yield lambda action: echo(f"  {action}")
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("converging", total=total)

        def step(action: Any) -> None:
            bar.update(task, advance=1, description=str(action)[:50])

        yield step


def up(s: Settings, a: argparse.Namespace) -> None:
    """Converge to the topology file: create, change and remove only what it owns."""
    with _lab(s, a.path) as lab:
        planned = lab.plan()
        if not planned:
            echo(f"topology {lab.name}: up to date, no changes")
            return
        echo(f"topology {lab.name}: {len(planned)} change(s)")
        with _progress(len(planned)) as step, held_signals():
            lab.up(progress=step)
        echo(f"topology {lab.name} is up")


def plan(s: Settings, a: argparse.Namespace) -> None:
    """Show what `up` would do, changing nothing."""
    with _lab(s, a.path) as lab:
        actions = lab.plan()
    if a.as_json:
        render.emit_json([action.to_dict() for action in actions])
    elif not actions:
        echo(f"topology {lab.name}: up to date, no changes")
    else:
        echo("\n".join(f"  {action}" for action in actions))


def down(s: Settings, a: argparse.Namespace) -> None:
    """Remove everything the topology created, and nothing else."""
    with _lab(s, a.path) as lab, held_signals():
        actions = lab.down(progress=lambda action: echo(f"  {action}"))
    echo(f"topology {lab.name} is down ({len(actions)} removed)")


def check(s: Settings, a: argparse.Namespace) -> int:
    """Test the running topology: who must reach whom, who must not, published ports."""
    with _lab(s, a.path) as lab:
        report = lab.check()
    if a.as_json:
        render.emit_json(report.to_dict())
    else:
        echo(report.matrix())
        failed = report.failures()
        echo(f"{len(report.probes) - len(failed)}/{len(report.probes)} expectations met")
        for p in failed:
            if p.kind == "missing":
                echo(f"FAIL: {p.detail}")
                continue
            want = "reach" if p.expect else "not reach"
            echo(f"FAIL: {p.source} should {want} {p.target} ({p.address}) {p.detail}".rstrip())
    return 0 if report.passed else 1


def schema(s: Settings, a: argparse.Namespace) -> None:
    """Print the JSON Schema of topology files (for editors)."""
    from overlays.topology.schema import topology_schema

    echo(json.dumps(topology_schema(), indent=2))


COMMANDS = {
    "up": Command(up, _file),
    "plan": Command(plan, _file_and_json),
    "down": Command(down, _file),
    "check": Command(check, _file_and_json),
    "schema": Command(schema),
}
