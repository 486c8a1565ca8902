"""DNS answers from the table, decoded with dnslib as a resolver would read them."""

from __future__ import annotations

import pytest
from dnslib import CLASS, EDNS0, QTYPE, RCODE, DNSQuestion, DNSRecord

from overlays.dns import answers
from overlays.dns.answers import Forward
from overlays.dns.names import NamesTable
from overlays.kernel.dnsctl import Record


@pytest.fixture
def table() -> NamesTable:
    t = NamesTable()
    t.set("a", [Record("front", "a", ("10.1.0.2", "fd01::2"), ("web",))])
    t.set("b", [Record("front", "b", ("10.1.0.3",), ("web",))])
    t.set("c", [Record("back", "c", ("10.2.0.3",))])
    t.set("sealed", [Record("inner", "sealed", ("10.3.0.2",), internal=True)])
    t.set("custom", [Record("mine", "custom", ("10.4.0.2",), upstreams=("192.0.2.53",))])
    return t


def ask(table: NamesTable, sandbox: str, name: str, qtype: str = "A", limit: int | None = answers.UDP_MAX,
        query: DNSRecord | None = None) -> DNSRecord:
    q = query or DNSRecord.question(name, qtype)
    out = answers.answer(bytes(q.pack()), table, table.scope(sandbox), limit)
    assert isinstance(out, bytes), f"expected an answer, got {out!r}"
    reply = DNSRecord.parse(out)
    assert reply.header.id == q.header.id and reply.header.qr == 1
    assert [str(x.qname) for x in reply.questions] == [str(x.qname) for x in q.questions]  # glibc checks this
    return reply


def rdata(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


def test_a_and_aaaa_of_our_names_authoritatively(table: NamesTable) -> None:
    reply = ask(table, "b", "web")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1 and reply.header.ra == 1
    assert rdata(reply) == ["10.1.0.2", "10.1.0.3"]
    assert all(rr.ttl == answers.TTL for rr in reply.rr)
    assert rdata(ask(table, "b", "a", "AAAA")) == ["fd01::2"]
    assert sorted(rdata(ask(table, "b", "a", "ANY"))) == ["10.1.0.2", "fd01::2"]


def test_our_name_with_another_type_is_noerror_and_empty(table: NamesTable) -> None:
    reply = ask(table, "a", "b", "AAAA")
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == [] and reply.header.aa == 1
    reply = ask(table, "a", "web", "MX")
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []


def test_the_asked_case_is_kept_in_the_answer(table: NamesTable) -> None:
    reply = ask(table, "a", "WeB.FrOnT")
    assert [str(rr.rname) for rr in reply.rr] == ["WeB.FrOnT.", "WeB.FrOnT."]


def test_names_of_other_networks_are_forwarded_not_answered(table: NamesTable) -> None:
    q = DNSRecord.question("c")
    assert answers.answer(bytes(q.pack()), table, table.scope("a"), answers.UDP_MAX) == Forward(())
    q = DNSRecord.question("example.com")
    assert answers.answer(bytes(q.pack()), table, table.scope("custom"), None) == Forward(("192.0.2.53",))


def test_internal_and_unknown_scopes_get_nxdomain_for_outside_names(table: NamesTable) -> None:
    for sandbox in ("sealed", "stranger"):
        reply = ask(table, sandbox, "example.com")
        assert reply.header.rcode == RCODE.NXDOMAIN and reply.header.aa == 0 and reply.header.ra == 0
    assert rdata(ask(table, "sealed", "sealed.inner")) == ["10.3.0.2"]  # its own names still resolve


def test_ptr_of_our_addresses_v4_and_v6(table: NamesTable) -> None:
    reply = ask(table, "b", "2.0.1.10.in-addr.arpa", "PTR")
    assert rdata(reply) == ["a.front."] and reply.header.aa == 1
    v6 = "2.0.0.0." + "0." * 24 + "1.0.d.f.ip6.arpa"  # fd01::2, nibble by nibble from the end
    assert rdata(ask(table, "b", v6, "PTR")) == ["a.front."]
    out = answers.answer(bytes(DNSRecord.question("3.0.2.10.in-addr.arpa", "PTR").pack()), table,
                         table.scope("b"), answers.UDP_MAX)
    assert out == Forward(())  # c's address is not answered to b: not ours, so the upstream says


def test_reverse_address_parsing() -> None:
    assert str(answers.reverse_address("2.0.1.10.in-addr.arpa.")) == "10.1.0.2"
    assert answers.reverse_address("0.1.10.in-addr.arpa.") is None  # a zone, not an address
    assert answers.reverse_address("x.0.1.10.in-addr.arpa.") is None
    assert answers.reverse_address("300.0.1.10.in-addr.arpa.") is None
    assert answers.reverse_address("example.com.") is None


def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp() -> None:
    t = NamesTable()
    for i in range(60):
        t.set(f"s{i}", [Record("n", f"s{i}", (f"10.5.0.{i + 2}",), ("many",))])
    udp = ask(t, "s0", "many", limit=answers.UDP_MAX)
    assert udp.header.tc == 1 and udp.rr == []
    tcp = ask(t, "s0", "many", limit=None)
    assert tcp.header.tc == 0 and len(tcp.rr) == 60


def test_edns_raises_the_udp_limit_and_is_answered_with_an_opt() -> None:
    t = NamesTable()
    for i in range(40):  # 40 A records: ~660 bytes, over 512 but under 1232
        t.set(f"s{i}", [Record("n", f"s{i}", (f"10.5.0.{i + 2}",), ("many",))])
    plain = ask(t, "s0", "many")
    assert plain.header.tc == 1
    q = DNSRecord.question("many")
    q.add_ar(EDNS0(udp_len=4096))
    edns = ask(t, "s0", "many", query=q)
    assert edns.header.tc == 0 and len(edns.rr) == 40
    assert [r.rtype for r in edns.ar] == [QTYPE.OPT]


def test_odd_queries() -> None:
    t = NamesTable()
    t.set("a", [Record("n", "a", ("10.0.0.2",))])
    scope = t.scope("a")
    assert answers.answer(b"\x01\x02", t, scope, 512) is None  # not even a header: ignored
    garbage = answers.answer(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff", t, scope, 512)
    assert isinstance(garbage, bytes)
    assert DNSRecord.parse(garbage).header.rcode == RCODE.FORMERR
    response = DNSRecord.question("a").reply()
    assert answers.answer(bytes(response.pack()), t, scope, 512) is None  # an answer sent to us: dropped
    two = DNSRecord.question("a")
    two.add_question(DNSQuestion("b"))
    out = answers.answer(bytes(two.pack()), t, scope, 512)
    assert isinstance(out, bytes) and DNSRecord.parse(out).header.rcode == RCODE.FORMERR
    notify = DNSRecord.question("a")
    notify.header.opcode = 4
    assert ask(t, "a", "", query=notify).header.rcode == RCODE.NOTIMP
    chaos = DNSRecord(q=DNSQuestion("a", QTYPE.TXT, CLASS.CH))
    assert answers.answer(bytes(chaos.pack()), t, scope, 512) == Forward(())  # not our class: not ours


def test_servfail_keeps_the_question() -> None:
    q = DNSRecord.question("example.com")
    out = answers.servfail(bytes(q.pack()))
    assert out is not None
    reply = DNSRecord.parse(out)
    assert reply.header.rcode == RCODE.SERVFAIL and reply.header.id == q.header.id
    assert str(reply.q.qname) == "example.com."
    assert answers.servfail(b"junk") is None
