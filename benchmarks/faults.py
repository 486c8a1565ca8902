"""Faults: how accurate the impairments are, how fast partitions come and go, what they cost the rest.

All in a host namespace of this run, sandboxes built by a Lab (a topology of its own):

1. rate: ``impair --rate 10mbit`` out (tbf on the sandbox's interface) and in (through an ifb); one TCP
   stream with iperf3 through it; target 9-10.5 Mbit/s of goodput (what the receiver got). The same path
   unimpaired is shown beside it.
2. loss: ``impair --loss 10`` out and in; 10,000 UDP datagrams sent through it, counted at the receiver;
   target 9-11 % dropped. The same count on the unimpaired path shows that the harness itself drops none.
3. partition: a stream of UDP datagrams from a to b, one every ~0.2 ms, while ``overlays partition a b`` and
   ``overlays heal`` run (the real CLI, as a user runs it); the times are taken when the command returns.
   "takes effect": the last datagram that got through was sent that long after the command returned (0: none
   after it); "heals": the first one through after ``heal`` was sent that long after it returned. Target: both
   within 10 ms, worst of the repetitions. Also shown: how late a ``--for 1s`` partition ends (the kernel's
   element timeout) and a ``--for 1s`` rate (its timer process), against the end the engine recorded.
4. the unimpaired path: iperf3 between two sandboxes with no fault of their own, alone (baseline) and while
   their tables hold a partition from a third sandbox and one of them has loss, duplication and a rate on its
   other endpoint (subject): pairs of 1 s figures, the order turned each time; target: the median of the
   pairs' ratios >= 0.97 (a pair's two figures see about the same load from the rest of the machine). Also
   shown: the same ratio of Gbit per CPU-second (iperf3's CPU use at both ends), the path's cost per byte.

    python -m benchmarks faults [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks import netns
from benchmarks.dataplane import End, lab_of, throughput
from benchmarks.harness import Row, Run, Verdict, median

NAME = "faults"
RATE = 10_000_000
RATE_RANGE = (9.0, 10.5)  # Mbit/s
LOSS = 10.0
LOSS_RANGE = (9.0, 11.0)  # percent
DATAGRAMS = 10_000
LATENCY_MS = 10.0
UNIMPAIRED = 0.97
PORT = 5311
_PROBE = struct.Struct("=Qd")  # sequence number, send time (monotonic)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("faults")
    g.add_argument("--faults-seconds", type=int, default=8, help="iperf3 duration through a rate (default 8)")
    g.add_argument("--faults-reps", type=int, default=5, help="partition / heal cycles (default 5)")
    g.add_argument("--faults-pairs", type=int, default=15,
                   help="interleaved pairs of 1 s throughput figures, alone / beside faults (default 15)")


# -- sockets inside namespaces ----------------------------------------------------------------------------------------


def udp_socket(where: Path) -> socket.socket:
    def make() -> socket.socket:
        netns.setns(where)
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    return netns.in_thread(make)


def count_through(src: Path, dst: Path, dst_ip: str, count: int) -> int:
    """How many of ``count`` UDP datagrams from ``src`` arrive at ``dst_ip`` (sent in paced bursts)."""
    rx, tx = udp_socket(dst), udp_socket(src)
    with rx, tx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rx.bind((dst_ip, 0))
        rx.settimeout(0.5)
        got = 0
        for start in range(0, count, 100):
            for _ in range(min(100, count - start)):
                with contextlib.suppress(OSError):  # dropped on its way out (EPERM)
                    tx.sendto(b"x" * 64, (dst_ip, rx.getsockname()[1]))
            time.sleep(0.002)  # the receiver drains as we go: its buffer never overflows
        try:
            while True:
                rx.recv(128)
                got += 1
        except TimeoutError:
            pass
        return got


class Stream:
    """UDP datagrams from one namespace to another, every ~0.2 ms, each stamped; arrivals recorded."""

    def __init__(self, src: Path, dst: Path, dst_ip: str) -> None:
        self.rx, self.tx = udp_socket(dst), udp_socket(src)
        self.rx.bind((dst_ip, PORT))
        self.rx.settimeout(0.2)
        self.to = (dst_ip, PORT)
        self.sent: list[float] = []
        self.arrived: set[int] = set()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._receive, daemon=True)]

    def _send(self) -> None:
        while not self.stop.is_set():
            seq, now = len(self.sent), time.monotonic()
            self.sent.append(now)
            with contextlib.suppress(OSError):  # dropped on the way out (EPERM): a lost datagram
                self.tx.sendto(_PROBE.pack(seq, now), self.to)
            time.sleep(0.0002)

    def _receive(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.rx.recv(64)
            except TimeoutError:
                continue
            self.arrived.add(_PROBE.unpack(data)[0])

    def __enter__(self) -> Stream:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.05)  # the last ones in flight
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2)
        self.rx.close()
        self.tx.close()

    def last_through(self, before: float) -> float:
        """Send time of the last datagram sent before ``before`` that arrived."""
        return max((self.sent[s] for s in self.arrived if self.sent[s] < before), default=float("-inf"))

    def first_through(self, after: float) -> float:
        return min((self.sent[s] for s in self.arrived if self.sent[s] >= after), default=float("inf"))


# -- the lab ----------------------------------------------------------------------------------------------------------


@contextmanager
def the_lab(run: Run, stack: ExitStack) -> Iterator[tuple[Any, dict[str, End], dict[str, str]]]:
    host = stack.enter_context(run.host("fh"))
    raw = {"name": run.name("ft"), "networks": {"n1": {"subnet": "10.93.0.0/24"}, "n2": {"subnet": "10.94.0.0/24"}},
           "sandboxes": {"a": {"networks": ["n1", "n2"]}, "b": {"networks": ["n1"]}, "c": {"networks": ["n2"]},
                         "d": {"networks": ["n1"]}}}
    lab = stack.enter_context(lab_of(run, raw, host))
    eng = lab.engine("local")
    ends = {n: End(eng.netns_path(n), str(eng.sandbox(n).endpoints[0].ip)) for n in "abcd"}
    cli_env = {"OVERLAYS_HOST_NETNS": host, "OVERLAYS_STATE_DIR": str(lab.state_dir)}
    yield lab, ends, cli_env


def cli(env: dict[str, str], *args: str) -> float:
    """Run the overlays CLI as a user would; returns the monotonic time it returned at."""
    import os

    done = subprocess.run([sys.executable, "-m", "overlays", *args], env=dict(os.environ, **env), capture_output=True,
                          text=True, timeout=60)
    returned = time.monotonic()
    if done.returncode != 0:
        raise RuntimeError(f"overlays {' '.join(args)}: {done.stderr.strip()}")
    return returned


def goodput(client: End, server: End, seconds: int) -> float:
    return throughput(client, server, server.ip, seconds) * 1000  # Mbit/s


def stream(client: End, server: End, seconds: int) -> tuple[float, float]:
    """One TCP stream: (Gbit/s, Gbit per CPU-second of sender and receiver, softirqs included).

    The second figure is the path's cost per byte: what throughput becomes on an idle machine, and a
    figure that other processes competing for the CPUs move much less than the first.
    """
    srv = subprocess.Popen(["nsenter", f"--net={server.netns}", "iperf3", "-s", "-1", "-p", str(PORT + 1)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            done = subprocess.run(["nsenter", f"--net={client.netns}", "iperf3", "-c", server.ip, "-p",
                                   str(PORT + 1), "-t", str(seconds), "-J"], capture_output=True, text=True,
                                  timeout=seconds + 20)
            doc = json.loads(done.stdout or "{}")
            if "error" not in doc and "end" in doc:
                end = doc["end"]
                gbps = float(end["sum_received"]["bits_per_second"]) / 1e9
                cpu = end["cpu_utilization_percent"]
                return gbps, gbps / ((cpu["host_total"] + cpu["remote_total"]) / 100)
            time.sleep(0.05)  # the server is not listening yet
        raise RuntimeError(f"iperf3 to {server.ip}: {doc.get('error', done.stderr.strip())}")
    finally:
        srv.terminate()
        srv.wait(5)


# -- the measurements -------------------------------------------------------------------------------------------------


def measure_rates(lab: Any, ends: dict[str, End], seconds: int, log: Callable[[str], None]) -> dict[str, float]:
    a, b = ends["a"], ends["b"]
    got = {"unimpaired": goodput(a, b, min(seconds, 3))}
    for direction, who in (("out", "a"), ("in", "b")):
        handle = lab.impair(who, "n1", rate="10mbit", direction=direction)
        try:
            got[direction] = goodput(a, b, seconds)
        finally:
            handle.clear()
        log(f"  rate 10mbit {direction}: {got[direction]:.2f} Mbit/s")
    return got


def measure_loss(lab: Any, ends: dict[str, End], count: int, log: Callable[[str], None]) -> dict[str, float]:
    a, b = ends["a"], ends["b"]
    got = {"unimpaired": 100 * (1 - count_through(a.netns, b.netns, b.ip, count) / count)}
    for direction, who in (("out", "a"), ("in", "b")):
        handle = lab.impair(who, "n1", loss=LOSS, direction=direction)
        try:
            got[direction] = 100 * (1 - count_through(a.netns, b.netns, b.ip, count) / count)
        finally:
            handle.clear()
        log(f"  loss 10% {direction}: {got[direction]:.2f} % of {count} dropped")
    return got


def measure_partitions(ends: dict[str, End], env: dict[str, str], reps: int,
                       log: Callable[[str], None]) -> dict[str, list[float]]:
    a, b = ends["a"], ends["b"]
    found: dict[str, list[float]] = {"effect": [], "heal": [], "partition command": [], "heal command": []}
    with Stream(a.netns, b.netns, b.ip) as stream:
        time.sleep(0.2)
        for _ in range(reps):
            started = time.monotonic()
            cut = cli(env, "partition", "a", "b", "--name", "bench")
            found["partition command"].append((cut - started) * 1000)
            time.sleep(0.15)
            heal_started = time.monotonic()
            healed = cli(env, "heal", "bench")
            found["heal command"].append((healed - heal_started) * 1000)
            time.sleep(0.15)
            found["effect"].append(max(0.0, stream.last_through(heal_started) - cut) * 1000)
            found["heal"].append(max(0.0, stream.first_through(heal_started) - healed) * 1000)
    log(f"  partition: in force {max(found['effect']):.2f} ms, healed {max(found['heal']):.2f} ms after return"
        f" (worst of {reps})")
    return found


def _recorded_end(lab: Any, what: str) -> float:
    """The end the engine recorded for the fault in force (wall clock), as monotonic time."""
    faults = lab.engine("local").faults()
    records = list(faults.partitions.values()) if what == "partition" else list(faults.impairments.values())
    return float(records[0].expires) - time.time() + time.monotonic()


def measure_expiry(lab: Any, ends: dict[str, End], env: dict[str, str]) -> dict[str, float]:
    a, b = ends["a"], ends["b"]
    with Stream(a.netns, b.netns, b.ip) as stream:
        time.sleep(0.1)
        cli(env, "partition", "a", "b", "--for", "1s")
        end = _recorded_end(lab, "partition")
        time.sleep(max(0.0, end - time.monotonic()) + 0.2)
    partition_late = (stream.first_through(end) - end) * 1000
    cli(env, "impair", "a", "--network", "n1", "--rate", "10mbit", "--direction", "out", "--for", "1s")
    end = _recorded_end(lab, "impair")
    where = str(a.netns)
    while _has_tbf(where) and time.monotonic() < end + 10:
        time.sleep(0.005)
    rate_late = (time.monotonic() - end) * 1000
    return {"partition": partition_late, "rate": rate_late}


def _has_tbf(where: str) -> bool:
    out = subprocess.run(["nsenter", f"--net={where}", "tc", "-j", "qdisc", "show"], capture_output=True, text=True,
                         timeout=10).stdout
    return any(q.get("kind") == "tbf" for q in json.loads(out or "[]"))


def measure_unimpaired(lab: Any, ends: dict[str, End], pairs: int,
                       log: Callable[[str], None]) -> dict[str, dict[str, list[float]]]:
    """a -> b over n1, alone and while faults are in force around them (not on that path), pair by pair."""
    a, b = ends["a"], ends["b"]
    got: dict[str, dict[str, list[float]]] = {k: {"gbps": [], "per_cpu": []} for k in ("alone", "beside faults")}
    for rep in range(pairs):
        for which in ["alone", "beside faults"] if rep % 2 == 0 else ["beside faults", "alone"]:
            if which == "beside faults":
                lab.partition(["a", "b"], ["d"])
                lab.impair("a", "n2", loss=10, duplicate=5, rate="10mbit")
                lab.impair("c", rate="10mbit")
            try:
                gbps, per_cpu = stream(a, b, 1)
            finally:
                lab.heal(everything=True)
            got[which]["gbps"].append(gbps)
            got[which]["per_cpu"].append(per_cpu)
        log(f"  pair {rep + 1}/{pairs}: alone {got['alone']['gbps'][-1]:.1f}, beside faults"
            f" {got['beside faults']['gbps'][-1]:.1f} Gbit/s")
    return got


# -- the benchmark ----------------------------------------------------------------------------------------------------


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def run(run: Run, args: argparse.Namespace, log: Any) -> tuple[list[Row], list[Verdict]]:
    seconds = 3 if args.quick else args.faults_seconds
    reps = 2 if args.quick else args.faults_reps
    count = 2000 if args.quick else DATAGRAMS
    with ExitStack() as stack:
        lab, ends, env = stack.enter_context(the_lab(run, stack))
        rates = measure_rates(lab, ends, seconds, log)
        losses = measure_loss(lab, ends, count, log)
        cycles = measure_partitions(ends, env, reps, log)
        late = measure_expiry(lab, ends, env)
        log(f"  --for 1s ended: partition {late['partition']:.1f} ms, rate {late['rate']:.1f} ms after its end")
        pairs = 2 if args.quick else args.faults_pairs
        beside = measure_unimpaired(lab, ends, pairs, log)

    rows: list[Row] = []
    verdicts: list[Verdict] = []
    lo, hi = RATE_RANGE
    for direction, how in (("out", "tbf on the sandbox's eth0"), ("in", "ifb, tbf on its egress")):
        row = Row(NAME, f"rate 10mbit {direction}", seconds, "TCP goodput, 1 stream", rates[direction], "Mbit/s",
                  target=f"{lo:g}-{hi:g} Mbit/s", met=_within(rates[direction], RATE_RANGE), note=how)
        rows.append(row)
        verdicts.append(Verdict(f"a 10 Mbit/s rate ({direction}) gives {lo:g}-{hi:g} Mbit/s of TCP goodput", row.met,
                                f"{rates[direction]:.2f} Mbit/s"))
    rows.append(Row(NAME, "unimpaired", min(seconds, 3), "TCP goodput, 1 stream", rates["unimpaired"], "Mbit/s",
                    note="the same path without the rate"))
    lo, hi = LOSS_RANGE
    for direction in ("out", "in"):
        row = Row(NAME, f"loss 10% {direction}", count, "UDP datagrams dropped", losses[direction], "%",
                  target=f"{lo:g}-{hi:g} %", met=_within(losses[direction], LOSS_RANGE))
        rows.append(row)
        verdicts.append(Verdict(f"10% loss ({direction}) drops {lo:g}-{hi:g}% of {count} UDP datagrams", row.met,
                                f"{losses[direction]:.2f} %"))
    rows.append(Row(NAME, "no loss", count, "UDP datagrams dropped", losses["unimpaired"], "%",
                    note="the harness's own losses on the unimpaired path"))
    for key, label in (("effect", "partition in force"), ("heal", "partition healed")):
        worst = max(cycles[key])
        row = Row(NAME, label, reps, "after the command returned (worst)", worst, "ms",
                  target=f"<= {LATENCY_MS:g} ms", met=worst <= LATENCY_MS,
                  note=f"median {median(cycles[key]):.2f} ms; 0: already so when the command returned")
        rows.append(row)
        what = "heals" if key == "heal" else "takes effect"
        verdicts.append(Verdict(f"a partition {what} within {LATENCY_MS:g} ms of the command returning", row.met,
                                f"worst {worst:.2f} ms of {reps}"))
    for command in ("partition", "heal"):
        rows.append(Row(NAME, f"overlays {command}", reps, "the command's wall time (median)",
                        median(cycles[f"{command} command"]), "ms", note="a Python start and imports included"))
    rows.append(Row(NAME, "partition --for 1s", 1, "ends after its recorded end", late["partition"], "ms",
                    note="the kernel's element timeout: no process involved"))
    rows.append(Row(NAME, "rate --for 1s", 1, "removed after its recorded end", late["rate"], "ms",
                    note="its timer process (polled with tc every ~5 ms)"))
    def paired(metric: str) -> float:
        return median([s / x for s, x in zip(beside["beside faults"][metric], beside["alone"][metric], strict=True)])

    row = Row(NAME, "unimpaired path", pairs, "TCP 1 stream beside faults: paired ratio", paired("gbps"), "x",
              target=f">= {UNIMPAIRED:.2f}x alone", met=paired("gbps") >= UNIMPAIRED,
              note=f"alone {median(beside['alone']['gbps']):.1f} Gbit/s, beside faults"
                   f" {median(beside['beside faults']['gbps']):.1f} Gbit/s (a and b partitioned from d; a's other"
                   " endpoint: loss, duplication, rate; c: rate)")
    rows.append(row)
    rows.append(Row(NAME, "unimpaired path", pairs, "Gbit per CPU-second beside faults: paired ratio",
                    paired("per_cpu"), "x", note="the same pairs' cost per byte (iperf3's CPU use of both ends)"))
    verdicts.append(Verdict(f"an impaired path costs unimpaired paths nothing (>= {UNIMPAIRED:.0%})", row.met,
                            f"paired {paired('gbps'):.3f}x (per CPU-second: {paired('per_cpu'):.3f}x)"))
    return rows, verdicts


def main() -> int:
    """``python -m benchmarks.faults`` is ``python -m benchmarks faults``."""
    from benchmarks.__main__ import main as run_benchmarks

    return run_benchmarks([NAME, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
