"""The common parts of every benchmark: namespaces, timing, statistics, results.

Design note. The machines are noisy, so no figure stands alone: each subject is
measured in the same run as its baseline and reported as a ratio. A run owns a
unique name prefix (``bh`` + pid); every namespace it makes carries it, so the
final sweep removes exactly what the run made, even after a failure or Ctrl-C,
and never the root namespace. A heavy measurement runs in a child Python process
of its own (``benchmarks.worker``): its peak RSS is then its own, and it does not
inherit the imports or heap of the ones before it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import netns

RESULTS_DIR = Path("bench-results")


# -- timing and statistics ----------------------------------------------------


def now_ns() -> int:
    return time.perf_counter_ns()


def ms(ns: float) -> float:
    return ns / 1e6


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): with few samples p99 is simply the largest."""
    s = sorted(values)
    if not s:
        return float("nan")
    rank = max(1, -(-len(s) * p // 100))
    return s[int(rank) - 1]


def peak_rss_kib() -> dict[str, int]:
    """Peak resident set of this process and of its largest waited-for child, in KiB."""
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }


# -- results ------------------------------------------------------------------


@dataclass
class Row:
    """One figure. ``ratio`` is value / baseline (below 1: faster or smaller than the baseline)."""

    benchmark: str
    subject: str
    n: int | None
    metric: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_subject: str | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str = ""

    def with_baseline(self, baseline: float | None, subject: str) -> Row:
        self.baseline, self.baseline_subject = baseline, subject
        if baseline and self.value is not None:
            self.ratio = self.value / baseline
        return self


@dataclass
class Verdict:
    """A target of the issue and whether this run met it."""

    target: str
    met: bool | None
    figure: str

    def line(self) -> str:
        state = {True: "met   ", False: "MISSED", None: "n/a   "}[self.met]
        return f"{state} {self.target}: {self.figure}"


def check(row: Row, limit: float, target: str, *, on_ratio: bool = False) -> Row:
    """Mark ``row`` against ``limit`` (an upper bound on its value, or on its ratio)."""
    x = row.ratio if on_ratio else row.value
    row.target = target
    row.met = None if x is None else x <= limit
    return row


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(rows: Sequence[Row]) -> str:
    """Plain aligned text, one line per row."""
    head = ["benchmark", "subject", "n", "metric", "value", "unit", "baseline", "vs", "ratio", "target", "met"]
    body = [
        [
            r.benchmark, r.subject, "" if r.n is None else str(r.n), r.metric, _fmt(r.value), r.unit,
            _fmt(r.baseline), r.baseline_subject or "", "" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target or "", {True: "yes", False: "NO", None: ""}[r.met],
        ]
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    numeric = {2, 4, 6, 8}
    lines = []
    for cells in [head, *body]:
        out = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        lines.append("  ".join(out).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    notes = [f"  [{r.benchmark} {r.subject} n={r.n}] {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["", "notes:", *dict.fromkeys(notes)] if notes else []))


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }


def write_json(rows: Sequence[Row], verdicts: Sequence[Verdict], meta: dict[str, Any], out_dir: Path) -> Path:
    """bench-results/<timestamp>.json and a copy as latest.json; returns the first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    doc = {
        "meta": meta | {"machine": machine(), "finished": stamp},
        "rows": [asdict(r) for r in rows],
        "verdicts": [asdict(v) for v in verdicts],
    }
    text = json.dumps(doc, indent=2, default=str) + "\n"
    path = out_dir / f"{stamp}.json"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path


# -- the run: names, namespaces, cleanup ---------------------------------------


def _root_view() -> dict[str, list[str]]:
    """What the root namespace holds: its namespaces and links (with their aliases), to show nothing was left."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    links = []
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        alias = re.search(r"alias (\S+)", line)
        links.append(f"{name} {alias.group(1)}" if alias else name)
    return {"netns": netns.names(), "links": sorted(links)}


def _firewall_digest() -> str:
    """A hash of the root namespace's firewall, to check that no peer touched it."""
    parts = []
    for cmd in (["nft", "list", "ruleset"], ["iptables-save"], ["ip6tables-save"]):
        with contextlib.suppress(OSError):
            out = subprocess.run(cmd, capture_output=True, text=True).stdout
            parts.append("\n".join(ln for ln in out.splitlines() if not ln.startswith("#")))
    return hashlib.sha256("\n--\n".join(parts).encode()).hexdigest()[:16]


def source_digest() -> str:
    """A hash of the overlays sources: the code measured (others may edit the tree during a run)."""
    root = Path(__file__).resolve().parent.parent / "overlays"
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupt(signum: int, frame: object) -> None:
    """The first stop signal unwinds; later ones are ignored so the cleanup on the way out completes."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Run:
    """One benchmark run: its name prefix, scratch dir, the engines it made, and its cleanup."""

    prefix: str = field(default_factory=lambda: f"bh{os.getpid()}")
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="overlays-bench-")))
    instances: set[str] = field(default_factory=set)
    before: dict[str, list[str]] = field(default_factory=_root_view)
    firewall_before: str = field(default_factory=_firewall_digest)
    _counter: int = 0

    def name(self, label: str) -> str:
        """A namespace name unique in this run: bh<pid>-<n><label>."""
        self._counter += 1
        return f"{self.prefix}-{self._counter}{label}"

    def scratch(self, label: str) -> Path:
        path = self.workdir / label
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def host(self, label: str) -> Iterator[str]:
        """A fresh namespace that plays the host, removed with everything in it afterwards."""
        name = self.name(label)
        netns.create(name)
        try:
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
            yield name
        finally:
            netns.delete(name)

    def add_engine(self, state_dir: Path, host: str) -> None:
        """Note an overlays engine, so the sweep knows its sandboxes' namespaces (ov-<instance>-...)."""
        from overlays.engine.context import instance_id  # light: does not import pyroute2

        self.instances.add(instance_id(state_dir, host))

    def owns(self, netns_name: str) -> bool:
        return netns_name.startswith(self.prefix + "-") or any(
            netns_name.startswith(f"ov-{i}-") for i in self.instances
        )

    def sweep(self) -> list[str]:
        """Delete every namespace this run made that is still there; return their names."""
        left = [n for n in netns.names() if self.owns(n)]
        for name in left:
            with contextlib.suppress(OSError):
                netns.delete(name)
        return left

    def leftovers(self) -> dict[str, Any]:
        """What appeared in the root namespace during the run: ours (a leak) or others' (concurrent work)."""
        after = _root_view()
        for _ in range(50):  # the kernel frees namespaces and their links asynchronously
            if not [n for n in set(after["links"]) - set(self.before["links"]) if self.owns_link(n)]:
                break
            time.sleep(0.1)
            after = _root_view()
        new_netns = sorted(set(after["netns"]) - set(self.before["netns"]))
        new_links = sorted(set(after["links"]) - set(self.before["links"]))
        etc = Path("/etc/netns")  # the resolv.conf links the DNS server makes for the sandboxes it serves
        return {
            "netns": [n for n in new_netns if self.owns(n)] + [f"/etc/netns/{n}" for n in
                                                                 (sorted(os.listdir(etc)) if etc.is_dir() else [])
                                                                 if self.owns(n)],
            "links": [n for n in new_links if self.owns_link(n)],
            "root_firewall_changed": _firewall_digest() != self.firewall_before,
            "not_ours": {"netns": [n for n in new_netns if not self.owns(n)],
                         "links": [n for n in new_links if not self.owns_link(n)]},
        }

    def owns_link(self, name: str) -> bool:
        """Link names our subjects use (they only ever make them inside our namespaces)."""
        return bool(re.fullmatch(r"(bv|iv|fl|fp)\d+|bbr0|cni0|nvbr0|veth[0-9a-f]{8}", name)) or any(
            i in name for i in self.instances
        )

    def close(self) -> None:
        self.sweep()
        subprocess.run(["rm", "-rf", str(self.workdir)], check=False)


@contextlib.contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP unwind like Ctrl-C, so every ``finally`` cleanup runs (once)."""
    old = {s: signal.signal(s, _raise_interrupt) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- workers: one child process per heavy measurement --------------------------


class WorkerFailed(RuntimeError):
    pass


def run_worker(module: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``benchmarks.<module>.worker(spec)`` in a fresh interpreter and return its result."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", prefix="bench-worker-") as out:
        cmd = [sys.executable, "-m", "benchmarks.worker", module, out.name]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
        try:
            proc.communicate(json.dumps(spec), timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the worker cleans up on the way out
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise WorkerFailed(f"{module} worker for {spec.get('subject')} timed out after {timeout:.0f} s") from None
        except BaseException:  # interrupted: the worker cleans up after itself, then the run's sweep
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        result: dict[str, Any] = json.loads(out.read() or "{}")
    if proc.returncode != 0 or "error" in result:
        raise WorkerFailed(result.get("error") or f"{module} worker exited with {proc.returncode}")
    return result
