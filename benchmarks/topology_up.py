"""``overlays up`` / ``down`` of N sandboxes on one network, against the Python API in the same run.

The topology path plans (reads the store and the kernel), then creates; ``down``
removes everything in one batch. The baseline is the same N sandboxes created one
by one through ``Engine.create_sandbox`` and removed with ``remove_sandboxes``, in
a host namespace of its own: the ratio is what planning and bookkeeping cost.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.harness import Row, Run, Verdict, check

NAME = "up"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("up")
    g.add_argument("--up-n", type=int, nargs="+", default=[100, 1000], help="sandboxes per topology (default 100 1000)")


def _topology(n: int, name: str) -> dict[str, Any]:
    return {"name": name, "networks": {"net": {"subnet": "10.96.0.0/20"}},
            "sandboxes": {f"s{i}": {"networks": ["net"]} for i in range(n)}}


def _with_up(run: Run, n: int) -> tuple[float, float]:
    from overlays.topology import Lab, resolve

    with run.host("up") as host:
        state = run.scratch(f"up{n}")
        run.add_engine(state, host)
        lab = Lab(resolve(_topology(n, run.name("t")), "bench"), host_netns=host, state_dir=state)
        try:
            t0 = time.perf_counter()
            lab.up()
            t1 = time.perf_counter()
            lab.down()
            t2 = time.perf_counter()
        finally:
            lab.close()
    return t1 - t0, t2 - t1


def _with_api(run: Run, n: int) -> tuple[float, float]:
    from overlays import EndpointRequest, Engine, NetworkSpec, SandboxSpec

    with run.host("api") as host:
        state = run.scratch(f"api{n}")
        run.add_engine(state, host)
        eng = Engine(host_netns=host, state_dir=state)
        try:
            eng.create_network(NetworkSpec.parse("net", subnet="10.96.0.0/20"))
            t0 = time.perf_counter()
            for i in range(n):
                eng.create_sandbox(SandboxSpec.parse(f"s{i}", [EndpointRequest.parse("net")]))
            t1 = time.perf_counter()
            eng.remove_sandboxes([f"s{i}" for i in range(n)])
            t2 = time.perf_counter()
            eng.remove_network("net")
        finally:
            eng.close()
    return t1 - t0, t2 - t1


def run(run: Run, args: argparse.Namespace, log: Any) -> tuple[list[Row], list[Verdict]]:
    rows: list[Row] = []
    verdicts: list[Verdict] = []
    for n in [20] if args.quick else args.up_n:
        api_up, api_down = _with_api(run, n)
        up, down = _with_up(run, n)
        log(f"  n={n}: up {up:.2f} s (API {api_up:.2f} s), down {down:.2f} s (API {api_down:.2f} s)")
        rows.append(Row(NAME, "overlays up", n, "up_total", up, "s").with_baseline(api_up, "Python API"))
        rows.append(Row(NAME, "overlays down", n, "down_total", down, "s").with_baseline(api_down, "Python API"))
        rows.append(Row(NAME, "overlays up", n, "per sandbox", up / n * 1000, "ms").with_baseline(
            api_up / n * 1000, "Python API"))
        if n == 1000:
            up_row = check(Row(NAME, "overlays up", n, "1000 up", up, "s"), 5.0, "<= 5 s")
            down_row = check(Row(NAME, "overlays down", n, "1000 down", down, "s"), 3.0, "<= 3 s")
            rows += [up_row, down_row]
            verdicts += [Verdict("overlays up: 1000 sandboxes in <= 5 s", up_row.met, f"{up:.1f} s"),
                         Verdict("overlays down: 1000 sandboxes in <= 3 s", down_row.met, f"{down:.1f} s")]
    return rows, verdicts
