"""nl.py without root: framing against a scripted socket, and our codec against pyroute2's as an oracle.

pyroute2 is not on overlays' attach path any more, but it is an independent
implementation of the same wire format: what we pack must equal what it packs,
and what it packs we must read back.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ifinfmsg.plugins import vxlan
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from overlays.kernel import nl, rtnl
from overlays.kernel.nl import IFADDR, IFINFO, NDMSG, RTMSG

RTM_NEWLINK, RTM_GETLINK = 16, 18
SEQ = 7


def pyroute2_bytes(msg: Any, kind: int, flags: int = 0, seq: int = 0) -> bytes:
    msg["header"] = {"type": kind, "flags": flags, "sequence_number": seq, "pid": 0}
    msg.encode()
    return bytes(msg.data)


def link_bytes(index: int, name: str, seq: int = SEQ, flags: int = nl.NLM_F_MULTI) -> bytes:
    msg = ifinfmsg()
    msg["index"] = index
    msg["flags"] = 1
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_MTU", 1500), ("IFLA_TXQLEN", 1000), ("IFLA_IFALIAS", f"tag {name}"),
                    ("IFLA_ADDRESS", "02:6f:0a:00:00:02"), ("IFLA_MASTER", 9),
                    ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]})]
    return pyroute2_bytes(msg, RTM_NEWLINK, flags, seq)


def control(kind: int, code: int = 0, seq: int = SEQ, flags: int = 0) -> bytes:
    """An NLMSG_DONE or NLMSG_ERROR carrying ``code`` (an ACK is an error of 0)."""
    return struct.pack("=IHHIIi", 20, kind, flags, seq, 0, code)


# -- encoding: the same bytes as pyroute2 -----------------------------------------------------------------------------


def test_a_link_request_packs_as_pyroute2_packs_it() -> None:
    ours = nl.frame(RTM_NEWLINK, 5, IFINFO.pack(index=3, flags=1, change=1) + nl.attr_str(rtnl.IFLA_IFNAME, "eth0")
                    + nl.attr_u32(rtnl.IFLA_MTU, 1450) + nl.attr_mac(rtnl.IFLA_ADDRESS, "02:6f:0a:00:00:02"))
    msg = ifinfmsg()
    msg.update(index=3, flags=1, change=1)
    msg["attrs"] = [("IFLA_IFNAME", "eth0"), ("IFLA_MTU", 1450), ("IFLA_ADDRESS", "02:6f:0a:00:00:02")]
    assert ours == pyroute2_bytes(msg, RTM_NEWLINK, 5)


def test_nested_link_info_packs_as_pyroute2_packs_it() -> None:
    info = nl.attr_str(rtnl.IFLA_INFO_KIND, "bridge")
    ours = nl.frame(RTM_NEWLINK, 0, IFINFO.pack() + nl.attr(rtnl.IFLA_LINKINFO, info))
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})]
    assert ours == pyroute2_bytes(msg, RTM_NEWLINK)


def test_address_route_and_neighbour_requests_pack_as_pyroute2_packs_them() -> None:
    addr = ifaddrmsg()
    addr.update(family=2, prefixlen=24, index=4)
    addr["attrs"] = [("IFA_LOCAL", "10.1.0.2"), ("IFA_ADDRESS", "10.1.0.2")]
    ours = IFADDR.pack(family=2, prefixlen=24, index=4) + nl.attr_ip(rtnl.IFA_LOCAL, "10.1.0.2") + nl.attr_ip(
        rtnl.IFA_ADDRESS, "10.1.0.2")
    assert nl.frame(20, 0, ours) == pyroute2_bytes(addr, 20)

    route = rtmsg()
    route.update(family=2, table=254, proto=4, scope=0, type=1)
    route["attrs"] = [("RTA_GATEWAY", "10.1.0.1")]
    ours = RTMSG.pack(family=2, table=254, proto=4, type=1) + nl.attr_ip(rtnl.RTA_GATEWAY, "10.1.0.1")
    assert nl.frame(24, 0, ours) == pyroute2_bytes(route, 24)

    neigh = ndmsg()
    neigh.update(family=2, ifindex=0)
    neigh["attrs"] = [("NDA_IFINDEX", 6)]
    assert nl.frame(30, 0, NDMSG.pack(family=2) + nl.attr_u32(rtnl.NDA_IFINDEX, 6)) == pyroute2_bytes(neigh, 30)


def test_attribute_numbers_match_pyroute2s_maps() -> None:
    def number(cls: Any, name: str) -> int:
        for position, entry in enumerate(cls.nla_map):
            found = (entry[0], entry[1]) if isinstance(entry[0], int) else (position, entry[0])
            if found[1] == name:
                return int(found[0])
        raise KeyError(name)

    for name in ("IFLA_ADDRESS", "IFLA_IFNAME", "IFLA_MTU", "IFLA_MASTER", "IFLA_LINKINFO", "IFLA_IFALIAS",
                 "IFLA_AF_SPEC", "IFLA_NET_NS_FD", "IFLA_EXT_MASK"):
        assert number(ifinfmsg, name) == getattr(rtnl, name), name
    for name in ("IFA_ADDRESS", "IFA_LOCAL"):
        assert number(ifaddrmsg, name) == getattr(rtnl, name), name
    for name in ("RTA_DST", "RTA_OIF", "RTA_GATEWAY", "RTA_PRIORITY", "RTA_MULTIPATH", "RTA_TABLE"):
        assert number(rtmsg, name) == getattr(rtnl, name), name
    for name in ("NDA_DST", "NDA_LLADDR", "NDA_IFINDEX"):
        assert number(ndmsg, name) == getattr(rtnl, name), name
    assert number(vxlan.vxlan, "IFLA_VXLAN_ID") == rtnl.IFLA_VXLAN_ID


def test_a_header_refuses_a_field_it_does_not_have() -> None:
    with pytest.raises(TypeError, match="no such field"):
        IFINFO.pack(prefixlen=24)


# -- decoding: what pyroute2 packs, we read -------------------------------------------------------------------------


def test_a_link_answer_decodes_into_a_link() -> None:
    (msg,), _ = nl.parse(link_bytes(4, "veth0", flags=0), SEQ, IFINFO, multi=False)
    link = rtnl._link_from(msg)
    assert (link.index, link.name, link.mtu, link.alias, link.mac, link.master, link.kind, link.up) == (
        4, "veth0", 1500, "tag veth0", "02:6f:0a:00:00:02", 9, "veth", True)


def test_addresses_and_routes_decode() -> None:
    addr = ifaddrmsg()
    addr.update(family=2, prefixlen=16, index=5, scope=0)
    addr["attrs"] = [("IFA_ADDRESS", "10.9.0.1"), ("IFA_LOCAL", "10.9.0.1")]
    route = rtmsg()
    route.update(family=2, dst_len=0, table=254)
    route["attrs"] = [("RTA_TABLE", 254), ("RTA_PRIORITY", 7),
                      ("RTA_MULTIPATH", [{"oif": 12, "attrs": [("RTA_GATEWAY", "10.9.0.9")]}])]
    (a,), _ = nl.parse(pyroute2_bytes(addr, 20, 0, SEQ), SEQ, IFADDR, multi=False)
    assert (a["prefixlen"], a["index"], a.attrs.ip(rtnl.IFA_LOCAL)) == (16, 5, "10.9.0.1")
    (r,), _ = nl.parse(pyroute2_bytes(route, 24, 0, SEQ), SEQ, RTMSG, multi=False)
    assert rtnl._in_main(r) and r.attrs.u32(rtnl.RTA_PRIORITY) == 7
    assert rtnl._first_hop_oif(r) == 12


def test_missing_attributes_read_as_none() -> None:
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", "x")]
    (m,), _ = nl.parse(pyroute2_bytes(msg, RTM_NEWLINK, 0, SEQ), SEQ, IFINFO, multi=False)
    assert m.attrs.u32(rtnl.IFLA_MASTER) is None and m.attrs.nested(rtnl.IFLA_LINKINFO) is None
    assert m.attrs.ip(rtnl.IFLA_IFNAME) is None  # not 4 or 16 bytes: not an address


def test_an_ipv6_address_round_trips() -> None:
    data = nl.attr_ip(rtnl.IFA_ADDRESS, "fd00::1")
    assert nl.Attrs.parse(data, 0, len(data)).ip(rtnl.IFA_ADDRESS) == socket.inet_ntop(
        socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "fd00::1"))


# -- framing -----------------------------------------------------------------------------------------------------


def test_a_multipart_dump_is_complete_at_done() -> None:
    buf = link_bytes(1, "lo") + link_bytes(2, "eth0") + control(nl.NLMSG_DONE)
    msgs, done = nl.parse(buf, SEQ, IFINFO, multi=True)
    assert done
    assert [(m["index"], m.attrs.text(rtnl.IFLA_IFNAME)) for m in msgs] == [(1, "lo"), (2, "eth0")]


def test_a_dump_part_without_done_asks_for_more() -> None:
    msgs, done = nl.parse(link_bytes(1, "lo"), SEQ, IFINFO, multi=True)
    assert not done
    assert len(msgs) == 1


def test_messages_of_another_request_are_skipped() -> None:
    buf = link_bytes(9, "stale", seq=SEQ - 1) + control(nl.NLMSG_ERROR, seq=SEQ - 1) + link_bytes(1, "lo")
    msgs, done = nl.parse(buf, SEQ, IFINFO, multi=False)
    assert done
    assert [m["index"] for m in msgs] == [1]


def test_a_plain_get_is_complete_at_its_answer() -> None:
    msgs, done = nl.parse(link_bytes(3, "br0", flags=0), SEQ, IFINFO, multi=False)
    assert done and msgs[0].attrs.text(rtnl.IFLA_IFNAME) == "br0"


def test_an_ack_completes_a_request() -> None:
    assert nl.parse(control(nl.NLMSG_ERROR, 0), SEQ, IFINFO, multi=True) == ([], True)


def test_a_negative_error_raises_netlink_error_with_its_errno() -> None:
    with pytest.raises(nl.NetlinkError) as caught:
        nl.parse(control(nl.NLMSG_ERROR, -errno.EEXIST), SEQ, IFINFO, multi=True)
    assert caught.value.code == errno.EEXIST


def test_a_failed_dump_raises_at_done() -> None:
    with pytest.raises(nl.NetlinkError) as caught:
        nl.parse(link_bytes(1, "lo") + control(nl.NLMSG_DONE, -errno.ENOENT), SEQ, IFINFO, multi=True)
    assert caught.value.code == errno.ENOENT


def test_an_interrupted_dump_is_reported() -> None:
    buf = link_bytes(1, "lo", flags=nl.NLM_F_MULTI | nl.NLM_F_DUMP_INTR) + control(nl.NLMSG_DONE)
    with pytest.raises(nl.DumpInterrupted):
        nl.parse(buf, SEQ, IFINFO, multi=True)


def test_a_truncated_message_is_refused() -> None:
    with pytest.raises(nl.NetlinkError) as caught:
        nl.parse(link_bytes(1, "lo")[:-8], SEQ, IFINFO, multi=True)
    assert caught.value.code == errno.EBADMSG


def test_a_message_shorter_than_its_header_is_refused() -> None:
    short = struct.pack("=IHHII", 20, RTM_NEWLINK, 0, SEQ, 0) + b"\0" * 4
    with pytest.raises(nl.NetlinkError) as caught:
        nl.parse(short, SEQ, IFINFO, multi=False)
    assert caught.value.code == errno.EBADMSG


PLACEHOLDER = 0xEEEE  # the scripted socket puts the request's sequence number here


class ScriptedSocket:
    """Stands in for a netlink socket: records what is sent, answers from a script keyed by request."""

    def __init__(self, answers: list[list[bytes]]) -> None:
        self.answers = answers
        self.sent: list[tuple[int, int, int]] = []
        self.pending: list[bytes] = []

    def bind(self, address: Any) -> None:
        pass

    def setsockopt(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, data: bytes) -> int:
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", data)
        assert length == len(data)
        self.sent.append((kind, flags, seq))
        self.pending = [part.replace(struct.pack("=I", PLACEHOLDER), struct.pack("=I", seq))
                        for part in self.answers.pop(0)]
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.pending.pop(0)


def test_a_dump_reads_datagrams_until_done() -> None:
    sock = ScriptedSocket([[link_bytes(1, "lo", seq=PLACEHOLDER), link_bytes(2, "a", seq=PLACEHOLDER)
                            + control(nl.NLMSG_DONE, seq=PLACEHOLDER)]])
    channel = nl.Channel(sock)  # type: ignore[arg-type]
    msgs = channel.request(RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, IFINFO, IFINFO.pack())
    assert [m["index"] for m in msgs] == [1, 2]
    assert sock.sent == [(RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 1)]


def test_a_change_always_asks_for_an_ack() -> None:
    sock = ScriptedSocket([[control(nl.NLMSG_ERROR, seq=PLACEHOLDER)]])
    channel = nl.Channel(sock)  # type: ignore[arg-type]
    assert channel.request(RTM_NEWLINK, nl.NLM_F_REQUEST, IFINFO, IFINFO.pack()) == []
    assert sock.sent == [(RTM_NEWLINK, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 1)]


def test_an_interrupted_dump_is_retried_with_a_new_sequence_number() -> None:
    torn = link_bytes(1, "lo", seq=PLACEHOLDER, flags=nl.NLM_F_MULTI | nl.NLM_F_DUMP_INTR)
    whole = link_bytes(1, "lo", seq=PLACEHOLDER)
    sock = ScriptedSocket([[torn + control(nl.NLMSG_DONE, seq=PLACEHOLDER)],
                           [whole + control(nl.NLMSG_DONE, seq=PLACEHOLDER)]])
    channel = nl.Channel(sock)  # type: ignore[arg-type]
    assert len(channel.request(RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, IFINFO, IFINFO.pack())) == 1
    assert [seq for _, _, seq in sock.sent] == [1, 2]
