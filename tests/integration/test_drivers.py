"""Network drivers on the real kernel: a bridge whose MAC never moves, and macvlan networks."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from overlays import EndpointRequest, Engine, NetworkSpec, NotFound, SandboxSpec

from .conftest import Cli, can_ping, ip_json, sh


def bridge_mac(host: str, bridge: str) -> str:
    return str(ip_json(host, "link", "show", bridge)[0]["address"])


def test_removing_sandboxes_never_moves_the_bridge_mac_nor_strands_the_gateway(engine: Engine, host: str) -> None:
    """Without a MAC of its own, a bridge takes its lowest port's; when that sandbox leaves, every other
    sandbox's neighbour entry for the gateway goes stale for 15-20 s (100% loss to the gateway)."""
    net = engine.create_network(NetworkSpec.parse("pin", subnet="10.33.0.0/24"))
    pinned = bridge_mac(host, net.bridge)
    boxes = [engine.create_sandbox(SandboxSpec.parse(f"p{i}", [EndpointRequest.parse("pin")])) for i in range(5)]
    for box in boxes:  # every sandbox learns the gateway's MAC
        assert can_ping(box.netns, "10.33.0.1")
    host_macs = {str(link["address"]) for link in ip_json(host, "link", "show", "master", net.bridge)}
    assert pinned not in host_macs and bridge_mac(host, net.bridge) == pinned
    # Remove the sandbox whose veth holds the lowest MAC first: the one an unpinned bridge would have taken.
    by_mac = sorted(boxes, key=lambda b: str(ip_json(host, "link", "show", b.endpoints[0].host_ifname)[0]["address"]))
    for gone in by_mac:
        engine.remove_sandbox(gone.name)
        assert bridge_mac(host, net.bridge) == pinned
        for box in engine.sandboxes():
            neigh = ip_json(box.netns, "neigh", "show", "10.33.0.1")
            assert all(n.get("lladdr") in (None, pinned) for n in neigh), neigh
            assert can_ping(box.netns, "10.33.0.1"), f"{box.name} lost its gateway after {gone.name} left"


def test_a_bridge_mac_changed_by_hand_is_drift_that_repair_undoes(engine: Engine, host: str) -> None:
    net = engine.create_network(NetworkSpec.parse("old", subnet="10.34.0.0/24"))
    pinned = bridge_mac(host, net.bridge)
    subprocess.run(["ip", "-n", host, "link", "set", net.bridge, "address", "02:11:22:33:44:55"], check=True)
    assert engine.network_problems("old") == [f"bridge {net.bridge} of network old has MAC 02:11:22:33:44:55, "
                                              f"not its own {pinned}"]
    engine.repair_network("old")
    assert bridge_mac(host, net.bridge) == pinned and engine.network_problems("old") == []


# -- macvlan ---------------------------------------------------------------------------------------------------------

SEGMENT = "10.36.0"


@pytest.fixture
def segment(host: str, make_netns: Callable[[str], str]) -> tuple[str, str]:
    """A veth from the host namespace (the parent, ``lan0``) to a peer namespace at .1: one L2 segment."""
    peer = make_netns("pr")
    subprocess.run(["ip", "-n", host, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", peer],
                   check=True)
    subprocess.run(["ip", "-n", host, "addr", "add", f"{SEGMENT}.2/24", "dev", "lan0"], check=True)
    subprocess.run(["ip", "-n", host, "link", "set", "lan0", "up"], check=True)
    subprocess.run(["ip", "-n", peer, "addr", "add", f"{SEGMENT}.1/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", peer, "link", "set", "eth0", "up"], check=True)
    return "lan0", peer


def parent_view(host: str, name: str) -> dict[str, Any]:
    """The parent as ``ip -d`` shows it: its settings and addresses (not the addresses' lifetimes or DAD flags)."""
    link: dict[str, Any] = ip_json(host, "-d", "addr", "show", name)[0]  # type: ignore[assignment]
    view = {k: link.get(k) for k in ("ifname", "address", "mtu", "flags", "promiscuity", "allmulti", "linkinfo",
                                     "inet6_addr_gen_mode", "master")}
    view["addresses"] = sorted((a["family"], a["local"], a["prefixlen"]) for a in link["addr_info"])
    return view


def test_macvlan_sandboxes_reach_each_other_and_the_segment(cli: Cli, host: str, segment: tuple[str, str]) -> None:
    parent, peer = segment
    before = parent_view(host, parent)
    made = cli("network", "create", "lan", "--driver", "macvlan", "--parent", parent, check=True).stdout
    assert made.strip() == f"macvlan network lan created: subnet {SEGMENT}.0/24, gateway {SEGMENT}.1, parent lan0"
    cli("run", "--name", "m1", "--network", "lan", check=True)
    cli("run", "--name", "m2", "--network", "lan", check=True)
    m1, m2 = (json.loads(cli("inspect", n, "--json", check=True).stdout) for n in ("m1", "m2"))
    ip1, ip2 = (b["endpoints"][0]["ip"].split("/")[0] for b in (m1, m2))
    assert (ip1, ip2) == (f"{SEGMENT}.3", f"{SEGMENT}.4"), "the gateway and the parent's own address are held back"
    eth0 = ip_json(m1["netns"], "-d", "link", "show", "eth0")[0]
    assert eth0["linkinfo"]["info_kind"] == "macvlan"  # type: ignore[index]
    assert eth0["linkinfo"]["info_data"]["mode"] == "bridge"  # type: ignore[index]
    assert eth0["address"] == m1["endpoints"][0]["mac"]
    assert can_ping(m1["netns"], ip2) and can_ping(m2["netns"], ip1), "sandboxes of one parent reach each other"
    assert can_ping(m1["netns"], f"{SEGMENT}.1") and can_ping(peer, ip2), "and the rest of the segment"
    assert ip_json(m1["netns"], "route", "show", "default")[0]["gateway"] == f"{SEGMENT}.1"
    assert sh(host, "ip", "-o", "link", "show", "type", "macvlan").stdout == "", "nothing of it in the host"

    refused = cli("run", "--name", "pub", "--network", "lan", "-p", "8080:80")
    assert refused.returncode == 125  # run's own errors are 125, as Docker's
    assert refused.stderr.startswith("overlays: error: sandbox pub: cannot publish ports on macvlan network lan")
    cli("rm", "m1", "m2", check=True)
    cli("network", "rm", "lan", check=True)
    assert parent_view(host, parent) == before, "the parent is the user's: left as it was"


def test_macvlan_needs_a_parent_that_exists(cli: Cli, host: str, engine: Engine) -> None:
    refused = cli("network", "create", "lan", "--driver", "macvlan", "--parent", "nope0")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"overlays: error: network lan: parent interface nope0 does not exist in {host}")
    missing = cli("network", "create", "lan", "--driver", "macvlan")
    assert missing.stderr.strip() == ("overlays: error: network lan: a macvlan network needs --parent IFACE "
                                      "(the host interface to share)")
    with pytest.raises(NotFound, match="parent interface nope0 does not exist"):
        engine.create_network(NetworkSpec.parse("lan", driver="macvlan", parent="nope0", subnet="10.37.0.0/24"))
    assert json.loads(cli("network", "ls", "--json", check=True).stdout) == []


def test_macvlan_in_a_topology_file(host: str, state_dir: Path, segment: tuple[str, str], tmp_path: Path) -> None:
    from overlays.topology import Lab, resolve

    from .conftest import _instances

    parent, peer = segment
    raw = {"name": "mvtopo", "networks": {"lan": {"driver": "macvlan", "parent": parent, "subnet": f"{SEGMENT}.0/24",
                                                  "ip_range": f"{SEGMENT}.128/25"}},
           "sandboxes": {"a": {"networks": ["lan"]}, "b": {"networks": {"lan": {"ip": f"{SEGMENT}.200"}}}}}
    lab = Lab(resolve(raw, "mv.yaml"), host_netns=host, state_dir=state_dir)
    _instances.add(lab.main.ctx.instance)
    try:
        lab.up()
        assert lab.check().passed
        a = lab.sandbox("a")
        assert str(a.endpoints[0].ip) == f"{SEGMENT}.128"
        assert can_ping(peer, f"{SEGMENT}.200")
        assert lab.up() == [], "a second up changes nothing"
    finally:
        lab.down()
        lab.close()


def test_two_sandboxes_whose_veth_names_collide_both_work(cli: Cli, host: str, state_dir: Path) -> None:
    from overlays.engine.context import instance_id
    from tests.unit.test_names_collide_never import colliding_pair

    first, second = colliding_pair("cn", instance_id(state_dir, host))
    cli("network", "create", "cn", "--subnet", "10.35.0.0/24", check=True)
    cli("run", "--name", first, "--network", "cn", check=True)
    cli("run", "--name", second, "--network", "cn", check=True)
    boxes = [json.loads(cli("inspect", n, "--json", check=True).stdout) for n in (first, second)]
    assert boxes[0]["endpoints"][0]["host_interface"] != boxes[1]["endpoints"][0]["host_interface"]
    for box in boxes:
        assert can_ping(box["netns"], "10.35.0.1"), f"{box['name']} reaches its gateway"
