"""The model layer: names, parsing of raw input into specs, and store records."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from overlays.errors import InvalidSpec
from overlays.model import Endpoint, EndpointRequest, Network, NetworkSpec, Sandbox, SandboxSpec
from overlays.model.names import (
    IFNAME_MAX,
    bridge_name,
    is_ours,
    netns_name,
    owner_alias,
    validate_name,
    veth_name,
)

# -- names ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "web", "web-1", "db_2", "api.v1", "9lives", "x" * 63])
def test_validate_name_accepts_docker_style_names(name: str) -> None:
    assert validate_name("network", name) == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("x" * 64, "too long"),
        ("-web", "invalid"),
        ("_web", "invalid"),
        (".web", "invalid"),
        ("we b", "invalid"),
        ("web/1", "invalid"),
        ("web:1", "invalid"),
        ("wéb", "invalid"),
    ],
)
def test_validate_name_rejects(name: str, fragment: str) -> None:
    with pytest.raises(InvalidSpec, match=fragment) as exc:
        validate_name("sandbox", name)
    assert str(exc.value).startswith("sandbox name")


LONG_A = "frontend-production-a"
LONG_B = "frontend-production-b"


@pytest.mark.parametrize("network", ["n", "front", "x" * 11, "x" * 12, LONG_A, "y" * 63])
def test_bridge_name_fits_the_kernel_and_is_marked(network: str) -> None:
    name = bridge_name(network, "i1")
    assert len(name) <= IFNAME_MAX
    assert name.startswith("ovb-")


def test_bridge_name_keeps_short_names_readable() -> None:
    assert bridge_name("front", "i1") == "ovb-front"


def test_bridge_names_of_long_names_sharing_a_prefix_differ() -> None:
    names = {bridge_name(f"network-with-long-name-{i}", "i1") for i in range(50)}
    assert len(names) == 50
    assert bridge_name(LONG_A, "i1") != bridge_name(LONG_B, "i1")


def test_bridge_name_is_stable() -> None:
    assert bridge_name(LONG_A, "i1") == bridge_name(LONG_A, "i1")


@pytest.mark.parametrize(("sandbox", "network"), [("a", "n"), ("web", "front"), ("s" * 63, "n" * 63)])
def test_veth_name_fits_the_kernel(sandbox: str, network: str) -> None:
    name = veth_name(sandbox, network, "i1")
    assert len(name) <= IFNAME_MAX
    assert name.startswith("ovv-")


def test_veth_names_are_distinct_per_sandbox_and_network_and_stable() -> None:
    names = {veth_name(f"sandbox-{s}", f"network-{n}", "i1") for s in range(10) for n in range(10)}
    assert len(names) == 100
    assert veth_name("sandbox-1", "net", "i1") == veth_name("sandbox-1", "net", "i1")
    assert veth_name("sandbox-1", "net", "i1") != veth_name("sandbox-1", "net", "i2")


def test_netns_name_carries_the_instance() -> None:
    assert "abc123" in netns_name("web", "abc123")
    assert "web" in netns_name("web", "abc123")
    assert netns_name("web", "abc123") != netns_name("web", "def456")


def test_is_ours() -> None:
    alias = owner_alias("abc", "bridge of front")
    assert is_ours(alias, "abc")
    assert not is_ours(alias, "ab")  # a prefix of the instance is another instance
    assert not is_ours(alias, "other")
    assert not is_ours(None, "abc")
    assert not is_ours("", "abc")
    assert not is_ours("something else", "abc")


# -- NetworkSpec.parse ---------------------------------------------------------------------------------------------


def test_network_spec_parse_valid() -> None:
    spec = NetworkSpec.parse("front", subnet="10.1.0.0/24", gateway="10.1.0.254", ip_range="10.1.0.128/25", mtu=9000)
    assert spec.subnet == ipaddress.ip_network("10.1.0.0/24")
    assert spec.gateway == ipaddress.ip_address("10.1.0.254")
    assert spec.ip_range == ipaddress.ip_network("10.1.0.128/25")
    assert spec.mtu == 9000


def test_network_spec_parse_defaults() -> None:
    spec = NetworkSpec.parse("front")
    assert (spec.subnet, spec.gateway, spec.ip_range, spec.mtu, spec.driver) == (None, None, None, 1500, "bridge")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"subnet": "10.1.0.0/33"}, "not a valid CIDR"),
        ({"subnet": "banana"}, "not a valid CIDR"),
        ({"subnet": "10.1.0.0"}, "no prefix length"),
        ({"subnet": "10.1.0.5/24"}, "host bits set"),
        ({"subnet": "fe80::/64"}, "link-local"),
        ({"subnet": "10.1.0.0/24", "gateway": "fd00::1"}, "needs an IPv6 --subnet"),
        ({"subnet": "10.1.0.0/24", "gateway": "10.1.0"}, "not a valid IP address"),
        ({"subnet": "10.1.0.0/24", "gateway": "10.2.0.1"}, "not a host address"),
        ({"subnet": "10.1.0.0/24", "gateway": "10.1.0.0"}, "not a host address"),
        ({"subnet": "10.1.0.0/24", "gateway": "10.1.0.255"}, "not a host address"),
        ({"subnet": "10.1.0.0/24", "ip_range": "10.2.0.0/25"}, "not inside subnet"),
        ({"subnet": "10.1.0.0/24", "ip_range": "10.1.0.0/23"}, "not inside subnet"),
        ({"subnet": "10.1.0.0/24", "ip_range": "10.1.0.5/25"}, "host bits set"),
        ({"gateway": "10.1.0.1"}, "needs an IPv4 --subnet"),
        ({"ip_range": "10.1.0.0/25"}, "needs an IPv4 --subnet"),
        ({"subnet": "10.1.0.0/31"}, "too small"),
        ({"subnet": "10.1.0.1/32"}, "too small"),
    ],
)
def test_network_spec_parse_errors_name_the_network(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidSpec, match=fragment) as exc:
        NetworkSpec.parse("front", **kwargs)
    assert "front" in str(exc.value)


def test_network_spec_parse_accepts_a_30() -> None:
    assert NetworkSpec.parse("tiny", subnet="10.1.0.0/30").subnet == ipaddress.ip_network("10.1.0.0/30")


@pytest.mark.parametrize("mtu", [0, 575, 65536, -1])
def test_network_spec_parse_mtu_out_of_range(mtu: int) -> None:
    with pytest.raises(InvalidSpec, match="out of range"):
        NetworkSpec.parse("front", mtu=mtu)


def test_network_spec_parse_mtu_error_names_the_network() -> None:
    with pytest.raises(InvalidSpec) as exc:
        NetworkSpec.parse("front", mtu=100)
    assert "front" in str(exc.value)


@pytest.mark.parametrize("mtu", [576, 1500, 65535])
def test_network_spec_parse_mtu_bounds(mtu: int) -> None:
    assert NetworkSpec.parse("front", mtu=mtu).mtu == mtu


def test_network_spec_parse_rejects_a_bad_name() -> None:
    with pytest.raises(InvalidSpec, match="network name"):
        NetworkSpec.parse("-front", subnet="10.1.0.0/24")


# -- SandboxSpec.parse ---------------------------------------------------------------------------------------------


def test_sandbox_spec_parse_valid() -> None:
    nets = [EndpointRequest.parse("front"), EndpointRequest.parse("back", "10.2.0.9")]
    spec = SandboxSpec.parse("web", nets, hostname="web.example")
    assert spec.networks == tuple(nets)
    assert spec.networks[1].ip == ipaddress.ip_address("10.2.0.9")
    assert spec.hostname == "web.example"


def test_sandbox_spec_parse_duplicate_network() -> None:
    nets = [EndpointRequest.parse("front"), EndpointRequest.parse("back"), EndpointRequest.parse("front", "10.1.0.9")]
    with pytest.raises(InvalidSpec, match="front given twice") as exc:
        SandboxSpec.parse("web", nets)
    assert "sandbox web" in str(exc.value)


@pytest.mark.parametrize("hostname", ["", "-web", "web-", "we_b", "a..b", "a" * 64, ".".join(["a" * 63] * 5)])
def test_sandbox_spec_parse_invalid_hostname(hostname: str) -> None:
    with pytest.raises(InvalidSpec, match="hostname") as exc:
        SandboxSpec.parse("web", hostname=hostname)
    assert "sandbox web" in str(exc.value)


@pytest.mark.parametrize("hostname", ["web", "web-1", "a.b.c", "a" * 63])
def test_sandbox_spec_parse_valid_hostname(hostname: str) -> None:
    assert SandboxSpec.parse("web", hostname=hostname).hostname == hostname


def test_endpoint_request_rejects_a_bad_ip() -> None:
    with pytest.raises(InvalidSpec, match="front"):
        EndpointRequest.parse("front", "10.1.0.300")


# -- records -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ip_range", [None, "10.1.0.128/25"])
def test_network_record_round_trip(ip_range: str | None) -> None:
    net = Network(
        name="front",
        driver="bridge",
        subnet=ipaddress.ip_network("10.1.0.0/24"),
        gateway=ipaddress.ip_address("10.1.0.1"),
        ip_range=ipaddress.ip_network(ip_range) if ip_range else None,
        mtu=1450,
        bridge="ovb-front",
        created=1700000000.5,
    )
    assert Network.from_record(net.to_record()) == net


def _endpoint(state: str = "pending") -> Endpoint:
    return Endpoint(
        sandbox="web",
        network="front",
        ifname="eth0",
        host_ifname="ovv-web-abcdef",
        ip=ipaddress.ip_address("10.1.0.2"),
        prefixlen=24,
        gateway=ipaddress.ip_address("10.1.0.1"),
        mac="02:42:0a:01:00:02",
        mtu=1500,
        state=state,
    )


@pytest.mark.parametrize("state", ["pending", "ready"])
def test_endpoint_record_round_trip(state: str) -> None:
    ep = _endpoint(state)
    assert Endpoint.from_record(ep.to_record()) == ep


def test_sandbox_record_round_trip() -> None:
    box = Sandbox(
        name="web",
        netns="ov-abc-web",
        hostname="web",
        adopted=True,
        pid=1234,
        pid_start=98765,
        command=("sleep", "infinity"),
        state="ready",
        created=1700000000.25,
        endpoints=(_endpoint(),),
    )
    record = box.to_record()
    assert "endpoints" not in record  # endpoints are kept apart
    assert Sandbox.from_record(record, box.endpoints) == box


def test_sandbox_record_round_trip_defaults() -> None:
    box = Sandbox(name="web", netns="ov-abc-web")
    assert Sandbox.from_record(box.to_record()) == box
