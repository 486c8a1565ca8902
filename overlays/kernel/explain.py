"""``--explain``: the commands a person would type to make the same kernel changes, as they are made.

Design note. One seam, a wrapper: ``Explaining(kernel, recorder)`` has the shape of
any ``Kernel`` (as ``faults.FaultyKernel`` has), and wraps each ``Links`` handle it
opens. Every changing step reads what it is about to change, runs, reads it again,
and records the ``ip`` / ``bridge`` / ``sysctl`` / ``nft`` command for what really
changed: a step that was a no-op (an address already there, a link already up)
records nothing, and a step that failed halfway records what it did get done, so the
undo steps that follow read right. rtnl.py knows nothing of this. When --explain is
off nothing is wrapped, so it costs nothing; when on, a read or two per step.

Names are the kernel's own: ``-n NS`` (``ip netns exec NS`` for sysctl and nft) for
a namespace under /run/netns, nothing for the calling process's own (the real
machine), ``nsenter --net=PATH`` for one that ``ip`` cannot name. Each recorded
command is one line a shell runs as it is, except an nft script of several lines,
which is one ``nft -f -`` with the script in a here-document, and the MLD report
filter, which overlays loads as BPF instructions no command takes: it is said as a
comment with the ``tc`` line that does the same where the kernel has ``gact``.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlays.kernel.api import Kernel, Links

if TYPE_CHECKING:
    from overlays.kernel.rtnl_types import Link

NETNS_DIR = Path("/run/netns")
ZERO_MAC = "00:00:00:00:00:00"
q = shlex.quote


class Recorder:
    """The commands of the kernel steps taken so far, in order; ``sink`` sees each one as it is recorded."""

    def __init__(self, sink: Callable[[str], None] | None = None) -> None:
        self.commands: list[str] = []
        self._sink = sink

    def say(self, command: str) -> None:
        self.commands.append(command)
        if self._sink is not None:
            self._sink(command)

    def take(self) -> list[str]:
        """The commands recorded since the last take (an agent journals one batch at a time)."""
        taken, self.commands = self.commands, []
        return taken


class Where:
    """A namespace as the commands name it: ``name`` under /run/netns, ``path`` for one ip cannot name.

    (Plain classes here, not dataclasses: every command loads this module, and a dataclass
    costs a millisecond or two to define.)
    """

    __slots__ = ("name", "path")

    def __init__(self, name: str | None = None, path: str | None = None) -> None:
        self.name = name
        self.path = path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Where) and (self.name, self.path) == (other.name, other.path)

    def __hash__(self) -> int:
        return hash((self.name, self.path))

    def __repr__(self) -> str:
        return f"Where({self.name!r}, {self.path!r})"

    @classmethod
    def of_path(cls, path: Path) -> Where:
        if path.parent == NETNS_DIR:
            return cls(name=path.name)
        return cls(path=str(path))

    def tool(self, tool: str) -> str:
        """``ip`` or ``bridge`` acting in this namespace."""
        if self.name:
            return f"{tool} -n {q(self.name)}"
        return f"nsenter --net={q(self.path)} {tool}" if self.path else tool

    def run(self, command: str) -> str:
        """Any other command run in this namespace."""
        if self.name:
            return f"ip netns exec {q(self.name)} {command}"
        return f"nsenter --net={q(self.path)} {command}" if self.path else command

    def as_peer(self) -> str:
        """What follows ``netns`` in ``ip link add``: a name, or the PID whose namespace it is."""
        if self.name:
            return q(self.name)
        parts = Path(self.path or "").parts  # /proc/PID/ns/net
        if len(parts) == 5 and parts[1] == "proc" and parts[2].isdigit():
            return parts[2]
        return q(self.path or "")


def nft_command(where: Where, script: str) -> str:
    """An nft script as one command: a single line as arguments, several as ``nft -f -`` and a here-document."""
    lines = [line for line in script.splitlines() if line.strip()]
    if len(lines) == 1:
        return where.run(f"nft {q(lines[0])}")
    return where.run("nft -f - <<'EOF'\n" + "\n".join(lines) + "\nEOF")


class Known:
    """What this recording made itself, so that the steps after need not read it back.

    A link it created is down, without a master and without an address; a namespace it
    created has a loopback that is down and no default route. Each later step that
    changes one of these forgets it. Everything else is read before its step.
    """

    def __init__(self) -> None:
        self.down: set[tuple[Where, str]] = set()
        self.bare: set[tuple[Where, str]] = set()
        self.no_default_route: set[tuple[Where, int]] = set()  # (namespace, IP version)

    def made(self, where: Where, name: str) -> None:
        self.down.add((where, name))
        self.bare.add((where, name))

    def gone(self, where: Where, name: str | None = None) -> None:
        """A link (``name`` None: the whole namespace) was deleted: what we knew of it no longer holds."""
        for known in (self.down, self.bare):
            known -= {k for k in known if k[0] == where and name in (None, k[1])}
        if name is None:
            self.no_default_route -= {(where, 4), (where, 6)}


class ExplainingLinks:
    """A Links handle whose changing steps record their commands (reads pass straight through).

    A step that succeeds did what its ensure_* promises, so only its starting point is
    read (and not even that for what this recording made itself, see ``Known``); a step
    that fails is read again afterwards, to say what it did get done.
    """

    def __init__(self, inner: Links, recorder: Recorder, where: Where, where_of: Callable[[Path], Where],
                 known: Known) -> None:
        self._inner = inner
        self._say = recorder.say
        self._where = where
        self._where_of = where_of
        self._known = known
        self._ip = where.tool("ip")
        self._bridge = where.tool("bridge")
        self.netns = inner.netns

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> ExplainingLinks:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()

    def close(self) -> None:
        self._inner.close()

    def _before(self, name: str) -> Link | None:
        return self._inner.link(name)

    def _failed(self, name: str, before: Link | None, said: Callable[[Link | None, Link | None], None]) -> None:
        """After a step raised: say what it did get done, from the link as it is now."""
        said(before, self._inner.link(name))

    def _made(self, name: str, before: Link | None, after: Link | None, add: str, alias: str,
              tag_extra: str = " addrgenmode none") -> None:
        """What making ``name`` did: created (``add``), tagged (with ``tag_extra``), brought up."""
        if after is None:
            return
        if before is None:
            self._say(add)
            if after.alias == alias:
                self._say(f"{self._ip} link set {q(name)} alias {q(alias)}{tag_extra}")
        self._came_up(name, before, after)

    def _came_up(self, name: str, before: Link | None, after: Link | None) -> None:
        if after is not None and after.up and not (before is not None and before.up):
            self._say(f"{self._ip} link set {q(name)} up")

    # -- links -------------------------------------------------------------------------------------------------------

    def ensure_bridge(self, name: str, alias: str, mtu: int, mac: str) -> None:
        add = f"{self._ip} link add {q(name)} mtu {mtu} address {mac.lower()} type bridge"

        def said(before: Link | None, after: Link | None) -> None:
            if before is not None and after is not None and before.mac != after.mac:
                self._say(f"{self._ip} link set {q(name)} address {after.mac}" + (" up" if after.up else ""))
                return
            self._made(name, before, after, add, alias)

        before = self._before(name)
        try:
            self._inner.ensure_bridge(name, alias, mtu, mac)
        except BaseException:
            self._failed(name, before, said)
            raise
        if before is None:
            self._known.bare.add((self._where, name))
            self._say(add)
            self._say(f"{self._ip} link set {q(name)} alias {q(alias)} addrgenmode none")
            self._say(f"{self._ip} link set {q(name)} up")
        elif before.mac != mac.lower() or not before.up:
            self._say(f"{self._ip} link set {q(name)} address {mac.lower()} up")

    def ensure_veth(self, name: str, alias: str, mtu: int, peer: str, peer_netns: Path, peer_mac: str) -> None:
        peer_where = self._where_of(peer_netns)
        add = (f"{self._ip} link add {q(name)} mtu {mtu} type veth peer name {q(peer)} mtu {mtu}"
               f" address {peer_mac.lower()} netns {peer_where.as_peer()}")
        before = self._before(name)
        try:
            self._inner.ensure_veth(name, alias, mtu, peer, peer_netns, peer_mac)
        except BaseException:
            self._failed(name, before, lambda b, a: self._made(name, b, a, add, alias))
            raise
        if before is None:
            self._say(add)
            self._say(f"{self._ip} link set {q(name)} alias {q(alias)} addrgenmode none")
            self._known.made(self._where, name)
            self._known.made(peer_where, peer)

    def ensure_macvlan(self, parent: str, mtu: int, peer: str, peer_netns: Path, peer_mac: str) -> None:
        self._inner.ensure_macvlan(parent, mtu, peer, peer_netns, peer_mac)  # it creates, or raises having made none
        peer_where = self._where_of(peer_netns)
        self._known.made(peer_where, peer)
        self._say(f"{self._ip} link add link {q(parent)} name {q(peer)} mtu {mtu} address {peer_mac.lower()}"
                  f" netns {peer_where.as_peer()} type macvlan mode bridge")

    def ensure_port(self, name: str, bridge: str) -> None:
        said = f"{self._ip} link set {q(name)} master {q(bridge)} up"
        if (self._where, name) in self._known.down:
            self._inner.ensure_port(name, bridge)
            self._known.down.discard((self._where, name))
            self._say(said)
            return
        before, master = self._before(name), self._inner.link(bridge)
        try:
            self._inner.ensure_port(name, bridge)
        except BaseException:
            after = self._inner.link(name)
            if master is not None and after is not None and after.master == master.index and (
                    before is None or before.master != master.index):
                self._say(said)
            raise
        if master is not None and (before is None or before.master != master.index or not before.up):
            self._say(said)

    def drop_mld_reports(self, name: str) -> None:
        had = (self._where, name) not in self._known.bare and any(
            qd.kind == "clsact" for qd in self._inner.qdiscs(name))
        self._inner.drop_mld_reports(name)
        if not had:
            tc = self._where.tool("tc")
            self._say(f"# overlays drops the MLD reports {name} receives with a BPF filter of its own (kernel/bpf.py);"
                      f" with tc's gact: {tc} qdisc add dev {q(name)} clsact && {tc} filter add dev {q(name)} ingress"
                      " protocol ipv6 u32 match ip6 dst ff02::16/128 action drop")

    def ensure_up(self, name: str, ipv6: bool = True) -> None:
        lines = ([f"{self._ip} link set {q(name)} addrgenmode none"] if not ipv6 else [])  # before up: see Rtnl
        lines.append(f"{self._ip} link set {q(name)} up")
        before: Link | None = None
        if (self._where, name) not in self._known.down:
            before = self._before(name)
            if before is not None and before.up:
                self._inner.ensure_up(name, ipv6)
                return

        def said(before: Link | None, after: Link | None) -> None:
            if after is not None and after.up:
                for line in lines:
                    self._say(line)

        try:
            self._inner.ensure_up(name, ipv6)
        except BaseException:
            self._failed(name, before, said)
            raise
        self._known.down.discard((self._where, name))
        for line in lines:
            self._say(line)

    def ensure_vxlan(
        self, name: str, alias: str, vni: int, local_ip: str, underlay_ifname: str, mtu: int, port: int = 4789
    ) -> None:
        add = (f"{self._ip} link add {q(name)} mtu {mtu} type vxlan id {vni} local {local_ip}"
               f" dev {q(underlay_ifname)} dstport {port} nolearning proxy")
        tag = f"{self._ip} link set {q(name)} alias {q(alias)} addrgenmode none"  # then raised: see Rtnl

        def said(before: Link | None, after: Link | None) -> None:
            self._made(name, before, after, add, alias)

        before = self._before(name)
        try:
            self._inner.ensure_vxlan(name, alias, vni, local_ip, underlay_ifname, mtu, port)
        except BaseException:
            self._failed(name, before, said)
            raise
        if before is None:
            self._say(add)
            self._say(tag)
            self._say(f"{self._ip} link set {q(name)} up")
        else:
            self._came_up(name, before, self._inner.link(name))

    def delete_link(self, name: str) -> None:
        before = self._before(name)
        self._inner.delete_link(name)
        self._known.gone(self._where, name)
        if before is not None:
            self._say(f"{self._ip} link del {q(name)}")

    # -- addresses and routes ----------------------------------------------------------------------------------------

    def ensure_address(self, name: str, ip: str, prefixlen: int) -> None:
        version = 6 if ":" in ip else 4
        if (self._where, name) in self._known.bare:
            before: set[str] = set()
        else:
            before = {str(a) for a in self._inner.interface_addresses(name, version)}
        self._inner.ensure_address(name, ip, prefixlen)
        if version == 4:
            self._known.bare.discard((self._where, name))
        if f"{ip}/{prefixlen}" not in before:
            nodad = " nodad" if version == 6 else ""  # as Rtnl adds it: no duplicate address detection
            self._say(f"{self._ip} addr add {ip}/{prefixlen} dev {q(name)}{nodad}")

    def ensure_default_route(self, gateway: str) -> None:
        version = 6 if ":" in gateway else 4
        known = (self._where, version) in self._known.no_default_route
        before = False if known else self._inner.has_default_route(version)
        self._inner.ensure_default_route(gateway)
        self._known.no_default_route.discard((self._where, version))
        if not before:
            # proto static: what overlays' own request says (ip's default would be "boot")
            family = " -6" if version == 6 else ""
            self._say(f"{self._ip}{family} route add default via {gateway} proto static")

    # -- VXLAN forwarding and neighbour entries ----------------------------------------------------------------------

    def ensure_fdb(self, name: str, mac: str, dst: str) -> None:
        had = self._has_fdb(name, mac.lower(), dst)
        self._inner.ensure_fdb(name, mac, dst)
        if not had:
            verb = "append" if mac == ZERO_MAC else "replace"
            self._say(f"{self._bridge} fdb {verb} {mac.lower()} dev {q(name)} dst {dst} self permanent")

    def delete_fdb(self, name: str, mac: str, dst: str) -> None:
        had = self._inner.link(name) is not None and self._has_fdb(name, mac.lower(), dst)
        self._inner.delete_fdb(name, mac, dst)
        if had:
            self._say(f"{self._bridge} fdb del {mac.lower()} dev {q(name)} dst {dst} self")

    def _has_fdb(self, name: str, mac: str, dst: str) -> bool:
        """A unicast entry is read alone (one VTEP per MAC); a flood entry has one per VTEP and a get shows
        only the first, so its table is dumped."""
        if mac == ZERO_MAC:
            return (mac, dst) in self._inner.fdb(name)
        return self._inner.fdb_dst(name, mac) == dst

    def ensure_neigh(self, name: str, ip: str, mac: str) -> None:
        before = self._inner.neighbour(name, ip)
        self._inner.ensure_neigh(name, ip, mac)
        if before != mac.lower():
            self._say(f"{self._ip} neigh replace {ip} lladdr {mac.lower()} dev {q(name)} nud permanent")

    def delete_neigh(self, name: str, ip: str) -> None:
        had = self._inner.link(name) is not None and self._inner.neighbour(name, ip) is not None
        self._inner.delete_neigh(name, ip)
        if had:
            self._say(f"{self._ip} neigh del {ip} dev {q(name)}")


class Explaining:
    """A Kernel whose changing steps record the commands that do the same by hand."""

    def __init__(self, inner: Kernel, recorder: Recorder) -> None:
        self._inner = inner
        self.recorder = recorder
        self._say = recorder.say
        self._known = Known()

    def __getattr__(self, name: str) -> Any:  # reads: netns_path, netns_exists, wait_links_gone, ...
        return getattr(self._inner, name)

    def open(self, netns: str | None) -> Links:
        return ExplainingLinks(self._inner.open(netns), self.recorder, self._where(netns),  # type: ignore[return-value]
                               self._where_of, self._known)

    def open_path(self, label: str, path: Path) -> Links:
        return ExplainingLinks(self._inner.open_path(label, path), self.recorder,  # type: ignore[return-value]
                               self._where_of(path, label), self._where_of, self._known)

    def _where_of(self, path: Path, label: str | None = None) -> Where:
        """The namespace at ``path``: by its name when it is a named one (``label``'s, or its file's)."""
        for name in (label, path.name):
            if name and self._inner.netns_path(name) == path:
                return Where(name=name)
        return Where.of_path(path)

    def create_netns(self, name: str) -> Path:
        path = self._inner.create_netns(name)
        self._say(f"ip netns add {q(name)}")
        self._known.down.add((Where(name=name), "lo"))
        self._known.no_default_route |= {(Where(name=name), 4), (Where(name=name), 6)}
        return path

    def adopt_netns(self, name: str, source: Path) -> Path:
        path = self._inner.adopt_netns(name, source)
        pid = Where(path=str(source)).as_peer()
        if pid.isdigit():
            self._say(f"ip netns attach {q(name)} {pid}")
        else:
            self._say(f"touch {q(str(path))} && mount --bind {q(str(source))} {q(str(path))}")
        return path

    def delete_netns(self, name: str) -> None:
        existed = self._inner.netns_exists(name)
        self._inner.delete_netns(name)
        self._known.gone(Where(name=name))
        if existed:
            self._say(f"ip netns del {q(name)}")

    def set_sysctl(self, netns: str | None, key: str, value: str, missing_ok: bool = False) -> None:
        before = self._inner.sysctl(netns, key)
        self._inner.set_sysctl(netns, key, value, missing_ok)
        if before is not None and before != value:
            self._say(self._where(netns).run(f"sysctl -w {q(f'{key}={value}')}"))  # sysctl takes dots or slashes

    def nft_apply(self, netns: str | None, script: str) -> None:
        self._inner.nft_apply(netns, script)
        self._say(nft_command(self._where(netns), script))

    def nft_delete_table(self, netns: str | None, family: str, table: str) -> None:
        existed = self._inner.nft_list_table(netns, family, table) is not None
        self._inner.nft_delete_table(netns, family, table)
        if existed:
            self._say(nft_command(self._where(netns), f"delete table {family} {table}"))

    def _where(self, netns: str | None) -> Where:
        return Where(name=netns) if netns else Where()
