"""The firewall as text: rendered nft scripts (golden), port parsing, claims, and the engine on a fake kernel."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from overlays import Conflict, EndpointRequest, Engine, InvalidSpec, KernelError, NetworkSpec, SandboxSpec
from overlays.drivers import firewall as fw
from overlays.engine import ports
from overlays.model.ports import PortMapping, parse_publish
from overlays.model.specs import Network, Sandbox
from overlays.store import MemoryStore, Txn

from .fakes import FakeKernel, object_records

HOST = "fakehost"
IP = ipaddress.IPv4Address


def network(name: str, subnet: str, internal: bool = False, masquerade: bool = True) -> Network:
    net = ipaddress.ip_network(subnet)
    return Network(name, "bridge", net, net.network_address + 1, None, 1500, f"ovb-{name}", 0.0, internal, masquerade)


GOLDEN_NETWORK_UP = """\
add table inet overlays_t
add set inet overlays_t bridges { type ifname; }
add set inet overlays_t same_bridge { type ifname . ifname; }
add set inet overlays_t internal { type ifname; }
add set inet overlays_t nat_bridges { type ifname; }
add set inet overlays_t masq_subnets { type ipv4_addr; flags interval; }
add set inet overlays_t hairpin { type ipv4_addr . ifname; flags interval; }
add map inet overlays_t publish_tcp { type ipv4_addr . inet_service : ipv4_addr . inet_service; }
add map inet overlays_t publish_udp { type ipv4_addr . inet_service : ipv4_addr . inet_service; }
add map inet overlays_t publish_any_tcp { type inet_service : ipv4_addr . inet_service; }
add map inet overlays_t publish_any_udp { type inet_service : ipv4_addr . inet_service; }
add set inet overlays_t masq_subnets6 { type ipv6_addr; flags interval; }
add set inet overlays_t hairpin6 { type ipv6_addr . ifname; flags interval; }
add map inet overlays_t publish6_tcp { type ipv6_addr . inet_service : ipv6_addr . inet_service; }
add map inet overlays_t publish6_udp { type ipv6_addr . inet_service : ipv6_addr . inet_service; }
add map inet overlays_t publish6_any_tcp { type inet_service : ipv6_addr . inet_service; }
add map inet overlays_t publish6_any_udp { type inet_service : ipv6_addr . inet_service; }
add chain inet overlays_t prerouting { type nat hook prerouting priority dstnat; policy accept; }
add chain inet overlays_t output { type nat hook output priority -100; policy accept; }
add chain inet overlays_t postrouting { type nat hook postrouting priority srcnat; policy accept; }
add chain inet overlays_t forward { type filter hook forward priority filter; policy accept; }
add chain inet overlays_t input { type filter hook input priority filter; policy accept; }
add chain inet overlays_t publish
flush chain inet overlays_t prerouting
flush chain inet overlays_t output
flush chain inet overlays_t postrouting
flush chain inet overlays_t forward
flush chain inet overlays_t input
flush chain inet overlays_t publish
add rule inet overlays_t prerouting ip daddr 127.0.0.0/8 return comment "never DNAT a martian addressed to loopback"
add rule inet overlays_t prerouting fib daddr type local jump publish
add rule inet overlays_t output fib daddr type local jump publish
add rule inet overlays_t publish meta l4proto tcp dnat ip to ip daddr . th dport map @publish_tcp
add rule inet overlays_t publish meta l4proto udp dnat ip to ip daddr . th dport map @publish_udp
add rule inet overlays_t publish meta nfproto ipv4 meta l4proto tcp dnat ip to th dport map @publish_any_tcp
add rule inet overlays_t publish meta nfproto ipv4 meta l4proto udp dnat ip to th dport map @publish_any_udp
add rule inet overlays_t publish meta l4proto tcp dnat ip6 to ip6 daddr . th dport map @publish6_tcp
add rule inet overlays_t publish meta l4proto udp dnat ip6 to ip6 daddr . th dport map @publish6_udp
add rule inet overlays_t publish meta nfproto ipv6 meta l4proto tcp dnat ip6 to th dport map @publish6_any_tcp
add rule inet overlays_t publish meta nfproto ipv6 meta l4proto udp dnat ip6 to th dport map @publish6_any_udp
add rule inet overlays_t postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade comment "host to loopback publish"
add rule inet overlays_t postrouting ct status dnat ip saddr . oifname @hairpin masquerade comment "hairpin"
add rule inet overlays_t postrouting ip saddr @masq_subnets oifname != @bridges masquerade comment "egress"
add rule inet overlays_t postrouting ct status dnat ip6 saddr . oifname @hairpin6 masquerade comment "hairpin (IPv6)"
add rule inet overlays_t postrouting ip6 saddr @masq_subnets6 oifname != @bridges masquerade comment "egress (IPv6)"
add rule inet overlays_t forward ct state established,related accept
add rule inet overlays_t forward iifname . oifname @same_bridge accept comment "stays in its network"
add rule inet overlays_t forward iifname @internal drop comment "internal: nothing leaves"
add rule inet overlays_t forward oifname @internal drop comment "internal: nothing enters"
add rule inet overlays_t forward ct status dnat oifname @bridges accept comment "published ports"
add rule inet overlays_t forward iifname @bridges oifname @bridges drop comment "isolation between networks"
add rule inet overlays_t forward oifname @nat_bridges drop comment "masqueraded: reached through published ports only"
add rule inet overlays_t input iifname @bridges ip daddr 127.0.0.0/8 ct state new,invalid drop comment "no loopback"
add element inet overlays_t bridges { "ovb-front" }
add element inet overlays_t same_bridge { "ovb-front" . "ovb-front" }
add element inet overlays_t hairpin { 10.1.0.0/24 . "ovb-front" }
add element inet overlays_t masq_subnets { 10.1.0.0/24 }
add element inet overlays_t nat_bridges { "ovb-front" }
"""


# -- rendering -----------------------------------------------------------------------------------------------------


def test_network_up_is_the_fixed_skeleton_plus_the_networks_elements() -> None:
    assert fw.network_up("t", network("front", "10.1.0.0/24")) == GOLDEN_NETWORK_UP


def test_rules_never_name_a_network_or_port() -> None:
    """Everything that varies is an element: the rules are the same whatever exists."""
    rules = [line for line in fw.skeleton("t") if line.startswith("add rule")]
    assert not any("ovb-" in r or "10." in r for r in rules)
    assert fw.skeleton("t") == fw.skeleton("t")


def test_table_name_identifies_the_engine_instance() -> None:
    assert fw.table_name("1a2b3c") == "overlays_1a2b3c"


def test_internal_and_routed_networks_join_different_sets() -> None:
    assert fw.network_elements(network("sealed", "10.2.0.0/24", internal=True)) == {
        "bridges": ['"ovb-sealed"'],
        "same_bridge": ['"ovb-sealed" . "ovb-sealed"'],
        "internal": ['"ovb-sealed"'],
    }
    assert fw.network_elements(network("flat", "10.3.0.0/24", masquerade=False)) == {
        "bridges": ['"ovb-flat"'],
        "same_bridge": ['"ovb-flat" . "ovb-flat"'],
        "hairpin": ['10.3.0.0/24 . "ovb-flat"'],
    }


PUBLISHES = [
    fw.Publish(PortMapping(8080, 80, "tcp", None), IP("10.1.0.2")),
    fw.Publish(PortMapping(9090, 90, "tcp", IP("127.0.0.1")), IP("10.1.0.2")),
    fw.Publish(PortMapping(53, 5353, "udp", IP("198.51.100.1")), IP("10.1.0.3")),
]


def test_each_published_port_is_one_map_element() -> None:
    assert fw.publish("t", PUBLISHES) == (
        "add element inet overlays_t publish_any_tcp { 8080 : 10.1.0.2 . 80 }\n"
        "add element inet overlays_t publish_tcp { 127.0.0.1 . 9090 : 10.1.0.2 . 90 }\n"
        "add element inet overlays_t publish_udp { 198.51.100.1 . 53 : 10.1.0.3 . 5353 }\n"
    )


def test_removal_adds_first_so_that_it_never_misses_and_deletes_by_key() -> None:
    assert fw.unpublish("t", PUBLISHES[:1]) == (
        "add element inet overlays_t publish_any_tcp { 8080 : 10.1.0.2 . 80 }\n"
        "delete element inet overlays_t publish_any_tcp { 8080 }\n"
    )
    down = fw.network_down("t", network("front", "10.1.0.0/24")).splitlines()
    assert "delete element inet overlays_t masq_subnets { 10.1.0.0/24 }" in down
    assert down.index("add element inet overlays_t bridges { \"ovb-front\" }") < down.index(
        "delete element inet overlays_t bridges { \"ovb-front\" }"
    )


def test_retarget_moves_a_port_in_one_script() -> None:
    old = PUBLISHES[:1]
    new = [fw.Publish(old[0].mapping, IP("10.9.0.5"))]
    assert fw.retarget("t", old, new).splitlines() == [
        "add element inet overlays_t publish_any_tcp { 8080 : 10.1.0.2 . 80 }",
        "delete element inet overlays_t publish_any_tcp { 8080 }",
        "add element inet overlays_t publish_any_tcp { 8080 : 10.9.0.5 . 80 }",
    ]
    assert fw.unpublish("t", []) == fw.publish("t", []) == ""


def test_whole_table_replaces_what_is_there_in_one_transaction() -> None:
    nets = [network("front", "10.1.0.0/24"), network("sealed", "10.2.0.0/24", internal=True)]
    text = fw.render_table("t", nets, PUBLISHES).splitlines()
    assert text[:3] == ["add table inet overlays_t", "delete table inet overlays_t", "add table inet overlays_t"]
    assert 'add element inet overlays_t bridges { "ovb-front", "ovb-sealed" }' in text
    assert "add element inet overlays_t publish_any_tcp { 8080 : 10.1.0.2 . 80 }" in text
    assert not any("flush ruleset" in line for line in text)


# -- parsing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", [PortMapping(8080, 80)]),
        ("8080:80/tcp", [PortMapping(8080, 80)]),
        ("53:53/UDP", [PortMapping(53, 53, "udp")]),
        ("127.0.0.1:9090:90", [PortMapping(9090, 90, "tcp", IP("127.0.0.1"))]),
        ("0.0.0.0:8080:80", [PortMapping(8080, 80)]),
        ("8000-8002:9000-9002/udp", [PortMapping(8000 + i, 9000 + i, "udp") for i in range(3)]),
        ("65535:1", [PortMapping(65535, 1)]),
    ],
)
def test_parse_publish(text: str, expected: list[PortMapping]) -> None:
    assert parse_publish(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("80", "expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]"),
        ("", "expected"),
        ("0:80", "host port 0 is out of range (1-65535)"),
        ("80:65536", "container port 65536 is out of range"),
        ("http:80", "host port 'http' is not a port or range"),
        ("80:80/sctp", "protocol 'sctp' is not one of tcp, udp"),
        ("80:80/", "protocol '' is not one of"),
        ("8000-8002:80-81", "host range has 3 ports but container range has 2"),
        ("8000-8002:80", "host range has 3 ports but container range has 1"),
        ("9-3:9-3", "host range 9-3 ends before it starts"),
        ("1-2000:1-2000", "at most 1024 ports"),
        ("300.1.1.1:80:80", "host IP '300.1.1.1' is not a valid IP address"),
        ("[::1]:80:80", "cannot forward connections to [::1]"), ("fd00::1:80:80", "in brackets"),
        ("a:b:c:d", "host IP 'a:b' is not a valid IP address"),
    ],
)
def test_parse_publish_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InvalidSpec, match="publish") as exc:
        parse_publish(text)
    assert fragment in str(exc.value)


def test_one_request_may_not_publish_a_port_twice() -> None:
    nets = [EndpointRequest.parse("front")]
    with pytest.raises(InvalidSpec, match="host port 80/tcp is published twice"):
        SandboxSpec.parse("web", nets, ports=parse_publish("80:80") + parse_publish("127.0.0.1:80:81"))
    spec = SandboxSpec.parse("web", nets, ports=parse_publish("80:80") + parse_publish("80:80/udp"))
    assert len(spec.ports) == 2
    with pytest.raises(InvalidSpec, match="publishing a port needs a network"):
        SandboxSpec.parse("web", [], ports=parse_publish("80:80"))


def test_records_round_trip_and_old_records_still_load() -> None:
    m = PortMapping(9090, 90, "udp", IP("127.0.0.1"))
    assert PortMapping.from_record(m.to_record()) == m
    box = Sandbox(name="web", netns="ov-x-web", ports=(m, PortMapping(80, 80)))
    assert Sandbox.from_record(box.to_record()) == box
    net = network("front", "10.1.0.0/24", internal=True, masquerade=False)
    assert Network.from_record(net.to_record()) == net
    old = {k: v for k, v in net.to_record().items() if k not in ("internal", "masquerade")}
    assert (Network.from_record(old).internal, Network.from_record(old).masquerade) == (False, True)
    assert str(m) == "127.0.0.1:9090->90/udp"


# -- claims in the store -------------------------------------------------------------------------------------------


def test_claims_clash_on_the_same_address_and_with_all_addresses() -> None:
    store = MemoryStore()
    txn = Txn(store)
    ports.claim(txn, "a", parse_publish("127.0.0.1:80:80"))
    ports.claim(txn, "b", parse_publish("198.51.100.1:80:80"))  # another address of the same port: fine
    ports.claim(txn, "c", parse_publish("80:80/udp"))  # another protocol: fine
    for text, holder in (("80:80", "a"), ("127.0.0.1:80:80", "a"), ("198.51.100.1:80:80/udp", "c")):
        with pytest.raises(Conflict, match=f"by sandbox {holder}"):
            ports.claim(txn, "x", parse_publish(text))
    ports.release(txn, "x", parse_publish("127.0.0.1:80:80"))  # not x's: left alone
    ports.release(txn, "a", parse_publish("127.0.0.1:80:80"))
    assert txn.get("ports/tcp/80") == {"bindings": {"198.51.100.1": "b"}}
    ports.release(txn, "b", parse_publish("198.51.100.1:80:80"))
    assert txn.get("ports/tcp/80") is None


def test_two_writers_cannot_both_claim_a_port() -> None:
    store = MemoryStore()
    first, second = Txn(store), Txn(store)
    ports.claim(first, "a", parse_publish("80:80"))
    ports.claim(second, "b", parse_publish("127.0.0.1:80:80"))
    assert store.commit(first.compares, first.puts, sorted(first.deletes))
    assert not store.commit(second.compares, second.puts, sorted(second.deletes)), "the loser must retry"


# -- the engine on a fake kernel -----------------------------------------------------------------------------------


def make_engine(tmp_path: Path, kernel: FakeKernel, store: MemoryStore | None = None) -> Engine:
    return Engine(host_netns=HOST, state_dir=tmp_path, store=store or MemoryStore(), kernel=kernel,  # type: ignore[arg-type]
                  check_root=False)


def elements(kernel: FakeKernel, eng: Engine) -> set[tuple[str, str]] | None:
    table = kernel.nft_tables.get(HOST, {}).get(fw.table_name(eng.ctx.instance))
    return None if table is None else set(table)


def run(eng: Engine, name: str, *publish: str, nets: tuple[str, ...] = ("front",)) -> Sandbox:
    mappings = [m for p in publish for m in parse_publish(p)]
    return eng.create_sandbox(SandboxSpec.parse(name, [EndpointRequest.parse(n) for n in nets], ports=mappings))


def test_engine_adds_one_element_per_port_and_rm_removes_them(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    eng = make_engine(tmp_path, kernel)
    assert elements(kernel, eng) is None
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    assert kernel.sysctls[(HOST, "net.ipv4.ip_forward")] == "1"
    assert kernel.sysctls[(HOST, "net.bridge.bridge-nf-call-iptables")] == "0"
    assert kernel.sysctls[(HOST, "net/ipv4/conf/ovb-front/route_localnet")] == "1"
    network_only = elements(kernel, eng)
    scripts = len(kernel.nft_scripts)
    run(eng, "web", "8080:80", "8000-8001:8000-8001/udp")
    assert len(kernel.nft_scripts) == scripts + 1, "one nft transaction per operation"
    assert kernel.nft_scripts[-1][1].count("add element") == 2  # one line per map, one element per port
    assert (elements(kernel, eng) or set()) - (network_only or set()) == {
        ("publish_any_tcp", "8080"), ("publish_any_udp", "8000"), ("publish_any_udp", "8001")
    }
    listed = [str(p) for p in eng.sandbox("web").ports]
    assert listed == ["0.0.0.0:8080->80/tcp", "0.0.0.0:8000->8000/udp", "0.0.0.0:8001->8001/udp"]
    eng.remove_sandbox("web")
    assert elements(kernel, eng) == network_only
    eng.remove_network("front")
    assert elements(kernel, eng) is None, "the table goes with the last network"


def test_engine_refuses_bad_publishes_and_changes_nothing(tmp_path: Path) -> None:
    kernel, store = FakeKernel(HOST), MemoryStore()
    eng = make_engine(tmp_path, kernel, store)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    eng.create_network(NetworkSpec.parse("sealed", subnet="10.2.0.0/24", internal=True))
    run(eng, "web", "8080:80")
    before = (kernel.snapshot(), object_records(store))
    with pytest.raises(Conflict, match=re.escape("port 8080/tcp is already published on 0.0.0.0 by sandbox web")):
        run(eng, "other", "10.1.0.1:8080:80")
    with pytest.raises(InvalidSpec, match="cannot publish ports on internal network sealed"):
        run(eng, "other", "9090:80", nets=("sealed",))
    with pytest.raises(InvalidSpec, match=re.escape("cannot publish on 192.0.2.1: it is not an address of the host")):
        run(eng, "other", "192.0.2.1:9090:80")
    after = (kernel.snapshot(), object_records(store))
    assert after == before
    both = run(eng, "both", "9090:80", nets=("sealed", "front"))
    assert ("publish_any_tcp", "9090") in (elements(kernel, eng) or set())
    assert str(both.endpoints[1].ip) == "10.1.0.3", "ports lead to the endpoint that is not internal"


class FailingNft(FakeKernel):
    """nft refuses any script that publishes a port."""

    def nft_apply(self, netns: str | None, script: str) -> None:
        if re.search(r"^add element inet \S+ publish_any_tcp ", script, re.MULTILINE):
            raise KernelError("apply", "nftables ruleset", netns, "injected")
        super().nft_apply(netns, script)


def test_a_failing_publish_rolls_back_the_whole_sandbox(tmp_path: Path) -> None:
    kernel, store = FailingNft(HOST), MemoryStore()
    eng = make_engine(tmp_path, kernel, store)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    before = (kernel.snapshot(), object_records(store))
    with pytest.raises(KernelError, match="injected"):
        run(eng, "web", "8080:80")
    after = (kernel.snapshot(), object_records(store))
    assert after == before
    assert eng.sandboxes() == []


def test_ports_follow_connect_and_disconnect(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    eng = make_engine(tmp_path, kernel)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    eng.create_network(NetworkSpec.parse("back", subnet="10.2.0.0/24"))
    run(eng, "web", "8080:80", nets=("front", "back"))
    assert "8080 : 10.1.0.2 . 80" in kernel.nft_scripts[-1][1]
    eng.disconnect("front", "web")
    assert "add element inet overlays_" in kernel.nft_scripts[-1][1]
    assert kernel.nft_scripts[-1][1].endswith("{ 8080 : 10.2.0.2 . 80 }\n")
    eng.disconnect("back", "web")
    assert ("publish_any_tcp", "8080") not in (elements(kernel, eng) or set())
    eng.connect("front", "web")
    assert ("publish_any_tcp", "8080") in (elements(kernel, eng) or set())


def test_a_dual_stack_network_puts_each_subnet_in_its_familys_sets() -> None:
    net = network("ds", "10.5.0.0/24")
    net = Network(net.name, "bridge", net.subnet, net.gateway, None, 1500, "ovb-ds", 0.0,
                  subnet6=ipaddress.ip_network("fd00:5::/64"), gateway6=ipaddress.ip_address("fd00:5::1"))
    found = fw.network_elements(net)
    assert found["hairpin"] == ['10.5.0.0/24 . "ovb-ds"'] and found["hairpin6"] == ['fd00:5::/64 . "ovb-ds"']
    assert found["masq_subnets"] == ["10.5.0.0/24"] and found["masq_subnets6"] == ["fd00:5::/64"]
    only6 = network("v6", "fd00:6::/64")
    assert "masq_subnets" not in fw.network_elements(only6) and "hairpin" not in fw.network_elements(only6)


def test_a_port_on_every_address_leads_to_each_family_and_one_on_an_address_to_its_own() -> None:
    to = (ipaddress.ip_address("10.5.0.2"), ipaddress.ip_address("fd00:5::2"))
    every, on_v6 = parse_publish("8080:80"), parse_publish("[fd00:9::1]:8443:443")
    found = fw.publish_elements(ports.publishes(every + on_v6, to))
    assert found == {"publish_any_tcp": ["8080 : 10.5.0.2 . 80"], "publish6_any_tcp": ["8080 : fd00:5::2 . 80"],
                     "publish6_tcp": ["fd00:9::1 . 8443 : fd00:5::2 . 443"]}
    assert str(on_v6[0]) == "[fd00:9::1]:8443->443/tcp"
