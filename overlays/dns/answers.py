"""From a query's bytes to what to do with it: an answer to send, or a forward.

Decoding and encoding go through dnslib. Our names (``names.NamesTable``, for the
asker's scope) get authoritative answers: A and AAAA from the address family, ANY both,
another type NOERROR with no records; PTR for ``*.in-addr.arpa`` / ``*.ip6.arpa`` of our
addresses, and NXDOMAIN for the free addresses of our subnets. Anything else is
forwarded as it came (the raw bytes, ID and EDNS included), unless the scope may not
forward: then NXDOMAIN. A UDP answer larger than the asker can
take is sent truncated (question kept, TC set) so its resolver retries over TCP.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from dnslib import (
    AAAA,
    CLASS,
    EDNS0,
    OPCODE,
    PTR,
    QTYPE,
    RCODE,
    RR,
    A,
    DNSBuffer,
    DNSError,
    DNSHeader,
    DNSQuestion,
    DNSRecord,
)

from overlays.dns.names import Address, NamesTable, Scope

TTL = 10  # seconds: sandboxes come and go; a caching resolver in one must not hold a stale address long
UDP_PLAIN = 512  # what a resolver without EDNS takes (RFC 1035)
UDP_MAX = 1232  # the most we send over UDP even if asked for more (the DNS flag day's figure)
TCP_MAX = 65535
CLASS_ANY = getattr(CLASS, "*")  # dnslib names class 255 "*"


class Forward(NamedTuple):
    """Send the query on as it is; ``servers`` empty: to the host's resolvers."""

    servers: tuple[str, ...]


class _Unassigned:
    """The reverse name of an address in one of our subnets that nobody holds: ours, and NXDOMAIN."""


UNASSIGNED = _Unassigned()


def answer(query: bytes, table: NamesTable, scope: Scope, limit: int | None) -> bytes | Forward | None:
    """What to do with ``query`` from a sandbox of ``scope``; ``limit`` None over TCP. None: drop it.

    The header and the question are decoded first: most of what is forwarded is decided
    from them alone, and only a query we answer is decoded whole (its EDNS record says
    how large the answer may be).
    """
    buffer = DNSBuffer(query)
    try:
        head = DNSHeader.parse(buffer)
        q = DNSQuestion.parse(buffer) if head.q == 1 else None
    except (DNSError, ValueError, IndexError, UnicodeDecodeError):
        return _format_error(query)
    if head.qr:
        return None  # an answer sent to a server: never answer an answer
    if q is not None and head.opcode == OPCODE.QUERY:
        records = _ours(table, scope, q.qname, q.qtype, q.qclass)
        forwarding = table.forwarding(scope)
        if records is None and forwarding.allowed:
            return Forward(forwarding.servers)
    try:  # a plain query (glibc's, without EDNS) is read whole already: only the rest needs decoding
        request = DNSRecord(head, [q]) if q is not None and not (head.a or head.auth or head.ar) \
            else DNSRecord.parse(query)
    except (DNSError, ValueError, IndexError, UnicodeDecodeError):
        return _format_error(query)
    if head.opcode != OPCODE.QUERY:
        return _bare(request, RCODE.NOTIMP)
    if q is None:
        return _bare(request, RCODE.FORMERR)
    reply = request.reply(ra=int(forwarding.allowed), aa=1)
    if records is None or records is UNASSIGNED:
        reply.header.aa = int(records is UNASSIGNED)
        reply.header.rcode = RCODE.NXDOMAIN
    elif isinstance(records, list):
        reply.add_answer(*records)
    return _pack(reply, request, limit)


def _ours(table: NamesTable, scope: Scope, qname: object, qtype: int, qclass: int) -> list[RR] | _Unassigned | None:
    """Our records for the question; None: the name is not ours."""
    if qclass not in (CLASS.IN, CLASS_ANY):
        return None
    name = str(qname)
    if qtype in (QTYPE.PTR, QTYPE.ANY) and (address := reverse_address(name)) is not None:
        targets = table.reverse(scope, address)
        if targets is None:
            return UNASSIGNED if table.ours(address) else None
        return [RR(qname, QTYPE.PTR, rdata=PTR(t + "."), ttl=TTL) for t in targets]
    addresses = table.lookup(scope, name)
    if addresses is None:
        return None
    return [_address_rr(qname, a) for a in addresses if _wanted(qtype, a)]


def _wanted(qtype: int, a: Address) -> bool:
    return bool(qtype == QTYPE.ANY or qtype == (QTYPE.A if a.version == 4 else QTYPE.AAAA))


def _address_rr(qname: object, a: Address) -> RR:
    if a.version == 4:
        return RR(qname, QTYPE.A, rdata=A(str(a)), ttl=TTL)
    return RR(qname, QTYPE.AAAA, rdata=AAAA(str(a)), ttl=TTL)


def reverse_address(name: str) -> Address | None:
    """The address a reverse name stands for (``2.0.10.10.in-addr.arpa.`` -> 10.10.0.2), or None."""
    labels = name.rstrip(".").lower().split(".")
    try:
        if labels[-2:] == ["in-addr", "arpa"] and len(labels) == 6:
            return ipaddress.IPv4Address(".".join(reversed(labels[:4])))
        if labels[-2:] == ["ip6", "arpa"] and len(labels) == 34 and all(len(x) == 1 for x in labels[:32]):
            nibbles = "".join(reversed(labels[:32]))
            return ipaddress.IPv6Address(":".join(nibbles[i:i + 4] for i in range(0, 32, 4)))
    except ValueError:
        return None
    return None


def _limit_of(request: DNSRecord, limit: int | None) -> tuple[int, bool]:
    """How large the answer may be, and whether the asker speaks EDNS (then we answer with an OPT)."""
    opt = next((r for r in request.ar if r.rtype == QTYPE.OPT), None)
    if limit is None:
        return TCP_MAX, opt is not None
    if opt is None:
        return min(limit, UDP_PLAIN), False
    return min(limit, UDP_MAX, max(UDP_PLAIN, int(opt.rclass))), True


def _pack(reply: DNSRecord, request: DNSRecord, limit: int | None) -> bytes:
    size, edns = _limit_of(request, limit)
    if edns:
        reply.add_ar(EDNS0(udp_len=UDP_MAX))
    data = bytes(reply.pack())
    if len(data) <= size:
        return data
    reply.rr = []  # too large for UDP: the question alone, TC set, and the resolver asks again over TCP
    reply.header.tc = 1
    return bytes(reply.pack())


def _bare(request: DNSRecord, rcode: int, ra: int = 0) -> bytes:
    reply = DNSRecord(DNSHeader(id=request.header.id, bitmap=request.header.bitmap, qr=1, aa=0, ra=ra, rcode=rcode),
                      questions=list(request.questions[:1]))
    return bytes(reply.pack())


def _format_error(query: bytes) -> bytes | None:
    """FORMERR to a query whose header at least is readable; nothing to noise."""
    if len(query) < 12:
        return None
    try:
        head = DNSHeader.parse(DNSBuffer(query[:12]))
    except DNSError:
        return None
    if head.qr:
        return None
    return bytes(DNSRecord(DNSHeader(id=head.id, bitmap=head.bitmap, qr=1, aa=0, ra=0, rcode=RCODE.FORMERR)).pack())


def servfail(query: bytes) -> bytes | None:
    """SERVFAIL to a forwarded query whose upstreams all failed (or there were none)."""
    try:
        request = DNSRecord.parse(query)
    except (DNSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    return _bare(request, RCODE.SERVFAIL, ra=1)
