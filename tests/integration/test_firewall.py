"""Egress NAT, published ports and isolation, on the real kernel, in namespaces only.

Beside the test's host namespace there are peers wired to it by a veth: an
"outside" machine (198.51.100.0/24) and an "upstream" one (203.0.113.0/24). The
peers know the host's address only, never a route to the sandbox subnets, so
every answer they get proves DNAT or masquerade. Servers are small Python
programs that answer each connection with the address they saw it come from,
and stop by themselves. No test touches the root namespace's firewall.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from overlays.engine.context import instance_id

from .conftest import Cli, can_ping, sh

HOST_OUT, OUTSIDE = "198.51.100.1", "198.51.100.2"
HOST_UP, UPSTREAM = "203.0.113.1", "203.0.113.2"

# Answers each TCP connection or UDP datagram with "<label> <peer address>"; gone after its lifetime.
SERVER = """
import socket, sys, time
label, port, proto, lifetime = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + lifetime
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.settimeout(0.2)
if proto == "tcp":
    s.listen(32)
while time.monotonic() < deadline:
    try:
        if proto == "tcp":
            conn, peer = s.accept()
            conn.sendall(f"{label} {peer[0]}".encode())
            conn.close()
        else:
            data, peer = s.recvfrom(100)
            s.sendto(f"{label} {peer[0]}".encode(), peer)
    except OSError:
        pass
"""

CLIENT = """
import socket, sys
ip, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.settimeout(1.5)
s.connect((ip, port))
if proto == "udp":
    s.send(b"hi")
print(s.recv(100).decode())
"""


def ask(netns: str, ip: str, port: int, proto: str = "tcp") -> str | None:
    """What the server at ip:port answers from inside ``netns`` ("label peer"), or None."""
    done = sh(netns, sys.executable, "-c", CLIENT, ip, str(port), proto, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def wait_answer(netns: str, ip: str, port: int, proto: str = "tcp", timeout: float = 8.0) -> str:
    """Ask until the server answers (it may still be starting), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = ask(netns, ip, port, proto)
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer from {ip}:{port}/{proto} in {netns}")
        time.sleep(0.1)


def serve_argv(label: str, port: int, proto: str = "tcp", lifetime: float = 60) -> list[str]:
    return [sys.executable, "-c", SERVER, label, str(port), proto, str(lifetime)]


@pytest.fixture
def peer(make_netns: Callable[[str], str], host: str) -> Iterator[Callable[[str, str, str], str]]:
    """A namespace wired to the host by a veth; it knows the host's address and nothing behind it."""

    def make(label: str, host_ip: str, peer_ip: str) -> str:
        name = make_netns(label)
        dev = f"to-{label}"
        subprocess.run(["ip", "-n", host, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", name],
                       check=True)
        subprocess.run(["ip", "-n", host, "addr", "add", f"{host_ip}/24", "dev", dev], check=True)
        subprocess.run(["ip", "-n", host, "link", "set", dev, "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{peer_ip}/24", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "eth0", "up"], check=True)
        return name

    yield make


@pytest.fixture
def background() -> Iterator[Callable[..., None]]:
    """Start a command inside a namespace; it is stopped after the test (it also stops by itself)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(netns: str, *argv: str) -> None:
        procs.append(subprocess.Popen(["ip", "netns", "exec", netns, *argv],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=5)


@pytest.fixture
def outside(peer: Callable[[str, str, str], str]) -> str:
    return peer("o", HOST_OUT, OUTSIDE)


@pytest.fixture
def upstream(peer: Callable[[str, str, str], str]) -> str:
    return peer("u", HOST_UP, UPSTREAM)


def table(host: str, state_dir: Path) -> str:
    return f"overlays_{instance_id(state_dir, host)}"


def ruleset(host: str, state_dir: Path) -> Any:
    """Our table as nft's JSON (an independent view), or None if it does not exist."""
    done = sh(host, "nft", "-j", "list", "table", "inet", table(host, state_dir), check=False)
    return json.loads(done.stdout)["nftables"] if done.returncode == 0 else None


def elements(host: str, state_dir: Path) -> dict[str, Any]:
    """Set and map name -> its elements."""
    found: dict[str, Any] = {}
    for item in ruleset(host, state_dir) or []:
        for kind in ("set", "map"):
            if kind in item:
                found[item[kind]["name"]] = item[kind].get("elem", [])
    return found


def sandbox(cli: Cli, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cli("inspect", name, "--json", check=True).stdout)
    return data


def ip_of(box: dict[str, Any], index: int = 0) -> str:
    return str(box["endpoints"][index]["ip"]).split("/")[0]


def run_server(cli: Cli, name: str, *options: str, port: int = 8000, proto: str = "tcp") -> dict[str, Any]:
    cli("run", "-d", "--name", name, *options, "--", *serve_argv(name, port, proto), check=True)
    return sandbox(cli, name)


def test_published_port_from_outside_from_the_host_and_hairpin(
    cli: Cli, host: str, outside: str, state_dir: Path
) -> None:
    cli("network", "create", "front", "--subnet", "10.61.0.0/24", check=True)
    web = run_server(cli, "web", "--network", "front", "-p", "8080:8000", "-p", f"{HOST_OUT}:8081:8000",
                     "-p", "127.0.0.1:9090:8000", "-p", "8100-8101:8000-8001")
    cli("run", "--name", "client", "--network", "front", check=True)
    client = sandbox(cli, "client")
    assert wait_answer(host, ip_of(web), 8000).startswith("web ")

    # (a) another machine, through the host's address: the source address is kept.
    assert ask(outside, HOST_OUT, 8080) == f"web {OUTSIDE}"
    assert ask(outside, HOST_OUT, 8081) == f"web {OUTSIDE}"
    assert ask(outside, HOST_OUT, 8100) == f"web {OUTSIDE}"
    # ... but not a port published on 127.0.0.1, nor one nobody published.
    assert ask(outside, HOST_OUT, 9090) is None
    assert ask(outside, HOST_OUT, 8101) is None  # published, but nothing listens on 8001
    assert ask(outside, HOST_OUT, 8082) is None

    # (b) the host itself, on its own addresses and on 127.0.0.1.
    assert ask(host, HOST_OUT, 8080) is not None
    assert ask(host, "10.61.0.1", 8080) is not None
    assert ask(host, "127.0.0.1", 9090) is not None
    assert ask(host, "127.0.0.1", 8080) is not None

    # (c) hairpin: sandboxes of the same network through the host's address (masqueraded to the
    # gateway, so that answers come back through the host), the server itself too.
    assert ask(client["netns"], HOST_OUT, 8080) == "web 10.61.0.1"
    assert ask(client["netns"], HOST_OUT, 8081) == "web 10.61.0.1"
    assert ask(client["netns"], "10.61.0.1", 8080) == "web 10.61.0.1"
    assert ask(web["netns"], HOST_OUT, 8080) == "web 10.61.0.1"
    # A port published on 127.0.0.1 is the host's only.
    assert ask(client["netns"], "10.61.0.1", 9090) is None

    ports = cli("port", "web", check=True).stdout.splitlines()
    assert "8000/tcp -> 0.0.0.0:8080" in ports and "8000/tcp -> 127.0.0.1:9090" in ports
    assert len(ports) == 5
    listed = json.loads(cli("port", "web", "--json", check=True).stdout)
    assert {"host_ip": HOST_OUT, "host_port": 8081, "container_port": 8000, "protocol": "tcp"} in listed
    assert web["ports"] == listed


def test_udp_ports_are_published_too(cli: Cli, host: str, outside: str) -> None:
    cli("network", "create", "front", "--subnet", "10.62.0.0/24", check=True)
    dns = run_server(cli, "dns", "--network", "front", "-p", "5353:53/udp", port=53, proto="udp")
    assert wait_answer(host, ip_of(dns), 53, "udp").startswith("dns ")
    assert ask(outside, HOST_OUT, 5353, "udp") == f"dns {OUTSIDE}"
    assert ask(outside, HOST_OUT, 5353, "tcp") is None


def test_egress_is_masqueraded_to_the_host_address_unless_routed(
    cli: Cli, host: str, upstream: str, background: Callable[..., None]
) -> None:
    background(upstream, *serve_argv("up", 7000))
    wait_answer(upstream, UPSTREAM, 7000)
    cli("network", "create", "nat", "--subnet", "10.63.0.0/24", check=True)
    cli("network", "create", "routed", "--subnet", "10.64.0.0/24", "--no-masquerade", check=True)
    cli("run", "--name", "a", "--network", "nat", check=True)
    cli("run", "--name", "r", "--network", "routed", check=True)
    a, r = sandbox(cli, "a"), sandbox(cli, "r")

    assert ask(a["netns"], UPSTREAM, 7000) == f"up {HOST_UP}", "the upstream sees the host's address"
    # Routed mode: the sandbox's own address goes out, so the answer needs a route back to it.
    assert ask(r["netns"], UPSTREAM, 7000) is None
    subprocess.run(["ip", "-n", upstream, "route", "add", "10.64.0.0/24", "via", HOST_UP], check=True)
    assert ask(r["netns"], UPSTREAM, 7000) == f"up {ip_of(r)}"
    # With a route, the upstream reaches the routed network directly, but never the masqueraded one.
    subprocess.run(["ip", "-n", upstream, "route", "add", "10.63.0.0/24", "via", HOST_UP], check=True)
    assert can_ping(upstream, ip_of(r))
    assert not can_ping(upstream, ip_of(a))
    net = json.loads(cli("network", "inspect", "routed", "--json", check=True).stdout)
    assert (net["internal"], net["masquerade"]) == (False, False)


def test_networks_are_isolated_unless_a_sandbox_joins_both(cli: Cli, host: str) -> None:
    cli("network", "create", "left", "--subnet", "10.65.0.0/24", check=True)
    # A routed network: only the isolation rule (not the masquerading networks' guard) keeps "left" out.
    cli("network", "create", "right", "--subnet", "10.66.0.0/24", "--no-masquerade", check=True)
    for name, nets in (("l1", ["left"]), ("l2", ["left"]), ("r1", ["right"]), ("both", ["left", "right"])):
        cli("run", "--name", name, *[a for n in nets for a in ("--network", n)], check=True)
    l1, l2, r1, both = (sandbox(cli, n) for n in ("l1", "l2", "r1", "both"))

    assert can_ping(l1["netns"], ip_of(l2)), "same network"
    assert not can_ping(l1["netns"], ip_of(r1)), "different networks"
    assert not can_ping(r1["netns"], ip_of(l1))
    assert can_ping(both["netns"], ip_of(l1)) and can_ping(both["netns"], ip_of(r1))
    assert can_ping(host, ip_of(l1)) and can_ping(host, ip_of(r1)), "the host reaches every network"
    # A published port is public: a sandbox of another network reaches it through the host.
    cli("rm", "-f", "r1", check=True)
    web = run_server(cli, "web", "--network", "right", "-p", "8080:8000")
    wait_answer(host, ip_of(web), 8000)
    assert ask(l1["netns"], "10.65.0.1", 8080) == f"web {ip_of(l1)}"
    assert ask(l1["netns"], ip_of(web), 8000) is None


def test_internal_network_has_no_way_out_and_no_published_ports(
    cli: Cli, host: str, upstream: str, state_dir: Path
) -> None:
    cli("network", "create", "sealed", "--subnet", "10.67.0.0/24", "--internal", check=True)
    cli("network", "create", "open", "--subnet", "10.68.0.0/24", check=True)
    cli("run", "--name", "i1", "--network", "sealed", check=True)
    cli("run", "--name", "i2", "--network", "sealed", check=True)
    cli("run", "--name", "o1", "--network", "open", check=True)
    i1, i2, o1 = sandbox(cli, "i1"), sandbox(cli, "i2"), sandbox(cli, "o1")
    # The upstream even knows the way back: only the firewall keeps the internal network in.
    subprocess.run(["ip", "-n", upstream, "route", "add", "10.67.0.0/24", "via", HOST_UP], check=True)
    assert can_ping(i1["netns"], ip_of(i2)), "an internal network still connects its sandboxes"
    assert not can_ping(upstream, ip_of(i1))
    assert not can_ping(i1["netns"], UPSTREAM), "no route out"
    assert can_ping(o1["netns"], UPSTREAM)
    assert not can_ping(o1["netns"], ip_of(i1)) and not can_ping(i1["netns"], ip_of(o1))

    before = ruleset(host, state_dir)
    refused = cli("run", "--name", "pub", "--network", "sealed", "-p", "8080:80")
    assert refused.returncode != 0
    assert refused.stderr.strip() == "overlays: error: sandbox pub: cannot publish ports on internal network sealed"
    assert ruleset(host, state_dir) == before
    net = json.loads(cli("network", "inspect", "sealed", "--json", check=True).stdout)
    assert net["internal"] is True


@pytest.mark.parametrize(
    ("publish", "message"),
    [
        ("8080:8000", "port 8080/tcp is already published on 0.0.0.0 by sandbox web"),
        ("127.0.0.1:8080:80", "port 8080/tcp is already published on 0.0.0.0 by sandbox web"),
        ("127.0.0.1:9090:80", "port 9090/tcp is already published on 127.0.0.1 by sandbox web"),
        ("9090:80", "port 9090/tcp is already published on 127.0.0.1 by sandbox web"),
        ("192.0.2.7:80:80", "cannot publish on 192.0.2.7: it is not an address of the host"),
        ("0:80", "host port 0 is out of range"),
        ("80:65536", "container port 65536 is out of range"),
        ("80:80/sctp", "protocol 'sctp' is not one of tcp, udp"),
        ("8000-8002:80-81", "host range has 3 ports but container range has 2"),
        ("8010-8000:80-90", "host range 8010-8000 ends before it starts"),
        ("http:80", "host port 'http' is not a port"),
        ("80", "expected [HOST_IP:]HOST_PORT:CONTAINER_PORT"),
        ("300.1.1.1:80:80", "host IP '300.1.1.1' is not a valid IP address"),
    ],
)
def test_bad_publish_is_one_line_and_changes_nothing(cli: Cli, host: str, state_dir: Path, publish: str,
                                                     message: str) -> None:
    cli("network", "create", "front", "--subnet", "10.69.0.0/24", check=True)
    cli("run", "--name", "web", "--network", "front", "-p", "8080:8000", "-p", "127.0.0.1:9090:8000", check=True)
    before, ps_before = ruleset(host, state_dir), cli("ps", "--json", check=True).stdout
    done = cli("run", "--name", "bad", "--network", "front", "-p", publish)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert ruleset(host, state_dir) == before
    assert cli("ps", "--json", check=True).stdout == ps_before


def test_rules_come_and_go_with_their_objects(cli: Cli, host: str, state_dir: Path) -> None:
    assert ruleset(host, state_dir) is None
    cli("network", "create", "front", "--subnet", "10.70.0.0/24", check=True)
    cli("network", "create", "back", "--subnet", "10.71.0.0/24", "--internal", check=True)
    empty = elements(host, state_dir)
    assert empty["bridges"] and empty["publish_any_tcp"] == [] and empty["internal"]
    assert sh(host, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert sh(host, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables", check=False).stdout.strip() in ("0", "")

    cli("run", "--name", "web", "--network", "front", "--network", "back", "-p", "8080:80",
        "-p", "127.0.0.1:8443:443", "-p", "53:53/udp", check=True)
    web = sandbox(cli, "web")
    now = elements(host, state_dir)
    assert now["publish_any_tcp"] == [[8080, {"concat": [ip_of(web), 80]}]]
    assert len(now["publish_tcp"]) == 1 and len(now["publish_any_udp"]) == 1

    # Ports follow the sandbox's first non-internal endpoint; with none left they wait for a connect.
    cli("disconnect", "front", "web", check=True)
    assert elements(host, state_dir) == empty
    cli("connect", "front", "web", "--ip", "10.70.0.9", check=True)
    assert elements(host, state_dir)["publish_any_tcp"] == [[8080, {"concat": ["10.70.0.9", 80]}]]

    cli("rm", "web", check=True)
    assert elements(host, state_dir) == empty, "rm leaves no rule behind"
    cli("network", "rm", "back", check=True)
    assert elements(host, state_dir)["internal"] == []
    cli("network", "rm", "front", check=True)
    assert ruleset(host, state_dir) is None, "the table goes with the last network"
