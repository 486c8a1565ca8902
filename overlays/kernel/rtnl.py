"""Links, addresses and routes of one namespace, over one netlink socket.

Two verbs only: ``ensure_*`` (idempotent: an object that exists already is read
back and verified, never blindly recreated) and ``delete_*`` (a missing object is
success). Every failure becomes a KernelError that names the step, the object
and the namespace. Only the kernel layer speaks netlink.

Links, addresses, routes and neighbour reads go through ``nl.Channel``: messages
packed with ``struct`` (see nl.py for why), so attaching a sandbox never imports
pyroute2. So are FDB and neighbour additions: the agent writes them for each new
remote endpoint, on the clock (pyroute2's round trip through its event loop cost
8 ms a write, 20 ms at worst, with another thread busy). The rare VXLAN device
creation and deletions use pyroute2's ``IPRoute``, made on first use only (its
errors become ``nl.NetlinkError``).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlays.errors import Conflict, KernelError
from overlays.kernel import arp, netns, nl, tc
from overlays.kernel.nl import IFADDR, IFINFO, NDMSG, RTMSG, NetlinkError, attr, attr_ip, attr_mac, attr_str, attr_u32
from overlays.kernel.rtnl_types import Hop, Link, Underlay

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

if TYPE_CHECKING:
    import socket

IFF_UP = 1
IFF_LOOPBACK = 8
AF_INET = 2
AF_INET6 = 10
_FAMILY = {4: AF_INET, 6: AF_INET6}
AF_BRIDGE = 7
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
# rtnetlink attribute numbers (linux/if_link.h, if_addr.h, rtnetlink.h, neighbour.h, veth.h)
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_AF_SPEC, IFLA_NET_NS_FD, IFLA_EXT_MASK = 18, 20, 26, 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_OPERSTATE, IF_OPER_UP = 16, 6
IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1
IFLA_VXLAN_ID = 1
IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE = 1, 4
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 7, 9, 15
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
RTEXT_FILTER_SKIP_STATS = 8
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RTN_UNICAST = 1
GET = nl.NLM_F_REQUEST
DUMP = nl.NLM_F_REQUEST | nl.NLM_F_DUMP
CHANGE = nl.NLM_F_REQUEST | nl.NLM_F_ACK
CREATE = CHANGE | nl.NLM_F_CREATE | nl.NLM_F_EXCL
REPLACE = CHANGE | nl.NLM_F_CREATE | nl.NLM_F_REPLACE
APPEND = CHANGE | nl.NLM_F_CREATE | nl.NLM_F_APPEND
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
RT_SCOPE_UNIVERSE = 0
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
ZERO_MAC = "00:00:00:00:00:00"
_ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
_NUD_STATES = ((0x01, "INCOMPLETE"), (0x02, "REACHABLE"), (0x04, "STALE"), (0x08, "DELAY"), (0x10, "PROBE"),
               (0x20, "FAILED"), (0x40, "NOARP"), (0x80, "PERMANENT"))
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_RTNH_IFINDEX = struct.Struct("=i")
_SKIP_STATS = attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
# overlays serves IPv4 only: the links of an endpoint make no IPv6 addresses (see Rtnl.ensure_up).
_NO_IPV6_ADDRESSES = nl.nest(
    IFLA_AF_SPEC, nl.nest(AF_INET6, nl.attr_u8(IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE))
)


def kernel_error(operation: str, obj: str, netns: str | None, e: NetlinkError) -> KernelError:
    """A refused request as a KernelError that names the step and keeps the errno."""
    return KernelError(operation, obj, netns, os.strerror(e.code) if e.code else str(e), errno=e.code or None)


def _link_msg(index: int = 0, up: bool | None = None) -> bytes:
    """The fixed part of a link message; ``up`` True/False also sets/clears IFF_UP, None leaves it alone."""
    return IFINFO.pack(index=index, flags=IFF_UP if up else 0, change=IFF_UP if up is not None else 0)


def _in_main(route: nl.Message) -> bool:
    return (route.attrs.u32(RTA_TABLE) or route["table"]) == RT_TABLE_MAIN


def _first_hop_oif(route: nl.Message) -> int | None:
    """The device of an ECMP route's first next hop (struct rtnexthop: len, flags, hops, ifindex)."""
    hops = route.attrs.blob(RTA_MULTIPATH)
    if not hops or len(hops) < 8:
        return None
    (oif,) = _RTNH_IFINDEX.unpack_from(hops, 4)
    return int(oif) or None


def _link_from(msg: nl.Message) -> Link:
    info = msg.attrs.nested(IFLA_LINKINFO)
    return Link(
        index=msg["index"],
        name=msg.attrs.text(IFLA_IFNAME) or "",
        kind=info.text(IFLA_INFO_KIND) if info else None,
        mac=msg.attrs.mac(IFLA_ADDRESS) or "",
        mtu=msg.attrs.u32(IFLA_MTU) or 0,
        alias=msg.attrs.text(IFLA_IFALIAS),
        up=bool(msg["flags"] & IFF_UP),
        master=msg.attrs.u32(IFLA_MASTER),
    )


class Rtnl:
    """A netlink handle bound to one namespace (``netns=None``: this process's own)."""

    def __init__(self, netns_name: str | None, path: Path | None) -> None:
        self.netns = netns_name
        self.path = path
        self._nl = nl.Channel(netns.netlink_socket(path))
        self._ipr: Any = None
        self._packet: socket.socket | None = None  # for ARP announcements, made on first use
        # Link indices by name, as read through this handle (it lives for one operation): a stale
        # index only makes the kernel answer ENODEV, and delete_link forgets the name.
        self._indices: dict[str, int] = {}

    @classmethod
    def open(cls, netns_name: str | None) -> Rtnl:
        return cls(netns_name, netns.path_of(netns_name) if netns_name else None)

    @classmethod
    def open_path(cls, label: str, path: Path) -> Rtnl:
        return cls(label, path)

    def close(self) -> None:
        self._nl.close()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._packet is not None:
            self._packet.close()
            self._packet = None

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _step(self, operation: str, obj: str) -> Iterator[None]:
        try:
            yield
        except NetlinkError as e:
            raise kernel_error(operation, obj, self.netns, e) from e

    def prepare_overlay_writes(self) -> None:
        """Load now what the overlay's writes need: pyroute2 (~200 ms to import), the packet socket.

        The agent calls it once on the handle it keeps, so its first write for a new endpoint
        costs what the others do."""
        self._iproute()  # deletions still go through it
        with self._step("open a packet socket for", "ARP announcements"):
            self._packet_socket()

    def _iproute(self) -> Any:
        from pyroute2 import IPRoute  # the heavy import: only the overlay control plane gets here

        if self._ipr is None:
            self._ipr = IPRoute(fileno=netns.netlink_socket(self.path).detach())
        return self._ipr

    def _pyroute2(self, call: Callable[[Any], object]) -> None:
        """One request through pyroute2's IPRoute (made on first use), its errors as ``nl.NetlinkError``."""
        from pyroute2.netlink.exceptions import NetlinkError as Pyroute2Error

        ipr = self._iproute()
        try:
            call(ipr)
        except Pyroute2Error as e:
            raise NetlinkError(e.code or errno.EIO, str(e)) from e

    # -- reading -----------------------------------------------------------

    def _get_link(self, name: str | None = None, index: int = 0) -> nl.Message | None:
        """One RTM_GETLINK by name or index (not a dump); None if there is no such link."""
        body = _link_msg(index) + _SKIP_STATS + (attr_str(IFLA_IFNAME, name) if name is not None else b"")
        try:
            msgs = self._nl.request(RTM_GETLINK, GET, IFINFO, body)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise kernel_error("read link", name or f"#{index}", self.netns, e) from e
        return msgs[0] if msgs else None

    def link(self, name: str) -> Link | None:
        msg = self._get_link(name)
        if msg is None:
            self._indices.pop(name, None)
            return None
        found = _link_from(msg)
        self._indices[name] = found.index
        return found

    def _index(self, name: str) -> int:
        """The index of link ``name``: remembered if this handle has read it, else looked up."""
        index = self._indices.get(name)
        return index if index is not None else self._need(name).index

    def links(self) -> list[Link]:
        with self._step("list", "links"):
            return [_link_from(m) for m in self._nl.request(RTM_GETLINK, DUMP, IFINFO, _link_msg() + _SKIP_STATS)]

    def _routes(self, family: int = AF_INET) -> list[nl.Message]:
        """The main-table routes of one family (the kernel filters by table: strict checking is on)."""
        try:
            msgs = self._nl.request(RTM_GETROUTE, DUMP, RTMSG, RTMSG.pack(family=family, table=RT_TABLE_MAIN))
        except NetlinkError as e:
            if e.code == errno.ENOENT:  # a fresh namespace has no main table until its first route
                return []
            raise
        return [r for r in msgs if _in_main(r)]

    def _addresses(self, family: int, index: int = 0) -> list[nl.Message]:
        """The addresses of one family (of link ``index`` only, if given: the kernel filters them)."""
        msgs = self._nl.request(RTM_GETADDR, DUMP, IFADDR, IFADDR.pack(family=family, index=index))
        return [a for a in msgs if a["family"] == family and (not index or a["index"] == index)]

    def route_prefixes(self, version: int = 4) -> list[IPNetwork]:
        """Every destination of one family this namespace routes to (to keep new subnets clear of them).

        IPv6's link-local prefix (fe80::/64 on any link that has one) is every link's, not a route out.
        """
        family = _FAMILY[version]
        with self._step("list", "routes"):
            found = []
            for r in self._routes(family):
                dst = r.attrs.ip(RTA_DST)
                if dst and r["dst_len"] > 0:
                    found.append(ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False))
            for a in self._addresses(family):
                found.append(ipaddress.ip_network(f"{a.attrs.ip(IFA_ADDRESS)}/{a['prefixlen']}", strict=False))
            return [n for n in found if not n.is_link_local]

    def addresses(self, version: int = 4) -> list[IPAddress]:
        """Every address of one family of this namespace (a published port's host IP must be one)."""
        with self._step("list", "addresses"):
            return [
                ipaddress.ip_address(a.attrs.ip(IFA_LOCAL) or a.attrs.ip(IFA_ADDRESS) or "")
                for a in self._addresses(_FAMILY[version])
            ]

    def interface_addresses(self, name: str, version: int = 4) -> list[IPInterface]:
        """The addresses of one family (with their prefixes) of link ``name``, primary first; [] if none."""
        index = self._index(name)
        with self._step("read addresses of", name):
            found = sorted(self._addresses(_FAMILY[version], index), key=lambda a: bool(a["flags"] & IFA_F_SECONDARY))
            return [ipaddress.ip_interface(f"{a.attrs.ip(IFA_LOCAL) or a.attrs.ip(IFA_ADDRESS)}/{a['prefixlen']}")
                    for a in found]

    def underlay(self) -> Underlay | None:
        """The interface the default route leaves by, with its primary IPv4 address.

        Without a default route: the first UP non-loopback interface with a global IPv4
        address. None if there is neither.
        """
        with self._step("list", "routes"):
            defaults = [r for r in self._routes() if r["dst_len"] == 0]
        for route in sorted(defaults, key=lambda r: r.attrs.u32(RTA_PRIORITY) or 0):
            oif = route.attrs.u32(RTA_OIF) or _first_hop_oif(route)  # ECMP: the first next hop's device
            found = self._underlay_on(oif) if oif else None
            if found:
                return found
        for link in sorted(self.links(), key=lambda link: link.index):
            found = self._underlay_on(link.index) if link.up and link.name != "lo" else None
            if found:
                return found
        return None

    def _underlay_on(self, index: int) -> Underlay | None:
        msg = self._get_link(index=index)
        if msg is None or msg["flags"] & IFF_LOOPBACK:
            return None
        with self._step("read addresses of", f"#{index}"):
            addrs = [
                a for a in self._addresses(AF_INET, index)
                if a["scope"] == RT_SCOPE_UNIVERSE and not a["flags"] & IFA_F_SECONDARY
            ]
        if not addrs:
            return None
        link = _link_from(msg)
        ip = addrs[0].attrs.ip(IFA_LOCAL) or addrs[0].attrs.ip(IFA_ADDRESS) or ""
        return Underlay(ifname=link.name, ip=ip, mtu=link.mtu)

    def has_default_route(self, version: int = 4) -> bool:
        with self._step("list", "routes"):
            return any(r["dst_len"] == 0 for r in self._routes(_FAMILY[version]))

    # -- what a packet would meet (overlays trace) --------------------------------------------------------------------

    def route_to(self, dst: str) -> Hop | None:
        """The route this namespace takes to ``dst`` (``ip route get``); None if it has none."""
        v6 = ":" in dst
        body = RTMSG.pack(family=AF_INET6 if v6 else AF_INET, dst_len=128 if v6 else 32) + attr_ip(RTA_DST, dst)
        try:
            (msg,) = self._nl.request(RTM_GETROUTE, GET, RTMSG, body)
        except NetlinkError as e:
            if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                return None
            raise kernel_error("look up route to", dst, self.netns, e) from e
        oif = msg.attrs.u32(RTA_OIF)
        dev = self._get_link(index=oif) if oif else None
        return Hop(dev=dev.attrs.text(IFLA_IFNAME) or "" if dev is not None else "", gateway=msg.attrs.ip(RTA_GATEWAY),
                   src=msg.attrs.ip(RTA_PREFSRC), kind=_ROUTE_TYPES.get(msg["type"], str(msg["type"])))

    def neighbour_entry(self, name: str, ip: str) -> tuple[str, str] | None:
        """The neighbour entry for ``ip`` on link ``name``: (MAC, state such as REACHABLE); None if none."""
        index = self._need(name).index
        with self._step("read neighbours of", name):
            for m in self._neighbour_dump(AF_INET6 if ":" in ip else AF_INET, index):
                if m.attrs.ip(NDA_DST) == ip:
                    states = [label for bit, label in _NUD_STATES if m["state"] & bit]
                    return m.attrs.mac(NDA_LLADDR) or "", "/".join(states) or "NONE"
        return None

    def port_macs(self, name: str) -> set[str]:
        """The MACs a bridge has learned behind its port ``name`` (``bridge fdb show brport``)."""
        index = self._need(name).index
        with self._step("read fdb of", name):
            return {m.attrs.mac(NDA_LLADDR) or "" for m in self._neighbour_dump(AF_BRIDGE, index)
                    if not m["state"] & NUD_PERMANENT and not m["flags"] & NTF_SELF}

    # -- ensure ------------------------------------------------------------

    def _settled(self, link: Link) -> Link:
        """A link another process is creating gets its alias just after it appears: wait a moment for it."""
        deadline = time.monotonic() + 0.5
        while link.alias is None and time.monotonic() < deadline:
            time.sleep(0.002)
            link = self._need(link.name)
        return link

    def _created(self, name: str, what: str, add: Callable[[], object]) -> bool:
        """Run ``add``; False if another process created ``name`` first (the caller then verifies it)."""
        try:
            add()
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return False
            raise kernel_error(what, name, self.netns, e) from e
        return True

    def _require_ours(self, link: Link, kind: str, alias: str) -> None:
        link = self._settled(link)
        if link.kind != kind or link.alias != alias:
            raise Conflict(
                f"link {link.name} in {self.netns or 'the host namespace'} exists and is not ours"
                f" (kind {link.kind}, alias {link.alias!r})"
            )

    def ensure_bridge(self, name: str, alias: str, mtu: int, mac: str) -> None:
        """A bridge of ours, up, with MAC ``mac`` of its own.

        Without a MAC set, a bridge takes the lowest of its ports' and changes it when that
        port leaves: every sandbox then holds a stale neighbour entry for the gateway for
        15-20 s. A MAC given at creation (or set later) stays, whatever ports come and go.
        """
        existing = self.link(name)
        if existing:
            self._require_ours(existing, "bridge", alias)
            if existing.mac != mac.lower() or not existing.up:
                with self._step("set MAC of bridge", name):
                    self._set_named(name, attr_mac(IFLA_ADDRESS, mac), up=True)
        elif not self._created(name, "create bridge", lambda: self._new_link(
                name, "bridge", mtu, extra=attr_mac(IFLA_ADDRESS, mac))):
            self.ensure_bridge(name, alias, mtu, mac)  # a concurrent operation made it just now: verify it
        else:
            with self._step("tag bridge", name):
                # The kernel ignores IFLA_IFALIAS on RTM_NEWLINK: tag it, and keep it free of IPv6
                # addresses (overlays serves IPv4), in one set before it comes up (see ensure_up).
                self._set_named(name, attr_str(IFLA_IFALIAS, alias) + _NO_IPV6_ADDRESSES)
            self.ensure_up(name)

    def _new_link(self, name: str, kind: str, mtu: int, data: bytes = b"", extra: bytes = b"") -> None:
        info = attr_str(IFLA_INFO_KIND, kind) + (attr(IFLA_INFO_DATA, data) if data else b"")
        body = (_link_msg() + attr_str(IFLA_IFNAME, name) + attr_u32(IFLA_MTU, mtu) + extra
                + attr(IFLA_LINKINFO, info))
        self._nl.request(RTM_NEWLINK, CREATE, IFINFO, body)

    def _set_named(self, name: str, attrs: bytes = b"", up: bool | None = None) -> None:
        """One RTM_NEWLINK (no create) on the link called ``name``: the kernel finds it by name."""
        self._nl.request(RTM_NEWLINK, CHANGE, IFINFO, _link_msg(up=up) + attr_str(IFLA_IFNAME, name) + attrs)

    def ensure_veth(
        self, name: str, alias: str, mtu: int, peer: str, peer_netns: Path, peer_mac: str
    ) -> None:
        """A veth pair whose peer is created straight inside ``peer_netns`` (no move, no rename).

        Our end is tagged, and kept free of IPv6 addresses (it is a bridge port), before it comes up.
        """
        fd = os.open(str(peer_netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            end = (_link_msg() + attr_str(IFLA_IFNAME, peer) + attr_u32(IFLA_NET_NS_FD, fd)
                   + attr_u32(IFLA_MTU, mtu) + attr_mac(IFLA_ADDRESS, peer_mac))
            # Create first, verify on EEXIST: the usual case (a new sandbox) costs no read.
            made = self._created(f"{name} (peer {peer})", "create veth", lambda: self._new_link(
                name, "veth", mtu, attr(VETH_INFO_PEER, end)))
        finally:
            os.close(fd)
        if not made:
            existing = self.link(name)
            if existing is None:  # the name taken was the peer's, inside the sandbox
                raise KernelError("create veth", f"{name} (peer {peer})", self.netns,
                                  f"{peer} exists already in {peer_netns.name}")
            self._require_ours(existing, "veth", alias)
            return
        with self._step("tag veth", name):
            self._set_named(name, attr_str(IFLA_IFALIAS, alias) + _NO_IPV6_ADDRESSES)

    def ensure_macvlan(self, parent: str, mtu: int, peer: str, peer_netns: Path, peer_mac: str) -> None:
        """A macvlan device on ``parent`` (bridge mode), created straight inside ``peer_netns`` as ``peer``.

        Nothing of it stays in this namespace: it lives and dies with the sandbox, and
        the parent (not ours) is never changed. Bridge mode lets the sandboxes of one
        parent reach each other as well as the rest of the parent's segment.
        """
        index = self._need(parent).index
        fd = os.open(str(peer_netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            extra = (attr_u32(IFLA_LINK, index) + attr_u32(IFLA_NET_NS_FD, fd) + attr_mac(IFLA_ADDRESS, peer_mac))
            made = self._created(f"{peer} (on {parent})", "create macvlan", lambda: self._new_link(
                peer, "macvlan", mtu, attr_u32(IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE), extra))
        finally:
            os.close(fd)
        if not made:
            raise KernelError("create macvlan", f"{peer} (on {parent})", self.netns,
                              f"{peer} exists already in {peer_netns.name}", errno=errno.EEXIST)

    def ensure_port(self, name: str, bridge: str) -> None:
        """``name`` is a port of ``bridge`` and up.

        One set by name, without reading the port first: the kernel treats enslaving
        to the current master and raising an up link as no-ops, so this is idempotent.
        """
        self._set_existing("attach to bridge", name, f"{name} -> {bridge}", attr_u32(IFLA_MASTER, self._index(bridge)))

    def ensure_up(self, name: str, ipv6: bool = True) -> None:
        """One set by name (raising an up link is a no-op in the kernel).

        ``ipv6=False``: first tell the link to make no IPv6 addresses, so it comes up silent
        (no DAD, router solicitations or MLD reports, which a bridge of N sandboxes copies to
        all N ports: at N = 1000 that chatter tripled the cost of every attach). It must be a
        set of its own: the kernel raises the link before it reads IFLA_AF_SPEC, and refuses
        the attribute when a link is created.
        """
        if not ipv6:
            self._set_existing("turn off IPv6 addresses of", name, name, _NO_IPV6_ADDRESSES, up=None)
        self._set_existing("bring up", name, name)

    def _set_existing(self, operation: str, name: str, obj: str, attrs: bytes = b"", up: bool | None = True) -> None:
        """Set ``attrs`` (and IFF_UP) on the existing link ``name``; its absence reads as before (find link)."""
        try:
            self._set_named(name, attrs, up=up)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                raise KernelError("find link", name, self.netns, "no such device", errno=e.code) from e
            raise kernel_error(operation, obj, self.netns, e) from e

    def ensure_address(self, name: str, ip: str, prefixlen: int) -> None:
        """Add first, then verify on EEXIST: the common case (a new link) costs no read of its addresses."""
        link = self._need(name)
        want = ipaddress.ip_address(ip)
        family = AF_INET if want.version == 4 else AF_INET6
        attrs = attr_ip(IFA_LOCAL, ip) + attr_ip(IFA_ADDRESS, ip) if family == AF_INET else attr_ip(IFA_ADDRESS, ip)
        # IPv6: no duplicate address detection (our addresses are unique by allocation; DAD would hold
        # each one back for a second and send its probes to every port of the bridge).
        flags = 0 if family == AF_INET else IFA_F_NODAD
        try:
            body = IFADDR.pack(family=family, prefixlen=prefixlen, flags=flags, index=link.index) + attrs
            self._nl.request(RTM_NEWADDR, CREATE, IFADDR, body)
            return
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise kernel_error("add address", f"{ip}/{prefixlen} on {name}", self.netns, e) from e
            refused = e
        # IPv4 answers EEXIST only for this address with this prefix; IPv6 for this address with any.
        with self._step("read addresses of", name):
            have = {
                (ipaddress.ip_address(a.attrs.ip(IFA_ADDRESS) or "0.0.0.0"), a["prefixlen"])
                for a in self._addresses(family, link.index)
            }
        if (want, prefixlen) not in have:
            raise KernelError("add address", f"{ip}/{prefixlen} on {name}", self.netns,
                              f"{ip} is there already with another prefix length") from refused

    def ensure_default_route(self, gateway: str) -> None:
        """A default route, via ``gateway`` if there is none yet (one there already is kept).

        Create first: the kernel answers EEXIST for a default route of the main table with
        the same metric, whatever its gateway, so a new sandbox costs no dump of its routes.
        """
        family = AF_INET6 if ":" in gateway else AF_INET
        body = RTMSG.pack(family=family, table=RT_TABLE_MAIN, proto=RTPROT_STATIC, scope=RT_SCOPE_UNIVERSE,
                          type=RTN_UNICAST) + attr_ip(RTA_GATEWAY, gateway)
        try:
            self._nl.request(RTM_NEWROUTE, CREATE, RTMSG, body)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise kernel_error("add default route", f"via {gateway}", self.netns, e) from e

    def ensure_vxlan(
        self, name: str, alias: str, vni: int, local_ip: str, underlay_ifname: str, mtu: int, port: int = 4789
    ) -> None:
        """A VXLAN device with static forwarding only: no learning; ARP answered from its neighbour table."""
        existing = self.link(name)
        if existing:
            self._require_ours(existing, "vxlan", alias)
            have = self._vni(existing.index)
            if have != vni:
                raise Conflict(f"vxlan device {name} in {self.netns or 'the host namespace'} has VNI {have}, not {vni}")
        else:
            dev = self._need(underlay_ifname)
            # Offloads are left at their defaults on purpose (see ARCHITECTURE.md, Offloads).
            if not self._created(name, f"create vxlan (vni {vni} on {underlay_ifname})", lambda: self._pyroute2(
                lambda ipr: ipr.link(
                    "add", ifname=name, kind="vxlan", mtu=mtu, vxlan_id=vni, vxlan_local=local_ip,
                    vxlan_link=dev.index, vxlan_port=port, vxlan_learning=0, vxlan_proxy=1,
                ))
            ):
                self._require_ours(self._need(name), "vxlan", alias)  # a concurrent operation made it just now
                self.ensure_up(name)
                return
            made = self._need(name)
            if made.mtu != mtu:
                # The kernel silently clamps a VXLAN device's MTU to what its underlay can carry.
                self.delete_link(name)
                raise KernelError(
                    "create vxlan", name, self.netns,
                    f"MTU {mtu} does not fit underlay {underlay_ifname} (MTU {dev.mtu}; VXLAN needs 50 bytes)",
                )
            with self._step("tag vxlan", name):
                # The kernel ignores IFLA_IFALIAS on RTM_NEWLINK: tag it, and keep it free of IPv6 addresses
                # (their DAD, router solicitations and MLD reports would be flooded to every VTEP), before up.
                self._set_named(name, attr_str(IFLA_IFALIAS, alias) + _NO_IPV6_ADDRESSES)
        self.ensure_up(name)

    def _vni(self, index: int) -> int | None:
        msg = self._get_link(index=index)
        info = msg.attrs.nested(IFLA_LINKINFO) if msg is not None else None
        data = info.nested(IFLA_INFO_DATA) if info else None
        return data.u32(IFLA_VXLAN_ID) if data else None

    def _neighbour_dump(self, family: int, index: int) -> list[nl.Message]:
        """A strict neighbour dump of one device: bridge FDB dumps filter on the header's port index,
        IP neighbour dumps on an NDA_IFINDEX attribute (their header index must be 0)."""
        if family == AF_BRIDGE:
            body = NDMSG.pack(family=family, ifindex=index)
        else:
            body = NDMSG.pack(family=family) + attr_u32(NDA_IFINDEX, index)
        return [m for m in self._nl.request(RTM_GETNEIGH, DUMP, NDMSG, body) if m["ifindex"] == index]

    def fdb(self, name: str) -> set[tuple[str, str]]:
        """The static (mac, remote VTEP) entries of a VXLAN device, all-zero flood entries included."""
        index = self._need(name).index
        with self._step("read fdb of", name):
            found = set()
            for m in self._neighbour_dump(AF_BRIDGE, index):
                mac, dst = m.attrs.mac(NDA_LLADDR), m.attrs.ip(NDA_DST)
                # Skip the bridge's own entries for this port (NTF_MASTER, no NDA_DST).
                if mac and dst and m["flags"] & NTF_SELF and m["state"] & NUD_PERMANENT:
                    found.add((mac, dst))
            return found

    def fdb_dst(self, name: str, mac: str) -> str | None:
        """The VTEP of the device's static entry for ``mac`` (a get, not a dump: a table of hundreds costs
        milliseconds to dump); None if there is none. A flood entry answers with its first VTEP only."""
        mac = self._mac("read fdb entry", name, mac)
        # The index looked up now, as the writes beside it do: another process may have made the device again.
        body = NDMSG.pack(family=AF_BRIDGE, ifindex=self._need(name).index, flags=NTF_SELF) + attr_mac(NDA_LLADDR, mac)
        found = self._neighbour_get(f"fdb entry {mac} of", name, body)
        return found.attrs.ip(NDA_DST) if found is not None and found["state"] & NUD_PERMANENT else None

    def _neighbour_get(self, what: str, name: str, body: bytes) -> nl.Message | None:
        try:
            msgs = self._nl.request(RTM_GETNEIGH, GET, NDMSG, body)
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                return None
            raise kernel_error("read", f"{what} {name}", self.netns, e) from e
        return msgs[0] if msgs else None

    def ensure_fdb(self, name: str, mac: str, dst: str) -> None:
        """``mac`` is sent to VTEP ``dst``.

        All-zero entries are appended (one per remote VTEP: head-end replication of
        broadcast and unknown unicast). A unicast MAC is replaced instead: the kernel
        silently ignores an append for a MAC it knows, which would leave a moved
        endpoint pointing at its old host.
        """
        mac = self._mac("add fdb entry", name, mac)
        index = self._need(name).index
        # NTF_SELF: the device's own table (without it a replace on a bridge port lands in the bridge's FDB).
        body = NDMSG.pack(family=AF_BRIDGE, ifindex=index, state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
        with self._step("add fdb entry", f"{mac} dst {dst} on {name}"):
            self._nl.request(RTM_NEWNEIGH, APPEND if mac == ZERO_MAC else REPLACE, NDMSG,
                             body + attr_mac(NDA_LLADDR, mac) + attr_ip(NDA_DST, dst))

    def _mac(self, operation: str, name: str, mac: str) -> str:
        """``mac`` in lower case; a malformed one is refused before netlink (pyroute2 raises TypeError)."""
        if not _MAC_RE.match(mac.lower()):
            raise KernelError(operation, f"on {name}", self.netns, f"invalid MAC address {mac!r}")
        return mac.lower()

    def neighbours(self, name: str) -> dict[str, str]:
        """The permanent neighbour entries of a device, both families: ip -> mac."""
        index = self._need(name).index
        with self._step("read neighbours of", name):
            found = {}
            for family in (AF_INET, AF_INET6):
                for m in self._neighbour_dump(family, index):
                    ip, mac = m.attrs.ip(NDA_DST), m.attrs.mac(NDA_LLADDR)
                    if ip and mac and m["state"] & NUD_PERMANENT:
                        found[ip] = mac
            return found

    def neighbour(self, name: str, ip: str) -> str | None:
        """The MAC of the device's permanent neighbour entry for ``ip`` (a get, not a dump), or None."""
        index = self._need(name).index  # looked up now, as for fdb_dst
        body = NDMSG.pack(family=AF_INET6 if ":" in ip else AF_INET, ifindex=index) + attr_ip(NDA_DST, ip)
        found = self._neighbour_get(f"neighbour {ip} of", name, body)
        return found.attrs.mac(NDA_LLADDR) if found is not None and found["state"] & NUD_PERMANENT else None

    def ensure_neigh(self, name: str, ip: str, mac: str) -> None:
        mac = self._mac("set neighbour", name, mac)
        index = self._need(name).index
        body = NDMSG.pack(family=AF_INET6 if ":" in ip else AF_INET, ifindex=index, state=NUD_PERMANENT)
        with self._step("set neighbour", f"{ip} lladdr {mac} on {name}"):
            self._nl.request(RTM_NEWNEIGH, REPLACE, NDMSG, body + attr_ip(NDA_DST, ip) + attr_mac(NDA_LLADDR, mac))

    def announce(self, name: str, ip: str, mac: str) -> None:
        """One gratuitous ARP reply on ``name``: ``ip`` is at ``mac`` (see arp.py for who takes it)."""
        source = self._need(name).mac
        with self._step("announce", f"{ip} at {mac} on {name}"):
            try:
                arp.send(self._packet_socket(), name, arp.announcement(ip, mac, source))
            except OSError as e:
                raise NetlinkError(e.errno or errno.EIO, str(e)) from e

    def _packet_socket(self) -> socket.socket:
        """This handle's packet socket, made in its namespace on first use (an OSError as NetlinkError)."""
        if self._packet is None:
            try:
                self._packet = netns.run_in(self.path, arp.packet_socket)
            except OSError as e:
                raise NetlinkError(e.errno or errno.EIO, str(e)) from e
        return self._packet

    # -- links down, and traffic control (faults: see tc.py) ---------------

    def ensure_down(self, name: str) -> None:
        """One set by name (taking a down link down is a no-op in the kernel)."""
        self._set_existing("take down", name, name, up=False)

    def wait_running(self, name: str, timeout: float = 3.0) -> bool:
        """Wait until ``name`` is operationally up: the kernel applies a carrier that came back (and lets
        packets through) from its link-watch work, up to a second later; False if it was not in time."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self._get_link(name)
            if msg is None or msg.attrs.blob(IFLA_OPERSTATE) == bytes([IF_OPER_UP]):
                return msg is not None
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def ensure_ifb(self, name: str, alias: str, mtu: int) -> None:
        """An ifb device of ours, up (ingress traffic redirected to it leaves through its qdisc)."""
        existing = self.link(name)
        if existing:
            self._require_ours(existing, "ifb", alias)
        elif self._created(name, "create ifb", lambda: self._new_link(name, "ifb", mtu)):
            with self._step("tag ifb", name):
                self._set_named(name, attr_str(IFLA_IFALIAS, alias) + _NO_IPV6_ADDRESSES)
        self.ensure_up(name)

    def qdiscs(self, name: str) -> list[tc.Qdisc]:
        index = self._index(name)
        with self._step("read qdiscs of", name):
            return tc.qdiscs(self._nl, index)

    def ensure_shape(self, name: str, shape: tc.Shape) -> None:
        """Our root qdisc on ``name`` shapes its egress as ``shape``."""
        index = self._index(name)
        with self._step("shape", name):
            tc.ensure_root(self._nl, index, name, shape, self.netns)

    def delete_shape(self, name: str) -> None:
        link = self.link(name)
        if link is not None:
            with self._step("stop shaping", name):
                tc.delete_root(self._nl, link.index, name, self.netns)

    def ensure_redirect(self, name: str, to: str) -> None:
        """Every packet ``name`` receives goes through ``to`` (an ifb) first."""
        index, to_index = self._index(name), self._index(to)
        with self._step("redirect ingress of", name):
            tc.ensure_redirect(self._nl, index, name, to_index, self.netns)

    def drop_mld_reports(self, name: str) -> None:
        """MLD reports that ``name`` receives are dropped before its bridge floods them (see bpf.py)."""
        from overlays.kernel import bpf  # only dual-stack attaches load it

        index = self._index(name)
        with self._step("filter MLD reports of", name):
            tc.ensure_ingress_program(self._nl, index, name, bpf.mld_filter(self.netns), "overlays_mld", self.netns)

    def drops_mld_reports(self, name: str) -> bool:
        """Read-only: whether ``name`` still runs the filter ``drop_mld_reports`` put on it."""
        index = self._need(name).index
        with self._step("read ingress filters of", name):
            return tc.has_ingress_program(self._nl, index, "overlays_mld")

    def delete_redirect(self, name: str) -> None:
        link = self.link(name)
        if link is not None:
            with self._step("stop redirecting ingress of", name):
                tc.delete_redirect(self._nl, link.index, name, self.netns)

    # -- delete ------------------------------------------------------------

    def delete_fdb(self, name: str, mac: str, dst: str) -> None:
        link = self.link(name)
        if link is None:
            return
        try:
            self._pyroute2(lambda ipr: ipr.fdb("del", ifindex=link.index, lladdr=mac.lower(), dst=dst, flags=NTF_SELF))
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.ENODEV):
                raise kernel_error("delete fdb entry", f"{mac} dst {dst} on {name}", self.netns, e) from e

    def delete_neigh(self, name: str, ip: str) -> None:
        link = self.link(name)
        if link is None:
            return
        try:
            family = AF_INET6 if ":" in ip else AF_INET
            self._pyroute2(lambda ipr: ipr.neigh("del", ifindex=link.index, dst=ip, family=family))
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.ENODEV):
                raise kernel_error("delete neighbour", f"{ip} on {name}", self.netns, e) from e

    def delete_link(self, name: str) -> None:
        self._indices.pop(name, None)
        try:
            # One RTM_DELLINK by name; a missing link answers ENODEV.
            self._nl.request(RTM_DELLINK, CHANGE, IFINFO, _link_msg() + attr_str(IFLA_IFNAME, name))
        except NetlinkError as e:
            if e.code not in (errno.ENODEV, errno.ENOENT):
                raise kernel_error("delete link", name, self.netns, e) from e

    def _need(self, name: str) -> Link:
        link = self.link(name)
        if link is None:
            raise KernelError("find link", name, self.netns, "no such device", errno=errno.ENODEV)
        return link
