"""What the kernel holds in a set of namespaces, read with the real tools, comparable between two builds.

Used to prove ``--explain`` true: what overlays built and what its printed commands
build by hand must read the same. Everything either side chooses is compared as it
is; what only the kernel chooses (interface indices, the MAC of a link nobody gave
one) is compared as "the kernel chose it", so a MAC overlays set and the
explanation forgot still shows up as a difference.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

NET_ADDR_SET = "3"  # /sys/class/net/*/addr_assign_type: the MAC was given, not made up by the kernel
SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.bridge.bridge-nf-call-iptables",
           "net.bridge.bridge-nf-call-arptables")


def _ip(ns: str, *args: str, tool: str = "ip") -> list[dict[str, Any]]:
    out = subprocess.run([tool, "-j", "-n", ns, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def _in(ns: str, script: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], check=True, capture_output=True,
                          text=True).stdout


def _assign_types(ns: str) -> dict[str, str]:
    out = _in(ns, 'for f in /sys/class/net/*; do echo "${f##*/} $(cat "$f/addr_assign_type")"; done')
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _links(ns: str) -> dict[str, dict[str, Any]]:
    raw = _ip(ns, "-d", "link", "show")
    names = {link["ifindex"]: link["ifname"] for link in raw}
    assigned = _assign_types(ns)
    found = {}
    for link in raw:
        info = link.get("linkinfo", {})
        kind = info.get("info_kind")
        found[link["ifname"]] = {
            "kind": kind,
            "alias": link.get("ifalias"),
            "mtu": link["mtu"],
            "mac": link.get("address") if assigned.get(link["ifname"]) == NET_ADDR_SET else "chosen by the kernel",
            "master": names.get(link["master"], link["master"]) if "master" in link else None,
            "up": "UP" in link.get("flags", []),
            "addrgenmode": link.get("inet6_addr_gen_mode"),
            "vxlan": info.get("info_data") if kind == "vxlan" else None,
        }
    return found


KERNEL_LINK_LOCAL = "fe80:: made from a MAC the kernel chose"


def _own(address: str | None, dev: str, links: dict[str, dict[str, Any]]) -> str | None:
    """An IPv6 link-local address made from a kernel-chosen MAC is as random as the MAC."""
    chosen = links.get(dev, {}).get("mac") == "chosen by the kernel"
    return KERNEL_LINK_LOCAL if chosen and address and address.startswith("fe80::") and "/" not in address else address


def _addresses(ns: str, links: dict[str, dict[str, Any]]) -> list[tuple[str, str, str | None, int]]:
    return sorted((a["ifname"], i["family"], _own(i["local"], a["ifname"], links), i["prefixlen"])
                  for a in _ip(ns, "addr", "show") for i in a.get("addr_info", []))


def _routes(ns: str, links: dict[str, dict[str, Any]]) -> list[str]:
    found = []
    for family in ("-4", "-6"):
        for r in _ip(ns, family, "route", "show", "table", "all"):
            r["dst"] = _own(r.get("dst"), r.get("dev", ""), links)
            found.append(json.dumps({k: r.get(k) for k in ("type", "dst", "gateway", "dev", "protocol", "scope",
                                                              "table", "prefsrc")}, sort_keys=True))
    return sorted(found)


def _neighbours(ns: str) -> list[tuple[str, str, str]]:
    return sorted((n["dst"], n["dev"], n.get("lladdr", "")) for n in _ip(ns, "neigh", "show", "nud", "permanent"))


def _fdb(ns: str) -> list[tuple[str, str, str, str]]:
    """The static entries that point at remote VTEPs (the bridge's own entries follow random MACs)."""
    return sorted((e["mac"], e["ifname"], e["dst"], str(e.get("state")))
                  for e in _ip(ns, "fdb", "show", tool="bridge") if "dst" in e)


def _ruleset(ns: str) -> str:
    return _in(ns, "nft list ruleset")


def _sysctls(ns: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for key in SYSCTLS:
        path = Path("/proc/sys") / key.replace(".", "/")
        found[key] = _in(ns, f"cat {path} 2>/dev/null || true").strip() or None
    for name in _links(ns):
        found[f"{name}/route_localnet"] = _in(ns, f"cat /proc/sys/net/ipv4/conf/{name}/route_localnet").strip()
    return found


def _settled(ns: str, patience: float = 5.0) -> None:
    """IPv6 duplicate address detection done (a tentative address has no local route yet)."""
    deadline = time.monotonic() + patience
    while _ip(ns, "-6", "addr", "show", "tentative") and time.monotonic() < deadline:
        time.sleep(0.05)


def namespace_state(ns: str) -> dict[str, Any]:
    _settled(ns)
    links = _links(ns)
    return {"links": links, "addresses": _addresses(ns, links), "routes": _routes(ns, links),
            "neighbours": _neighbours(ns),
            "fdb": _fdb(ns), "nftables": _ruleset(ns), "sysctls": _sysctls(ns)}


def netns_names(prefixes: tuple[str, ...]) -> list[str]:
    root = Path("/run/netns")
    return sorted(n for n in (p.name for p in root.iterdir()) if n.startswith(prefixes)) if root.exists() else []


def snapshot(hosts: list[str], sandbox_prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The hosts' state and that of every namespace whose name starts with one of ``sandbox_prefixes``."""
    names = hosts + netns_names(sandbox_prefixes)
    return {ns: namespace_state(ns) for ns in names}
