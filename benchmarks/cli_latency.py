"""CLI latency: wall time of ``overlays ps`` and ``overlays run -d ... -- sleep 1``, each a process of its own.

The baseline is the interpreter's own start (``python -c pass``, same interpreter),
measured interleaved with the commands in the same run, so the ratio says how
much the CLI adds to Python's floor. ``ps`` only reads state, so it must not
import pyroute2 (about 110 ms here); ``-X importtime`` shows what it does import.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import Row, Run, Verdict, check, median, ms, now_ns, percentile

NAME = "cli"
PS_MS = 100.0
RUN_MS = 250.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cli")
    g.add_argument("--cli-reps", type=int, metavar="R", help="runs of each command (default 20; --quick 5)")
    g.add_argument("--cli-sandboxes", type=int, default=10, metavar="K",
                   help="sandboxes that exist while ps runs (default 10)")


def overlays_argv() -> list[str]:
    """The console script users run, next to this interpreter (else ``python -m overlays``)."""
    script = Path(sys.executable).parent / "overlays"
    return [str(script)] if script.exists() else [sys.executable, "-m", "overlays"]


class Cli:
    """Runs commands as a user would: bytecode cached (in a private prefix, so the tree stays untouched)."""

    def __init__(self, host: str, state: Path, pycache: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env = env | {"OVERLAYS_HOST_NETNS": host, "OVERLAYS_STATE_DIR": str(state),
                          "PYTHONPYCACHEPREFIX": str(pycache)}

    def timed(self, argv: list[str]) -> tuple[int, subprocess.CompletedProcess[str]]:
        t = now_ns()
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        return now_ns() - t, done

    def overlays(self, *args: str, check: bool = True) -> tuple[int, subprocess.CompletedProcess[str]]:
        took, done = self.timed([*overlays_argv(), *args])
        if check and done.returncode != 0:
            raise RuntimeError(f"overlays {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return took, done

    def importtime(self, *args: str) -> tuple[list[tuple[str, float]], bool]:
        """Top-level imports by cumulative ms, and whether pyroute2 was among all imports."""
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "overlays", *args], env=self.env,
                              capture_output=True, text=True, timeout=60)
        top: list[tuple[str, float]] = []
        pyroute2 = False
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
                continue
            _, cumulative, name = line.split("|")
            pyroute2 = pyroute2 or name.strip().split(".")[0] == "pyroute2"
            if not name[1:].startswith(" "):  # top level: no nesting indent
                top.append((name.strip(), int(cumulative) / 1000))
        return sorted(top, key=lambda x: -x[1])[:8], pyroute2


def run(run: Run, args: argparse.Namespace, log: Any) -> tuple[list[Row], list[Verdict]]:
    reps = args.cli_reps or (5 if args.quick else 20)
    with run.host("cli") as host:
        state = run.scratch(host) / "state"
        run.add_engine(state, host)
        cli = Cli(host, state, run.scratch("pycache"))
        try:
            return _measure(cli, reps, args.cli_sandboxes, log)
        finally:
            _clean(cli)


def _measure(cli: Cli, reps: int, existing: int, log: Any) -> tuple[list[Row], list[Verdict]]:
    cli.overlays("network", "create", "bench", "--subnet", "10.78.0.0/16")
    for k in range(existing):
        cli.overlays("run", "--name", f"p{k}", "--network", "bench")
    cli.timed([sys.executable, "-c", "pass"])  # warm-up: fills the bytecode cache and the page cache
    cli.overlays("ps")
    floor, ps, runs = [], [], []
    for k in range(reps):  # interleaved, so drifts in load hit all three alike
        floor.append(cli.timed([sys.executable, "-c", "pass"])[0])
        ps.append(cli.overlays("ps")[0])
        runs.append(cli.overlays("run", "-d", "--name", f"r{k}", "--network", "bench", "--", "sleep", "1")[0])
    rm = [cli.overlays("rm", "-f", f"r{k}")[0] for k in range(reps)]
    ps_imports, ps_pyroute2 = cli.importtime("ps")
    _, ls_pyroute2 = cli.importtime("network", "ls")
    log(f"  cli: python floor {ms(median(floor)):.1f} ms, ps {ms(median(ps)):.1f} ms, "
        f"run -d {ms(median(runs)):.1f} ms, rm -f {ms(median(rm)):.1f} ms")

    base = ms(median(floor))
    note = (f"median of {reps}, each a new process, interleaved; baseline: {Path(sys.executable).name} -c pass;"
            f" bytecode cached after one warm-up run; {existing} sandboxes exist")
    rows = [Row(NAME, "python -c pass", reps, "wall_median", base, "ms", note=note),
            Row(NAME, "python -c pass", reps, "wall_p90", ms(percentile(floor, 90)), "ms")]
    for subject, samples in (("overlays ps", ps), ("overlays run -d", runs), ("overlays rm -f", rm)):
        rows.append(Row(NAME, subject, reps, "wall_median", ms(median(samples)), "ms").with_baseline(base, "python"))
        rows.append(Row(NAME, subject, reps, "wall_p90", ms(percentile(samples, 90)), "ms"))
    top = ", ".join(f"{name} {t:.0f} ms" for name, t in ps_imports)
    rows.append(Row(NAME, "overlays ps", None, "imports_pyroute2", float(ps_pyroute2), "bool",
                    note=f"top imports (-X importtime, cumulative): {top}"))
    rows.append(Row(NAME, "overlays network ls", None, "imports_pyroute2", float(ls_pyroute2), "bool"))
    targets = [
        check(Row("target", "overlays ps", reps, "wall_median", ms(median(ps)), "ms"), PS_MS, f"<= {PS_MS:.0f} ms"),
        check(Row("target", "overlays run -d", reps, "wall_median", ms(median(runs)), "ms"), RUN_MS,
              f"<= {RUN_MS:.0f} ms"),
        check(Row("target", "overlays ps", None, "imports_pyroute2", float(ps_pyroute2), "bool"), 0,
              "ps does not import pyroute2"),
    ]
    verdicts = [Verdict(f"{r.subject} {r.target}", r.met,
                        f"{r.value:.1f} ms (python floor {base:.1f} ms)" if r.unit == "ms"
                        else ("imports pyroute2" if r.value else "does not import pyroute2"))
                for r in targets]
    return rows + targets, verdicts


def _clean(cli: Cli) -> None:
    """Remove what the CLI made, through the CLI; the run's sweep catches anything left."""
    done = cli.overlays("ps", "--json", check=False)[1]
    if done.returncode == 0:
        import json

        names = [b["name"] for b in json.loads(done.stdout or "[]")]
        if names:
            cli.overlays("rm", "-f", *names, check=False)
    cli.overlays("network", "rm", "-f", "bench", check=False)
