"""A small synchronous rtnetlink client: messages packed with ``struct``, our own I/O.

Why not pyroute2 on this path: importing it costs about 200 ms (a whole ``overlays
run`` is meant to take 250), its synchronous ``IPRoute`` runs every request through
an asyncio loop (about 1 ms each), and its codec about 100 us to encode a message and
5 us per attribute to decode one. An attach makes a dozen requests of five kinds, so
we pack those few messages ourselves, as iproute2 does in C. pyroute2 still serves
the rare VXLAN, FDB and neighbour requests of the overlay control plane (rtnl.py).

The kernel answers a rtnetlink request synchronously (the reply is queued before
``send`` returns), so a blocking socket, one ``send`` and a ``recv`` or two do the
I/O. We keep sequence numbers and read until the request's end: the ACK, an error,
``NLMSG_DONE`` for a dump, or the single answer to a plain get.

Answers decode lazily: a ``Message`` holds its fixed header fields and the raw bytes
of each attribute by number; the caller reads the few it needs with typed getters.

The socket comes from ``netns.netlink_socket(path)``: made in a thread that entered
the namespace, it keeps that namespace for life, so the channel is used from any
thread without switching namespaces (one thread at a time).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from dataclasses import dataclass

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100  # for new* requests (the bits mean other things on get* requests)
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors do not echo our request back
NETLINK_GET_STRICT_CHK = 12  # dumps honour the filter in the request header (ifa_index, rtm_table)

_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence number, port id
_ERRNO = struct.Struct("=i")
_NLA = struct.Struct("=HH")  # length, type
_U8, _U16, _U32 = struct.Struct("=B"), struct.Struct("=H"), struct.Struct("=I")
_BE16 = struct.Struct("!H")
_SEQ_OFFSET = 8  # of the sequence number in the message header
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_RECV_SIZE = 1 << 16  # a dump part is at most 32 KiB unless one message is larger
_DUMP_ATTEMPTS = 5


class NetlinkError(Exception):
    """The kernel refused a request: ``code`` is the errno."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message or os.strerror(code))
        self.code = code


class DumpInterrupted(Exception):
    """The table changed while the kernel dumped it (NLM_F_DUMP_INTR): the dump is not consistent."""


# -- the fixed part of each message family ---------------------------------------------------------------------------


class Header:
    """The fixed part that opens one kind of rtnetlink message (struct ifinfomsg, ifaddrmsg, ...)."""

    def __init__(self, layout: str, fields: tuple[str, ...]) -> None:
        self.struct = struct.Struct(layout)
        self.fields = fields
        self.size = (self.struct.size + 3) & ~3

    def pack(self, **values: int) -> bytes:
        """The header with ``values`` set and every other field 0."""
        unknown = set(values) - set(self.fields)
        if unknown:
            raise TypeError(f"no such field: {sorted(unknown)}")
        return self.struct.pack(*(values.get(name, 0) for name in self.fields)).ljust(self.size, b"\0")

    def unpack(self, data: bytes, offset: int) -> dict[str, int]:
        return dict(zip(self.fields, self.struct.unpack_from(data, offset), strict=True))


IFINFO = Header("=BxHiII", ("family", "type", "index", "flags", "change"))
IFADDR = Header("=BBBBI", ("family", "prefixlen", "flags", "scope", "index"))
RTMSG = Header("=BBBBBBBBI", ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type", "flags"))
NDMSG = Header("=BxxxiHBB", ("family", "ifindex", "state", "flags", "kind"))


# -- attributes: encode ----------------------------------------------------------------------------------------------


def attr(kind: int, payload: bytes = b"") -> bytes:
    """One attribute, padded to 4 bytes (the padding is not counted in its length)."""
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u8(kind: int, value: int) -> bytes:
    return attr(kind, _U8.pack(value))


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def attr_be16(kind: int, value: int) -> bytes:
    return attr(kind, _BE16.pack(value))


def attr_mac(kind: int, mac: str) -> bytes:
    return attr(kind, bytes.fromhex(mac.replace(":", "")))


def attr_ip(kind: int, ip: str) -> bytes:
    return attr(kind, socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip))


def nest(kind: int, *attrs: bytes) -> bytes:
    return attr(kind, b"".join(attrs))


# -- attributes: decode ----------------------------------------------------------------------------------------------


class Attrs:
    """The attributes of a message (or of a nested attribute) by number: read with typed getters.

    Parsing records where each attribute's payload lies and copies nothing: a link carries
    some forty attributes, of which we read five or six.
    """

    __slots__ = ("_data", "_spans")

    def __init__(self, data: bytes, spans: dict[int, tuple[int, int]]) -> None:
        self._data = data
        self._spans = spans

    @classmethod
    def parse(cls, data: bytes, start: int, end: int) -> Attrs:
        spans: dict[int, tuple[int, int]] = {}
        unpack = _NLA.unpack_from
        at = start
        while at + 4 <= end:
            size, kind = unpack(data, at)
            if size < 4 or at + size > end:
                break
            kind &= NLA_TYPE_MASK
            if kind not in spans:  # the first of a repeated attribute, as the kernel's nla_find
                spans[kind] = (at + 4, at + size)
            at += (size + 3) & ~3
        return cls(data, spans)

    def __contains__(self, kind: int) -> bool:
        return kind in self._spans

    def blob(self, kind: int) -> bytes | None:
        span = self._spans.get(kind)
        return self._data[span[0] : span[1]] if span is not None else None

    def text(self, kind: int) -> str | None:
        value = self.blob(kind)
        return value.split(b"\0", 1)[0].decode(errors="replace") if value is not None else None

    def u32(self, kind: int) -> int | None:
        span = self._spans.get(kind)
        return _U32.unpack_from(self._data, span[0])[0] if span is not None and span[1] - span[0] >= 4 else None

    def mac(self, kind: int) -> str | None:
        value = self.blob(kind)
        return ":".join(f"{b:02x}" for b in value) if value is not None else None

    def ip(self, kind: int) -> str | None:
        value = self.blob(kind)
        if value is None or len(value) not in (4, 16):
            return None
        return socket.inet_ntop(socket.AF_INET if len(value) == 4 else socket.AF_INET6, value)

    def nested(self, kind: int) -> Attrs | None:
        span = self._spans.get(kind)
        return Attrs.parse(self._data, span[0], span[1]) if span is not None else None


@dataclass(frozen=True)
class Message:
    """One answer: its netlink type and flags, its fixed header fields, its attributes."""

    type: int
    flags: int
    fields: dict[str, int]
    attrs: Attrs

    def __getitem__(self, field: str) -> int:
        return self.fields[field]


# -- framing ---------------------------------------------------------------------------------------------------------


def frame(msg_type: int, flags: int, body: bytes, seq: int = 0) -> bytes:
    """A whole request: the netlink header, then the body (a Header's bytes and attributes)."""
    return _HEADER.pack(_HEADER.size + len(body), msg_type, flags, seq, 0) + body


def parse(data: bytes, seq: int, header: Header, multi: bool) -> tuple[list[Message], bool]:
    """Decode one datagram's messages for request ``seq``: (messages, whether the request is complete).

    Messages of another sequence number (left over from an abandoned request) are
    skipped. A plain request (``multi`` False) is complete at its first answer;
    a dump at NLMSG_DONE; either at an NLMSG_ERROR, which raises if negative.
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
            body = offset + _HEADER.size
            if length < _HEADER.size + header.struct.size:
                raise NetlinkError(errno.EBADMSG, f"netlink message type {kind} too short for its header")
            fields = header.unpack(data, body)
            found.append(Message(kind, flags, fields, Attrs.parse(data, body + header.size, offset + length)))
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

    def request(self, msg_type: int, flags: int, header: Header, body: bytes) -> list[Message]:
        """Send ``body`` (``header``'s bytes, then attributes) as ``msg_type``; the answers (none for an ACK).

        The answers decode with ``header``, as rtnetlink answers a get or dump of links,
        addresses, routes or neighbours with messages of the requested kind. A change
        always asks for an ACK: only the ACK says it is done (or refused). A dump the
        kernel reports as interrupted by a concurrent change is retried.
        """
        if msg_type % 4 != 2:  # not a get
            flags |= NLM_F_ACK
        wire = frame(msg_type, flags, body)
        multi = bool(flags & NLM_F_ACK) or flags & NLM_F_DUMP == NLM_F_DUMP
        for attempt in range(_DUMP_ATTEMPTS):
            try:
                return self._exchange(wire, header, multi)
            except DumpInterrupted:
                if attempt == _DUMP_ATTEMPTS - 1:
                    raise NetlinkError(errno.EINTR, "dump kept being interrupted by concurrent changes") from None
        raise AssertionError("unreachable")

    def _exchange(self, wire: bytes, header: Header, multi: bool) -> list[Message]:
        self._seq = self._seq % 0xFFFFFFFF + 1
        data = bytearray(wire)
        _U32.pack_into(data, _SEQ_OFFSET, self._seq)
        self._sock.send(data)
        found: list[Message] = []
        while True:
            got, done = parse(self._sock.recv(_RECV_SIZE), self._seq, header, multi)
            found.extend(got)
            if done:
                return found
