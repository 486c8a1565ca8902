"""``overlays check``: does the running topology behave as the file says?

Expectations, derived from the file alone:
- two sandboxes on the same network (and, for bridge networks, the same host)
  reach each other: a ping from one to the other's address on that network;
- two sandboxes that share no network do not: a ping to each of the other's
  addresses must fail;
- every published TCP port answers a connection from the outside peer (127.0.0.1
  publishes: from the host itself);
- two sandboxes that an enabled partition of the file cuts apart (one way or both)
  do not reach each other: their ping must fail ("xx" in the matrix); a sandbox the
  file gives loss is pinged five times, and one answer is enough.
All probes run at once (each ping in the prober's namespace), so a check of a
few dozen sandboxes takes a few seconds; in batches when the kernel's one ARP table
(shared by every namespace) has no room for all the pairs' entries, the lab's own
neighbour caches emptied between them (else a probe fails for want of an entry).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlays.kernel import netns

if TYPE_CHECKING:
    from overlays.topology.lab import Lab


@dataclass(frozen=True)
class Probe:
    kind: str  # "reach", "isolated", "cut" (by a partition of the file), "port", "missing" (its namespace)
    source: str
    target: str
    address: str
    expect: bool
    ok: bool = False
    detail: str = ""


@dataclass
class Report:
    sandboxes: list[str]
    probes: list[Probe] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(p.ok for p in self.probes)

    def failures(self) -> list[Probe]:
        return [p for p in self.probes if not p.ok]

    def matrix(self) -> str:
        """Rows ping columns: ok = reached as expected, -- = isolated as expected, FAIL."""
        names = self.sandboxes
        cell: dict[tuple[str, str], str] = {}
        for p in self.probes:
            if p.kind == "port":
                continue
            mark = ("ok" if p.expect else "xx" if p.kind == "cut" else "--") if p.ok else "FAIL"
            if cell.get((p.source, p.target)) != "FAIL":
                cell[(p.source, p.target)] = mark
        width = max([len(n) for n in names] + [4])
        lines = [" " * width + "  " + "  ".join(n.ljust(width) for n in names)]
        for a in names:
            row = [cell.get((a, b), "" if a != b else ".").ljust(width) for b in names]
            lines.append(a.ljust(width) + "  " + "  ".join(row))
        ports = [p for p in self.probes if p.kind == "port"]
        for p in ports:
            lines.append(f"port {p.address} -> {p.target}: {'ok' if p.ok else 'FAIL'} {p.detail}".rstrip())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "probes": [p.__dict__ for p in self.probes]}


def ping(netns_path: str, address: str, count: int = 1) -> bool:
    """Whether a ping from the namespace at ``netns_path`` is answered (any of ``count``, 0.2 s apart)."""
    try:
        done = subprocess.run(
            ["ping", "-c", str(count), "-i", "0.2", "-W", "1", "-q", address],
            preexec_fn=netns.entering(netns_path),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10 + count,
        )
    except (subprocess.SubprocessError, OSError):  # the namespace went while we probed: not answered
        return False
    return done.returncode == 0


def _connect(netns_path: str | None, address: str, port: int, patience: float = 5.0) -> tuple[bool, str]:
    """A TCP connection; a refused one is retried for a while (a service just started may not listen yet)."""

    def attempt() -> tuple[bool, str]:
        deadline = time.monotonic() + patience
        while True:
            try:
                with socket.create_connection((address, port), timeout=2):
                    return True, ""
            except ConnectionRefusedError as e:
                if time.monotonic() > deadline:
                    return False, e.strerror or str(e)
                time.sleep(0.1)
            except OSError as e:
                return False, e.strerror or str(e)

    return netns.run_in(netns_path, attempt)


def _gone_hosts(lab: Lab) -> list[tuple[str, str]]:
    """Hosts of the lab whose namespace is gone, each with the FAIL line that says so."""
    return [(host, f"host {host} of topology {lab.name}: its namespace {lab.host_netns(host)} is gone "
                   f"(overlays up -f FILE makes it again)")
            for host in lab.topology.host_names() if not lab.engine(host).host_exists()]


def _plan_probes(lab: Lab) -> list[tuple[Probe, Any]]:
    gone_hosts = _gone_hosts(lab)
    probes: list[tuple[Probe, Any]] = [(Probe("missing", host, host, str(lab.host_netns(host)), True, detail=d),
                                        lambda d=d: (False, d)) for host, d in gone_hosts]
    boxes = {s.spec.name: (s, lab.sandbox(s.spec.name)) for s in lab.topology.sandboxes}
    cut, lossy = _declared_faults(lab)
    for a, (decl_a, box_a) in boxes.items():
        if decl_a.host in dict(gone_hosts):
            continue  # nothing there probes: its host's line says why (what it should reach, fails)
        path_a = str(lab.engine(decl_a.host).netns_path(a))
        if not netns.exists(box_a.netns):
            gone = f"sandbox {a}: its namespace {box_a.netns} is gone (overlays up -f FILE makes it again)"
            probes.append((Probe("missing", a, a, box_a.netns, True, detail=gone), lambda d=gone: (False, d)))
            continue
        for b, (decl_b, box_b) in boxes.items():
            if a == b:
                continue
            shared = [e for e in box_b.endpoints if e.network in {x.network for x in box_a.endpoints}
                      and (decl_a.host == decl_b.host or lab.topology.network(e.network).overlay)]
            tries = 5 if {a, b} & lossy else 1
            if shared:
                ep = shared[0]
                name = cut.get((a, b)) or cut.get((b, a))
                probe = Probe("cut", a, b, str(ep.ip), False, detail=f"partition {name}") if name else Probe(
                    "reach", a, b, str(ep.ip), True)
                probes.append((probe, lambda p=path_a, ip=str(ep.ip), n=tries: ping(p, ip, n)))
            else:
                for ep in box_b.endpoints:
                    if decl_a.host != decl_b.host and any(ep.ip in net for net in _subnets(box_a)):
                        continue  # the same address may well exist on a's own host: no meaningful probe
                    probes.append((Probe("isolated", a, b, str(ep.ip), False),
                                   lambda p=path_a, ip=str(ep.ip): ping(p, ip)))
    outside = lab.outside_netns()
    for decl, box in boxes.values():
        for m in box.ports:
            if m.protocol != "tcp" or decl.host in dict(gone_hosts):
                continue
            if m.host_ip is not None and m.host_ip.is_loopback:
                where, addr = lab.host_netns(decl.host), str(m.host_ip)
            elif outside is not None:
                where, addr = outside, str(m.host_ip or lab.host_address(decl.host))
            else:
                continue
            path = str(netns.path_of(where)) if where else None
            probes.append((Probe("port", "outside" if where == outside else decl.host, decl.spec.name,
                                 f"{addr}:{m.host_port}", True),
                           lambda p=path, a=addr, port=m.host_port: _connect(p, a, port)))
    return probes


def _declared_faults(lab: Lab) -> tuple[dict[tuple[str, str], str], set[str]]:
    """The file's enabled faults: sandbox pairs a partition cuts (-> its name), and sandboxes with loss."""
    from overlays.model.faults import group_cuts
    from overlays.topology.chaos import sandbox_cuts

    cut: dict[tuple[str, str], str] = {}
    lossy: set[str] = set()
    for decl in lab.topology.faults:
        if not decl.enabled:
            continue
        if decl.impair:
            if decl.impair.loss:
                lossy.add(decl.impair.sandbox)
            continue
        for pair in sandbox_cuts(lab, group_cuts(decl.groups, decl.oneway)):
            cut.setdefault(pair, decl.name)
    return cut, lossy


def _subnets(box: Any) -> list[Any]:
    import ipaddress

    return [ipaddress.ip_network(f"{e.ip}/{e.prefixlen}", strict=False) for e in box.endpoints]


# The kernel's ARP table is one for all namespaces: past gc_thresh3 entries it refuses new ones
# ("neighbor table overflow") and a ping fails as if cut. All pairs of N sandboxes need about 2N^2
# entries (each side learns the other): 30 sandboxes already overflow the default 1024.
_ARP_STATS = Path("/proc/net/stat/arp_cache")
_ARP_LIMIT = Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3")


def _arp_room() -> int | None:
    """How many more entries the kernel's ARP table takes now (None: not readable from here)."""
    try:
        entries = int(_ARP_STATS.read_text().splitlines()[1].split()[0], 16)
        return int(_ARP_LIMIT.read_text()) - entries
    except (OSError, IndexError, ValueError):
        return None


def _forget_neighbours(lab: Lab) -> None:
    """Empty the neighbour caches of the lab's sandboxes (ours; they relearn at once) to make room."""
    for decl in lab.topology.sandboxes:
        path = lab.engine(decl.host).netns_path(decl.spec.name)
        if path.exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(["ip", "neigh", "flush", "all"], preexec_fn=netns.entering(str(path)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)


def _batches(lab: Lab, planned: list[tuple[Probe, Any]]) -> Iterator[list[tuple[Probe, Any]]]:
    """The probes in batches the ARP table has room for (one batch when it has room for all)."""
    room = _arp_room()
    if room is None or 2 * len(planned) <= room:
        yield planned
        return
    start = 0
    while start < len(planned):
        _forget_neighbours(lab)
        size = max(32, ((_arp_room() or 0) - 64) // 2)  # a margin for what else the machine learns meanwhile
        yield planned[start:start + size]
        start += size


def run(lab: Lab) -> Report:
    planned = _plan_probes(lab)
    report = Report([s.spec.name for s in lab.topology.sandboxes])
    results: list[Any] = []
    with ThreadPoolExecutor(max_workers=32) as pool:
        for batch in _batches(lab, planned):
            results += pool.map(lambda item: item[1](), batch)
    for (probe, _), result in zip(planned, results, strict=True):
        answered, detail = result if isinstance(result, tuple) else (result, probe.detail)
        report.probes.append(Probe(probe.kind, probe.source, probe.target, probe.address, probe.expect,
                                   ok=answered == probe.expect, detail=detail))
    return report
