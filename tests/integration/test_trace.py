"""``overlays trace`` names the right cause: reachable, isolation, internal, a port nobody publishes,
a wrong MTU with DF, a stopped sandbox, and a path across hosts of an overlay network."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from overlays import Engine
from overlays.engine.trace import run
from overlays.topology import Lab, resolve

from .conftest import Cli, _instances, sh, unique

EXAMPLES = Path(__file__).parents[2] / "examples"
LISTEN = ("python3 -c \"import socket,time; s=socket.socket(); s.setsockopt(1, 2, 1); s.bind(('', 80)); "
          "s.listen(); time.sleep(120)\"")


@pytest.fixture
def three_networks(cli: Cli) -> Cli:
    cli("network", "create", "front", "--subnet", "10.61.0.0/24", check=True)
    cli("network", "create", "back", "--subnet", "10.62.0.0/24", check=True)
    cli("network", "create", "inner", "--subnet", "10.63.0.0/24", "--internal", check=True)
    for name, net in (("a", "front"), ("b", "front"), ("c", "back"), ("i", "inner")):
        cli("run", "--name", name, "--network", net, check=True)
    return cli


def trace(cli: Cli, *args: str) -> tuple[int, dict[str, Any]]:
    done = cli("trace", *args, "--json")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def netns_of(cli: Cli, name: str) -> str:
    return str(json.loads(cli("inspect", name, "--json", check=True).stdout)["netns"])


def listening(cli: Cli, name: str) -> None:
    ns, deadline = netns_of(cli, name), time.monotonic() + 15
    while ":80 " not in sh(ns, "ss", "-ltn").stdout:
        assert time.monotonic() < deadline, f"{name} never listened on 80"
        time.sleep(0.05)


def test_a_reachable_path_on_one_network_and_through_a_published_port(three_networks: Cli) -> None:
    cli = three_networks
    code, t = trace(cli, "a", "b")
    assert code == 0 and t["reachable"] and t["verdict"].startswith("reachable: a reaches b")
    assert t["probe"].startswith("ping -M do -s 1472") and "answered" in t["probe"]
    assert any("bridged within network front" in what for _, what in t["steps"])

    cli("run", "-d", "--name", "web", "--network", "back", "-p", "8080:80", "--", "sh", "-c", LISTEN, check=True)
    listening(cli, "web")
    code, t = trace(cli, "a", "10.61.0.1:8080")
    assert code == 0 and t["reachable"], t
    steps = " | ".join(what for _, what in t["steps"])
    web = json.loads(cli("inspect", "web", "--json", check=True).stdout)["endpoints"][0]["ip"].split("/")[0]
    assert f"DNAT 10.61.0.1:8080/tcp -> {web}:80 (published by web)" in steps
    assert any('"published ports"' in line for line in t["firewall"])  # the kernel's own trace of it


def test_isolation_names_both_networks_and_the_connect_that_joins_them(three_networks: Cli) -> None:
    code, t = trace(three_networks, "a", "c")
    assert code == 1 and t["reachable"] is False
    assert t["verdict"] == "blocked: front and back are isolated: `overlays connect back a` gives a a leg on both"
    assert any('drop comment "isolation between networks"' in line for line in t["firewall"])


def test_internal_networks_let_nothing_in_or_out(three_networks: Cli) -> None:
    code, t = trace(three_networks, "a", "i")
    assert code == 1 and "network inner is internal: nothing enters it" in t["verdict"]
    code, t = trace(three_networks, "i", "a")
    assert code == 1 and "network inner is internal: nothing leaves it" in t["verdict"]
    assert any('"internal: nothing leaves"' in line for line in t["firewall"])


def test_a_port_nobody_publishes(three_networks: Cli) -> None:
    cli = three_networks
    cli("run", "--name", "web", "--network", "front", "-p", "8080:80", check=True)
    code, t = trace(cli, "b", "10.61.0.1:8081")
    assert code == 1 and t["verdict"].startswith("blocked: nothing publishes 8081/tcp on 10.61.0.1")
    assert "8080/tcp -> web:80" in t["verdict"] and "refused" in t["probe"]


def test_a_wrong_mtu_with_df_set(three_networks: Cli) -> None:
    cli = three_networks
    sh(netns_of(cli, "a"), "ip", "link", "set", "eth0", "mtu", "9000")  # by hand: the network carries 1500
    code, t = trace(cli, "a", "b")
    assert code == 1 and t["verdict"].startswith("large packets blocked: a's eth0 has MTU 9000 but network front "
                                                 "carries 1500")
    assert "ping -M do -s 8972" in t["probe"] and "a small one (ping -s 56): answered" in t["probe"]


def test_a_stopped_sandbox(three_networks: Cli) -> None:
    cli = three_networks
    cli("run", "-d", "--name", "gone", "--network", "front", "-p", "8080:80", "--", "true", check=True)
    deadline = time.monotonic() + 10
    while json.loads(cli("inspect", "gone", "--json", check=True).stdout)["status"] != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for dst in (["gone", "--port", "80/tcp"], ["10.61.0.1:8080"]):
        code, t = trace(cli, "a", *dst)
        assert code == 1 and t["verdict"].startswith("blocked: gone is stopped (its command (true) exited)"), t
        assert "refused" in t["probe"]


@pytest.fixture
def overlay_lab(tmp_path: Path) -> Iterator[Lab]:
    raw = yaml.safe_load((EXAMPLES / "overlay-lab.yaml").read_text())
    raw["name"] = unique("r")  # lab namespaces are global
    lab = Lab(resolve(copy.deepcopy(raw), "lab.yaml"), state_dir=tmp_path / "state", agent_ttl=5.0)
    _instances.add(lab.main.ctx.instance)
    try:
        lab.up()
        for host in ("h1", "h2", "h3"):
            _instances.add(lab.engine(host).instance)
        yield lab
    finally:
        lab.down()
        lab.close()


def test_a_path_across_hosts_of_an_overlay_network(overlay_lab: Lab) -> None:
    h1: Engine = overlay_lab.engine("h1")
    deadline = time.monotonic() + 15
    while not h1.overlay_converged():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t = run(h1.ctx, "a1", "c1")
    assert t.reachable, t.to_json()
    steps = " | ".join(what for _, what in t.steps)
    vtep = overlay_lab.host_address("h3")
    assert "VXLAN ovx-mesh (VNI 4242, MTU 1450)" in steps and f"to VTEP {vtep} (host {overlay_lab.node_of('h3')})" \
        in steps and "proxy ARP" in steps and f"VTEP {vtep} via dev eth0" in steps
    assert t.probe is not None and t.probe.startswith("ping -M do -s 1422")
    assert t.verdict.startswith("reachable: a1 reaches c1 on ")
