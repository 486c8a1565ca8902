"""Names end to end: the overlays command and the engine, the agent they start, real resolvers.

Each test has its own host namespace and a peer namespace holding an upstream dnsmasq
(the outside world), which the host's resolv.conf names (``/etc/netns/<host>/``). Names
are asked the way programs ask: ``getent hosts`` (glibc, through the resolv.conf that
``overlays exec`` and ``ip netns exec`` show the sandbox), Python's getaddrinfo, ``ping``;
and with one query to 127.0.0.11 from inside a namespace where the answer's details
matter. After each test the conftest checks that no agent is left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dnslib import RCODE

from overlays import EndpointRequest, Engine, NetworkSpec, SandboxSpec
from overlays.engine import hostagent
from overlays.kernel import dnsctl, mountns
from overlays.topology import Lab, resolve

from .conftest import Cli, _instances, sh, unique
from .test_dns import DNSMASQ, HOST_IP, PEER_IP, QUIET_IP, addresses, ask, start

LEAK = "leak.test"  # what the upstream says of our free addresses: never asked for


@pytest.fixture
def upstream(host: str, make_netns: Callable[[str], str]) -> Iterator[str]:
    """A peer namespace with a dnsmasq on PEER_IP (QUIET_IP refuses), named by the host's resolv.conf."""
    peer = make_netns("p")
    up, down = unique("u"), unique("d")
    subprocess.run(["ip", "-n", host, "link", "add", up, "type", "veth", "peer", "name", down, "netns", peer],
                   check=True)
    subprocess.run(["ip", "-n", host, "addr", "add", f"{HOST_IP}/24", "dev", up], check=True)
    for address in (PEER_IP, QUIET_IP):
        subprocess.run(["ip", "-n", peer, "addr", "add", f"{address}/24", "dev", down], check=True)
    for ns, dev in ((host, up), (peer, down)):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    daemons = [start(peer, [*DNSMASQ, f"--listen-address={PEER_IP}", "--bind-interfaces", "--local=/#/",
                            "--address=/outside.test/192.0.2.7", f"--ptr-record=99.0.41.10.in-addr.arpa,{LEAK}"])]
    mountns.write_etc_file(host, "resolv.conf", f"nameserver {PEER_IP}\n")
    try:
        yield peer
    finally:
        for proc in daemons:
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
        mountns.remove_etc_dir(host)


def box(cli: Cli, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cli("inspect", name, "--json", check=True).stdout)
    return found


def netns_of(cli: Cli, name: str) -> str:
    return str(box(cli, name)["netns"]).rsplit("/", 1)[-1]


def getent(cli: Cli, sandbox: str, *names: str) -> list[str]:
    """``overlays exec SANDBOX -- getent hosts NAMES``: the words it prints ([] when nothing resolves)."""
    done = cli("exec", sandbox, "--", "getent", "hosts", *names)
    return done.stdout.split() if done.returncode == 0 else []


def agent_of(state_dir: Path, node: str) -> hostagent.Started | None:
    try:
        raw = json.loads((state_dir / "agents" / f"{node}.json").read_text())
    except FileNotFoundError:
        return None
    return hostagent.Started(raw["pid"], raw["start"])


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 10) -> None:
    """A change another process makes on its own schedule (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def test_names_and_aliases_resolve_from_the_sandboxes_that_share_a_network_and_only_those(
        cli: Cli, host: str, upstream: str) -> None:
    before = Path("/etc/resolv.conf").read_bytes()
    cli("network", "create", "front", "--subnet", "10.41.0.0/24", check=True)
    cli("network", "create", "back", "--subnet", "10.42.0.0/24", check=True)
    cli("run", "--name", "a", "--network", "front", "--alias", "web", "--hostname", "alpha", check=True)
    cli("connect", "back", "a", "--alias", "api", check=True)
    cli("run", "--name", "b", "--network", "front", check=True)
    cli("run", "--name", "c", "--network", "back", check=True)
    assert getent(cli, "b", "a", "web", "alpha") == ["10.41.0.2", "a", "10.41.0.2", "web", "10.41.0.2", "alpha"]
    assert getent(cli, "c", "api", "a.back") == ["10.42.0.2", "api", "10.42.0.2", "a.back"]
    assert getent(cli, "a", "b", "c") == ["10.41.0.3", "b", "10.42.0.3", "c"]  # a is on both
    for asker, name in (("b", "c"), ("b", "api"), ("c", "web"), ("c", "b")):
        assert getent(cli, asker, name) == [], f"{name} resolved from {asker}"
    assert getent(cli, "b", "outside.test") == ["192.0.2.7", "outside.test"]  # forwarded upstream
    # The same file for `ip netns exec` (iproute2's convention), Python's getaddrinfo, and ping.
    assert sh(netns_of(cli, "c"), "getent", "hosts", "api").stdout.split() == ["10.42.0.2", "api"]
    code = "import socket; print(socket.getaddrinfo('web', 80, proto=socket.IPPROTO_TCP)[0][4][0])"
    assert cli("exec", "b", "--", "python3", "-c", code, check=True).stdout.strip() == "10.41.0.2"
    assert "1 received" in cli("exec", "b", "--", "ping", "-c1", "-W2", "alpha", check=True).stdout
    # A foreground `run` sees it too, and the host's own resolv.conf was never written.
    done = cli("run", "--rm", "--name", "d", "--network", "front", "--", "getent", "hosts", "web", check=True)
    assert done.stdout.split() == ["10.41.0.2", "web"]
    assert Path("/etc/resolv.conf").read_bytes() == before


def test_ptr_names_our_sandboxes_and_free_addresses_are_nxdomain_not_forwarded(cli: Cli, upstream: str) -> None:
    cli("network", "create", "front", "--subnet", "10.41.0.0/24", check=True)
    cli("run", "--name", "a", "--network", "front", check=True)
    cli("run", "--name", "b", "--network", "front", check=True)
    assert getent(cli, "b", "10.41.0.2") == ["10.41.0.2", "a.front"]
    assert getent(cli, "b", "10.41.0.99") == []  # the upstream would say leak.test: it is never asked
    reply = ask(netns_of(cli, "b"), "99.0.41.10.in-addr.arpa", "PTR")
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.header.aa == 1
    assert addresses(ask(netns_of(cli, "b"), "7.2.0.192.in-addr.arpa", "PTR")) == []  # not ours: forwarded


def test_network_dns_servers_replace_the_hosts_and_internal_networks_do_not_forward(
        cli: Cli, host: str, upstream: str) -> None:
    mountns.write_etc_file(host, "resolv.conf", f"nameserver {QUIET_IP}\n")  # the host's own upstream refuses
    cli("network", "create", "plain", "--subnet", "10.43.0.0/24", check=True)
    cli("network", "create", "viadns", "--subnet", "10.44.0.0/24", "--dns", PEER_IP, check=True)
    cli("network", "create", "sealed", "--subnet", "10.45.0.0/24", "--internal", check=True)
    assert json.loads(cli("network", "inspect", "viadns", "--json", check=True).stdout)["dns"] == [PEER_IP]
    cli("run", "--name", "p", "--network", "plain", check=True)
    cli("run", "--name", "v", "--network", "viadns", check=True)
    cli("run", "--name", "i", "--network", "sealed", check=True)
    cli("run", "--name", "j", "--network", "sealed", check=True)
    assert ask(netns_of(cli, "p"), "outside.test").header.rcode == RCODE.SERVFAIL  # the host's upstream refused
    assert getent(cli, "v", "outside.test") == ["192.0.2.7", "outside.test"]  # through --dns
    assert getent(cli, "i", "j") == ["10.45.0.3", "j"]  # its own network's names
    reply = ask(netns_of(cli, "i"), "outside.test")
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.header.ra == 0  # no way out: not even for names
    refused = cli("network", "create", "bad", "--internal", "--dns", PEER_IP)
    assert refused.returncode == 1 and "--dns does not apply to an internal network" in refused.stderr


def test_servers_on_port_53_of_the_host_and_of_a_sandbox_break_nothing(cli: Cli, host: str, upstream: str) -> None:
    # The host runs its own resolver on 0.0.0.0:53 (a dnsmasq forwarding upstream), named by its resolv.conf.
    host_dns = start(host, [*DNSMASQ, f"--server={PEER_IP}", "--address=/host-only.test/192.0.2.99"])
    try:
        mountns.write_etc_file(host, "resolv.conf", "nameserver 127.0.0.1\n")
        cli("network", "create", "front", "--subnet", "10.41.0.0/24", check=True)
        cli("run", "--name", "a", "--network", "front", check=True)
        # A sandbox running its own DNS server on all its addresses, port 53, UDP and TCP.
        cli("run", "-d", "--name", "d", "--network", "front", "--", "dnsmasq", "--keep-in-foreground",
            "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=", "--user=root",
            "--address=/mine.test/192.0.2.44", check=True)
        wait_for("the sandbox's dnsmasq", lambda: "0.0.0.0:53 " in sh(netns_of(cli, "d"), "ss", "-Hlun").stdout)
        assert getent(cli, "d", "a", "host-only.test") == ["10.41.0.2", "a", "192.0.2.99", "host-only.test"]
        assert addresses(ask(netns_of(cli, "a"), "mine.test", server="10.41.0.3")) == ["192.0.2.44"]  # its own
        assert addresses(ask(netns_of(cli, "d"), "a", tcp=True)) == ["10.41.0.2"]  # 127.0.0.11 is still ours
        assert addresses(ask(host, "host-only.test", server=HOST_IP)) == ["192.0.2.99"]  # the host's still serves
    finally:
        host_dns.kill()
        host_dns.wait()
        if host_dns.stderr:
            host_dns.stderr.close()


def test_names_appear_when_run_returns_and_vanish_when_rm_returns(cli: Cli, upstream: str) -> None:
    cli("network", "create", "front", "--subnet", "10.41.0.0/24", check=True)
    cli("run", "--name", "a", "--network", "front", check=True)
    asker = netns_of(cli, "a")
    for i in range(3):  # no poll: the name is served when the command returns, and gone when rm does
        cli("run", "--name", f"n{i}", "--network", "front", "--alias", "twin", check=True)
        assert addresses(ask(asker, f"n{i}")) == [f"10.41.0.{3 + i}"]
        assert addresses(ask(asker, "twin")) == [f"10.41.0.{3 + j}" for j in range(i + 1)]
    cli("disconnect", "front", "n0", check=True)
    assert ask(asker, "n0").header.rcode == RCODE.NXDOMAIN
    cli("rm", "n1", check=True)
    assert ask(asker, "n1").header.rcode == RCODE.NXDOMAIN
    assert addresses(ask(asker, "twin")) == ["10.41.0.5"]


def test_the_agent_comes_with_the_first_sandbox_and_goes_with_the_last_sandbox_and_network(
        cli: Cli, host: str, state_dir: Path) -> None:
    cli("network", "create", "front", "--subnet", "10.41.0.0/24", check=True)
    assert agent_of(state_dir, host) is None  # a network alone needs no names
    cli("run", "--name", "a", "--network", "front", check=True)
    agent = agent_of(state_dir, host)
    assert agent is not None and agent.alive()
    cli("run", "--name", "b", "--network", "front", check=True)
    assert agent_of(state_dir, host) == agent  # one per host
    cli("rm", "a", "b", check=True)
    assert agent.alive()  # the network is still there
    cli("network", "rm", "front", check=True)
    assert not agent.alive() and agent_of(state_dir, host) is None
    assert not dnsctl.socket_path(state_dir, host).exists()
    cli("run", "--name", "c", "--network", "none", check=True)  # again, for a sandbox with no network at all
    again = agent_of(state_dir, host)
    assert again is not None and again.alive() and again != agent
    cli("rm", "c", check=True)
    assert not again.alive()


def test_a_killed_agent_is_started_again_and_serves_every_sandbox_again(cli: Cli, host: str,
                                                                        state_dir: Path) -> None:
    cli("network", "create", "front", "--subnet", "10.41.0.0/24", check=True)
    cli("run", "--name", "a", "--network", "front", "--alias", "web", check=True)
    cli("run", "--name", "b", "--network", "front", check=True)
    agent = agent_of(state_dir, host)
    assert agent is not None
    os.kill(agent.pid, signal.SIGKILL)  # our own child's child, by its recorded pid
    wait_for("the agent gone", lambda: not agent.alive())
    assert getent(cli, "b", "web") == ["10.41.0.2", "web"]  # exec started a new one: its restart list had a
    again = agent_of(state_dir, host)
    assert again is not None and again != agent


def test_an_agent_the_user_starts_takes_over_and_is_left_running(cli: Cli, host: str, state_dir: Path) -> None:
    cli("network", "create", "front", "--subnet", "10.41.0.0/24", check=True)
    cli("run", "--name", "a", "--network", "front", check=True)
    on_demand = agent_of(state_dir, host)
    assert on_demand is not None
    mine = subprocess.Popen(cli.argv("agent"), env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for("the on-demand agent gone", lambda: not on_demand.alive())
        wait_for("the user's agent serving", lambda: getent(cli, "a", "a") == ["10.41.0.2", "a"])
        assert agent_of(state_dir, host) is None
        cli("rm", "a", check=True)
        cli("network", "rm", "front", check=True)
        assert mine.poll() is None  # the user's: not ours to stop
    finally:
        mine.terminate()
        mine.wait(timeout=10)
        if mine.stderr:
            mine.stderr.close()


def test_an_agent_whose_host_namespace_is_deleted_stops_by_itself(make_netns: Callable[[str], str],
                                                                   state_dir: Path) -> None:
    host = make_netns("h")
    eng = Engine(host_netns=host, state_dir=state_dir)
    _instances.add(eng.ctx.instance)
    netns_path = Path("/run/netns/none")
    try:
        eng.create_sandbox(SandboxSpec.parse("a"))
        netns_path = eng.netns_path("a")
        agent = agent_of(state_dir, host)
        assert agent is not None
        subprocess.run(["ip", "netns", "del", host], check=True)  # a test, or a user, gone without cleaning up
        wait_for("the agent gone", lambda: not agent.alive())
    finally:
        eng.close()
        subprocess.run(["ip", "netns", "del", netns_path.name], check=False)
        mountns.remove_etc_dir(netns_path.name)  # what its rm would have removed


def test_sandboxes_on_an_overlay_network_resolve_across_hosts(state_dir: Path) -> None:
    raw = {"name": unique("n"), "hosts": ["h1", "h2"],
           "networks": {"mesh": {"driver": "overlay", "subnet": "10.83.0.0/24"}},
           "sandboxes": {"a1": {"host": "h1", "networks": {"mesh": {"aliases": ["api"]}}, "hostname": "alpha"},
                         "b1": {"host": "h2", "networks": ["mesh"]}}}
    with Lab(resolve(raw, "names-lab.yaml"), state_dir=state_dir, agent_ttl=5.0) as lab:
        for host in lab.topology.hosts:
            _instances.add(lab.engine(host).ctx.instance)
        b1, a1 = lab.sandbox("b1").netns, lab.sandbox("a1").netns
        wait_for("a1's names on h2", lambda: addresses(ask(b1, "api")) == ["10.83.0.2"])
        assert addresses(ask(b1, "alpha")) == addresses(ask(b1, "a1.mesh")) == ["10.83.0.2"]
        assert sh(b1, "getent", "hosts", "a1").stdout.split() == ["10.83.0.2", "a1"]
        wait_for("b1's name on h1", lambda: addresses(ask(a1, "b1")) == ["10.83.0.3"])
        h2 = lab.engine("h2")
        h2.create_sandbox(SandboxSpec.parse("c1", [EndpointRequest.parse("mesh", aliases=["api"])]))
        wait_for("c1 under the shared alias on h1", lambda: addresses(ask(a1, "api")) == ["10.83.0.2", "10.83.0.4"])
        h2.remove_sandbox("c1")
        wait_for("c1 gone on h1", lambda: addresses(ask(a1, "api")) == ["10.83.0.2"])


def test_an_adopted_namespace_gets_names_and_exec_sees_them(engine: Engine, make_netns: Callable[[str], str],
                                                            upstream: str) -> None:
    engine.create_network(NetworkSpec.parse("front", subnet="10.41.0.0/24"))
    engine.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("front", aliases=["web"])]))
    theirs = make_netns("x")  # a container's namespace, say
    box = engine.adopt("ext", netns_path=f"/run/netns/{theirs}", networks=[EndpointRequest.parse("front")])
    assert addresses(ask(engine.sandbox("a").netns, "ext")) == [str(box.endpoints[0].ip)]
    assert engine.execute("ext", ["getent", "hosts", "web"]) == 0  # through its /etc/netns file
    engine.remove_sandbox("ext")
    assert ask(engine.sandbox("a").netns, "ext").header.rcode == RCODE.NXDOMAIN
