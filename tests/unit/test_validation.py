"""Bad input is refused before anything changes: a topology file against itself, and values that make no sense."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from overlays import InvalidSpec, NetworkSpec
from overlays.topology import TopologyError, load, resolve


def fails(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError, match=re.escape(message)):
        resolve(raw, "t.yaml")


NET = {"n": {"subnet": "10.1.0.0/24"}}


def test_two_sandboxes_asking_for_one_address() -> None:
    fails({"networks": NET, "sandboxes": {"a": {"networks": {"n": {"ip": "10.1.0.5"}}},
                                          "b": {"networks": {"n": {"ip": "10.1.0.5"}}}}},
          "t.yaml: sandboxes.b.networks.n.ip: address 10.1.0.5 on network n is also sandbox a's")


@pytest.mark.parametrize(("ip", "why"), [
    ("10.2.0.5", "is not a host address of network n's subnet 10.1.0.0/24"),
    ("10.1.0.255", "is not a host address of network n's subnet 10.1.0.0/24"),
    ("10.1.0.1", "is network n's gateway"),
])
def test_a_static_address_outside_its_subnet_or_on_its_gateway(ip: str, why: str) -> None:
    fails({"networks": NET, "sandboxes": {"a": {"networks": {"n": {"ip": ip}}}}},
          f"t.yaml: sandboxes.a.networks.n.ip: address {ip} {why}")


def test_a_static_address_needs_the_subnet_in_the_file() -> None:
    fails({"networks": {"n": {}}, "sandboxes": {"a": {"networks": {"n": {"ip": "10.1.0.5"}}}}},
          "sandboxes.a.networks.n.ip: a static address needs network n's subnet in the file")


def test_overlapping_subnets_in_one_file() -> None:
    fails({"networks": {"a": {"subnet": "10.1.0.0/16"}, "b": {"subnet": "10.1.2.0/24"}}},
          "t.yaml: networks.b.subnet: subnet 10.1.2.0/24 overlaps network a (10.1.0.0/16) on host local")


def test_networks_of_different_hosts_may_overlap_but_not_the_fabric() -> None:
    resolve({"hosts": ["h1", "h2"], "networks": {"a": {"subnet": "10.1.0.0/24", "hosts": ["h1"]},
                                                 "b": {"subnet": "10.1.0.0/24", "hosts": ["h2"]}}}, "t.yaml")
    fails({"hosts": ["h1"], "networks": {"a": {"subnet": "10.254.0.0/16"}}},
          "networks.a.subnet: subnet 10.254.0.0/16 overlaps the lab's fabric 10.254.0.0/24")


def test_the_same_port_published_twice_on_a_host() -> None:
    fails({"networks": NET, "sandboxes": {"a": {"networks": ["n"], "ports": ["8080:80"]},
                                          "b": {"networks": ["n"], "ports": ["127.0.0.1:8080:81"]}}},
          "t.yaml: sandboxes.b.ports: port 8080/tcp is also published by sandbox a")
    resolve({"networks": NET, "sandboxes": {"a": {"networks": ["n"], "ports": ["8080:80"]},
                                            "b": {"networks": ["n"], "ports": ["8080:80/udp"]}}}, "t.yaml")


def test_more_sandboxes_than_the_pool_holds() -> None:
    boxes = {f"s{i}": {"networks": ["n"]} for i in range(7)}
    fails({"networks": {"n": {"subnet": "10.1.0.0/29"}}, "sandboxes": boxes},
          "t.yaml: networks.n: 7 sandboxes on host local, but its pool holds 5 addresses")


def test_two_overlays_with_one_vni() -> None:
    fails({"hosts": ["h1"], "networks": {"a": {"driver": "overlay", "vni": 7}, "b": {"driver": "overlay", "vni": 7}}},
          "t.yaml: networks.b.vni: VNI 7 is also network a's")


@pytest.mark.parametrize(("subnet", "why"), [
    ("224.1.0.0/24", "multicast"), ("0.0.0.0/24", "'this network'"), ("255.255.255.0/24", "reserved"),
    ("127.5.0.0/16", "loopback"), ("169.254.1.0/24", "link-local"),
])
def test_special_subnets_are_refused(subnet: str, why: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(why)):
        NetworkSpec.parse("n", subnet=subnet)
    fails({"networks": {"n": {"subnet": subnet}}}, why)


def test_a_key_given_twice_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("networks:\n  n: {subnet: 10.1.0.0/24}\n  n: {subnet: 10.2.0.0/24}\n")
    with pytest.raises(TopologyError, match=re.escape(f"{path}: not valid YAML at line 3, column 3: key 'n' is "
                                                      "given twice in one mapping")):
        load(path)


def test_yaml_syntax_errors_are_one_line_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("networks:\n  n: {subnet: 10.1.0.0/24\n")
    with pytest.raises(TopologyError) as caught:
        load(path)
    assert "\n" not in str(caught.value) and re.search(r"at line \d+, column \d+", str(caught.value))


def test_files_that_are_not_topologies(tmp_path: Path) -> None:
    binary = tmp_path / "b.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(TopologyError, match="not a text file"):
        load(binary)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(TopologyError, match="nested too deeply"):
        load(deep)
    with pytest.raises(TopologyError, match="is a directory"):
        load(tmp_path)
