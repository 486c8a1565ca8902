"""The firewall over IPv6, on the real kernel: NAT66, routed mode, isolation, internal, published ports.

As in test_firewall.py, peers wired to the host know the host's addresses only, never a route to
the sandbox subnets (unless a test adds one), so every answer proves DNAT or masquerade. Servers
listen on both families and answer with the address they saw the connection come from.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Cli, can_ping, sh, stop_agent
from .test_firewall import HOST_OUT, OUTSIDE, elements, outside, peer, sandbox, upstream

__all__ = ["outside", "peer", "upstream"]  # fixtures of test_firewall, used here too

HOST_OUT6, OUTSIDE6 = "fd99:1::1", "fd99:1::2"
HOST_UP6, UPSTREAM6 = "fd99:2::1", "fd99:2::2"

# Answers each TCP connection with "<label> <peer address>" (IPv4 peers without their ::ffff: prefix).
SERVER = """
import socket, sys, time
label, port, lifetime = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + lifetime
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", port))
s.settimeout(0.2)
s.listen(32)
while time.monotonic() < deadline:
    try:
        conn, peer = s.accept()
        conn.sendall(f"{label} {peer[0].removeprefix('::ffff:')}".encode())
        conn.close()
    except OSError:
        pass
"""

CLIENT = """
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((ip, port), timeout=1.5)
print(s.recv(100).decode())
"""


def ask(netns: str, ip: str, port: int) -> str | None:
    done = sh(netns, sys.executable, "-c", CLIENT, ip, str(port), check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def wait_answer(netns: str, ip: str, port: int, timeout: float = 8.0) -> str:
    deadline = time.monotonic() + timeout
    while (answer := ask(netns, ip, port)) is None:
        assert time.monotonic() < deadline, f"nothing answered on [{ip}]:{port} from {netns}"
        time.sleep(0.1)
    return answer


def serve_argv(label: str, port: int = 8000, lifetime: float = 60) -> list[str]:
    return [sys.executable, "-c", SERVER, label, str(port), str(lifetime)]


def add_ipv6(host: str, dev: str, peer_ns: str, host_ip: str, peer_ip: str) -> None:
    """An IPv6 address on each end of a peer's veth (``dev`` on the host, made by test_firewall's ``peer``)."""
    sh(host, "ip", "-6", "addr", "add", f"{host_ip}/64", "dev", dev, "nodad")
    sh(peer_ns, "ip", "-6", "addr", "add", f"{peer_ip}/64", "dev", "eth0", "nodad")


@pytest.fixture
def outside6(outside: str, host: str) -> str:
    add_ipv6(host, "to-o", outside, HOST_OUT6, OUTSIDE6)
    return outside


@pytest.fixture
def upstream6(upstream: str, host: str) -> Iterator[str]:
    add_ipv6(host, "to-u", upstream, HOST_UP6, UPSTREAM6)
    server = subprocess.Popen(["ip", "netns", "exec", upstream, *serve_argv("up", 7000)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_answer(upstream, UPSTREAM6, 7000)
        yield upstream
    finally:
        server.terminate()
        server.wait(timeout=5)


def ip6_of(box: dict[str, object], index: int = 0) -> str:
    ep = box["endpoints"][index]  # type: ignore[index]
    return str(ep.get("ip6") or ep["ip"]).split("/")[0]


def run_server(cli: Cli, name: str, *options: str) -> dict[str, object]:
    cli("run", "-d", "--name", name, *options, "--", *serve_argv(name), check=True)
    return sandbox(cli, name)


def test_a_published_port_answers_over_ipv6_from_outside_from_the_host_and_hairpin(cli: Cli, host: str,
                                                                                    outside6: str) -> None:
    cli("network", "create", "front", "--subnet", "10.67.0.0/24", "--subnet", "fd00:67::/64", check=True)
    web = run_server(cli, "web", "--network", "front", "-p", "8080:8000", "-p", f"[{HOST_OUT6}]:8081:8000")
    cli("run", "--name", "client", "--network", "front", check=True)
    client = sandbox(cli, "client")
    assert wait_answer(host, ip6_of(web), 8000).startswith("web ")

    # From another machine, on the host's IPv6 address: the source address is kept; IPv4 still works.
    assert ask(outside6, HOST_OUT6, 8080) == f"web {OUTSIDE6}"
    assert ask(outside6, HOST_OUT6, 8081) == f"web {OUTSIDE6}"
    assert ask(outside6, HOST_OUT, 8080) == f"web {OUTSIDE}"
    assert ask(outside6, HOST_OUT, 8081) is None, "published on the IPv6 address only"
    # From the host itself, on its own IPv6 addresses (the bridge's too).
    assert ask(host, HOST_OUT6, 8080) is not None and ask(host, "fd00:67::1", 8080) is not None
    # Hairpin: masqueraded to the gateway, so that the answer comes back through the host.
    assert ask(str(client["netns"]), HOST_OUT6, 8080) == "web fd00:67::1"
    assert ask(str(web["netns"]), HOST_OUT6, 8081) == "web fd00:67::1"
    ports = cli("port", "web", check=True).stdout.splitlines()
    assert "8000/tcp -> [fd99:1::1]:8081" in ports


def test_ipv6_egress_is_masqueraded_unless_routed(cli: Cli, host: str, upstream6: str) -> None:
    cli("network", "create", "nat", "--subnet", "10.68.0.0/24", "--ipv6", check=True)
    cli("network", "create", "routed", "--subnet", "10.68.1.0/24", "--subnet", "fd00:68:1::/64",
        "--no-masquerade", check=True)
    cli("run", "--name", "a", "--network", "nat", check=True)
    cli("run", "--name", "r", "--network", "routed", check=True)
    a, r = sandbox(cli, "a"), sandbox(cli, "r")
    assert ask(str(a["netns"]), UPSTREAM6, 7000) == f"up {HOST_UP6}", "the upstream sees the host's address"
    assert ask(str(r["netns"]), UPSTREAM6, 7000) is None, "routed: no way back without a route"
    sh(upstream6, "ip", "-6", "route", "add", "fd00:68:1::/64", "via", HOST_UP6)
    assert ask(str(r["netns"]), UPSTREAM6, 7000) == f"up {ip6_of(r)}"
    assert can_ping(upstream6, ip6_of(r)), "a routed network is reachable from outside"
    nat6 = ip6_of(a)
    sh(upstream6, "ip", "-6", "route", "add", f"{nat6}/128", "via", HOST_UP6)
    assert not can_ping(upstream6, nat6), "a masqueraded one only through published ports"


def test_isolation_and_internal_hold_for_ipv6(cli: Cli, host: str, upstream6: str) -> None:
    cli("network", "create", "one", "--subnet", "10.69.0.0/24", "--subnet", "fd00:69::/64", check=True)
    cli("network", "create", "two", "--subnet", "10.69.1.0/24", "--subnet", "fd00:69:1::/64", check=True)
    cli("network", "create", "sealed", "--subnet", "10.69.2.0/24", "--subnet", "fd00:69:2::/64", "--internal",
        check=True)
    for name, net in (("a", "one"), ("b", "two"), ("i", "sealed"), ("j", "sealed")):
        cli("run", "--name", name, "--network", net, check=True)
    a, b, i, j = (sandbox(cli, n) for n in "abij")
    assert can_ping(str(a["netns"]), "fd00:69::1"), "its own gateway answers"
    assert not can_ping(str(a["netns"]), ip6_of(b)), "isolation between networks"
    assert can_ping(str(i["netns"]), ip6_of(j)), "inside an internal network"
    assert ask(str(i["netns"]), UPSTREAM6, 7000) is None and not can_ping(str(a["netns"]), ip6_of(i))
    assert ask(str(a["netns"]), UPSTREAM6, 7000) == f"up {HOST_UP6}"
    cli("connect", "two", "a", check=True)
    assert can_ping(str(a["netns"]), ip6_of(b)), "a sandbox on both networks reaches both"


def test_an_ipv6_only_network_works_end_to_end(cli: Cli, host: str, outside6: str, upstream6: str) -> None:
    created = cli("network", "create", "six", "--subnet", "fd00:70::/64", check=True).stdout
    assert "subnet fd00:70::/64, gateway fd00:70::1" in created
    web = run_server(cli, "web", "--network", "six", "-p", "8080:8000")
    assert [e["ip"] for e in web["endpoints"]] == ["fd00:70::2/64"]  # type: ignore[index]
    assert wait_answer(outside6, HOST_OUT6, 8080) == f"web {OUTSIDE6}"
    assert ask(outside6, HOST_OUT, 8080) is None, "no IPv4 address to lead to"
    assert ask(str(web["netns"]), UPSTREAM6, 7000) == f"up {HOST_UP6}"
    refused = cli("run", "--name", "v4", "--network", "six", "-p", f"{HOST_OUT}:9000:80", "--", "true")
    assert refused.returncode != 0 and "no IPv4 one to lead to" in refused.stderr


def test_a_publish_on_ipv6_loopback_is_refused_naming_why(cli: Cli, host: str, state_dir: Path) -> None:
    cli("network", "create", "lo6", "--subnet", "10.71.0.0/24", "--ipv6", check=True)
    before = (elements(host, state_dir), cli("ps").stdout)
    done = cli("run", "-d", "--name", "w", "--network", "lo6", "-p", "[::1]:8080:80", "--", "sleep", "30")
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1
    assert "the kernel cannot forward connections to [::1]" in done.stderr and "127.0.0.1" in done.stderr
    assert (elements(host, state_dir), cli("ps").stdout) == before


def test_doctor_finds_a_deleted_ipv6_element_and_puts_it_back(cli: Cli, host: str, state_dir: Path) -> None:
    cli("network", "create", "dr", "--subnet", "10.72.0.0/24", "--subnet", "fd00:72::/64", check=True)
    cli("run", "-d", "--name", "w", "--network", "dr", "-p", "8080:80", "--", "sleep", "300", check=True)
    table = next(item["table"]["name"] for item in _tables(host) if item["table"]["name"].startswith("overlays_"))
    stop_agent(host, state_dir)  # else its self-heal puts the element back before doctor looks
    sh(host, "nft", "delete", "element", "inet", table, "publish6_any_tcp", "{ 8080 }")
    found = cli("doctor")
    assert found.returncode != 0 and "publish6_any_tcp" in found.stdout, found.stdout
    cli("doctor", "--fix", check=True)
    assert any("fd00:72::2" in str(e) for e in elements(host, state_dir)["publish6_any_tcp"])


def _tables(host: str) -> list[dict[str, dict[str, str]]]:
    import json

    listed = json.loads(sh(host, "nft", "-j", "list", "tables").stdout)["nftables"]
    return [item for item in listed if "table" in item]
