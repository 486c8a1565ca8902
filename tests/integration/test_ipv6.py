"""IPv6 on bridge networks, on the real kernel: dual-stack sandboxes, static addresses, a quiet link, drift.

The firewall's part (NAT66, isolation, published ports) is in test_ipv6_firewall.py.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from typing import Any

import pytest

from overlays import Conflict, EndpointRequest, Engine, NetworkSpec, SandboxSpec

from .conftest import Cli, can_ping, ip_json, sh


def addresses(netns: str, ifname: str, family: str = "inet6") -> list[dict[str, Any]]:
    found = ip_json(netns, "-f", family, "addr", "show", "dev", ifname)
    return [a for link in found for a in link["addr_info"]]  # type: ignore[union-attr]


def test_a_dual_stack_network_gives_each_sandbox_both_families_and_a_route_out_of_each(engine: Engine,
                                                                                      host: str) -> None:
    net = engine.create_network(NetworkSpec.parse("ds", subnet="10.61.0.0/24", ipv6=True))
    assert net.subnet6 is not None and net.gateway6 is not None
    assert net.subnet6.prefixlen == 64 and net.subnet6.subnet_of(ipaddress.ip_network("fd00::/8"))  # a ULA /64
    static = net.subnet6[0x50]
    a = engine.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("ds")]))
    b = engine.create_sandbox(SandboxSpec.parse("b", [EndpointRequest.parse("ds", ip6=str(static))]))
    assert b.endpoints[0].ip6 == static and a.endpoints[0].ip6 == net.gateway6 + 1
    assert can_ping(a.netns, str(static)) and can_ping(a.netns, str(b.endpoints[0].ip))
    assert can_ping(a.netns, str(net.gateway6)), "the bridge holds the IPv6 gateway"
    routes = ip_json(a.netns, "-6", "route", "show", "default")
    assert [r.get("gateway") for r in routes] == [str(net.gateway6)]
    # Static, quiet addresses: no link-local, no DAD (nothing tentative), on the sandbox and on the bridge.
    for netns, ifname, scopes in ((a.netns, "eth0", ["global"]), (host, net.bridge, ["global", "link"])):
        found = addresses(netns, ifname)
        assert [x["scope"] for x in found] == scopes, found  # the bridge's: fe80::1, to send NDP from
        assert not any(x.get("tentative") for x in found) and all(x.get("nodad") for x in found)
    assert engine.sandbox_problems("a") == [] and engine.network_problems("ds") == []


def test_networks_without_a_given_ipv6_subnet_share_one_ula_prefix_and_never_a_64(engine: Engine) -> None:
    one = engine.create_network(NetworkSpec.parse("one", subnet="10.62.0.0/24", ipv6=True))
    two = engine.create_network(NetworkSpec.parse("two", subnet="10.62.1.0/24", ipv6=True))
    assert one.subnet6 is not None and two.subnet6 is not None and one.subnet6 != two.subnet6
    assert one.subnet6.supernet(new_prefix=48) == two.subnet6.supernet(new_prefix=48)


def test_a_lost_ipv6_address_is_drift_that_repair_puts_back(engine: Engine) -> None:
    engine.create_network(NetworkSpec.parse("dr", subnet=["10.63.0.0/24", "fd00:63::/64"]))
    box = engine.create_sandbox(SandboxSpec.parse("d", [EndpointRequest.parse("dr")]))
    ep = box.endpoints[0]
    sh(box.netns, "ip", "-6", "addr", "del", f"{ep.ip6}/64", "dev", "eth0")
    assert engine.sandbox_problems("d") == [f"eth0 of sandbox d on dr lost its address {ep.ip6}/64"]
    engine.repair_sandbox("d")
    assert engine.sandbox_problems("d") == [] and can_ping(box.netns, "fd00:63::1")


def test_ipv6_forwarding_keeps_the_hosts_router_advertisements(engine: Engine, host: str) -> None:
    """A forwarding host ignores RAs where accept_ra is 1: such links go to 2 before forwarding is turned on."""
    subprocess.run(["ip", "-n", host, "link", "add", "up0", "type", "veth", "peer", "name", "up1"], check=True)
    sh(host, "sysctl", "-qw", "net.ipv6.conf.up0.accept_ra=1")
    engine.create_network(NetworkSpec.parse("fw", subnet="10.64.0.0/24"))
    assert sh(host, "sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "0", "IPv4-only: untouched"
    engine.create_network(NetworkSpec.parse("fw6", subnet="10.64.1.0/24", ipv6=True))
    assert sh(host, "sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
    assert sh(host, "sysctl", "-n", "net.ipv6.conf.up0.accept_ra").stdout.strip() == "2"


def test_the_cli_shows_both_families_and_refuses_bad_ipv6_input_in_one_line(cli: Cli, host: str) -> None:
    cli("network", "create", "cs", "--subnet", "10.65.0.0/24", "--subnet", "fd00:65::/64", check=True)
    cli("run", "-d", "--name", "w", "--network", "cs", "--ip6", "fd00:65::99", "--", "sleep", "300", check=True)
    shown = json.loads(cli("inspect", "w", "--json", check=True).stdout)["endpoints"][0]
    assert shown["ip6"] == "fd00:65::99/64" and shown["gateway6"] == "fd00:65::1"
    assert "cs=10.65.0.2,fd00:65::99" in cli("ps", check=True).stdout
    net = json.loads(cli("network", "inspect", "cs", "--json", check=True).stdout)
    assert (net["subnet"], net["subnet6"], net["gateway6"]) == ("10.65.0.0/24", "fd00:65::/64", "fd00:65::1")
    cli("network", "create", "v4", "--subnet", "10.65.1.0/24", check=True)
    before = (ip_json(host, "link"), cli("ps").stdout, cli("network", "ls").stdout)
    for args, says in [
        (["run", "--name", "x", "--network", "v4", "--ip6", "fd00:65::5", "--", "true"],
         "--ip6 fd00:65::5: network v4 has no IPv6 subnet"),
        (["run", "--name", "x", "--network", "cs", "--ip6", "10.65.0.9", "--", "true"], "is not an IPv6 address"),
        (["run", "--name", "x", "--network", "cs", "--ip6", "fd00:66::5", "--", "true"], "outside network cs"),
        (["run", "--name", "x", "--network", "cs", "--ip6", "fd00:65::99", "--", "true"], "already taken by w"),
        (["network", "create", "bad", "--subnet", "fe80::/64"], "link-local"),
        (["network", "create", "bad", "--subnet", "ff02::/64"], "multicast"),
        (["network", "create", "bad", "--subnet", "::1/128"], "too small"),
        (["network", "create", "bad", "--subnet", "fd00:1::/64", "--subnet", "fd00:2::/64"], "two IPv6 values"),
        (["network", "create", "bad", "--subnet", "fd00:65::/80"], "overlaps network cs"),
        (["network", "create", "bad", "--subnet", "10.65.2.0/24", "--gateway", "fd00::1"], "needs an IPv6 --subnet"),
    ]:
        done = cli(*args)
        assert done.returncode != 0 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
            (args, done.stderr)
    assert (ip_json(host, "link"), cli("ps").stdout, cli("network", "ls").stdout) == before


def trace(cli: Cli, *args: str) -> tuple[int, dict[str, Any]]:
    done = cli("trace", *args, "--json")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_trace_follows_ipv6_paths_and_names_the_cause_of_a_blocked_one(cli: Cli) -> None:
    cli("network", "create", "tf", "--subnet", "10.66.0.0/24", "--subnet", "fd00:66::/64", check=True)
    cli("network", "create", "tb", "--subnet", "10.66.1.0/24", "--subnet", "fd00:66:1::/64", check=True)
    for name, net in (("a", "tf"), ("b", "tf"), ("c", "tb")):
        cli("run", "--name", name, "--network", net, check=True)
    code, t = trace(cli, "a", "b", "-6")
    assert code == 0 and t["reachable"] and t["ip"] == "fd00:66::3", t
    assert t["probe"].startswith("ping -M do -s 1452 fd00:66::3") and "answered" in t["probe"]  # 1500 - 48
    assert any("route to fd00:66::3 on the link dev eth0" in what for _, what in t["steps"])
    code, t = trace(cli, "a", "fd00:66:1::2")
    assert code == 1 and t["reachable"] is False, t
    assert t["verdict"] == "blocked: tf and tb are isolated: `overlays connect tb a` gives a a leg on both"
    assert any('drop comment "isolation between networks"' in line for line in t["firewall"])  # the kernel's word
    listen = ("import socket; s=socket.socket(socket.AF_INET6); s.bind(('::', 80)); s.listen()\n"
              "while True: s.accept()[0].close()")
    cli("run", "-d", "--name", "web", "--network", "tb", "-p", "8080:80", "--", "python3", "-c", listen, check=True)
    for _ in range(100):  # until it listens
        if ":80 " in sh(json.loads(cli("inspect", "web", "--json").stdout)["netns"], "ss", "-ltn").stdout:
            break
    code, t = trace(cli, "a", "[fd00:66::1]:8080")
    steps = " | ".join(what for _, what in t["steps"])
    assert code == 0 and t["reachable"], t
    assert "DNAT [fd00:66::1]:8080/tcp -> [fd00:66:1::3]:80 (published by web)" in steps, steps
    assert any('"published ports"' in line for line in t["firewall"])  # the kernel's own trace of it
    cli("network", "create", "t4", "--subnet", "10.66.2.0/24", check=True)
    cli("run", "--name", "d", "--network", "t4", check=True)
    done = cli("trace", "a", "d", "-6")
    assert done.returncode != 0 and done.stderr.strip() == "overlays: error: trace: d has no IPv6 address (10.66.2.2)"


def test_ipv6_only_addresses_alike_in_their_last_32_bits_never_share_a_mac(cli: Cli) -> None:
    """A MAC derived from an address keeps 32 bits of it: enough for IPv4, not for a /64 of static addresses."""
    cli("network", "create", "m6", "--subnet", "fd00:73::/64", check=True)
    cli("run", "--name", "x", "--network", "m6", "--ip6", "fd00:73::5", check=True)
    done = cli("run", "--name", "y", "--network", "m6", "--ip6", "fd00:73::1:0:0:5")
    assert done.returncode != 0 and done.stderr.strip() == (
        "overlays: error: MAC 02:6f:00:00:00:05 on network m6 is already taken by x (derived from fd00:73::1:0:0:5's "
        "last 32 bits; give --mac)")
    cli("run", "--name", "y", "--network", "m6", "--ip6", "fd00:73::1:0:0:5", "--mac", "02:42:00:00:00:05", check=True)
    cli("rm", "x", check=True)
    cli("run", "--name", "z", "--network", "m6", "--ip6", "fd00:73::2:0:0:5", check=True)  # x's claim went with it


def getent(cli: Cli, sandbox: str, database: str, *keys: str) -> list[str]:
    done = cli("exec", sandbox, "--", "getent", database, *keys)
    return done.stdout.split() if done.returncode == 0 else []


def test_names_resolve_to_both_families_and_ipv6_addresses_back_to_names(cli: Cli) -> None:
    cli("network", "create", "nm", "--subnet", "10.74.0.0/24", "--subnet", "fd00:74::/64", check=True)
    cli("network", "create", "nm6", "--subnet", "fd00:75::/64", check=True)
    cli("run", "-d", "--name", "a", "--network", "nm", "--", "sleep", "300", check=True)
    cli("run", "-d", "--name", "b", "--network", "nm", "--alias", "bee", "--", "sleep", "300", check=True)
    cli("run", "-d", "--name", "c", "--network", "nm6", "--", "sleep", "300", check=True)
    cli("connect", "nm6", "a", check=True)
    found = set(getent(cli, "a", "ahosts", "bee"))
    assert {"10.74.0.3", "fd00:74::3"} <= found, found  # A and AAAA
    assert getent(cli, "a", "hosts", "fd00:74::3")[:2] == ["fd00:74::3", "b.nm"]  # PTR in ip6.arpa
    assert getent(cli, "a", "ahostsv6", "c")[:1] == ["fd00:75::2"]
    assert getent(cli, "a", "ahostsv4", "c") == [], "an IPv6-only sandbox has no A record"
    assert getent(cli, "c", "hosts", "a") == ["fd00:75::3", "a"], "only a's address on the network c shares"


def _snmp6(netns: str, counter: str) -> int:
    found = dict(line.split()[:2] for line in sh(netns, "cat", "/proc/net/snmp6").stdout.splitlines() if line.strip())
    return int(found[counter])


def test_sandboxes_mld_reports_are_not_flooded_across_a_dual_stack_bridge(engine: Engine, host: str) -> None:
    """Each IPv6 address makes its sandbox send two MLD reports; a querier-less bridge would copy each to
    every other port (about N^2 frames). The filter on each host-side veth drops them where they enter."""
    engine.create_network(NetworkSpec.parse("mq", subnet=["10.66.0.0/24", "fd00:66::/64"]))
    engine.create_network(NetworkSpec.parse("mq4", subnet="10.66.1.0/24"))
    boxes = [engine.create_sandbox(SandboxSpec.parse(f"m{i}", [EndpointRequest.parse("mq")])) for i in range(16)]
    only4 = engine.create_sandbox(SandboxSpec.parse("only4", [EndpointRequest.parse("mq4")]))
    for box in boxes:
        shown = sh(host, "tc", "filter", "show", "dev", box.endpoints[0].host_ifname, "ingress").stdout
        assert "overlays_mld" in shown and "direct-action" in shown, shown
    assert "overlays_mld" not in sh(host, "tc", "filter", "show", "dev", only4.endpoints[0].host_ifname,
                                    "ingress").stdout, "an IPv4-only endpoint needs no filter"
    assert all(_snmp6(b.netns, "Icmp6OutMLDv2Reports") >= 1 for b in boxes), "each sandbox reported its group"
    # Flooded, the first sandbox receives the 15 later ones' reports, one or two each (19 measured without the
    # filter); dropped, only the bridge's own multicast (2 measured).
    first, last = boxes[0], boxes[-1]
    assert _snmp6(first.netns, "Ip6InMcastPkts") < 8, "the other sandboxes' MLD reports reached the first"
    assert can_ping(first.netns, str(last.endpoints[0].ip6)) and can_ping(last.netns, "fd00:66::1")


def test_an_ipv6_subnet_the_host_routes_already_is_refused_and_a_chosen_one_avoids_it(engine: Engine,
                                                                                     host: str) -> None:
    subprocess.run(["ip", "-n", host, "link", "add", "rt6a", "type", "veth", "peer", "name", "rt6b"], check=True)
    sh(host, "ip", "-6", "addr", "add", "fd00:67::1/64", "dev", "rt6a", "nodad")
    with pytest.raises(Conflict, match=r"network clash: subnet fd00:67::/64 overlaps fd00:67::/64, routed by the host"):
        engine.create_network(NetworkSpec.parse("clash", subnet=["10.67.0.0/24", "fd00:67::/64"]))
    assert engine.networks() == [], "a refused network leaves no record"
    # The host also routes this store's first ULA /64 (as if another tool took it): a chosen /64 skips it.
    net = engine.create_network(NetworkSpec.parse("first", subnet="10.67.1.0/24", ipv6=True))
    assert net.subnet6 is not None
    engine.remove_network("first")
    sh(host, "ip", "-6", "addr", "add", f"{net.subnet6[1]}/64", "dev", "rt6a", "nodad")
    again = engine.create_network(NetworkSpec.parse("second", subnet="10.67.1.0/24", ipv6=True))
    assert again.subnet6 is not None and not again.subnet6.overlaps(net.subnet6)
