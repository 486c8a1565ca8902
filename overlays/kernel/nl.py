"""A small synchronous rtnetlink channel: pyroute2's message classes, our own I/O.

Why: pyroute2 0.9's synchronous ``IPRoute`` runs every request through an asyncio
event loop and its generic request machinery, about 1.2 ms per request here,
while one sandbox attach makes a dozen or more requests. The kernel answers a
rtnetlink request synchronously (the reply is queued before ``send`` returns),
so a blocking socket, one ``send`` and a ``recv`` or two do the I/O in a few
microseconds.

What we keep from pyroute2: the message classes (``ifinfmsg``, ``ifaddrmsg``,
``rtmsg``, ...), which encode and decode the binary layout and attributes, and
``NetlinkError``, so callers map failures exactly as before. What we do here:
sequence numbers, the send, and reading the reply until the request's end (the
ACK, an error, ``NLMSG_DONE`` for a dump, or the single answer to a plain get).

Then pyroute2's codec is most of the cost (about 100 us to encode a message,
5 us per attribute to decode one, and a link carries some forty), so: answers are
decoded with only the attributes the caller reads (``keep``), and the encoding of
each distinct request is remembered (``encoded``): bytes only, never kernel state.

The socket comes from ``netns.netlink_socket(path)``: made in a thread that
entered the namespace, it keeps that namespace for life, so the channel is used
from any thread without switching namespaces (one thread at a time).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Iterable
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200  # for new* requests (same bit as MATCH, which only get* requests use)
NLM_F_CREATE = 0x400

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors do not echo our request back
NETLINK_GET_STRICT_CHK = 12  # dumps honour the filter in the request header (ifa_index, rtm_table)

_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence number, port id
_ERRNO = struct.Struct("=i")
_NLA = struct.Struct("=HH")  # length, type
_SEQ = struct.Struct("=I")
_SEQ_OFFSET = 8  # of the sequence number in the message header
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_RECV_SIZE = 1 << 16  # a dump part is at most 32 KiB unless one message is larger
_DUMP_ATTEMPTS = 5

Message = Any  # a pyroute2 nlmsg subclass instance (untyped upstream)


class DumpInterrupted(Exception):
    """The table changed while the kernel dumped it (NLM_F_DUMP_INTR): the dump is not consistent."""


def _layout(cls: type[Message]) -> tuple[int, dict[str, int]]:
    """The size of ``cls``'s fixed part and its attribute numbers by name."""
    fixed = struct.calcsize("=" + "".join(fmt for _, fmt in cls.fields))
    numbers = {}
    for position, entry in enumerate(cls.nla_map):
        number, name = (entry[0], entry[1]) if isinstance(entry[0], int) else (position, entry[0])
        numbers[name] = number
    return (fixed + 3) & ~3, numbers


_LAYOUTS: dict[type[Message], tuple[int, dict[str, int]]] = {}


def attr_numbers(cls: type[Message], names: Iterable[str]) -> frozenset[int]:
    """The attribute type numbers of ``names`` in ``cls`` (for ``keep``)."""
    if cls not in _LAYOUTS:
        _LAYOUTS[cls] = _layout(cls)
    numbers = _LAYOUTS[cls][1]
    return frozenset(numbers[name] for name in names)


def _stripped(data: bytes, offset: int, length: int, cls: type[Message], keep: frozenset[int]) -> bytes:
    """One message cut down to the attributes in ``keep``: pyroute2 decodes each attribute it is
    given (about 5 us apiece, and a link carries some forty), so we hand it only those we read."""
    if cls not in _LAYOUTS:
        _LAYOUTS[cls] = _layout(cls)
    start = offset + _HEADER.size + _LAYOUTS[cls][0]
    end = offset + length
    parts = [data[offset:start]]
    at = start
    while at + _NLA.size <= end:
        size, kind = _NLA.unpack_from(data, at)
        if size < _NLA.size:
            break
        if kind & NLA_TYPE_MASK in keep:
            parts.append(data[at : at + ((size + 3) & ~3)])
        at += (size + 3) & ~3
    out = bytearray(b"".join(parts))
    struct.pack_into("=I", out, 0, len(out))
    return bytes(out)


def parse(
    data: bytes, seq: int, cls: type[Message], multi: bool, keep: frozenset[int] | None = None
) -> tuple[list[Message], bool]:
    """Decode one datagram's messages for request ``seq``: (messages, whether the request is complete).

    Messages of another sequence number (left over from an abandoned request) are
    skipped. A plain request (``multi`` False) is complete at its first answer;
    a dump at NLMSG_DONE; either at an NLMSG_ERROR, which raises if negative.
    With ``keep``, answers are decoded with only those attributes.
    """
    found: list[Message] = []
    offset = 0
    interrupted = False
    while offset + _HEADER.size <= len(data):
        length, kind, flags, mseq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise NetlinkError(errno.EBADMSG, f"truncated netlink message at offset {offset}")
        if mseq == seq and kind != NLMSG_NOOP:
            interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
            if kind in (NLMSG_ERROR, NLMSG_DONE):
                code = _ERRNO.unpack_from(data, offset + _HEADER.size)[0] if length >= _HEADER.size + 4 else 0
                if code < 0:
                    raise NetlinkError(-code)
                if interrupted:
                    raise DumpInterrupted()
                return found, True
            msg = cls(data, offset=offset) if keep is None else cls(_stripped(data, offset, length, cls, keep))
            msg.decode()
            found.append(msg)
            if not multi:
                return found, True
        offset += (length + 3) & ~3
    if interrupted:
        raise DumpInterrupted()
    return found, False


class Channel:
    """Requests over one rtnetlink socket, one at a time, each waited for to its end."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0
        sock.bind((0, 0))
        for option in (NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK):
            with contextlib.suppress(OSError):  # an old kernel: callers filter in Python as well
                sock.setsockopt(SOL_NETLINK, option, 1)

    def close(self) -> None:
        self._sock.close()

    def request(
        self, msg: Message, msg_type: int, flags: int = NLM_F_REQUEST | NLM_F_ACK, keep: Iterable[str] | None = None
    ) -> list[Message]:
        """Send ``msg`` as ``msg_type``; the decoded answers (none for a plain ACK).

        The answers decode with ``msg``'s own class, as rtnetlink answers a get or
        dump of links, addresses or routes with messages of the requested kind.
        A dump the kernel reports as interrupted by a concurrent change is retried.
        ``keep`` names the only attributes the answers are decoded with (the rest are dropped).
        """
        if msg_type % 4 != 2:  # not a get: only an ACK tells us the change is done (or refused)
            flags |= NLM_F_ACK
        wire = encoded(msg, msg_type, flags)
        numbers = attr_numbers(type(msg), keep) if keep is not None else None
        multi = bool(flags & NLM_F_ACK) or flags & NLM_F_DUMP == NLM_F_DUMP
        for attempt in range(_DUMP_ATTEMPTS):
            try:
                return self._exchange(wire, type(msg), multi, numbers)
            except DumpInterrupted:
                if attempt == _DUMP_ATTEMPTS - 1:
                    raise NetlinkError(errno.EINTR, "dump kept being interrupted by concurrent changes") from None
        raise AssertionError("unreachable")

    def _exchange(self, wire: bytes, cls: type[Message], multi: bool, keep: frozenset[int] | None) -> list[Message]:
        self._seq = self._seq % 0xFFFFFFFF + 1
        data = bytearray(wire)
        _SEQ.pack_into(data, _SEQ_OFFSET, self._seq)
        self._sock.send(data)
        found: list[Message] = []
        while True:
            got, done = parse(self._sock.recv(_RECV_SIZE), self._seq, cls, multi, keep)
            found.extend(got)
            if done:
                return found


_ENCODED: dict[tuple[object, ...], bytes] = {}
_ENCODED_MAX = 512


def encoded(msg: Message, msg_type: int, flags: int) -> bytes:
    """``msg`` encoded by pyroute2 with sequence number 0, remembered by content.

    pyroute2's encoder costs about 100 us a message; the encoding is a pure function of
    the message's fields and attributes, and most requests recur (the bridge, ``lo``,
    ``eth0``, the route dump), so each distinct request is encoded once per process.
    Only bytes are remembered, never kernel state.
    """
    content = repr(sorted((k, v) for k, v in dict.items(msg) if k not in ("header", "value")))
    key = (type(msg), msg_type, flags, content)
    wire = _ENCODED.get(key)
    if wire is None:
        msg["header"] = {"type": msg_type, "flags": flags, "sequence_number": 0, "pid": 0}
        msg.encode()
        wire = bytes(msg.data)
        if len(_ENCODED) >= _ENCODED_MAX:
            _ENCODED.clear()
        _ENCODED[key] = wire
    return wire
