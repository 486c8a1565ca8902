"""nl.py framing without root: buffers built with pyroute2's own encoder, and a scripted socket."""

from __future__ import annotations

import errno
import struct
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from overlays.kernel import nl

RTM_NEWLINK, RTM_GETLINK = 16, 18
SEQ = 7


def link_bytes(index: int, name: str, seq: int = SEQ, flags: int = nl.NLM_F_MULTI) -> bytes:
    msg = ifinfmsg()
    msg["index"] = index
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_MTU", 1500), ("IFLA_TXQLEN", 1000), ("IFLA_IFALIAS", f"tag {name}")]
    msg["header"] = {"type": RTM_NEWLINK, "flags": flags, "sequence_number": seq, "pid": 0}
    msg.encode()
    return bytes(msg.data)


def control(kind: int, code: int = 0, seq: int = SEQ, flags: int = 0) -> bytes:
    """An NLMSG_DONE or NLMSG_ERROR carrying ``code`` (an ACK is an error of 0)."""
    return struct.pack("=IHHIIi", 20, kind, flags, seq, 0, code)


def test_a_multipart_dump_is_complete_at_done() -> None:
    buf = link_bytes(1, "lo") + link_bytes(2, "eth0") + control(nl.NLMSG_DONE)
    msgs, done = nl.parse(buf, SEQ, ifinfmsg, multi=True)
    assert done
    assert [(m["index"], m.get_attr("IFLA_IFNAME")) for m in msgs] == [(1, "lo"), (2, "eth0")]


def test_a_dump_part_without_done_asks_for_more() -> None:
    msgs, done = nl.parse(link_bytes(1, "lo"), SEQ, ifinfmsg, multi=True)
    assert not done
    assert len(msgs) == 1


def test_messages_of_another_request_are_skipped() -> None:
    buf = link_bytes(9, "stale", seq=SEQ - 1) + control(nl.NLMSG_ERROR, seq=SEQ - 1) + link_bytes(1, "lo")
    msgs, done = nl.parse(buf, SEQ, ifinfmsg, multi=False)
    assert done
    assert [m["index"] for m in msgs] == [1]


def test_a_plain_get_is_complete_at_its_answer() -> None:
    msgs, done = nl.parse(link_bytes(3, "br0", flags=0), SEQ, ifinfmsg, multi=False)
    assert done and msgs[0].get_attr("IFLA_IFNAME") == "br0"


def test_an_ack_completes_a_request() -> None:
    assert nl.parse(control(nl.NLMSG_ERROR, 0), SEQ, ifinfmsg, multi=True) == ([], True)


def test_a_negative_error_raises_netlink_error_with_its_errno() -> None:
    with pytest.raises(NetlinkError) as caught:
        nl.parse(control(nl.NLMSG_ERROR, -errno.EEXIST), SEQ, ifinfmsg, multi=True)
    assert caught.value.code == errno.EEXIST


def test_a_failed_dump_raises_at_done() -> None:
    with pytest.raises(NetlinkError) as caught:
        nl.parse(link_bytes(1, "lo") + control(nl.NLMSG_DONE, -errno.ENOENT), SEQ, ifinfmsg, multi=True)
    assert caught.value.code == errno.ENOENT


def test_an_interrupted_dump_is_reported() -> None:
    buf = link_bytes(1, "lo", flags=nl.NLM_F_MULTI | nl.NLM_F_DUMP_INTR) + control(nl.NLMSG_DONE)
    with pytest.raises(nl.DumpInterrupted):
        nl.parse(buf, SEQ, ifinfmsg, multi=True)


def test_a_truncated_message_is_refused() -> None:
    with pytest.raises(NetlinkError) as caught:
        nl.parse(link_bytes(1, "lo")[:-8], SEQ, ifinfmsg, multi=True)
    assert caught.value.code == errno.EBADMSG


def test_keep_decodes_only_the_named_attributes() -> None:
    keep = nl.attr_numbers(ifinfmsg, ["IFLA_IFNAME", "IFLA_IFALIAS"])
    (msg,), _ = nl.parse(link_bytes(4, "veth0", flags=0), SEQ, ifinfmsg, multi=False, keep=keep)
    assert msg["index"] == 4
    assert [name for name, _ in msg["attrs"]] == ["IFLA_IFNAME", "IFLA_IFALIAS"]
    assert msg.get_attr("IFLA_IFALIAS") == "tag veth0"


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
    msgs = channel.request(ifinfmsg(), RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP)
    assert [m["index"] for m in msgs] == [1, 2]
    assert sock.sent == [(RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 1)]


def test_a_change_always_asks_for_an_ack() -> None:
    sock = ScriptedSocket([[control(nl.NLMSG_ERROR, seq=PLACEHOLDER)]])
    channel = nl.Channel(sock)  # type: ignore[arg-type]
    assert channel.request(ifinfmsg(), RTM_NEWLINK, nl.NLM_F_REQUEST) == []
    assert sock.sent == [(RTM_NEWLINK, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 1)]


def test_an_interrupted_dump_is_retried_with_a_new_sequence_number() -> None:
    torn = link_bytes(1, "lo", seq=PLACEHOLDER, flags=nl.NLM_F_MULTI | nl.NLM_F_DUMP_INTR)
    whole = link_bytes(1, "lo", seq=PLACEHOLDER)
    sock = ScriptedSocket([[torn + control(nl.NLMSG_DONE, seq=PLACEHOLDER)],
                           [whole + control(nl.NLMSG_DONE, seq=PLACEHOLDER)]])
    channel = nl.Channel(sock)  # type: ignore[arg-type]
    assert len(channel.request(ifinfmsg(), RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP)) == 1
    assert [seq for _, _, seq in sock.sent] == [1, 2]


def test_encoding_is_remembered_by_content_only() -> None:
    def named(name: str) -> ifinfmsg:
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        return msg

    first = nl.encoded(named("eth0"), RTM_GETLINK, nl.NLM_F_REQUEST)
    assert nl.encoded(named("eth0"), RTM_GETLINK, nl.NLM_F_REQUEST) is first
    assert nl.encoded(named("eth1"), RTM_GETLINK, nl.NLM_F_REQUEST) != first
    assert nl.encoded(named("eth0"), RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP) != first
    assert b"eth0" in first and struct.unpack_from("=I", first, 8) == (0,)
