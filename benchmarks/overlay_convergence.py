"""Overlay convergence: from ``run`` on one host to the first ping answered from another host.

For 3 and 10 simulated hosts, on the embedded store (SQLite) and on etcd: a probe
sandbox waits on every host; each sample creates a sandbox on host i (through the
Python API, as ``overlays run`` does) and times until the probe on host i+1 gets
an ICMP echo reply from it. That path crosses the whole control plane: the
registration in the store, the other host's agent seeing it, its FDB and
neighbour entries. The baseline, in the same run: the same measurement with the
probe on the *same* host (bridge only, no control plane), so the ratio is the
price of going multi-host.

    python -m benchmarks.overlay_convergence [--quick]   (also: python -m benchmarks overlay)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.harness import Row, Run, Verdict, median, percentile

NAME = "overlay"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("overlay")
    g.add_argument("--overlay-hosts", type=int, nargs="+", default=[3, 10], help="lab sizes (default 3 10)")
    g.add_argument("--overlay-samples", type=int, default=40, help="sandboxes timed per lab (default 40)")
    g.add_argument("--overlay-stores", nargs="+", default=["sqlite", "etcd"], choices=["sqlite", "etcd"])


# -- an ICMP echo from inside a namespace, without a process per try ----------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(head + b"overlays"), ident, seq) + b"overlays"


def first_reply(netns_path: Path, address: str, deadline: float) -> float | None:
    """Ping ``address`` from inside the namespace every 2 ms; the monotonic time of the first reply."""
    from overlays.kernel import netns

    def probe() -> float | None:
        ident, seq = random.randrange(1, 0xFFFF), 0
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            s.settimeout(0.002)
            while time.monotonic() < deadline:
                seq = (seq + 1) & 0xFFFF
                try:  # while the address is unresolved, the send may wait or fail: just try again
                    s.sendto(_echo(ident, seq), (address, 0))
                except OSError:
                    time.sleep(0.002)
                    continue
                try:
                    while True:
                        data, peer = s.recvfrom(2048)
                        icmp = data[(data[0] & 0x0F) * 4:]
                        if peer[0] == address and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                            return time.monotonic()
                except TimeoutError:
                    continue
        return None

    return netns.run_in(netns_path, probe)


# -- a throwaway etcd on loopback --------------------------------------------------------


@contextmanager
def etcd_server() -> Iterator[str]:
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    data = Path(tempfile.mkdtemp(prefix="overlays-bench-etcd-"))
    client, peer = random.randrange(20000, 30000), random.randrange(30000, 32000)
    proc = subprocess.Popen(
        [binary, "--name", "bench", "--data-dir", str(data), "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", client), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("etcd did not start") from None
                time.sleep(0.05)
        yield f"etcd://127.0.0.1:{client}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)


# -- one lab -------------------------------------------------------------------------------


def measure(run: Run, hosts: int, samples: int, store: str, log: Any) -> dict[str, list[float]]:
    """Convergence times (ms) across hosts, and the same-host baseline, for one lab."""
    from overlays import EndpointRequest, SandboxSpec
    from overlays.topology import Lab, resolve

    names = [f"h{i}" for i in range(hosts)]
    raw = {"name": run.name("ov"), "hosts": names,
           "networks": {"mesh": {"driver": "overlay", "subnet": "10.90.0.0/20"}},
           "sandboxes": {f"probe{i}": {"host": h, "networks": ["mesh"]} for i, h in enumerate(names)}}
    with (etcd_server() if store == "etcd" else _nothing()) as url:
        lab = Lab(resolve(raw, "bench"), state_dir=run.scratch(f"{raw['name']}"), store_url=url or None)
        try:
            lab.up()
            probes = {h: (lab.engine(h).netns_path(f"probe{i}")) for i, h in enumerate(names)}
            result: dict[str, list[float]] = {"cross": [], "local": []}
            for k in range(samples):
                for kind in ("cross", "local"):
                    src = names[k % hosts]
                    dst = names[(k + 1) % hosts] if kind == "cross" else src
                    t0 = time.monotonic()
                    box = lab.engine(src).create_sandbox(
                        SandboxSpec.parse(f"s{kind[0]}{k}", [EndpointRequest.parse("mesh")]))
                    seen = first_reply(probes[dst], str(box.endpoints[0].ip), t0 + 10)
                    if seen is None:
                        raise RuntimeError(f"no reply from {box.name} on {src} to the probe on {dst} in 10 s")
                    result[kind].append((seen - t0) * 1000)
            log(f"  {hosts} hosts, {store}: cross-host p50 {median(result['cross']):.1f} ms,"
                f" same-host p50 {median(result['local']):.1f} ms")
            return result
        finally:
            _remove_timed(lab, names)
            lab.down()
            lab.close()


def _remove_timed(lab: Any, hosts: list[str], batch: int = 10) -> None:
    """The sandboxes the samples made, a few at a time: one batch of all of a host's would be a transaction
    bigger than etcd takes (128 operations by default)."""
    for host in hosts:
        eng = lab.engine(host)
        made = sorted(box.name for box in eng.sandboxes() if not box.name.startswith("probe"))
        for i in range(0, len(made), batch):
            eng.remove_sandboxes(made[i:i + batch], force=True)


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def run(run: Run, args: argparse.Namespace, log: Any) -> tuple[list[Row], list[Verdict]]:
    samples = 10 if args.quick else args.overlay_samples
    sizes = [3] if args.quick else args.overlay_hosts
    stores = [s for s in args.overlay_stores if s != "etcd" or shutil.which("etcd") or os.path.exists("/usr/bin/etcd")]
    rows: list[Row] = []
    for store in stores:
        for hosts in sizes:
            got = measure(run, hosts, samples, store, log)
            base = median(got["local"])
            for label, p in (("p50", 50), ("p99", 99)):
                rows.append(Row(NAME, f"overlays {store}", hosts, f"run -> first ping across hosts, {label}",
                                percentile(got["cross"], p), "ms").with_baseline(
                                    percentile(got["local"], p) if label == "p99" else base, "same host"))
    return rows, []


def main() -> int:
    """``python -m benchmarks.overlay_convergence`` is ``python -m benchmarks overlay``: the same table and JSON."""
    from benchmarks.__main__ import main as run_benchmarks

    return run_benchmarks([NAME, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
