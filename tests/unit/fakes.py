"""An in-memory kernel with the shape of overlays.kernel.api.Kernel, for tests without root.

It keeps only what the engine relies on: namespaces, links (with peer, master,
alias, up), addresses and a default route; deleting one end of a veth or a
namespace removes the peer, as Linux does.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from overlays.errors import Conflict, KernelError, NotFound
from overlays.kernel.dnsctl import Record
from overlays.kernel.nft import WRITER, TableContents
from overlays.kernel.nftwatch import FAMILIES, Commit
from overlays.kernel.rtnl_types import Link, Underlay
from overlays.kernel.tc import OURS, TC_H_ROOT, Qdisc, Shape
from overlays.store import Store

ROOT = Path("/fake/netns")


@dataclass
class FakeNs:
    name: str
    links: dict[str, Link] = field(default_factory=dict)
    addrs: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    peers: dict[str, tuple[str, str]] = field(default_factory=dict)  # link -> (ns, peer link)
    default_gw: str | None = None
    default_gw6: str | None = None
    vnis: dict[str, int] = field(default_factory=dict)  # vxlan device -> VNI
    fdbs: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # vxlan device -> {(mac, vtep)}
    neighs: dict[str, dict[str, str]] = field(default_factory=dict)  # device -> {ip: mac}
    announced: list[tuple[str, str, str]] = field(default_factory=list)  # (link, ip, mac), gratuitous ARPs sent
    shapes: dict[str, Shape] = field(default_factory=dict)  # device -> our root qdisc's shape
    redirects: dict[str, str] = field(default_factory=dict)  # device -> the ifb its ingress goes through
    mld_dropped: set[str] = field(default_factory=set)  # devices whose ingress drops MLD reports


class FakeDns:
    """The host's DNS server as the engine sees it: what each sandbox is registered with, per host;
    like the real one, it gives a sandbox it serves an /etc/netns resolv.conf and takes it back."""

    def __init__(self, served: dict[str, tuple[str | None, tuple[Record, ...]]],
                 etc: dict[str, dict[str, str]]) -> None:
        self.served = served
        self.etc = etc
        self.calls: list[str] = []
        self.last: dict[str, Any] = {}

    def running(self) -> bool:
        return True

    def register(self, sandbox: str, netns_path: str | Path | None, records: Iterable[Record], *,
                 wait: bool = True) -> None:
        self.calls.append(f"register {sandbox}")
        self.served[sandbox] = (None if netns_path is None else str(netns_path), tuple(records))
        if netns_path is not None:
            self.etc[Path(netns_path).name] = {"resolv.conf": "nameserver 127.0.0.11\noptions ndots:0\n"}

    def unregister(self, sandbox: str, wait: bool = True) -> dict[str, Any]:
        self.calls.append(f"unregister {sandbox}")
        path, _ = self.served.pop(sandbox, (None, ()))
        if path is not None:
            self.etc.pop(Path(path).name, None)
        self.last = {"ok": True, "served_here": len(self.status()["local"])}
        return self.last

    def wait(self) -> dict[str, Any]:
        return self.last

    def status(self) -> dict[str, Any]:
        return {"ok": True, "local": sorted(k for k, (path, _) in self.served.items() if path is not None)}

    def close(self) -> None:
        pass


class FakeChanges:
    """nftables' notifications of one fake namespace: what ``FakeKernel.announce`` queued."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self.queued: list[Commit] = []
        self.lost = False
        self.closed = False
        self.ready = threading.Condition()

    def push(self, commit: Commit | None) -> None:
        with self.ready:
            if commit is None:
                self.lost = True
            else:
                self.queued.append(commit)
            self.ready.notify_all()

    def read(self, timeout: float, wake: int | None = None) -> list[Commit] | None:
        with self.ready:
            if not self.queued and not self.lost:
                self.ready.wait(timeout)
            got, self.queued = self.queued, []
            if self.lost:
                self.lost = False
                return None
            return got

    def current(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


class FakeKernel:
    def __init__(self, *host_namespaces: str, netem: bool = False) -> None:
        self.netem = netem
        self.namespaces: dict[str | None, FakeNs] = {None: FakeNs("root")}
        self.namespaces[None].links["lo"] = Link(1, "lo", None, "", 65536, None, True, None)
        for name in host_namespaces:
            self._add_ns(name)
        self._next_index = 100
        self.sysctls: dict[tuple[str | None, str], str] = {}
        self.nft_scripts: list[tuple[str | None, str]] = []
        self.nft_tables: dict[str | None, dict[str, set[tuple[str, str]]]] = {}
        self.adopted: dict[str, tuple[int, int]] = {}  # namespace name -> identity of what it adopted
        self.foreign_forward_drops: dict[str | None, list[tuple[str, str, str]]] = {}  # tables not ours
        self.nft_elements: dict[tuple[str | None, str], set[tuple[str, str]]] = {}  # (netns, table) -> elements
        self.nft_rules: dict[tuple[str | None, str], dict[str, tuple[str | None, ...]]] = {}
        self.dns_served: dict[str, dict[str, tuple[str | None, tuple[Record, ...]]]] = {}  # node -> sandbox -> ...
        self.etc: dict[str, dict[str, str]] = {}  # /etc/netns/<ns>/<file>
        self.nft_listeners: list[FakeChanges] = []

    def snapshot(self) -> dict[str | None, tuple[object, ...]]:
        """Everything observable, to compare before and after an operation."""
        return {
            k: (sorted(v.links), sorted((a, sorted(s)) for a, s in v.addrs.items() if s), v.default_gw,
                sorted((t, sorted(e)) for t, e in self.nft_tables.get(k, {}).items()),
                sorted(v.shapes.items(), key=str), sorted(v.redirects.items()),
                sorted(name for name, link in v.links.items() if not link.up))
            for k, v in self.namespaces.items()
        }

    def _add_ns(self, name: str) -> FakeNs:
        ns = FakeNs(name)
        ns.links["lo"] = Link(1, "lo", None, "", 65536, None, False, None)
        self.namespaces[name] = ns
        return ns

    def index(self) -> int:
        self._next_index += 1
        return self._next_index

    # Kernel protocol
    def open(self, netns: str | None) -> FakeLinks:
        if netns not in self.namespaces:
            raise KernelError("open", "netns", netns, "no such namespace")
        return FakeLinks(self, netns)

    def open_path(self, label: str, path: Path) -> FakeLinks:
        return self.open(path.name)

    def netns_path(self, name: str) -> Path:
        return ROOT / name

    def netns_exists(self, name: str) -> bool:
        return name in self.namespaces

    def create_netns(self, name: str) -> Path:
        if name in self.namespaces:
            raise KernelError("create netns", name, None, "it exists already")
        self._add_ns(name)
        return ROOT / name

    def adopt_netns(self, name: str, source: Path) -> Path:
        self._add_ns(name)
        self.adopted[name] = self.namespace_of(source)
        return ROOT / name

    def namespace_of(self, path: Path) -> tuple[int, int]:
        """A fake namespace's identity: the adopted one it names, else its path."""
        if path.parent == ROOT and path.name in self.adopted:
            return self.adopted[path.name]
        if path.parent == ROOT and path.name not in self.namespaces:
            raise NotFound(f"network namespace {path} does not exist")
        return (0, hash(str(path)))

    def delete_netns(self, name: str) -> None:
        ns = self.namespaces.pop(name, None)
        if ns is None:
            return
        for other, peer in ns.peers.values():
            if other in self.namespaces:
                FakeLinks(self, other)._drop(peer)

    def wait_links_gone(self, links: object, names: list[str], timeout: float = 2.0) -> list[str]:
        return []

    def sysctl(self, netns: str | None, key: str) -> str | None:
        return self.sysctls.get((netns, key), "0")

    def set_sysctl(self, netns: str | None, key: str, value: str, missing_ok: bool = False) -> None:
        self.sysctls[(netns, key)] = value

    def nft_changes(self, netns: str | None) -> FakeChanges:
        listener = FakeChanges(netns)
        self.nft_listeners.append(listener)
        return listener

    def announce(self, netns: str | None, tables: Iterable[str], process: str | None = WRITER) -> None:
        """A transaction touching ``tables`` (inet) was committed by ``process``: listeners are told."""
        commit = Commit(frozenset((FAMILIES["inet"], t) for t in tables), 1, process)
        for listener in self.nft_listeners:
            if listener.netns == netns and not listener.closed:
                listener.push(commit)

    def nft_apply(self, netns: str | None, script: str) -> None:
        """Keeps the tables and the keys of their set and map elements: enough to see what is left behind."""
        self._nft_apply(netns, script)
        self.announce(netns, {line.split(" ")[3] for line in script.splitlines() if line.startswith(("add", "delete"))
                              and len(line.split(" ")) > 3})

    def _nft_apply(self, netns: str | None, script: str) -> None:
        self.nft_scripts.append((netns, script))
        tables = self.nft_tables.setdefault(netns, {})
        for line in script.splitlines():
            words = line.split(" ", 4)
            if words[:2] == ["add", "table"]:
                tables.setdefault(words[3], set())
            elif words[:2] == ["delete", "table"]:
                tables.pop(words[3], None)
                self.nft_elements.pop((netns, words[3]), None)
                self.nft_rules.pop((netns, words[3]), None)
            elif words[:2] == ["flush", "chain"]:
                self.nft_rules.setdefault((netns, words[3]), {})[words[4]] = ()
            elif words[:2] == ["add", "rule"]:
                chain, rule = words[4].split(" ", 1)
                comment = rule.split('comment "', 1)[1].rstrip('"') if 'comment "' in rule else None
                rules = self.nft_rules.setdefault((netns, words[3]), {})
                rules[chain] = (*rules.get(chain, ()), comment)
            elif words[1:2] == ["element"]:
                if words[3] not in tables:
                    raise KernelError("apply", "nftables ruleset", netns, "No such file or directory")
                name, items = line.split(" ", 5)[4:]
                listed = items.strip("{} ").split(", ")
                keys = {(name, i.split(" : ")[0]) for i in listed}
                whole = self.nft_elements.setdefault((netns, words[3]), set())
                if words[0] == "add":
                    tables[words[3]] |= keys
                    whole |= {(name, i) for i in listed if (name, i.split(" : ")[0]) not in {
                        (n, e.split(" : ")[0]) for n, e in whole}}
                else:
                    tables[words[3]] -= keys
                    whole -= {(n, e) for n, e in whole if (n, e.split(" : ")[0]) in keys}

    def nft_delete_table(self, netns: str | None, family: str, table: str, process: str | None = WRITER) -> None:
        existed = self.nft_tables.get(netns, {}).pop(table, None) is not None
        self.nft_elements.pop((netns, table), None)
        self.nft_rules.pop((netns, table), None)
        if existed:
            self.announce(netns, [table], process)

    def nft_list_table(self, netns: str | None, family: str, table: str) -> dict[str, object] | None:
        elements = self.nft_tables.get(netns, {}).get(table)
        return None if elements is None else {"nftables": sorted(elements)}

    def nft_contents(self, netns: str | None, family: str, table: str) -> TableContents | None:
        """The elements as the scripts wrote them (map elements whole) and the rules' comments."""
        if table not in self.nft_tables.get(netns, {}):
            return None
        found: dict[str, set[str]] = {}
        for name, element in self.nft_elements.get((netns, table), set()):
            found.setdefault(name, set()).add(element)
        return TableContents({k: frozenset(v) for k, v in found.items()}, self.nft_rules.get((netns, table), {}))

    def nft_forward_drops(self, netns: str | None) -> list[tuple[str, str, str]]:
        return list(self.foreign_forward_drops.get(netns, []))

    def netns_names(self) -> list[str]:
        return sorted(n for n in self.namespaces if n is not None)

    def has_qdisc(self, kind: str) -> bool:
        return kind != "netem" or self.netem

    def dns(self, state_dir: Path, node: str) -> FakeDns:
        return FakeDns(self.dns_served.setdefault(node, {}), self.etc)

    def remove_etc(self, netns: str) -> None:
        self.etc.pop(netns, None)

    def etc_binds(self, netns: str, shared: Path | None = None) -> list[tuple[str, str]]:
        return [(f"/etc/netns/{netns}/{f}", f"/etc/{f}") for f in sorted(self.etc.get(netns, {}))]

    def dns_etc(self, state_dir: Path, node: str) -> Path:
        return state_dir / "dns" / f"{node}.etc"


class FakeLinks:
    def __init__(self, kernel: FakeKernel, netns: str | None) -> None:
        self.kernel = kernel
        self.netns = netns

    @property
    def ns(self) -> FakeNs:
        return self.kernel.namespaces[self.netns]

    def __enter__(self) -> FakeLinks:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass

    def link(self, name: str) -> Link | None:
        return self.ns.links.get(name)

    def links(self) -> list[Link]:
        return sorted(self.ns.links.values(), key=lambda link: link.index)

    def _need(self, name: str) -> Link:
        link = self.link(name)
        if link is None:
            raise KernelError("find link", name, self.netns, "no such device")
        return link

    def route_prefixes(self, version: int = 4) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        found = (ipaddress.ip_network(f"{ip}/{p}", strict=False) for s in self.ns.addrs.values() for ip, p in s)
        return [n for n in found if n.version == version]

    def addresses(self, version: int = 4) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        found = (ipaddress.ip_address(ip) for s in self.ns.addrs.values() for ip, _ in s)
        return [a for a in found if a.version == version]

    def interface_addresses(self, name: str,
                            version: int = 4) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        self._need(name)
        found = (ipaddress.ip_interface(f"{ip}/{p}") for ip, p in sorted(self.ns.addrs.get(name, set())))
        return [a for a in found if a.version == version]

    def has_default_route(self, version: int = 4) -> bool:
        return (self.ns.default_gw if version == 4 else self.ns.default_gw6) is not None

    def ensure_bridge(self, name: str, alias: str, mtu: int, mac: str) -> None:
        have = self.link(name)
        if have and (have.kind != "bridge" or have.alias != alias):
            raise Conflict(f"link {name} exists and is not ours")
        if not have:
            self.ns.links[name] = Link(self.kernel.index(), name, "bridge", mac, mtu, alias, True, None)
        elif have.mac != mac or not have.up:
            self.ns.links[name] = replace(have, mac=mac, up=True)

    def ensure_veth(self, name: str, alias: str, mtu: int, peer: str, peer_netns: Path, peer_mac: str) -> None:
        have = self.link(name)
        if have:
            if have.kind != "veth" or have.alias != alias:
                raise Conflict(f"link {name} in {self.netns} exists and is not ours")
            return
        other = self.kernel.namespaces[peer_netns.name]
        if peer in other.links:
            raise KernelError("create veth", name, self.netns, "peer name exists")
        self.ns.links[name] = Link(self.kernel.index(), name, "veth", "", mtu, alias, False, None)
        other.links[peer] = Link(self.kernel.index(), peer, "veth", peer_mac, mtu, None, False, None)
        self.ns.peers[name] = (peer_netns.name, peer)
        other.peers[peer] = (self.netns or "", name)

    def ensure_macvlan(self, parent: str, mtu: int, peer: str, peer_netns: Path, peer_mac: str) -> None:
        self._need(parent)
        other = self.kernel.namespaces[peer_netns.name]
        if peer in other.links:
            raise KernelError("create macvlan", peer, self.netns, "exists already")
        other.links[peer] = Link(self.kernel.index(), peer, "macvlan", peer_mac, mtu, None, False, None)

    def ensure_port(self, name: str, bridge: str) -> None:
        self.ns.links[name] = replace(self._need(name), master=self._need(bridge).index, up=True)

    def drop_mld_reports(self, name: str) -> None:
        self._need(name)
        self.ns.mld_dropped.add(name)

    def drops_mld_reports(self, name: str) -> bool:
        self._need(name)
        return name in self.ns.mld_dropped

    def ensure_up(self, name: str, ipv6: bool = True) -> None:
        self.ns.links[name] = replace(self._need(name), up=True)

    def ensure_address(self, name: str, ip: str, prefixlen: int) -> None:
        self._need(name)
        self.ns.addrs.setdefault(name, set()).add((ip, prefixlen))

    def ensure_default_route(self, gateway: str) -> None:
        if ":" in gateway:
            self.ns.default_gw6 = self.ns.default_gw6 or gateway
        elif self.ns.default_gw is None:
            self.ns.default_gw = gateway

    def delete_link(self, name: str) -> None:
        if name not in self.ns.links:
            return
        peer = self.ns.peers.get(name)
        self._drop(name)
        if peer and peer[0] in self.kernel.namespaces:
            FakeLinks(self.kernel, peer[0] or None)._drop(peer[1])

    # VXLAN overlays: a device per network, with static FDB and neighbour tables.

    def underlay(self) -> Underlay | None:
        """The link whose subnet holds the default gateway, else the first up link with an address."""
        for name, addrs in sorted(self.ns.addrs.items(), key=lambda item: self._need(item[0]).index):
            link = self._need(name)
            for ip, prefixlen in sorted(addrs):
                net = ipaddress.ip_network(f"{ip}/{prefixlen}", strict=False)
                if self.ns.default_gw and ipaddress.ip_address(self.ns.default_gw) in net:
                    return Underlay(name, ip, link.mtu)
        for name, addrs in sorted(self.ns.addrs.items(), key=lambda item: self._need(item[0]).index):
            link = self._need(name)
            if link.up and name != "lo" and addrs:
                return Underlay(name, sorted(addrs)[0][0], link.mtu)
        return None

    def ensure_vxlan(
        self, name: str, alias: str, vni: int, local_ip: str, underlay_ifname: str, mtu: int, port: int = 4789
    ) -> None:
        have = self.link(name)
        if have:
            if have.kind != "vxlan" or have.alias != alias or self.ns.vnis.get(name) != vni:
                raise Conflict(f"link {name} exists and is not ours")
            return
        dev = self._need(underlay_ifname)
        if mtu > dev.mtu - 50:
            raise KernelError("create vxlan", name, self.netns, f"MTU {mtu} does not fit underlay {underlay_ifname}")
        self.ns.links[name] = Link(self.kernel.index(), name, "vxlan", "", mtu, alias, True, None)
        self.ns.vnis[name] = vni
        self.ns.fdbs[name] = set()
        self.ns.neighs[name] = {}

    def fdb(self, name: str) -> set[tuple[str, str]]:
        self._need(name)
        return set(self.ns.fdbs.setdefault(name, set()))

    def fdb_dst(self, name: str, mac: str) -> str | None:
        self._need(name)
        return min((d for m, d in self.ns.fdbs.get(name, set()) if m == mac.lower()), default=None)

    def ensure_fdb(self, name: str, mac: str, dst: str) -> None:
        """All-zero entries are appended; a unicast MAC is replaced (it points at one VTEP), as in Rtnl."""
        self._need(name)
        mac = mac.lower()
        table = self.ns.fdbs.setdefault(name, set())
        if mac != "00:00:00:00:00:00":
            table -= {e for e in table if e[0] == mac}
        table.add((mac, dst))

    def delete_fdb(self, name: str, mac: str, dst: str) -> None:
        self.ns.fdbs.get(name, set()).discard((mac.lower(), dst))

    def neighbours(self, name: str) -> dict[str, str]:
        self._need(name)
        return dict(self.ns.neighs.setdefault(name, {}))

    def neighbour(self, name: str, ip: str) -> str | None:
        self._need(name)
        return self.ns.neighs.get(name, {}).get(ip)

    def ensure_neigh(self, name: str, ip: str, mac: str) -> None:
        self._need(name)
        self.ns.neighs.setdefault(name, {})[ip] = mac.lower()

    def delete_neigh(self, name: str, ip: str) -> None:
        self.ns.neighs.get(name, {}).pop(ip, None)

    def prepare_overlay_writes(self) -> None:
        pass

    def announce(self, name: str, ip: str, mac: str) -> None:
        self._need(name)
        self.ns.announced.append((name, ip, mac.lower()))

    # Faults: links down, shaping (our root qdisc), ingress redirected to an ifb.

    def ensure_down(self, name: str) -> None:
        self.ns.links[name] = replace(self._need(name), up=False)

    def wait_running(self, name: str, timeout: float = 3.0) -> bool:
        return self.link(name) is not None

    def ensure_ifb(self, name: str, alias: str, mtu: int) -> None:
        have = self.link(name)
        if have and (have.kind != "ifb" or have.alias != alias):
            raise Conflict(f"link {name} exists and is not ours")
        if not have:
            self.ns.links[name] = Link(self.kernel.index(), name, "ifb", "", mtu, alias, True, None)

    def qdiscs(self, name: str) -> list[Qdisc]:
        self._need(name)
        shape = self.ns.shapes.get(name)
        return [Qdisc(shape.kind, OURS, TC_H_ROOT, shape.rate, shape.delay_us, shape.jitter_us)] if shape else []

    def ensure_shape(self, name: str, shape: Shape) -> None:
        self._need(name)
        self.ns.shapes[name] = shape

    def delete_shape(self, name: str) -> None:
        self.ns.shapes.pop(name, None)

    def ensure_redirect(self, name: str, to: str) -> None:
        self._need(name)
        self._need(to)
        self.ns.redirects[name] = to

    def delete_redirect(self, name: str) -> None:
        self.ns.redirects.pop(name, None)

    def _drop(self, name: str) -> None:
        self.ns.links.pop(name, None)
        self.ns.shapes.pop(name, None)
        self.ns.redirects.pop(name, None)
        self.ns.mld_dropped.discard(name)
        self.ns.peers.pop(name, None)
        addrs = self.ns.addrs.pop(name, set())
        # Routes through a vanished interface vanish with it (enough for a default route).
        if self.ns.default_gw and any(
            ipaddress.ip_address(self.ns.default_gw) in ipaddress.ip_network(f"{a}/{p}", strict=False) for a, p in addrs
        ):
            self.ns.default_gw = None


def object_records(store: Store) -> list[tuple[str, object]]:
    """Every object record: not meta/ (counters) nor ipam-next/ (allocation hints), which may move on."""
    return [(e.key, e.value) for e in store.range("") if "meta/" not in e.key and "ipam-next/" not in e.key]
