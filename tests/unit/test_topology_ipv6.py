"""Topology files with IPv6: dual-stack and IPv6-only networks, static ``ip6:`` addresses, checked as read,
fingerprinted so an edit is a change, rebuilt from a record, drawn, and published in the schema."""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from overlays.topology import Lab, TopologyError, resolve
from overlays.topology.plan import NETWORK, SANDBOX, Key, Record, network_print, sandbox_print
from overlays.topology.restore import previous
from overlays.topology.schema import topology_schema
from overlays.view.plan import plan_graph

from .fakes import FakeKernel

DUAL = {"subnet": ["10.30.0.0/24", "fd00:30::/64"]}


def topo(networks: dict[str, Any], sandboxes: dict[str, Any] | None = None) -> Any:
    return resolve({"networks": networks, "sandboxes": sandboxes or {}}, "f.yaml")


def test_subnets_as_a_list_make_a_dual_stack_network() -> None:
    spec = topo({"n": {**DUAL, "gateway": ["10.30.0.254", "fd00:30::fe"]}}).networks[0].spec
    assert (str(spec.subnet), str(spec.subnet6)) == ("10.30.0.0/24", "fd00:30::/64")
    assert (str(spec.gateway), str(spec.gateway6)) == ("10.30.0.254", "fd00:30::fe")
    assert spec.ipv4 and spec.ipv6


def test_ipv6_true_asks_for_a_free_64_and_an_ipv6_subnet_alone_is_ipv6_only() -> None:
    t = topo({"auto": {"subnet": "10.31.0.0/24", "ipv6": True}, "six": {"subnet": "fd00:31::/64"}})
    auto, six = (n.spec for n in t.networks)
    assert auto.ipv4 and auto.ipv6 and auto.subnet6 is None
    assert not six.ipv4 and six.ipv6 and six.subnet is None and str(six.subnet6) == "fd00:31::/64"


def test_a_static_ip6_beside_ip() -> None:
    t = topo({"n": DUAL}, {"a": {"networks": {"n": {"ip": "10.30.0.5", "ip6": "fd00:30::5"}}}})
    request = t.sandboxes[0].spec.networks[0]
    assert (str(request.ip), str(request.ip6)) == ("10.30.0.5", "fd00:30::5")


BAD: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    ({"n": {"subnet": ["10.30.0.0/24", "fd00:30::/64", "fd00:31::/64"]}}, {},
     "f.yaml: networks.n.subnet: expected one or two values (one IPv4, one IPv6), got 3"),
    ({"n": {"subnet": ["10.30.0.0/24", 64]}}, {}, "f.yaml: networks.n.subnet[1]: expected a CIDR string, got a number"),
    ({"n": {"subnet": {"v4": "10.30.0.0/24"}}}, {}, "f.yaml: networks.n.subnet: expected a CIDR string or a list"),
    ({"n": {"subnet": ["10.30.0.0/24", "10.31.0.0/24"]}}, {},
     "f.yaml: networks.n: network n: subnet: two IPv4 values (10.30.0.0/24, 10.31.0.0/24)"),
    ({"n": {"subnet": "fd00:30::/64", "gateway": "10.30.0.1"}}, {}, "gateway 10.30.0.1 needs an IPv4 --subnet"),
    ({"n": {"subnet": "fe80::/64"}}, {}, "f.yaml: networks.n: network n: subnet 'fe80::/64' overlaps fe80::/10"),
    ({"n": {"ipv6": "yes"}}, {}, "f.yaml: networks.n.ipv6: expected true or false, got a string"),
    ({"n": DUAL}, {"a": {"networks": {"n": {"ip6": "10.30.0.5"}}}},
     "f.yaml: sandboxes.a.networks.n.ip6: 10.30.0.5 is an IPv4 address: give it as ip:"),
    ({"n": DUAL}, {"a": {"networks": {"n": {"ip": "fd00:30::5"}}}},
     "f.yaml: sandboxes.a.networks.n.ip: fd00:30::5 is an IPv6 address: give it as ip6:"),
    ({"n": DUAL}, {"a": {"networks": {"n": {"ip6": "fd00:30::zz"}}}},
     "f.yaml: sandboxes.a.networks.n: --ip6 for network n 'fd00:30::zz' is not a valid IP address"),
    # consistency: the file against itself
    ({"n": DUAL}, {"a": {"networks": {"n": {"ip6": "fd00:30::5"}}}, "b": {"networks": {"n": {"ip6": "fd00:30::5"}}}},
     "f.yaml: sandboxes.b.networks.n.ip6: address fd00:30::5 on network n is also sandbox a's"),
    ({"n": DUAL}, {"a": {"networks": {"n": {"ip6": "fd00:99::5"}}}},
     "f.yaml: sandboxes.a.networks.n.ip6: address fd00:99::5 is not a host address of network n's subnet "
     "fd00:30::/64"),
    ({"n": DUAL}, {"a": {"networks": {"n": {"ip6": "fd00:30::1"}}}},
     "f.yaml: sandboxes.a.networks.n.ip6: address fd00:30::1 is network n's gateway"),
    ({"n": {"subnet": "10.30.0.0/24", "ipv6": True}}, {"a": {"networks": {"n": {"ip6": "fd00:30::5"}}}},
     "f.yaml: sandboxes.a.networks.n.ip6: a static address needs network n's IPv6 subnet in the file"),
    ({"n": {"subnet": "10.30.0.0/24"}}, {"a": {"networks": {"n": {"ip6": "fd00:30::5"}}}},
     "f.yaml: sandboxes.a.networks.n.ip6: network n has no IPv6 subnet (10.30.0.0/24)"),
    ({"n": {"subnet": "fd00:30::/64"}}, {"a": {"networks": {"n": {"ip": "10.30.0.5"}}}},
     "f.yaml: sandboxes.a.networks.n.ip: network n has no IPv4 subnet (fd00:30::/64)"),
    ({"a": {"subnet": "fd00:30::/48"}, "b": {"subnet": ["10.40.0.0/24", "fd00:30:0:1::/64"]}}, {},
     "f.yaml: networks.b.subnet: subnet fd00:30:0:1::/64 overlaps network a (fd00:30::/48) on host local"),
]


@pytest.mark.parametrize(("networks", "sandboxes", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_ipv6_files_fail_in_one_line_naming_the_path(networks: dict[str, Any], sandboxes: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(TopologyError) as err:
        topo(networks, sandboxes)
    assert message in str(err.value)
    assert str(err.value).startswith("f.yaml: ") and "\n" not in str(err.value)


def test_the_same_address_text_in_two_families_or_networks_is_no_clash() -> None:
    t = topo({"a": {"subnet": ["10.30.0.0/24", "fd00:30::/64"]}, "b": {"subnet": ["10.31.0.0/24", "fd00:31::/64"]}},
             {"x": {"networks": {"a": {"ip6": "fd00:30::5"}, "b": {"ip6": "fd00:31::5"}}},
              "y": {"networks": {"a": {"ip": "10.30.0.5"}}}})
    assert len(t.sandboxes) == 2


def test_an_ipv6_only_pool_is_counted_from_its_own_subnet() -> None:
    boxes = {f"s{i}": {"networks": ["n"]} for i in range(254)}
    with pytest.raises(TopologyError, match=r"networks\.n: 254 sandboxes on host local, but its pool holds 253 "):
        topo({"n": {"subnet": "fd00:30::/120"}}, boxes)
    assert len(topo({"n": {"subnet": "fd00:30::/64"}}, boxes).sandboxes) == 254


def test_an_edited_subnet_list_is_a_change_and_ipv4_prints_stay_as_they_were() -> None:
    v4 = topo({"n": {"subnet": "10.30.0.0/24"}}).networks[0]
    dual = topo({"n": DUAL}).networks[0]
    other6 = topo({"n": {"subnet": ["10.30.0.0/24", "fd00:39::/64"]}}).networks[0]
    auto6 = topo({"n": {"subnet": "10.30.0.0/24", "ipv6": True}}).networks[0]
    assert len({network_print(d) for d in (v4, dual, other6, auto6)}) == 4
    assert "6" not in "".join(json.loads(network_print(v4))), "an IPv4-only print has no IPv6 fields"


def test_an_edited_ip6_is_a_change_of_that_endpoint() -> None:
    a = topo({"n": DUAL}, {"s": {"networks": {"n": {"ip6": "fd00:30::5"}}}}).sandboxes[0]
    b = topo({"n": DUAL}, {"s": {"networks": {"n": {"ip6": "fd00:30::6"}}}}).sandboxes[0]
    plain = topo({"n": DUAL}, {"s": {"networks": {"n": {"ip": "10.30.0.5"}}}}).sandboxes[0]
    assert sandbox_print(a) != sandbox_print(b)
    assert json.loads(sandbox_print(plain))["networks"] == {"n": "10.30.0.5"}, "as records before ip6 hold it"


def test_a_record_rebuilds_dual_stack_and_ipv6_only_declarations() -> None:
    t = topo({"dual": {**DUAL, "gateway": ["10.30.0.254", "fd00:30::fe"]}, "auto": {"ipv6": True},
              "six": {"subnet": "fd00:31::/64", "dns": ["fd00:31::53"]}},
             {"s": {"networks": {"dual": {"ip": "10.30.0.5", "ip6": "fd00:30::5"}, "six": {"ip6": "fd00:31::9"}}}})
    record = Record({Key("local", NETWORK, n.spec.name): network_print(n) for n in t.networks})
    record.objects.update({Key("local", SANDBOX, s.spec.name): sandbox_print(s) for s in t.sandboxes})
    back = previous(record, t)
    assert {n.spec for n in back.networks} == {n.spec for n in t.networks}
    assert back.sandboxes[0].spec == t.sandboxes[0].spec


def test_the_schema_takes_a_subnet_list_ipv6_and_ip6() -> None:
    schema = topology_schema()
    good = {"networks": {"n": {"subnet": ["10.30.0.0/24", "fd00:30::/64"], "gateway": ["10.30.0.1"]},
                         "m": {"ipv6": True}},
            "sandboxes": {"s": {"networks": {"n": {"ip": "10.30.0.5", "ip6": "fd00:30::5"}}}}}
    jsonschema.validate(good, schema)
    topo(good["networks"], good["sandboxes"])  # and spec.py takes it too
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"networks": {"n": {"subnet": ["a", "b", "c"]}}}, schema)


def test_the_plan_picture_shows_both_subnets_and_both_addresses() -> None:
    t = topo({"n": DUAL, "auto": {"subnet": "10.31.0.0/24", "ipv6": True}},
             {"s": {"networks": {"n": {"ip": "10.30.0.5", "ip6": "fd00:30::5"}, "auto": {}}}})
    graph = plan_graph(t)
    assert "10.30.0.0/24, fd00:30::/64" in graph.node("net:local:n").lines
    assert "10.31.0.0/24, auto (a free /64)" in graph.node("net:local:auto").lines
    labels = {(e.source, e.target): e.label for e in graph.edges}
    assert labels[("host:local", "net:local:n")] == "10.30.0.1, fd00:30::1"
    assert labels[("net:local:n", "box:local:s")] == "eth0 10.30.0.5/24 fd00:30::5/64"
    assert labels[("net:local:auto", "box:local:s")] == "eth1 auto auto"


@pytest.mark.skipif(os.geteuid() != 0, reason="Lab.plan needs root (it checks it, as every changing command does)")
def test_a_dual_stack_file_goes_up_as_planned_with_its_static_ip6_and_plans_nothing_after() -> None:
    raw = {"name": "v6", "networks": {"n": DUAL},
           "sandboxes": {"a": {"networks": {"n": {"ip6": "fd00:30::5"}}}, "b": {"networks": ["n"]}}}
    with tempfile.TemporaryDirectory() as state:
        lab = Lab(resolve(raw, "v6.yaml"), host_netns="v6uhost", state_dir=Path(state),
                  kernel=FakeKernel("v6uhost"))  # type: ignore[arg-type]
        try:
            planned = lab.plan()
            assert lab.up() == planned
            a, b = (lab.engine("local").sandbox(n).endpoints[0] for n in ("a", "b"))
            assert a.ip6 == ipaddress.ip_address("fd00:30::5")
            assert b.ip6 is not None and b.ip6 != a.ip6 and b.ip6 in ipaddress.ip_network("fd00:30::/64")
            assert lab.plan() == []
        finally:
            lab.down()
            lab.close()
