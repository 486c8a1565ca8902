"""Attach and teardown of N sandboxes on one network: overlays against raw netlink, `ip`, CNI, netavark.

Each (subject, N) runs in a worker process of its own with a fresh host namespace.
Per sandbox we time the attach (namespace to default route) and the teardown;
"up" is the attach loop's total, "down" the teardown loop's total plus the wait
until the kernel has removed every host-side veth (so a subject cannot look fast
by leaving the kernel's work for later). At N = 100 the subjects run in several
interleaved rounds (subject order rotated) so drifts in machine load hit all of
them; ratios compare figures of the same run. A subject that exceeds its time
budget stops attaching, tears down what it made, and is reported at the N it reached.

``--ipv6``: overlays and packed netlink, each on an IPv4-only network and on a dual-stack one
(``overlays-dual``, ``packed-dual``), interleaved; each dual-stack figure is shown against its
IPv4-only twin (target: overlays' attach on a dual-stack network <= 1.25x IPv4-only at N = 1000).
Every subject of such a run also counts, untimed, what its bridge carried during the attaches and in
the ``--quiet-seconds`` after (``chatter``): an MLD storm would show as a fan-out of about N/2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks import chatter, subjects
from benchmarks.harness import Row, Run, Verdict, WorkerFailed, check, median, ms, now_ns, percentile, run_worker

NAME = "attach"
BASELINE = "raw"
ORDER = ["overlays", "overlays-nodns", "overlays-dual", "raw", "packed", "packed-dual", "packed-dual-querier",
         "packed-dual-nomld", "ip", "cni", "netavark"]
# Each dual-stack subject and its IPv4-only twin.
DUAL = {"overlays-dual": "overlays", "packed-dual": "packed", "packed-dual-querier": "packed",
        "packed-dual-nomld": "packed"}
DEFAULT = [s for s in ORDER if s not in DUAL]
IPV6 = ["overlays", "overlays-dual", "packed", "packed-dual", "packed-dual-nomld"]
PEERS = {"ip", "cni", "netavark"}
TOOLS = PEERS  # subjects that exec a process per step

# Targets of the issue, on this 2-core machine kind.
ATTACH_MEDIAN_MS = 3.0      # per sandbox, at N = 1000
TEARDOWN_MEDIAN_MS = 2.0
UP_TOTAL_S = 5.0            # 1000 sandboxes
DOWN_TOTAL_S = 3.0
VS_RAW = 2.0                # within 2x of raw netlink
VS_CNI_ATTACH = 1 / 3       # at least 3x faster than CNI ADD
VS_CNI_DEL = 1 / 10         # 10x faster than CNI DEL
DUAL_VS_IPV4 = 1.25         # attach on a dual-stack network within 1.25x of IPv4-only


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attach")
    g.add_argument("--n", type=int, action="append", metavar="N",
                   help="sandboxes per network (repeatable; default 100 and 1000, --quick 20)")
    g.add_argument("--peer-n", type=int, metavar="N",
                   help="largest N at which ip, cni and netavark run (default: every N)")
    g.add_argument("--rounds", type=int, metavar="R",
                   help="interleaved rounds (default 3 at N <= 100, 1 with --quick; larger N run once unless given)")
    g.add_argument("--subjects",
                   help=f"comma-separated subset of {','.join(ORDER)} (default: {','.join(DEFAULT)};"
                        f" with --ipv6 {','.join(IPV6)})")
    g.add_argument("--ipv6", action="store_true",
                   help="IPv4-only against dual-stack networks, and what their bridges carry (see above)")
    g.add_argument("--quiet-seconds", type=float, default=5.0, metavar="S",
                   help="with --ipv6: how long after the attaches the bridge's chatter is counted (default 5)")
    g.add_argument("--budget", type=float, default=240.0, metavar="S",
                   help="seconds a subject may spend attaching at one N before it stops (default 240)")


# -- the worker: one subject, one N, in a child process ------------------------


def _veths_in(host: str) -> int:
    out = subprocess.run(["ip", "-n", host, "-o", "link", "show", "type", "veth"], capture_output=True, text=True)
    return len(out.stdout.splitlines())


def _wait_veths_gone(host: str, timeout: float = 60.0) -> tuple[int, int]:
    """Poll until the host namespace holds no veth; returns (ns waited, veths still there)."""
    start, left = now_ns(), _veths_in(host)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.002)
        left = _veths_in(host)
    return now_ns() - start, left


def _verify(sub: subjects.Base, host: str, n: int) -> dict[str, Any]:
    """An independent view (``ip -j``): the bridge has n ports; first and last sandbox are fully wired."""

    def ipj(ns: str, *args: str) -> Any:
        out = subprocess.run(["ip", "-j", "-n", ns, *args], capture_output=True, text=True).stdout
        return json.loads(out or "[]")

    ports = len(ipj(host, "link", "show", "master", sub.bridge))
    wired = []
    for i in sorted({0, n - 1}):
        ns = sub.sandbox_netns(i)
        addrs = {
            (a["ifname"], a.get("operstate")): [x["local"] for x in a.get("addr_info", []) if x["family"] == "inet"]
            for a in ipj(ns, "addr", "show")
        }
        default = any(r.get("dst") == "default" for r in ipj(ns, "route", "show"))
        lo_up = any(k[0] == "lo" and "127.0.0.1" in v for k, v in addrs.items())
        eth0 = any(k[0] == "eth0" and k[1] == "UP" and v for k, v in addrs.items())
        wired.append(bool(default and lo_up and eth0 and (sub.subnet6 is None or _wired6(ns, ipj))))
    extra = all(sub.verify_sandbox(i) for i in sorted({0, n - 1}))  # e.g. its published port answers
    if sub.subnet6 is not None and n:
        extra = extra and _pings6(sub.sandbox_netns(0), sub.sandbox_netns(n - 1), ipj)
    return {"bridge_ports": ports, "wired": all(wired), "extra": extra, "ok": ports == n and all(wired) and extra}


def _pings6(client: str, server: str, ipj: Any) -> bool:
    """The first sandbox reaches the last one's IPv6 address (neighbour discovery works on this bridge)."""
    found = [a["local"] for link in ipj(server, "-6", "addr", "show", "dev", "eth0") for a in link["addr_info"]]
    if not found:
        return False
    ping = subprocess.run(["ip", "netns", "exec", client, "ping", "-6", "-c", "1", "-W", "3", found[0]],
                          capture_output=True, timeout=20)
    return ping.returncode == 0


def _wired6(ns: str, ipj: Any) -> bool:
    """eth0 holds one global IPv6 address (no link-local, nothing tentative) and there is an IPv6 default route."""
    found = [a for link in ipj(ns, "-6", "addr", "show", "dev", "eth0") for a in link.get("addr_info", [])]
    quiet = [a.get("scope") for a in found] == ["global"] and not any(a.get("tentative") for a in found)
    return quiet and any(r.get("dst") == "default" for r in ipj(ns, "-6", "route", "show"))


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Attach spec["n"] sandboxes with one subject, then tear them down; per-sandbox times in ns."""
    n, host, budget = spec["n"], spec["host"], spec["budget"]
    sub = subjects.SUBJECTS[spec["subject"]](host, spec["subnet"], Path(spec["workdir"]))
    attach: list[int] = []
    detach: list[int] = []
    result: dict[str, Any] = {"stopped": None}
    try:
        sub.prepare()
        deadline = now_ns() + int(budget * 1e9)
        for i in range(n):
            t = now_ns()
            sub.attach(i)
            attach.append(now_ns() - t)
            if now_ns() > deadline and i + 1 < n:
                result["stopped"] = f"time budget of {budget:.0f} s spent after {i + 1} of {n} sandboxes"
                break
        done = len(attach)
        if spec.get("chatter") and done:  # untimed: what the bridge carried during the attaches and just after
            sample = [sub.sandbox_netns(i) for i in sorted({0, done - 1})]
            during = chatter.snapshot(host, sub.bridge, sample)
            time.sleep(spec["quiet_seconds"])
            result["chatter"] = {"during": during, "after": chatter.snapshot(host, sub.bridge, sample)}
        result["verify"] = _verify(sub, host, done)
        for i in range(done):
            t = now_ns()
            sub.detach(i)
            detach.append(now_ns() - t)
        result["gone_wait_ns"], result["veths_left"] = _wait_veths_gone(host)
        if sub.execs_tools:  # untimed: one more sandbox, each tool under /usr/bin/time
            sub.rss_probe = True
            sub.attach(done)
            sub.detach(done)
            result["tool_rss_kib"] = sub.tool_rss_kib
            _wait_veths_gone(host)
    finally:
        sub.close()
    return result | {"attach_ns": attach, "detach_ns": detach}


# -- the parent: rounds, rows, verdicts -----------------------------------------


def _plan(args: argparse.Namespace) -> list[tuple[int, int, list[str]]]:
    """(N, rounds, subjects) in the order they run."""
    given = args.subjects or ",".join(IPV6 if args.ipv6 else DEFAULT)
    wanted = [s.strip() for s in given.split(",") if s.strip()]
    unknown = set(wanted) - set(ORDER)
    if unknown:
        raise SystemExit(f"unknown subject(s): {', '.join(sorted(unknown))} (choose from {', '.join(ORDER)})")
    ns = args.n or ([20] if args.quick else [100, 1000])
    plan = []
    for n in ns:
        rounds = args.rounds or (1 if args.quick or n > 100 else 3)
        subs = [s for s in ORDER if s in wanted and not (s in PEERS and args.peer_n and n > args.peer_n)]
        plan.append((n, rounds, subs))
    return plan


def _measure(run: Run, subject: str, n: int, budget: float, extra: dict[str, Any]) -> dict[str, Any]:
    try:
        with run.host(subject[:3]) as host:
            workdir = run.scratch(host)
            if issubclass(subjects.SUBJECTS[subject], subjects.OverlaysSubject):
                run.add_engine(workdir / "state", host)
            spec = {"subject": subject, "n": n, "host": host, "subnet": "10.77.0.0/16", "workdir": str(workdir),
                    "budget": budget} | extra
            return run_worker("attach", spec, timeout=budget * 4 + 600)
    finally:
        run.sweep()  # whatever a failed or interrupted worker left


def collect(run: Run, args: argparse.Namespace, log: Any) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Run the plan; results per (subject, N), one dict per round."""
    extra = {"chatter": True, "quiet_seconds": args.quiet_seconds} if args.ipv6 else {}
    return collect_plan(run, _plan(args), args.budget, log, NAME, extra)


def collect_plan(run: Run, plan: list[tuple[int, int, list[str]]], budget: float, log: Any,
                 label: str, extra: dict[str, Any] | None = None) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Run (N, rounds, subjects) in interleaved rounds, each in a worker of its own; results per (subject, N)."""
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for n, rounds, subs in plan:
        for r in range(rounds):
            order = subs[r % len(subs):] + subs[: r % len(subs)]
            for subject in order:
                why = subjects.available(subject)
                if why:
                    log(f"  {subject}: skipped, {why}")
                    continue
                t = time.monotonic()
                try:
                    res = _measure(run, subject, n, budget, extra or {})
                except WorkerFailed as e:
                    res = {"error": str(e)}
                results.setdefault((subject, n), []).append(res)
                log(f"  {label} n={n} round {r + 1}/{rounds} {subject}: {_summary(res)} ({time.monotonic() - t:.0f} s)")
    return results


def _summary(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"FAILED: {res['error']}"
    a, d = res["attach_ns"], res["detach_ns"]
    extra = f"; {res['stopped']}" if res.get("stopped") else ""
    if "chatter" in res:
        c = res["chatter"]
        extra += (f"; bridge: {c['during']['from_sandboxes']} frames from sandboxes, {c['during']['to_sandboxes']}"
                  f" to them (fan-out {chatter.fanout(c['during']):.1f})")
    return f"{len(a)} up, attach median {ms(median(a)):.2f} ms, teardown median {ms(median(d)):.2f} ms{extra}"


def _figures(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return None
    att = [x for r in ok for x in r["attach_ns"]]
    det = [x for r in ok for x in r["detach_ns"]]
    return {
        "attach_median": ms(median(att)),
        "attach_p99": ms(percentile(att, 99)),
        "teardown_median": ms(median(det)),
        "teardown_p99": ms(percentile(det, 99)),
        "up_total": median([ms(sum(r["attach_ns"])) / 1000 for r in ok]),
        "down_total": median([ms(sum(r["detach_ns"]) + r["gone_wait_ns"]) / 1000 for r in ok]),
        "peak_rss": max(r["rss_kib"]["self"] for r in ok) / 1024,
        "peak_rss_tool": max(r.get("tool_rss_kib", 0) for r in ok) / 1024 or None,
        "n_done": min(len(r["attach_ns"]) for r in ok),
        "stopped": next((r["stopped"] for r in ok if r.get("stopped")), None),
        "verified": all(r.get("verify", {}).get("ok") for r in ok),
        "verify": ok[0].get("verify"),
        "veths_left": max(r.get("veths_left", 0) for r in ok),
        "rounds": len(ok),
        "chatter": [r["chatter"] for r in ok if "chatter" in r],
    }


METRICS = [
    ("attach_median", "ms"), ("attach_p99", "ms"), ("teardown_median", "ms"), ("teardown_p99", "ms"),
    ("up_total", "s"), ("down_total", "s"), ("peak_rss", "MiB"), ("peak_rss_tool", "MiB"),
]


def rows(results: dict[tuple[str, int], list[dict[str, Any]]]) -> list[Row]:
    out: list[Row] = []
    figs = {key: _figures(v) for key, v in results.items()}
    for (subject, n), f in sorted(figs.items(), key=lambda kv: (kv[0][1], ORDER.index(kv[0][0]))):
        if f is None:
            err = results[(subject, n)][0].get("error", "?")
            out.append(Row(NAME, subject, n, "failed", None, "", note=err))
            continue
        twin = DUAL.get(subject, BASELINE)
        base = figs.get((twin, n)) if subject != BASELINE else None
        notes = run_notes(f, "wiring check")
        if subject in DUAL:
            notes.append(f"dual-stack network ({subjects.SUBNET6}): ratios against {twin} on IPv4 only")
        if subject in ("raw", "packed", "ip"):
            notes.append("baseline: host namespace IPv6 quieted, addrgenmode none on eth0")
        if subject == "cni":
            notes.append("plugins loopback + bridge/host-local (ipMasq off): ADD x2, DEL x2 per sandbox")
        if subject == "netavark":
            notes.append("netavark 1.4 setup / teardown, iptables driver (rules in our host namespace only)")
        if subject in TOOLS:
            notes.append("peak_rss = the driving Python process; peak_rss_tool = largest tool process")
        for metric, unit in METRICS:
            if metric == "peak_rss_tool" and subject not in TOOLS:
                continue
            row = Row(NAME, subject, f["n_done"], metric, f[metric], unit, note="; ".join(notes))
            if base and base.get(metric) is not None:
                row.with_baseline(base[metric], twin)
            out.append(row)
        out += _chatter_rows(subject, f)
    return out + _target_rows(figs) + _dual_target_rows(figs)


def _chatter_rows(subject: str, f: dict[str, Any]) -> list[Row]:
    """What the bridge carried (median over rounds): frames from and to sandboxes, during and after."""
    if not f["chatter"]:
        return []
    during = [c["during"] for c in f["chatter"]]
    after = [chatter.delta(c["after"], c["during"]) for c in f["chatter"]]
    first = [next(iter(c["after"]["sandbox_snmp6"].values())) for c in f["chatter"]]
    quiet = "in the quiet seconds after"
    figures = [
        ("bridge frames from sandboxes, during attaches", [d["from_sandboxes"] for d in during]),
        ("bridge frames to sandboxes, during attaches", [d["to_sandboxes"] for d in during]),
        ("bridge fan-out (to / from sandboxes), during", [chatter.fanout(d) for d in during]),
        ("bridge frames to the host, during attaches", [d["to_host"] for d in during]),
        (f"bridge frames from sandboxes, {quiet}", [a["from_sandboxes"] for a in after]),
        (f"bridge frames to sandboxes, {quiet}", [a["to_sandboxes"] for a in after]),
        ("MLDv2 reports sent by the first sandbox, all told", [s["Icmp6OutMLDv2Reports"] for s in first]),
        ("IPv6 multicast received by the first sandbox, all told", [s["Ip6InMcastPkts"] for s in first]),
    ]
    return [Row(NAME, subject, f["n_done"], metric, median(values), "x" if "fan-out" in metric else "frames")
            for metric, values in figures]


def _dual_target_rows(figs: dict[tuple[str, int], dict[str, Any] | None]) -> list[Row]:
    """Attach on a dual-stack network against IPv4-only, at the largest N both ran (overlays; packed as context)."""
    out: list[Row] = []
    for dual, twin in DUAL.items():
        ns = sorted(n for (s, n), f in figs.items() if s == dual and f and figs.get((twin, n)))
        if not ns:
            continue
        f, base = figs[(dual, ns[-1])], figs[(twin, ns[-1])]
        assert f is not None and base is not None
        row = Row("target", dual, f["n_done"], "attach_median", f["attach_median"], "ms").with_baseline(
            base["attach_median"], twin)
        if dual == "overlays-dual":
            target_n = "" if f["n_done"] >= 1000 else f" (target is for N=1000; ran {f['n_done']})"
            check(row, DUAL_VS_IPV4, f"ratio <= {DUAL_VS_IPV4} (dual-stack within 1.25x of IPv4-only){target_n}",
                  on_ratio=True)
        else:
            row.target = "the kernel's own ratio (no target)"
        out.append(row)
    return out


def run_notes(f: dict[str, Any], check: str) -> list[str]:
    """What a reader of one subject's figures must know about how its run went."""
    notes = []
    if f["stopped"]:
        notes.append(f"stopped early: {f['stopped']}; totals cover {f['n_done']} sandboxes")
    if not f["verified"]:
        notes.append(f"{check} failed: {f['verify']}")
    if f["veths_left"]:
        notes.append(f"{f['veths_left']} host veths still present 60 s after teardown")
    if f["rounds"] > 1:
        notes.append(f"{f['rounds']} interleaved rounds pooled")
    return notes


def _target_rows(figs: dict[tuple[str, int], dict[str, Any] | None]) -> list[Row]:
    """The issue's targets, as rows marked met / not met (at the largest N overlays ran)."""
    out: list[Row] = []
    ns = sorted(n for (s, n), f in figs.items() if s == "overlays" and f)
    if not ns:
        return out
    n = ns[-1]
    f = figs[("overlays", n)]
    assert f is not None
    full = f["n_done"] >= 1000
    target_n = "" if full else f" (target is for N=1000; ran {f['n_done']})"

    def row(metric: str, unit: str, value: float) -> Row:
        return Row(NAME, "overlays", f["n_done"], metric, value, unit)

    out.append(check(row("attach_median", "ms", f["attach_median"]), ATTACH_MEDIAN_MS,
                     f"<= {ATTACH_MEDIAN_MS} ms{target_n}"))
    out.append(check(row("teardown_median", "ms", f["teardown_median"]), TEARDOWN_MEDIAN_MS,
                     f"<= {TEARDOWN_MEDIAN_MS} ms{target_n}"))
    up = check(row("up_total", "s", f["up_total"]), UP_TOTAL_S, f"1000 up in <= {UP_TOTAL_S} s")
    down = check(row("down_total", "s", f["down_total"]), DOWN_TOTAL_S, f"1000 down in <= {DOWN_TOTAL_S} s")
    if not full:  # stopped by the budget short of 1000: missed outright; a smaller N was asked: not measured
        up.met = down.met = False if f["stopped"] else None
    out += [up, down]
    raw, cni = figs.get((BASELINE, n)), figs.get(("cni", n))
    for metric in ("attach_median", "teardown_median"):
        if raw:
            out.append(check(row(metric, "ms", f[metric]).with_baseline(raw[metric], BASELINE), VS_RAW,
                             f"ratio <= {VS_RAW} (within 2x of raw netlink)", on_ratio=True))
    if cni:
        out.append(check(row("attach_median", "ms", f["attach_median"]).with_baseline(cni["attach_median"], "cni"),
                         VS_CNI_ATTACH, "ratio <= 0.33 (3x faster than CNI ADD)", on_ratio=True))
        out.append(check(row("teardown_median", "ms", f["teardown_median"]).with_baseline(cni["teardown_median"],
                                                                                           "cni"),
                         VS_CNI_DEL, "ratio <= 0.10 (10x faster than CNI DEL)", on_ratio=True))
    for r in out:
        r.benchmark = "target"
    return out


def verdicts(target_rows: list[Row]) -> list[Verdict]:
    out = []
    for r in target_rows:
        vs = f" vs {r.baseline_subject} {r.baseline:.2f} {r.unit} = {r.ratio:.2f}x" if r.ratio is not None else ""
        out.append(Verdict(f"attach {r.metric} {r.target}", r.met, f"{r.value:.2f} {r.unit} at N={r.n}{vs}"))
    return out


def run(run: Run, args: argparse.Namespace, log: Any) -> tuple[list[Row], list[Verdict]]:
    results = collect(run, args, log)
    all_rows = rows(results)
    return all_rows, verdicts([r for r in all_rows if r.benchmark == "target"])
