"""overlays trace, the parts that need no kernel: reading nft's trace events and JSON sets, the forward decision."""

from __future__ import annotations

import pytest

from overlays.engine.trace import Firewall, Port, _forward
from overlays.errors import InvalidSpec
from overlays.kernel.tracing import parse_events

T = "trace id ecccc360 inet"
MONITOR = "\n".join([
    f'{T} overlays_t_trace trace packet: iif "ovv-a-1" ip saddr 10.1.0.2 ip daddr 10.2.0.2 ip protocol icmp',
    f"{T} overlays_t_trace trace rule ip saddr 10.1.0.2 ip daddr 10.2.0.2 meta nftrace set 1 (verdict continue)",
    f"{T} overlays_t_trace trace policy accept",
    f'{T} overlays_t forward rule iifname @bridges oifname @bridges drop comment "isolation between networks"'
    " (verdict drop)",
    "not a trace line",
])

LISTING = {"nftables": [
    {"table": {"family": "inet", "name": "overlays_t"}},
    {"set": {"name": "bridges", "elem": ["ovb-back", "ovb-front", "ovb-inner"]}},
    {"set": {"name": "same_bridge", "elem": [{"concat": ["ovb-front", "ovb-front"]}]}},
    {"set": {"name": "internal", "elem": ["ovb-inner"]}},
    {"set": {"name": "nat_bridges", "elem": ["ovb-front", "ovb-back"]}},
    {"set": {"name": "masq_subnets", "elem": [{"prefix": {"addr": "10.1.0.0", "len": 24}}]}},
    {"map": {"name": "publish_any_tcp", "elem": [[8080, {"concat": ["10.1.0.3", 80]}]]}},
    {"map": {"name": "publish_tcp", "elem": [[{"concat": ["127.0.0.1", 5353]}, {"concat": ["10.1.0.4", 53]}]]}},
]}


def test_trace_events_are_read_per_chain_with_their_verdicts() -> None:
    events = parse_events(MONITOR)
    assert [(e.chain, e.kind, e.verdict) for e in events] == [
        ("trace", "packet", None), ("trace", "rule", "continue"), ("trace", "policy", "accept"),
        ("forward", "rule", "drop")]
    assert events[-1].table == "inet overlays_t" and events[-1].text.endswith('"isolation between networks" '
                                                                             "(verdict drop)")


def test_the_forward_decision_is_read_off_the_live_sets() -> None:
    fw = Firewall(LISTING)
    assert _forward(fw, "ovb-front", "ovb-front") is None
    assert _forward(fw, "ovb-front", "ovb-back") == "isolation between networks"
    assert _forward(fw, "ovb-inner", "eth0") == "internal: nothing leaves"
    assert _forward(fw, "ovb-front", "ovb-inner") == "internal: nothing enters"
    assert _forward(fw, "eth0", "ovb-back") == "masqueraded: reached through published ports only"
    assert _forward(fw, "ovb-front", "eth0") is None
    assert fw.has("masq_subnets", "10.1.0.0/24")
    assert fw.published("tcp", "10.99.0.1", 8080) == "10.1.0.3 . 80"
    assert fw.published("tcp", "127.0.0.1", 5353) == "10.1.0.4 . 53"
    assert fw.published("tcp", "10.99.0.1", 8081) is None and fw.published("udp", "10.99.0.1", 8080) is None
    assert not Firewall(None).exists


@pytest.mark.parametrize("text", ["80/sctp", "http", "0/tcp", "70000"])
def test_a_bad_port_is_one_clear_error(text: str) -> None:
    with pytest.raises(InvalidSpec, match="expected PORT/tcp or PORT/udp"):
        Port.parse(text)
    assert str(Port.parse("53/UDP")) == "53/udp" and Port.parse("80") == Port(80, "tcp")
