"""Past the Linux bridge's port limit: what does a network do with its 1,024th and 1,025th sandbox?

A bridge numbers its ports 1..1023, so the 1,024th enslave fails with EXFULL
("Exchange full"). The issue wants a network either to keep accepting sandboxes
or to refuse at the limit with a clear error. By default the harness pre-fills
the network's bridge with plain veth ports (host end enslaved, peer parked in a
namespace of its own) up to a few short of the limit, then attaches the last
sandboxes through the Python API; ``--limit-full`` attaches all 1,025 through the
API instead (slow while attach cost grows with N). After a refusal we check the
rollback: no namespace, no veth, no record left for the refused sandbox.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from benchmarks import netns
from benchmarks.harness import Row, Run, Verdict, WorkerFailed, ms, now_ns, run_worker

NAME = "limit"
TOTAL = 1025
BRIDGE_MAX_PORTS = 1023


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("limit")
    g.add_argument("--limit-full", action="store_true",
                   help="attach all 1,025 sandboxes through the API (no pre-filled ports; slow)")
    g.add_argument("--limit-prefill", type=int, default=BRIDGE_MAX_PORTS - 3, metavar="P",
                   help=f"ports pre-filled by the harness before the API attaches (default {BRIDGE_MAX_PORTS - 3})")


def _prefill(host: str, bridge: str, count: int) -> None:
    """``count`` idle veth ports on ``bridge``; their peers live in namespace <host>-fill."""
    from pyroute2 import IPRoute

    fill_path, _ = netns.create(f"{host}-fill")
    fd = os.open(fill_path, os.O_RDONLY | os.O_CLOEXEC)
    ipr = IPRoute(fileno=netns.netlink_socket(netns.path_of(host)).detach())
    try:
        master = ipr.link_lookup(ifname=bridge)[0]
        for i in range(count):
            # Left down: an idle port counts against the limit all the same, and sends nothing.
            ipr.link("add", ifname=f"fl{i}", kind="veth", master=master, peer={"ifname": f"fp{i}", "net_ns_fd": fd})
    finally:
        os.close(fd)
        ipr.close()


def _ports(host: str, bridge: str) -> int:
    out = subprocess.run(["ip", "-j", "-n", host, "link", "show", "master", bridge], capture_output=True, text=True)
    return len(json.loads(out.stdout or "[]"))


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from overlays import EndpointRequest, Engine, NetworkSpec, OverlaysError, SandboxSpec

    host, prefill = spec["host"], spec["prefill"]
    engine = Engine(host_netns=host, state_dir=Path(spec["workdir"]) / "state")
    made: list[str] = []
    attempts: list[dict[str, Any]] = []
    try:
        bridge = engine.create_network(NetworkSpec.parse("bench", subnet="10.79.0.0/16")).bridge
        _prefill(host, bridge, prefill)
        for k in range(prefill, TOTAL):
            name = f"s{k}"
            t = now_ns()
            try:
                engine.create_sandbox(SandboxSpec.parse(name, [EndpointRequest.parse("bench")]))
                made.append(name)
                attempts.append({"sandbox": k + 1, "ok": True, "ms": ms(now_ns() - t)})
            except OverlaysError as e:
                took = ms(now_ns() - t)
                attempts.append({"sandbox": k + 1, "ok": False, "ms": took, "error": f"{type(e).__name__}: {e}",
                                 "rollback": _rollback_check(engine, host, name)})
        ports = _ports(host, bridge)
    finally:
        for name in made:
            engine.remove_sandbox(name, force=True)
        engine.close()
        netns.delete(f"{host}-fill")
    return {"attempts": attempts, "bridge_ports": ports, "prefill": prefill}


def _rollback_check(engine: Any, host: str, name: str) -> dict[str, Any]:
    """After a refused attach: is anything of the sandbox left (record, namespace, veth)?"""
    from overlays import NotFound

    try:
        engine.sandbox(name)
        record = True
    except NotFound:
        record = False
    netns_left = any(n.endswith(f"-{name}") and n.startswith("ov-") for n in netns.names())
    out = subprocess.run(["ip", "-o", "-n", host, "link", "show", "type", "veth"], capture_output=True, text=True)
    veths = len(out.stdout.splitlines())
    return {"record_left": record, "netns_left": netns_left, "host_veths": veths}


def run(run: Run, args: argparse.Namespace, log: Any) -> tuple[list[Row], list[Verdict]]:
    prefill = 0 if args.limit_full else args.limit_prefill
    try:
        with run.host("lim") as host:
            workdir = run.scratch(host)
            run.add_engine(workdir / "state", host)
            spec = {"host": host, "workdir": str(workdir), "prefill": prefill}
            res = run_worker("bridge_limit", spec, timeout=7200 if args.limit_full else 900)
    except WorkerFailed as e:
        row = Row(NAME, "overlays", TOTAL, "failed", None, "", note=str(e))
        return [row], [Verdict("bridge limit: keeps accepting or refuses clearly", None, f"check failed: {e}")]
    finally:
        run.sweep()
    return _report(res, log)


def _report(res: dict[str, Any], log: Any) -> tuple[list[Row], list[Verdict]]:
    attempts = res["attempts"]
    accepted = res["prefill"] + sum(a["ok"] for a in attempts)
    first_refused = next((a for a in attempts if not a["ok"]), None)
    how = f"{res['prefill']} ports pre-filled by the harness" if res["prefill"] else "all through the API"
    for a in attempts:
        log(f"  limit: sandbox {a['sandbox']}: {'ok' if a['ok'] else 'REFUSED ' + a['error']} ({a['ms']:.0f} ms)"
            + (f" rollback {a['rollback']}" if not a["ok"] else ""))
    rows = [Row(NAME, "overlays", TOTAL, "bridge_ports_in_use", float(res["bridge_ports"]), "ports",
                note=f"{how}; then create_sandbox for sandboxes {res['prefill'] + 1}..{TOTAL}"),
            Row(NAME, "overlays", TOTAL, "sandboxes_accepted", float(accepted), "sandboxes")]
    if first_refused is None:
        verdict = Verdict("bridge limit: keeps accepting or refuses clearly", True,
                          f"all {TOTAL} accepted ({res['bridge_ports']} bridge ports)")
        return rows, [verdict]
    rb = first_refused["rollback"]
    # The host namespace should hold exactly the accepted ports' veths (pre-filled ones included).
    clean = not (rb["record_left"] or rb["netns_left"]) and rb["host_veths"] == accepted
    msg = first_refused["error"]
    # "Exchange full" (EXFULL) alone does not tell a user what happened: the message must name the limit.
    clear = any(word in msg.lower() for word in ("limit", "1023", "1024", "ports"))
    rows.append(Row(NAME, "overlays", first_refused["sandbox"], "first_refused_at", float(first_refused["sandbox"]),
                    "sandbox", note=f"error: {msg}; rollback clean: {clean} ({rb})",
                    target="clear error, clean rollback", met=clear and clean))
    verdict = Verdict("bridge limit: keeps accepting or refuses clearly", clear and clean,
                      f"sandbox {first_refused['sandbox']} refused: {msg!r}; rollback clean: {clean}")
    return rows, [verdict]
