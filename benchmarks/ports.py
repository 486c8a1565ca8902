"""Published ports: the cost of one more at 1, 100, 1,000 and 10,000, and connections per second through it.

One host namespace of the run with one overlays engine and one bridge network,
and an "outside" client namespace wired to it by a veth (10.123.0.1/24 on the
host, 10.123.0.2/24 on the client). Ports belong to sandboxes, so the K - 1
ports already published at level K are cheap to make: idle filler sandboxes
(no listener) each publishing a few ranges of up to 1,000 ports. The very first
port is published by a sandbox that runs a small accept-and-close TCP server and
stays for the whole run.

At each level K (K - 1 ports published already) we time, R times, creating a
sandbox that publishes ONE port (the K-th) against creating one with no port in
the same state, and the nft transaction that adds the map element (the engine's
``nft_apply``, wrapped here to time it). All but the last of those sandboxes are
removed again, so every sample adds exactly the K-th port. The last one runs the
server; from the client namespace we count TCP connections (connect, read to the
server's close, close) per second through ``10.123.0.1:<that port>`` and, in
interleaved slices of the same 2 s, through the first port. Targets: adding the
10,000th port costs no more than 2x adding the first (the whole create with a
port, median); the rate through the 10,000th is within 10% of the rate through
the first port at K = 1.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Row, Run, Verdict, check, median, ms, now_ns

NAME = "ports"

ADD_VS_FIRST = 2.0     # adding the 10,000th published port costs at most 2x adding the first
RATE_WITHIN = 0.10     # connections per second through it within 10% of the first
HOST_IP, CLIENT_IP = "10.123.0.1", "10.123.0.2"
SUBNET = "10.124.0.0/16"
FILLER_BASE = 20000    # filler ports: 20000 upwards (at most 9,998 of them)
PROBE_BASE = 10000     # the measured ports: 10000 upwards
CHUNK = 1000           # ports per -p range of a filler sandbox (RANGE_MAX is 1024)
RANGES_PER_FILLER = 10
SLICE_S = 0.25         # the connection count alternates between the two ports in slices this long

SERVER = (
    "import socket\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 80))\n"
    "s.listen(4096)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.close()\n"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ports")
    g.add_argument("--ports-k", type=int, action="append", metavar="K",
                   help="published-port levels (repeatable; default 1 100 1000 10000, --quick 1 100 1000)")
    g.add_argument("--ports-reps", type=int, metavar="R", help="timed adds per level (default 9, --quick 3)")
    g.add_argument("--ports-seconds", type=float, default=2.0, metavar="S",
                   help="seconds of connections per port and level (default 2)")


# -- the client side -------------------------------------------------------------------------


def _connect_once(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        try:
            s.connect((HOST_IP, port))
            s.recv(1)  # b"" once the server has closed: the whole exchange went through the DNAT
            return True
        except OSError:
            return False


def _rates(client: Path, ports: list[int], seconds: float) -> tuple[list[float], list[int]]:
    """Connections per second through each port, in interleaved slices, from the client namespace."""
    from overlays.kernel import netns

    def measure() -> tuple[list[float], list[int]]:
        done = [0] * len(ports)
        failed = [0] * len(ports)
        spent = [0.0] * len(ports)
        slices = max(1, round(seconds / SLICE_S))
        for _ in range(slices):
            for i, port in enumerate(ports):
                t0 = time.perf_counter()
                end = t0 + seconds / slices
                while time.perf_counter() < end:
                    if _connect_once(port):
                        done[i] += 1
                    else:
                        failed[i] += 1
                spent[i] += time.perf_counter() - t0
        return [d / s for d, s in zip(done, spent, strict=True)], failed

    return netns.run_in(client, measure)


def _wait_listening(client: Path, port: int, timeout: float = 10.0) -> None:
    from overlays.kernel import netns

    def poll() -> None:
        deadline = time.monotonic() + timeout
        while not _connect_once(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no server answered on {HOST_IP}:{port} from the client in {timeout:.0f} s")
            time.sleep(0.02)

    netns.run_in(client, poll)


# -- the lab ---------------------------------------------------------------------------------


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def _wire(host: str, client: str) -> None:
    """A veth between the host namespace and the client: addresses we assign, in namespaces we made."""
    _sh("ip", "-n", host, "link", "add", "pt0", "type", "veth", "peer", "name", "pt1", "netns", client)
    _sh("ip", "-n", host, "addr", "add", f"{HOST_IP}/24", "dev", "pt0")
    _sh("ip", "-n", client, "addr", "add", f"{CLIENT_IP}/24", "dev", "pt1")
    _sh("ip", "-n", host, "link", "set", "pt0", "up")
    _sh("ip", "-n", client, "link", "set", "pt1", "up")


def _map_size(host: str, table: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", host, "nft", "-j", "list", "map", "inet", table, "publish_any_tcp"],
                         capture_output=True, text=True).stdout
    for item in json.loads(out or "{}").get("nftables", []):
        if "map" in item:
            return len(item["map"].get("elem", []))
    return -1


class Lab:
    """The engine and what it holds, with the timed steps."""

    def __init__(self, run: Run, host: str, client: str, log: Callable[[str], None]) -> None:
        from overlays import Engine, NetworkSpec
        from overlays.drivers.firewall import table_name

        state = run.scratch(f"{host}-state")
        run.add_engine(state, host)
        self.host, self.client_path, self.log = host, Path("/run/netns") / client, log
        self.engine = Engine(host_netns=host, state_dir=state)
        self.table = table_name(self.engine.ctx.instance)
        self.boxes: list[str] = []
        self.fillers = 0  # filler ports published
        self.nft_ns: list[int] = []
        kernel = self.engine.ctx.kernel
        inner = kernel.nft_apply

        def timed(netns_name: str | None, script: str) -> None:
            t = now_ns()
            try:
                inner(netns_name, script)
            finally:
                self.nft_ns.append(now_ns() - t)

        kernel.nft_apply = timed  # type: ignore[method-assign]
        self.engine.create_network(NetworkSpec.parse("pt", subnet=SUBNET))

    def create(self, name: str, publish: list[str]) -> int:
        """Create a sandbox publishing ``publish`` (-p values); returns the ns it took."""
        from overlays import EndpointRequest, SandboxSpec
        from overlays.model.ports import parse_publish

        ports = [m for p in publish for m in parse_publish(p)]
        spec = SandboxSpec.parse(name, [EndpointRequest.parse("pt")], ports=ports)
        t = now_ns()
        self.engine.create_sandbox(spec)
        took = now_ns() - t
        self.boxes.append(name)
        return took

    def remove(self, names: list[str]) -> None:
        if names:
            self.engine.remove_sandboxes(names, force=True)
            self.boxes = [b for b in self.boxes if b not in names]

    def fill_to(self, count: int) -> None:
        """Idle sandboxes publishing ranges until ``count`` filler ports are published."""
        while self.fillers < count:
            ranges = []
            while self.fillers < count and len(ranges) < RANGES_PER_FILLER:
                n = min(CHUNK, count - self.fillers)
                lo = FILLER_BASE + self.fillers
                ranges.append(f"{lo}-{lo + n - 1}:{lo}-{lo + n - 1}")
                self.fillers += n
            t = now_ns()
            self.create(f"fill{len(self.boxes)}", ranges)
            self.log(f"  filler sandbox with {len(ranges)} ranges, {self.fillers} filler ports now"
                     f" ({ms(now_ns() - t):.0f} ms)")

    def serve(self, name: str, port: int) -> None:
        self.engine.start(name, [sys.executable, "-c", SERVER])
        _wait_listening(self.client_path, port)

    def close(self) -> None:
        try:
            self.remove(list(self.boxes))
            self.engine.remove_network("pt", force=True)
        finally:
            self.engine.close()


def _level(lab: Lab, k: int, port: int, reps: int, first_port: int | None) -> dict[str, Any]:
    """K - 1 ports published; time adding the K-th, R times; then serve on it and count connections."""
    lab.fill_to(max(0, k - 1 - (1 if first_port is not None else 0)))
    before = _map_size(lab.host, lab.table)
    with_port: list[int] = []
    without: list[int] = []
    nft: list[int] = []
    name = ""
    for r in range(reps):
        bare = f"k{k}n{r}"
        without.append(lab.create(bare, []))
        lab.remove([bare])
        name = f"k{k}p{r}"
        lab.nft_ns.clear()
        with_port.append(lab.create(name, [f"{port}:80"]))
        nft += lab.nft_ns
        if r + 1 < reps:
            lab.remove([name])
    after = _map_size(lab.host, lab.table)
    lab.serve(name, port)
    return {"k": k, "port": port, "box": name, "with_ns": with_port, "without_ns": without, "nft_ns": nft,
            "map_before": before, "map_after": after}


def measure(run: Run, levels: list[int], reps: int, seconds: float, log: Callable[[str], None]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with run.host("pt") as host, run.host("cl") as client:
        _wire(host, client)
        lab = Lab(run, host, client, log)
        try:
            first_port: int | None = None
            for k in levels:
                t = time.monotonic()
                res = _level(lab, k, PROBE_BASE + len(out), reps, first_port)
                ports = [res["port"]] + ([first_port] if first_port is not None else [])
                rates, failed = _rates(lab.client_path, ports, seconds)
                res["rate"], res["failed"] = rates[0], failed[0]
                res["rate_first_now"] = rates[1] if len(rates) > 1 else rates[0]
                out.append(res)
                log(f"  K={k}: map {res['map_before']} -> {res['map_after']} elements;"
                    f" add with port median {ms(median(res['with_ns'])):.1f} ms,"
                    f" without {ms(median(res['without_ns'])):.1f} ms, nft {ms(median(res['nft_ns'])):.2f} ms;"
                    f" {res['rate']:.0f} conn/s through port {res['port']}"
                    f" (first port meanwhile {res['rate_first_now']:.0f}/s; failed: {failed})"
                    f" ({time.monotonic() - t:.0f} s)")
                if first_port is None:
                    first_port = res["port"]  # the K=1 sandbox stays: its port is the first one
                else:
                    lab.remove([res["box"]])
        finally:
            lab.close()
    return out


# -- rows and verdicts -----------------------------------------------------------------------


def run(run: Run, args: argparse.Namespace, log: Any) -> tuple[list[Row], list[Verdict]]:
    levels = sorted(set(args.ports_k or ([1, 100, 1000] if args.quick else [1, 100, 1000, 10000])))
    if levels[0] != 1:
        levels = [1, *levels]  # the baseline
    if levels[-1] - 2 + FILLER_BASE > 65535:
        raise SystemExit(f"ports: levels up to {65535 - FILLER_BASE + 2} only (filler ports start at {FILLER_BASE})")
    reps = args.ports_reps or (3 if args.quick else 9)
    res = measure(run, levels, reps, args.ports_seconds, log)
    base = res[0]
    b_with, b_without = ms(median(base["with_ns"])), ms(median(base["without_ns"]))
    b_nft, b_rate = ms(median(base["nft_ns"])), base["rate"]
    rows: list[Row] = []
    note_add = (f"median of {reps}: create_sandbox publishing one port (the K-th; K-1 published already), whole call;"
                " add_one_port_marginal = that minus create_sandbox with no port in the same state;"
                " nft_add_element = the engine's nft transaction for it")
    for r in res:
        k = r["k"]
        w, wo, nft = ms(median(r["with_ns"])), ms(median(r["without_ns"])), ms(median(r["nft_ns"]))
        notes = [note_add]
        if r["map_after"] != k:
            notes.append(f"nft map publish_any_tcp holds {r['map_after']} elements, expected {k}")
        rows.append(Row(NAME, "overlays", k, "add_one_port", w, "ms", note="; ".join(notes)).with_baseline(b_with,
                                                                                                           "K=1"))
        rows.append(Row(NAME, "overlays", k, "create_no_port", wo, "ms", note=note_add).with_baseline(b_without,
                                                                                                     "K=1"))
        rows.append(Row(NAME, "overlays", k, "add_one_port_marginal", w - wo, "ms", note=note_add).with_baseline(
            b_with - b_without, "K=1"))
        rows.append(Row(NAME, "overlays", k, "nft_add_element", nft, "ms", note=note_add).with_baseline(b_nft, "K=1"))
        note_rate = (f"TCP connect+close per s from the client namespace to {HOST_IP}:{r['port']} (the K-th port),"
                     f" {args.ports_seconds:g} s in slices interleaved with the first port;"
                     f" first port in the same window {r['rate_first_now']:.0f}/s; {r['failed']} failed")
        rows.append(Row(NAME, "overlays", k, "conn_rate", r["rate"], "1/s", note=note_rate).with_baseline(b_rate,
                                                                                                          "K=1"))
        if k != 1:
            rows.append(Row(NAME, "overlays", k, "conn_rate_same_window", r["rate"], "1/s", note=note_rate)
                        .with_baseline(r["rate_first_now"], "first port"))
    top = res[-1]
    full = top["k"] >= 10000
    suffix = "" if full else f" (target is for K=10,000; ran K={top['k']})"
    add = check(Row("target", "overlays", top["k"], "add_one_port", ms(median(top["with_ns"])), "ms")
                .with_baseline(b_with, "K=1"), ADD_VS_FIRST, f"ratio <= {ADD_VS_FIRST}{suffix}", on_ratio=True)
    rate = Row("target", "overlays", top["k"], "conn_rate", top["rate"], "1/s").with_baseline(b_rate, "K=1")
    rate.target = f"within {RATE_WITHIN:.0%} of K=1{suffix}"
    rate.met = None if rate.ratio is None else abs(rate.ratio - 1) <= RATE_WITHIN
    if not full:
        add.met = rate.met = None
    rows += [add, rate]
    verdicts = [
        Verdict(f"ports: adding the {top['k']:,}th published port costs <= {ADD_VS_FIRST}x the first", add.met,
                f"{add.value:.2f} ms vs {b_with:.2f} ms = {add.ratio:.2f}x (nft part {ms(median(top['nft_ns'])):.2f}"
                f" vs {b_nft:.2f} ms)"),
        Verdict(f"ports: TCP connections/s through the {top['k']:,}th port within {RATE_WITHIN:.0%} of the first",
                rate.met, f"{rate.value:.0f}/s vs {b_rate:.0f}/s at K=1 = {rate.ratio:.2f}x"
                f" (first port in the same window: {top['rate_first_now']:.0f}/s)"),
    ]
    return rows, verdicts
