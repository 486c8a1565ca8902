"""The DNS names table: scopes, aliases shared by several sandboxes, reverse names, forwarding rules."""

from __future__ import annotations

import ipaddress

import pytest

from overlays.dns.names import NamesTable
from overlays.errors import InvalidSpec
from overlays.kernel.dnsctl import Record


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.fixture
def table() -> NamesTable:
    t = NamesTable()
    t.set("a", [Record("front", "a", ("10.1.0.2",), ("web", "a-host")), Record("back", "a", ("10.2.0.2",))])
    t.set("b", [Record("front", "b", ("10.1.0.3",), ("web",))])
    t.set("c", [Record("back", "c", ("10.2.0.3",), ("db",))])
    return t


def test_a_name_answers_only_to_sandboxes_that_share_its_network(table: NamesTable) -> None:
    front, back = table.scope("b"), table.scope("c")
    assert table.lookup(back, "db") == [ip("10.2.0.3")]
    assert table.lookup(front, "db") is None  # c is only on back; b is only on front
    assert table.lookup(front, "c") is None
    assert table.lookup(table.scope("a"), "db") == [ip("10.2.0.3")]  # a is on both


def test_an_alias_of_several_sandboxes_gets_all_their_addresses(table: NamesTable) -> None:
    assert table.lookup(table.scope("c"), "web") is None
    assert table.lookup(table.scope("b"), "web") == [ip("10.1.0.2"), ip("10.1.0.3")]


def test_names_ignore_case_and_the_trailing_dot_and_are_also_name_dot_network(table: NamesTable) -> None:
    scope = table.scope("a")
    assert table.lookup(scope, "A-HOST.") == [ip("10.1.0.2")]
    assert table.lookup(scope, "a") == [ip("10.2.0.2"), ip("10.1.0.2")]  # on both its networks (back, front)
    assert table.lookup(scope, "a.back") == [ip("10.2.0.2")]
    assert table.lookup(scope, "web.front") == [ip("10.1.0.2"), ip("10.1.0.3")]
    assert table.lookup(scope, "web.back") is None


def test_reverse_names_are_name_dot_network_and_scoped(table: NamesTable) -> None:
    assert table.reverse(table.scope("b"), ip("10.1.0.2")) == ["a.front"]
    assert table.reverse(table.scope("b"), ip("10.2.0.3")) is None
    assert table.reverse(table.scope("c"), ip("10.2.0.2")) == ["a.back"]


def test_set_replaces_and_drop_forgets(table: NamesTable) -> None:
    before = table.generation
    table.set("a", [Record("front", "a", ("10.1.0.9",))])  # a disconnected from back, new address
    assert table.generation > before
    assert table.lookup(table.scope("c"), "a") is None
    assert table.lookup(table.scope("b"), "web") == [ip("10.1.0.3")]
    assert table.lookup(table.scope("b"), "a") == [ip("10.1.0.9")]
    assert table.reverse(table.scope("b"), ip("10.1.0.2")) is None
    table.drop("b")
    table.drop("b")  # twice is fine
    assert table.lookup(table.scope("a"), "web") is None
    assert table.lookup(table.scope("a"), "b") is None
    table.drop("a")
    table.drop("c")
    assert table.networks == {}


def test_two_sandboxes_with_the_same_address_keep_it_until_both_are_gone() -> None:
    t = NamesTable()
    t.set("x", [Record("n", "x", ("10.0.0.5",), ("svc",))])
    t.set("y", [Record("n", "y", ("10.0.0.5",), ("svc",))])  # a stale registration and a new one
    t.drop("x")
    assert t.lookup(t.scope("y"), "svc") == [ip("10.0.0.5")]
    assert t.reverse(t.scope("y"), ip("10.0.0.5")) == ["y.n"]


def test_the_address_family_is_kept() -> None:
    t = NamesTable()
    t.set("x", [Record("n", "x", ("10.0.0.5", "fd00::5"))])
    assert t.lookup(t.scope("x"), "x") == [ip("10.0.0.5"), ip("fd00::5")]
    assert t.reverse(t.scope("x"), ip("fd00::5")) == ["x.n"]


def test_forwarding_needs_one_non_internal_network() -> None:
    t = NamesTable()
    t.set("in", [Record("sealed", "in", ("10.9.0.2",), internal=True)])
    t.set("both", [Record("sealed", "both", ("10.9.0.3",), internal=True), Record("open", "both", ("10.8.0.3",))])
    t.set("own", [Record("custom", "own", ("10.7.0.2",), upstreams=("192.0.2.53",))])
    t.set("none", [])
    assert not t.forwarding(t.scope("in")).allowed
    assert not t.forwarding(t.scope("none")).allowed  # no network at all: no DNS way out either
    assert not t.forwarding(t.scope("nobody")).allowed
    assert t.forwarding(t.scope("both")).allowed and t.forwarding(t.scope("both")).servers == ()
    assert t.forwarding(t.scope("own")).servers == ("192.0.2.53",)


def test_a_bad_record_changes_nothing(table: NamesTable) -> None:
    before = table.lookup(table.scope("a"), "web")
    with pytest.raises(InvalidSpec, match="DNS record a on front"):
        table.set("a", [Record("front", "a", ("10.1.0.2",)), Record("front", "a", ("not-an-ip",))])
    with pytest.raises(InvalidSpec, match="network front: DNS server 'x' is not an IP address"):
        table.set("a", [Record("front", "a", ("10.1.0.2",), upstreams=("x",))])
    assert table.lookup(table.scope("a"), "web") == before
