"""Overlay networks across simulated hosts: reachability, MTU, agent restarts, host loss, global IPAM."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlays import EndpointRequest, SandboxSpec
from overlays.drivers import fabric
from overlays.kernel import process
from overlays.topology import Lab, resolve

from .conftest import _instances, ip_json, sh, unique

LAB: dict[str, Any] = {
    "hosts": ["h1", "h2", "h3"],
    "networks": {"mesh": {"driver": "overlay", "subnet": "10.81.0.0/24"}},
    "sandboxes": {"a1": {"host": "h1", "networks": ["mesh"]}, "a2": {"host": "h1", "networks": ["mesh"]},
                  "b1": {"host": "h2", "networks": ["mesh"]}, "c1": {"host": "h3", "networks": ["mesh"]}},
}


def make_lab(raw: dict[str, Any], state_dir: Path, **kwargs: Any) -> Lab:
    raw = copy.deepcopy(raw)
    raw.setdefault("name", unique("v"))
    lab = Lab(resolve(raw, "overlay-test.yaml"), state_dir=state_dir, **kwargs)
    _instances.add(lab.main.ctx.instance)
    return lab


@pytest.fixture
def lab(state_dir: Path) -> Iterator[Lab]:
    lab = make_lab(LAB, state_dir, agent_ttl=5.0)
    try:
        lab.up()
        for host in lab.topology.hosts:
            _instances.add(lab.engine(host).ctx.instance)
        yield lab
    finally:
        lab.down()
        lab.close()


def fdb(lab: Lab, host: str) -> set[tuple[str, str]]:
    out = subprocess.run(["bridge", "-j", "-n", fabric.netns_of(lab.name, host), "fdb", "show", "dev", "ovx-mesh"],
                         capture_output=True, text=True, check=True).stdout
    return {(e["mac"], e["dst"]) for e in json.loads(out or "[]") if "dst" in e}


def expected_fdb(lab: Lab, host: str) -> set[tuple[str, str]]:
    """What the store says ``host`` must have: each remote endpoint's MAC, and a flood entry per remote host."""
    mine = lab.host_address(host)
    regs = [e.value for e in lab.main.ctx.store.range("overlay/mesh/")]
    remote = [r for r in regs if r["vtep"] != mine]
    return {(r["mac"], r["vtep"]) for r in remote} | {("00:00:00:00:00:00", r["vtep"]) for r in remote}


def wait_for(condition: Any, timeout: float, step: float = 0.05) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start


def eventually_pings(netns: str, address: str, timeout: float = 10) -> bool:
    """The control plane is eventually consistent: FDB first, then neighbours, maybe a moment apart."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sh(netns, "ping", "-c1", "-W1", address, check=False).returncode == 0:
            return True
    return False


def agent_pid(lab: Lab, host: str) -> int:
    return lab.record().agents[host][0]


def kill_agent(lab: Lab, host: str) -> None:
    """SIGKILL the host's agent and wait until it is gone (a loaded machine takes a moment to end it)."""
    from overlays.kernel import process

    pid, started = lab.record().agents[host]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not process.alive(pid, started), timeout=10)


def test_every_sandbox_reaches_every_other_across_hosts(lab: Lab) -> None:
    report = lab.check()
    assert report.passed, report.matrix()
    assert len([p for p in report.probes if p.kind == "reach"]) == 12
    for host in lab.topology.hosts:
        assert fdb(lab, host) == expected_fdb(lab, host)
    assert lab.plan() == []


def test_mtu_is_the_underlay_minus_vxlan_and_big_packets_fail_loudly(lab: Lab) -> None:
    net, users = lab.engine("h1").network("mesh")
    assert net.mtu == 1450 and len(users) == 4
    a1 = lab.sandbox("a1")
    c1 = lab.sandbox("c1")
    assert a1.endpoints[0].mtu == 1450
    assert sh(a1.netns, "ping", "-c1", "-W1", "-M", "do", "-s", "1422", str(c1.endpoints[0].ip)).returncode == 0
    big = sh(a1.netns, "ping", "-c1", "-W1", "-M", "do", "-s", "1472", str(c1.endpoints[0].ip), check=False)
    assert big.returncode != 0
    assert "message too long, mtu=1450" in big.stdout + big.stderr


def test_bridged_traffic_skips_the_ip_hooks_on_every_lab_bridge(lab: Lab) -> None:
    """Hosts bridge sandbox <-> VXLAN and the fabric switches VXLAN packets: no IP firewall hook on either."""
    for role in ["fabric", *lab.topology.hosts]:
        for family in ("iptables", "ip6tables", "arptables"):
            out = subprocess.run(["ip", "netns", "exec", fabric.netns_of(lab.name, role), "sysctl", "-n",
                                  f"net.bridge.bridge-nf-call-{family}"], capture_output=True, text=True, check=True)
            assert out.stdout.strip() == "0", (role, family)


def test_killed_agent_resyncs_with_no_stale_and_no_missing_entries(lab: Lab) -> None:
    kill_agent(lab, "h2")
    # While it is dead: an entry removed by hand on h2, and a new sandbox on h3.
    victim = next(iter(fdb(lab, "h2")))
    subprocess.run(["bridge", "-n", fabric.netns_of(lab.name, "h2"), "fdb", "del", victim[0], "dev", "ovx-mesh",
                    "dst", victim[1], "self"], check=True)
    from overlays import EndpointRequest, SandboxSpec

    lab.engine("h3").create_sandbox(SandboxSpec.parse("late", [EndpointRequest.parse("mesh")]))
    try:
        assert fdb(lab, "h2") != expected_fdb(lab, "h2")
        assert [str(a) for a in lab.plan()] == ["start agent h2"]
        lab.up()
        wait_for(lambda: fdb(lab, "h2") == expected_fdb(lab, "h2"), timeout=5)
        late = lab.engine("h3").sandbox("late")
        assert eventually_pings(lab.sandbox("b1").netns, str(late.endpoints[0].ip))
    finally:
        lab.engine("h3").remove_sandbox("late", force=True)
    wait_for(lambda: all(fdb(lab, h) == expected_fdb(lab, h) for h in ("h1", "h2")), timeout=5)


def test_a_host_that_disappears_is_removed_everywhere_within_its_lease(lab: Lab) -> None:
    h3_vtep = lab.host_address("h3")
    assert any(dst == h3_vtep for _, dst in fdb(lab, "h1"))
    kill_agent(lab, "h3")
    subprocess.run(["ip", "netns", "del", fabric.netns_of(lab.name, "h3")], check=True)
    gone = lambda: all(dst != h3_vtep for h in ("h1", "h2") for _, dst in fdb(lab, h))  # noqa: E731
    took = wait_for(gone, timeout=lab.agent_ttl + 3)
    assert took <= lab.agent_ttl + 2.5
    assert lab.check().failures(), "c1 is gone with its host"
    lab.up()  # brings h3 back, with its agent and sandbox
    report = lab.check()
    assert report.passed, report.matrix()


def test_sixty_concurrent_runs_on_three_hosts_get_sixty_addresses(lab: Lab, state_dir: Path) -> None:
    procs = []
    for host in lab.topology.hosts:
        eng = lab.engine(host)
        env = dict(os.environ, OVERLAYS_STATE_DIR=str(state_dir), OVERLAYS_STORE=lab.store_url,
                   OVERLAYS_NODE=eng.ctx.node, OVERLAYS_HOST_NETNS=eng.ctx.host_netns or "")
        for i in range(20):
            procs.append(subprocess.Popen([sys.executable, "-m", "overlays", "run", "--name", f"x{host}{i}",
                                           "--network", "mesh"], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results if r[1]]
    ips = [e.value["ip"] for e in lab.main.ctx.store.range("overlay/mesh/")]
    assert len(ips) == 64 and len(set(ips)) == 64
    # The control plane is eventually consistent: every agent converges to the store.
    wait_for(lambda: all(fdb(lab, h) == expected_fdb(lab, h) for h in lab.topology.hosts), timeout=30, step=0.2)
    far = lab.engine("h3").sandbox("xh319").endpoints[0].ip
    assert eventually_pings(lab.engine("h1").sandbox("xh10").netns, str(far))
    for host in lab.topology.hosts:
        for i in range(20):
            lab.engine(host).remove_sandbox(f"x{host}{i}")


def test_overlay_needs_an_agent_and_refuses_removal_while_used(lab: Lab, make_netns: Any, tmp_path: Path) -> None:
    from overlays import Conflict, EndpointRequest, Engine, NotFound, SandboxSpec

    lonely = Engine(host_netns=make_netns("n"), state_dir=tmp_path, store_url=lab.store_url, node=unique("n"))
    _instances.add(lonely.ctx.instance)
    try:
        with pytest.raises(NotFound, match="no overlays agent runs for host"):
            lonely.create_sandbox(SandboxSpec.parse("s", [EndpointRequest.parse("mesh")]))
        assert lonely.sandboxes() == []
        with pytest.raises(Conflict, match=r"mesh has 4 sandbox\(es\) attached \(.*h1/a1"):
            lonely.remove_network("mesh")
        with pytest.raises(Conflict, match="still has sandboxes on other hosts"):
            lonely.remove_network("mesh", force=True)
        # --force from a host with sandboxes of its own: refused before anything is disconnected.
        with pytest.raises(Conflict, match=r"still has sandboxes on other hosts \(.*h2/b1"):
            lab.engine("h1").remove_network("mesh", force=True)
        assert [e.network for e in lab.sandbox("a1").endpoints] == ["mesh"]
    finally:
        lonely.close()
    assert process.alive(agent_pid(lab, "h1"), lab.record().agents["h1"][1])


def test_a_peer_asked_for_before_its_host_programmed_it_answers_the_first_arp(state_dir: Path) -> None:
    """The race behind overlay convergence: a sandbox asks for a new remote endpoint before its own host's
    agent has programmed it, so the VXLAN device drops that ARP request. The agent's announcement, once it
    programs the entry, answers the waiting sandbox; Linux's own retry (after retrans_time, 1 s by default)
    is not needed. Here retrans_time is an hour, so only the announcement can answer within the test."""
    raw = copy.deepcopy(LAB)
    raw["name"] = "cv" + unique("v")[2:]  # this test's namespaces carry the cv prefix
    raw["hosts"] = ["h1", "h2"]
    raw["sandboxes"] = {"a1": {"host": "h1", "networks": ["mesh"]}, "b1": {"host": "h2", "networks": ["mesh"]}}
    lab = make_lab(raw, state_dir, agent_ttl=5.0)
    try:
        lab.up()
        b1 = lab.sandbox("b1")
        inside = b1.endpoints[0].ifname
        sh(b1.netns, "sysctl", "-qw", f"net.ipv4.neigh.{inside}.retrans_time_ms=3600000")
        agent = agent_pid(lab, "h2")
        os.kill(agent, signal.SIGSTOP)  # h2 will learn of the new sandbox only once it goes on
        try:
            late = lab.engine("h1").create_sandbox(SandboxSpec.parse("late", [EndpointRequest.parse("mesh")]))
            address = str(late.endpoints[0].ip)
            ping = subprocess.Popen(["ip", "netns", "exec", b1.netns, "ping", "-c1", "-W30", address],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            def asking() -> bool:
                return any(n.get("state") == ["INCOMPLETE"] for n in ip_json(b1.netns, "neigh", "show", address))

            wait_for(asking, 10)  # its first ARP request left, and went unanswered
            assert address not in vxlan_neighbours(lab, "h2")
        finally:
            os.kill(agent, signal.SIGCONT)
        try:
            assert ping.wait(timeout=40) == 0, "the echo request waiting on ARP was never answered"
        finally:
            if ping.poll() is None:
                ping.kill()
                ping.wait()
        assert [n["lladdr"] for n in ip_json(b1.netns, "neigh", "show", address)] == [late.endpoints[0].mac]
    finally:
        lab.down()
        lab.close()


def vxlan_neighbours(lab: Lab, host: str) -> set[str]:
    return {str(n["dst"]) for n in ip_json(fabric.netns_of(lab.name, host), "neigh", "show", "dev", "ovx-mesh")}
