"""What a bridge of N sandboxes carries while nobody sends anything: the chatter of the links themselves.

Read, untimed, from counters the kernel keeps anyway: the packets each bridge port sent to its
sandbox (``tx``) and received from it (``rx``), the bridge device's own receive count (frames
passed up to the host), and IPv6 counters of ``/proc/net/snmp6`` in the host namespace and in
the first and last sandbox. On a quiet bridge every figure is near zero; each static IPv6 address
makes its sandbox join a solicited-node group and send MLD reports, and ``fanout`` (frames sent
to sandboxes per frame received from them) says whether the bridge copies those to every port
(about N/2 for sandboxes that joined one after another: an O(N^2) storm) or not (near 0).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from benchmarks import netns

SNMP6 = ("Ip6InMcastPkts", "Ip6OutMcastPkts", "Icmp6InMLDv2Reports", "Icmp6OutMLDv2Reports",
         "Icmp6OutRouterSolicits", "Icmp6OutNeighborSolicits")


def _links(host: str, *selector: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-s", "-j", "-n", host, "link", "show", *selector], capture_output=True,
                         text=True, timeout=60).stdout
    return list(json.loads(out or "[]"))


def snmp6(netns_name: str) -> dict[str, int]:
    """The IPv6 counters of one namespace that say who sent or received multicast."""
    out = subprocess.run(["nsenter", f"--net={netns.path_of(netns_name)}", "cat", "/proc/net/snmp6"],
                         capture_output=True, text=True, timeout=20).stdout
    found = dict(line.split()[:2] for line in out.splitlines() if line.strip())
    return {k: int(found.get(k, 0)) for k in SNMP6}


def snapshot(host: str, bridge: str, sandboxes: list[str]) -> dict[str, Any]:
    """The counters now: bridge ports summed, the bridge device, host and sampled sandboxes' snmp6."""
    ports = _links(host, "master", bridge)
    (dev,) = _links(host, "dev", bridge)
    return {
        "ports": len(ports),
        "to_sandboxes": sum(p["stats64"]["tx"]["packets"] for p in ports),
        "from_sandboxes": sum(p["stats64"]["rx"]["packets"] for p in ports),
        "to_host": dev["stats64"]["rx"]["packets"],
        "host_snmp6": snmp6(host),
        "sandbox_snmp6": {name: snmp6(name) for name in sandboxes},
    }


def fanout(snap: dict[str, Any]) -> float:
    """Frames the bridge sent to sandboxes per frame sandboxes sent (0 when they sent none)."""
    return snap["to_sandboxes"] / snap["from_sandboxes"] if snap["from_sandboxes"] else 0.0


def delta(later: dict[str, Any], earlier: dict[str, Any]) -> dict[str, int]:
    """What the bridge carried between two snapshots of the same ports."""
    return {k: later[k] - earlier[k] for k in ("to_sandboxes", "from_sandboxes", "to_host")}
