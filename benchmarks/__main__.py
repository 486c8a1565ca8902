"""``python -m benchmarks [all|attach|attach-ports|teardown|up|cli|limit|ports|dataplane|overlay|cni|dns|faults]
[--quick]``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import ModuleType

from benchmarks import (
    attach,
    attach_ports,
    bridge_limit,
    cli_latency,
    cni,
    dataplane,
    dns,
    faults,
    overlay_convergence,
    ports,
    teardown,
    topology_up,
)
from benchmarks.harness import (
    RESULTS_DIR,
    Row,
    Run,
    Verdict,
    interrupts_as_keyboard,
    source_digest,
    table,
    write_json,
)

BENCHMARKS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (attach, attach_ports, teardown, cli_latency, bridge_limit, topology_up, overlay_convergence, ports,
              dataplane, cni, dns, faults)
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("which", nargs="?", default="all", choices=["all", *BENCHMARKS],
                   help="which benchmark to run (default: all)")
    p.add_argument("--quick", action="store_true", help="a smoke run: small N, few repetitions")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"where the JSON goes (default {RESULTS_DIR}/)")
    for module in BENCHMARKS.values():
        module.add_arguments(p)
    return p.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        log("benchmarks: need root (they create network namespaces)")
        return 2
    chosen = list(BENCHMARKS) if args.which == "all" else [args.which]
    rows: list[Row] = []
    verdicts: list[Verdict] = []
    started = time.monotonic()
    load_before = os.getloadavg()
    code_before = source_digest()
    run = Run()
    log(f"benchmarks: run {run.prefix}, scratch {run.workdir}")
    try:
        with interrupts_as_keyboard():
            for name in chosen:
                log(f"{name}:")
                r, v = BENCHMARKS[name].run(run, args, log)
                rows += r
                verdicts += v
    except KeyboardInterrupt:
        log("benchmarks: interrupted; cleaning up")
        return 130
    finally:
        run.close()
    left = run.leftovers()
    clean = not (left["netns"] or left["links"] or left["root_firewall_changed"])
    meta = {"argv": sys.argv[1:] if argv is None else argv, "benchmarks": chosen, "quick": args.quick,
            "seconds": round(time.monotonic() - started, 1), "loadavg_before": load_before,
            "root_namespace_after": left, "clean": clean,
            "overlays_source": {"before": code_before, "after": source_digest()}}
    path = write_json(rows, verdicts, meta, args.out)
    print(table(rows))
    print()
    print("verdicts:")
    for v in verdicts:
        print("  " + v.line())
    print()
    state = "nothing of ours left behind" if clean else f"LEFT BEHIND in the root namespace: {left}"
    print(f"root namespace after the run: {state}")
    if left["not_ours"]["netns"] or left["not_ours"]["links"]:
        print(f"  (appeared meanwhile, not made by this run: {left['not_ours']})")
    if meta["overlays_source"]["before"] != meta["overlays_source"]["after"]:
        print("WARNING: the overlays sources changed during this run: figures may mix two versions; run again")
    load = ", ".join(f"{x:.1f}" for x in load_before)
    print(f"results: {path} (and {args.out / 'latest.json'}); {meta['seconds']} s; load average before: {load}"
          f" on {os.cpu_count()} CPUs (figures are noisy when others share the machine: read the ratios)")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
