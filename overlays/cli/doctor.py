"""``overlays doctor``: the store against the kernel on this host; with --fix, repaired."""

from __future__ import annotations

import argparse

from overlays.cli.main import Command, Settings, held_signals, json_flag
from overlays.cli.render import echo, emit_json


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fix", action="store_true", help="Repair what is found (only what is ours).")
    json_flag(p)


def doctor(s: Settings, a: argparse.Namespace) -> int:
    """List every inconsistency between the records and this host's kernel, one line each with its repair.

    Exit 0 when all is well (after --fix: when all was repaired), 1 when something is (still) wrong.
    """
    engine = s.engine()
    if a.fix:
        with held_signals():
            before, _ = engine.doctor()
            left, failures = engine.doctor(fix=True) if before else ([], [])
    else:
        before, failures = engine.doctor()
        left = before
    if a.as_json:
        emit_json({"found": [f.to_json() for f in before], "left": [f.to_json() for f in left] if a.fix else None,
                   "failed": failures})
    else:
        for f in before:
            echo(f"{'fixed' if a.fix and f not in left else 'found'}: {f.what} -> {f.repair}")
        for line in failures:
            echo(f"failed: {line}")
        echo("all is well" if not before else f"{len(before)} found" + (f", {len(left)} left" if a.fix else ""))
    return 1 if left else 0


COMMANDS = {"doctor": Command(doctor, _arguments)}
