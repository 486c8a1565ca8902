"""Attach and teardown of N sandboxes that publish one port each: overlays against CNI portmap and netavark.

The ``attach`` benchmark's harness and workers, with the one-port subjects of
``subjects``: sandbox i publishes host port 30000 + i to its port 80/tcp.

- ``overlays+port``: ``create_sandbox`` with one ``PortMapping`` (one nft map element,
  applied in-process through libnftables) / ``remove_sandbox``;
- ``cni+portmap``: the conflist chain loopback, bridge + host-local, portmap (with
  ``runtimeConfig.portMappings``), each plugin exec'd as containerd does; DEL in reverse;
- ``netavark+port``: ``netavark setup|teardown`` with ``port_mappings`` in its options
  (iptables driver, in our host namespace only);
- ``overlays`` without a port, as a reference: the difference is what the port costs.

Every subject's first and last sandbox is checked, untimed, through its published port
(a connection from the host to the gateway address reaches a listener in the sandbox).
Per sandbox, attach is everything up to a reachable port; teardown removes the port
too. At N <= 100 the subjects run in interleaved rounds (``--rounds``), and the ratios
compare figures of the same run. The issue's target: with one published port per
sandbox, attach <= 4 ms median and more than 10x faster than CNI portmap and netavark.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks import attach
from benchmarks.harness import Row, Run, Verdict, check

NAME = "attach-ports"
SUBJECT = "overlays+port"
REFERENCE = "overlays"
PEERS = ["cni+portmap", "netavark+port"]
ORDER = [SUBJECT, REFERENCE, *PEERS]

ATTACH_MEDIAN_MS = 4.0   # with one published port per sandbox
VS_PEER = 1 / 10         # more than 10x faster than CNI portmap and netavark

NOTES = {
    SUBJECT: "create_sandbox with one published port (nft map element via libnftables) / remove_sandbox",
    REFERENCE: "create_sandbox without a port: the reference for what the port costs",
    "cni+portmap": "plugins loopback + bridge/host-local (ipMasq off) + portmap (iptables): ADD x3, DEL x3",
    "netavark+port": "netavark 1.4 setup / teardown with port_mappings, iptables driver",
}
METRICS = [("attach_median", "ms"), ("attach_p99", "ms"), ("teardown_median", "ms"), ("teardown_p99", "ms"),
           ("up_total", "s"), ("down_total", "s")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(NAME, "also uses --rounds, --budget and --peer-n of attach")
    g.add_argument("--attach-ports-n", type=int, action="append", metavar="N",
                   help="sandboxes per network with one port each (repeatable; default: attach's --n if given,"
                        " else 100; --quick 20)")
    g.add_argument("--attach-ports-subjects", default=",".join(ORDER),
                   help=f"comma-separated subset of {','.join(ORDER)} (default: all)")


def _plan(args: argparse.Namespace) -> list[tuple[int, int, list[str]]]:
    wanted = [s.strip() for s in args.attach_ports_subjects.split(",") if s.strip()]
    unknown = set(wanted) - set(ORDER)
    if unknown:
        raise SystemExit(f"unknown subject(s): {', '.join(sorted(unknown))} (choose from {', '.join(ORDER)})")
    ns = args.attach_ports_n or args.n or ([20] if args.quick else [100])
    plan = []
    for n in ns:
        rounds = args.rounds or (1 if args.quick else 3)
        subs = [s for s in ORDER if s in wanted and not (s in PEERS and args.peer_n and n > args.peer_n)]
        plan.append((n, rounds if n <= 100 else 1, subs))
    return plan


def rows(results: dict[tuple[str, int], list[dict[str, Any]]]) -> list[Row]:
    """Per subject and N the figures, each against overlays+port of the same N (ratio = subject / overlays+port)."""
    out: list[Row] = []
    figs = {key: attach._figures(v) for key, v in results.items()}
    for (subject, n), f in sorted(figs.items(), key=lambda kv: (kv[0][1], ORDER.index(kv[0][0]))):
        if f is None:
            out.append(Row(NAME, subject, n, "failed", None, "", note=results[(subject, n)][0].get("error", "?")))
            continue
        base = figs.get((SUBJECT, n)) if subject != SUBJECT else None
        notes = [NOTES[subject], *attach.run_notes(f, "wiring or port check")]
        for metric, unit in METRICS:
            row = Row(NAME, subject, f["n_done"], metric, f[metric], unit, note="; ".join(notes))
            if base and base.get(metric) is not None:
                row.with_baseline(base[metric], SUBJECT)
            out.append(row)
        ref = figs.get((REFERENCE, n))
        if subject == SUBJECT and ref:
            out.append(Row(NAME, SUBJECT, f["n_done"], "port_cost", f["attach_median"] - ref["attach_median"], "ms",
                           note="attach median minus that of overlays without a port, same run"))
    return out + _target_rows(figs)


def _target_rows(figs: dict[tuple[str, int], dict[str, Any] | None]) -> list[Row]:
    """The issue's targets at each N overlays+port ran: attach median, and ratios to each peer."""
    out: list[Row] = []
    for (subject, n), f in sorted(figs.items(), key=lambda kv: kv[0][1]):
        if subject != SUBJECT or f is None:
            continue

        def row(metric: str, value: float, n_done: int = f["n_done"]) -> Row:
            return Row("target", SUBJECT, n_done, metric, value, "ms")

        out.append(check(row("attach_median", f["attach_median"]), ATTACH_MEDIAN_MS,
                         f"<= {ATTACH_MEDIAN_MS:g} ms with one published port"))
        for peer in PEERS:
            p = figs.get((peer, n))
            if not p:
                continue
            out.append(check(row("attach_median", f["attach_median"]).with_baseline(p["attach_median"], peer),
                             VS_PEER, f"ratio <= 0.10 (10x faster than {peer} or more)", on_ratio=True))
            # Not a target of the issue: reported so that teardown is read beside attach.
            out.append(row("teardown_median", f["teardown_median"]).with_baseline(p["teardown_median"], peer))
    return out


def verdicts(target_rows: list[Row]) -> list[Verdict]:
    out = []
    for r in target_rows:
        if r.target is None or r.value is None:
            continue
        vs = f" vs {r.baseline_subject} {r.baseline:.2f} {r.unit} = {r.ratio:.3f}x" if r.ratio is not None else ""
        out.append(Verdict(f"{NAME} {r.metric} {r.target}", r.met, f"{r.value:.2f} {r.unit} at N={r.n}{vs}"))
    return out


def run(run: Run, args: argparse.Namespace, log: Any) -> tuple[list[Row], list[Verdict]]:
    results = attach.collect_plan(run, _plan(args), args.budget, log, NAME)
    all_rows = rows(results)
    return all_rows, verdicts([r for r in all_rows if r.benchmark == "target"])
