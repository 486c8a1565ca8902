"""Teardown in every mode a user meets, beside the kernel's own floor for a synchronous removal, at one N.

A sandbox goes when its namespace is deleted, but the kernel frees its veths some tens
of milliseconds later, asynchronously. Each interface of overlays decides whether to
wait for that: ``Engine.remove_sandbox()`` and ``overlays rm`` wait (when they return,
the sandbox's interfaces are gone), ``remove_sandbox(wait=False)`` does not,
``remove_sandboxes()`` and ``overlays down`` wait once for a whole batch. The floor is
the same kernel work done the shortest way, with code of the benchmark's own: delete
the namespace, then poll (one netlink request a millisecond) until the host end of its
veth is gone. Every mode runs in the same run, on N sandboxes of one bridge, each in a
host namespace of its own.
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import netns, subjects
from benchmarks.harness import Row, Run, Verdict, check, median, ms, now_ns

NAME = "teardown"
FLOOR_RATIO = 1.2  # the target: remove_sandbox() by default within 1.2x of the floor
RTM_GETLINK, IFLA_IFNAME = 18, 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("teardown")
    g.add_argument("--teardown-n", type=int, default=300, metavar="N", help="sandboxes per mode (default 300)")
    g.add_argument("--teardown-cli", type=int, default=30, metavar="K",
                   help="how many of them `overlays rm` removes, one process each (default 30)")


def _gone(link: subjects.Netlink, name: str) -> bool:
    """One RTM_GETLINK by name (no ack asked: the answer is the link or an error)."""
    link.seq += 1
    body = subjects._ifinfo() + subjects._attr(IFLA_IFNAME, name.encode() + b"\0")
    link.sock.sendto(struct.pack("=LHHLL", 16 + len(body), RTM_GETLINK, subjects.NLM_F_REQUEST, link.seq, 0) + body,
                     (0, 0))
    reply = link.sock.recv(65536)
    _, kind, _, _, _ = struct.unpack_from("=LHHLL", reply)
    return kind == subjects.NLMSG_ERROR and struct.unpack_from("=i", reply, 16)[0] != 0


def _floor(run: Run, n: int) -> list[int]:
    """Delete each namespace, then wait until its veth's host end is gone: the kernel's own synchronous cost."""
    with run.host("tfl") as host:
        sub = subjects.PackedSubject(host, "10.74.0.0/16", run.scratch("tfl"))
        times = []
        try:
            sub.prepare()
            for i in range(n):
                sub.attach(i)
            probe = subjects.Netlink(netns.netlink_socket(netns.path_of(host)))
            try:
                for i in range(n):
                    t = now_ns()
                    sub.detach(i)
                    while not _gone(probe, f"bv{i}"):
                        time.sleep(0.001)
                    times.append(now_ns() - t)
            finally:
                probe.close()
        finally:
            sub.close()
    return times


def _engine_modes(run: Run, n: int, mode: str) -> tuple[list[int], float]:
    """Per-sandbox times of one Python API mode, and what was left to wait for afterwards (s)."""
    from overlays import EndpointRequest, Engine, NetworkSpec, SandboxSpec

    with run.host(f"t{mode[:2]}") as host:
        state = run.scratch(f"t{mode}")
        run.add_engine(state, host)
        eng = Engine(host_netns=host, state_dir=state)
        try:
            eng.create_network(NetworkSpec.parse("net", subnet="10.74.0.0/16"))
            names = [f"s{i}" for i in range(n)]
            for name in names:
                eng.create_sandbox(SandboxSpec.parse(name, [EndpointRequest.parse("net")]))
            times: list[int] = []
            if mode == "batch":
                t = now_ns()
                eng.remove_sandboxes(names)
                times = [(now_ns() - t) // n] * n
            else:
                for name in names:
                    t = now_ns()
                    eng.remove_sandbox(name, wait=(mode == "default"))
                    times.append(now_ns() - t)
            t = time.perf_counter()
            _wait_no_veths(host)
            left = time.perf_counter() - t
            eng.remove_network("net")
        finally:
            eng.close()
    return times, left


def _wait_no_veths(host: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "-n", host, "-o", "link", "show", "type", "veth"], capture_output=True, text=True)
        if not out.stdout.strip():
            return
        time.sleep(0.005)


def _cli_and_down(run: Run, n: int, k: int) -> tuple[list[int], float]:
    """``overlays rm NAME`` (a process each) on ``k`` sandboxes, then ``overlays down`` of N in one file."""
    from overlays.topology import Lab, resolve

    with run.host("tcl") as host:
        state = run.scratch("tcl")
        run.add_engine(state, host)
        env = {"OVERLAYS_HOST_NETNS": host, "OVERLAYS_STATE_DIR": str(state), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        topo = {"name": run.name("td"), "networks": {"net": {"subnet": "10.74.0.0/16"}},
                "sandboxes": {f"s{i}": {"networks": ["net"]} for i in range(n)}}
        lab = Lab(resolve(topo, "bench"), host_netns=host, state_dir=state)
        try:
            lab.up()
            rm = []
            for i in range(k):  # not the topology's any more after this: down skips what is gone
                t = now_ns()
                subprocess.run([sys.executable, "-m", "overlays", "rm", f"s{n - 1 - i}"], env=env, check=True,
                               capture_output=True, cwd=Path(__file__).parents[1])
                rm.append(now_ns() - t)
            t = time.perf_counter()
            lab.down()
            down = (time.perf_counter() - t) / (n - k)
        finally:
            lab.close()
    return rm, down


def run(run: Run, args: argparse.Namespace, log: Any) -> tuple[list[Row], list[Verdict]]:
    n = 30 if args.quick else args.teardown_n
    k = min(5 if args.quick else args.teardown_cli, n // 2)
    floor = median(_floor(run, n))
    default, _ = _engine_modes(run, n, "default")
    nowait, left = _engine_modes(run, n, "nowait")
    batch, _ = _engine_modes(run, n, "batch")
    rm, down = _cli_and_down(run, n, k)
    base = ms(floor)
    log(f"  teardown n={n}: floor {base:.2f} ms; remove_sandbox() {ms(median(default)):.2f} ms, wait=False "
        f"{ms(median(nowait)):.2f} ms (then {left:.2f} s for the kernel), remove_sandboxes() "
        f"{ms(median(batch)):.2f} ms, overlays rm {ms(median(rm)):.1f} ms, down {down * 1000:.2f} ms")
    floor_name = "kernel floor (delete netns, wait for the veth)"
    rows = [
        Row(NAME, "kernel floor", n, "per sandbox", base, "ms"),
        check(Row(NAME, "remove_sandbox() (waits)", n, "per sandbox", ms(median(default)), "ms").with_baseline(
            base, floor_name), FLOOR_RATIO, f"ratio <= {FLOOR_RATIO} (within {FLOOR_RATIO}x of the floor)",
            on_ratio=True),
        Row(NAME, "remove_sandbox(wait=False)", n, "per sandbox", ms(median(nowait)), "ms").with_baseline(
            base, floor_name),
        Row(NAME, "remove_sandboxes() (one wait)", n, "per sandbox", ms(median(batch)), "ms").with_baseline(
            base, floor_name),
        Row(NAME, "overlays rm (waits)", k, "per sandbox", ms(median(rm)), "ms").with_baseline(base, floor_name),
        Row(NAME, "overlays down (one wait)", n - k, "per sandbox", down * 1000, "ms").with_baseline(base, floor_name),
    ]
    target = rows[1]
    return rows, [Verdict(f"remove_sandbox() by default within {FLOOR_RATIO}x of the kernel's floor",
                          target.met, f"{target.value:.2f} ms vs {base:.2f} ms = {target.value / base:.2f}x")]
