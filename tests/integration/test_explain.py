"""``--explain`` is true: its printed commands, replayed by hand, build exactly what overlays built.

How the replay stays honest about names. Sandbox namespaces (``ov-<instance>-<name>``)
and the host namespace are global to the machine, and the printed commands name them.
So the commands are replayed as printed, not rewritten: after overlays has built each
step (and the kernel state after it was read), everything it built is removed, the host
namespace included, a fresh host namespace of the same name takes its place, and the
printed output of each step runs in turn through ``bash -e``; after each, the state read
with ``ip``, ``bridge`` and ``nft`` must equal the state overlays left at that step.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from overlays import Engine

from .conftest import Cli, stop_agent, unique
from .kernel_state import netns_names, snapshot

SETTLE = 5.0  # seconds the kernel may take to free a deleted namespace's veths


def replay(script: str, where: Path) -> None:
    where.write_text(script)
    done = subprocess.run(["bash", "-e", str(where)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"replaying failed: {done.stderr}\n--- script ---\n{script}"


def same_state(want: dict[str, Any], read: Callable[[], dict[str, Any]]) -> None:
    """The replayed state equals ``want`` (the kernel frees a dead namespace's veths a little later)."""
    deadline = time.monotonic() + SETTLE
    have = read()
    while have != want and time.monotonic() < deadline:
        time.sleep(0.05)
        have = read()
    if have != want:
        for ns in sorted(set(want) | set(have)):
            for part in sorted(set(want.get(ns, {})) | set(have.get(ns, {}))):
                w, h = want.get(ns, {}).get(part), have.get(ns, {}).get(part)
                assert w == h, f"{ns} {part} differs:\n by overlays: {w}\n by hand:     {h}"
    assert have == want


def fresh_namespace(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


def remove_namespaces(names: list[str]) -> None:
    for name in names:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_explained_steps_replayed_by_hand_build_the_same_kernel_state(cli: Cli, host: str, state_dir: Path,
                                                                       tmp_path: Path) -> None:
    instance = Engine(host_netns=host, state_dir=state_dir).instance
    prefixes = (f"ov-{instance}-",)
    steps = [
        ("network", "create", "front", "--subnet", "10.51.0.0/24", "--subnet", "fd00:51::/64"),  # dual-stack
        ("network", "create", "back", "--subnet", "10.52.0.0/24", "--internal"),
        ("run", "--name", "web", "--network", "front", "-p", "8080:80", "-p", "127.0.0.1:5353:53/udp"),
        ("run", "--name", "a", "--network", "front"),
        ("connect", "back", "a"),
        ("connect", "back", "web"),
        ("rm", "web"),
        ("disconnect", "front", "a"),
        ("network", "rm", "front"),
    ]
    printed, states = [], []
    for step in steps:
        done = cli("--explain", *step, check=True)
        assert "ip " in done.stdout or "nft" in done.stdout, f"{step} printed no command: {done.stdout}"
        printed.append(done.stdout)
        states.append(snapshot([host], prefixes))
    assert "ip netns add" in printed[2] and "veth peer name eth0" in printed[2] and "publish_any_tcp" in printed[2]
    assert "ip netns del" in printed[6]
    assert "addr add fd00:51::2/64 dev eth0 nodad" in printed[2] and "-6 route add default via fd00:51::1" in printed[2]
    assert "sysctl -w net.ipv6.conf.all.forwarding=1" in printed[0]

    stop_agent(host, state_dir)  # else it follows its host to the fresh namespace and heals our table there
    remove_namespaces([*netns_names(prefixes), host])
    fresh_namespace(host)
    try:
        for number, (out, want) in enumerate(zip(printed, states, strict=True)):
            replay(out, tmp_path / f"step{number}.sh")
            same_state(want, lambda: snapshot([host], prefixes))
    finally:
        remove_namespaces(netns_names(prefixes))  # what the replay made (overlays' records name the originals)


# -- an overlay network on two simulated hosts ------------------------------------------------------------------------

UNDERLAY = "10.253.{}.0/24"


def build_underlay(fabric: str, hosts: list[str], net: int) -> None:
    """A switch namespace and one veth per host into it: what a lab's fabric is, made the same way twice.

    Its links make no IPv6 addresses: their duplicate address detection would still be running
    when the state is read, on one side and not the other.
    """
    for ns in (fabric, *hosts):
        fresh_namespace(ns)
    subprocess.run(["ip", "-n", fabric, "link", "add", "sw0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", fabric, "link", "set", "sw0", "addrgenmode", "none"], check=True)
    subprocess.run(["ip", "-n", fabric, "link", "set", "sw0", "up"], check=True)
    for number, ns in enumerate(hosts, start=11):
        port = f"p{number}"
        subprocess.run(["ip", "-n", fabric, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns],
                       check=True)
        subprocess.run(["ip", "-n", fabric, "link", "set", port, "addrgenmode", "none"], check=True)
        subprocess.run(["ip", "-n", fabric, "link", "set", port, "master", "sw0", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "address", f"02:aa:00:00:{net:02x}:{number:02x}",
                        "addrgenmode", "none"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"10.253.{net}.{number}/24", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)


class AgentProcess:
    """``overlays --explain agent`` on one host, its printed steps read phase by phase."""

    def __init__(self, cli: Cli, out: Path) -> None:
        self.out = out
        self._seen = 0
        with open(out, "w") as stdout:
            self.proc = subprocess.Popen(cli.argv("--explain", "agent", "--ttl", "5", "--resync", "3600"),
                                         env=cli.env, stdout=stdout, stderr=subprocess.DEVNULL)

    def new_steps(self) -> str:
        text = self.out.read_text()
        fresh, self._seen = text[self._seen:], len(text)
        return fresh

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class TwoHosts:
    def __init__(self, tmp_path: Path) -> None:
        tag = unique("x")
        self.fabric, self.hosts = f"{tag}f", [f"{tag}1", f"{tag}2"]
        self.net = int(tag[-5:-1], 16) % 200 + 20
        store = str(tmp_path / "lab.db")
        self.clis = {}
        for h in self.hosts:
            c = Cli(h, tmp_path / f"state-{h}")
            c.env["OVERLAYS_STORE"] = store
            self.clis[h] = c

    def build(self) -> None:
        build_underlay(self.fabric, self.hosts, self.net)

    def prefixes(self) -> tuple[str, ...]:
        return tuple(f"ov-{self.engine(h).instance}-" for h in self.hosts)

    def engine(self, host: str) -> Engine:
        return Engine(host_netns=host, state_dir=Path(self.clis[host].env["OVERLAYS_STATE_DIR"]),
                      store_url=self.clis[host].env["OVERLAYS_STORE"])


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[TwoHosts]:
    lab = TwoHosts(tmp_path)
    lab.build()
    try:
        yield lab
    finally:
        for c in lab.clis.values():
            c("rm", "-f", "a", "a2", "b")
        lab.clis[lab.hosts[0]]("network", "rm", "-f", "mesh")
        remove_namespaces([*netns_names(lab.prefixes()), *lab.hosts, lab.fabric])


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 15
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def converged(lab: TwoHosts) -> None:
    for h in lab.hosts:
        with lab.engine(h) as engine:
            wait_until(engine.overlay_converged, f"host {h} did not converge")
    time.sleep(0.2)  # an agent prints a step just after making it


def test_explained_overlay_on_two_hosts_replays_to_the_same_state(two_hosts: TwoHosts, tmp_path: Path) -> None:
    lab = two_hosts
    h1, h2 = lab.hosts
    agents = {h: AgentProcess(lab.clis[h], tmp_path / f"agent-{h}.out") for h in lab.hosts}
    prefixes = lab.prefixes()
    try:
        for h in lab.hosts:
            with lab.engine(h) as engine:
                wait_until(lambda engine=engine: engine.registered() is not None,  # type: ignore[misc]
                           f"the agent of {h} did not register")
        phases = [
            (h1, ("network", "create", "--driver", "overlay", "mesh", "--subnet", "10.81.0.0/24")),
            (h1, ("run", "--name", "a", "--network", "mesh")),
            (h2, ("run", "--name", "b", "--network", "mesh")),
            (h1, ("run", "--name", "a2", "--network", "mesh")),
            (h2, ("rm", "b")),
        ]
        printed, states = [], []
        for where, step in phases:
            out = lab.clis[where]("--explain", *step, check=True).stdout
            converged(lab)
            printed.append(out + "".join(agents[h].new_steps() for h in lab.hosts))
            states.append(snapshot([lab.fabric, *lab.hosts], prefixes))
        assert "type vxlan id" in printed[1] and "bridge -n" in printed[2] + printed[3]
        assert "link del" in printed[4]
    finally:
        for agent in agents.values():
            agent.stop()

    remove_namespaces([*netns_names(prefixes), *lab.hosts, lab.fabric])
    lab.build()
    for number, (out, want) in enumerate(zip(printed, states, strict=True)):
        replay(out, tmp_path / f"phase{number}.sh")
        same_state(want, lambda: snapshot([lab.fabric, *lab.hosts], prefixes))
