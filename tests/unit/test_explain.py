"""--explain on the fake kernel: each step's command, in order, and nothing for a step that changed nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlays import EndpointRequest, Engine, NetworkSpec, SandboxSpec
from overlays.errors import KernelError
from overlays.kernel.explain import Explaining, Recorder, Where, nft_command
from overlays.kernel.rtnl_types import Link
from overlays.model import parse_publish
from overlays.store import MemoryStore
from overlays.view import operations

from .fakes import FakeKernel, FakeLinks

HOST = "fakehost"


def explaining(tmp_path: Path, kernel: FakeKernel | None = None) -> tuple[Engine, Recorder, FakeKernel]:
    kernel = kernel or FakeKernel(HOST)
    recorder = Recorder()
    eng = Engine(host_netns=HOST, state_dir=tmp_path, store=MemoryStore(), node=HOST, check_root=False,
                 kernel=Explaining(kernel, recorder))  # type: ignore[arg-type]
    return eng, recorder, kernel


def test_each_step_of_create_connect_and_remove_says_its_command_in_order(tmp_path: Path) -> None:
    eng, rec, _ = explaining(tmp_path)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    made = rec.take()
    mac, alias = made[0].split(" address ")[1].split()[0], f"overlays:{eng.instance}:network=front"
    assert made[:4] == [
        f"ip -n {HOST} link add ovb-front mtu 1500 address {mac} type bridge",
        f"ip -n {HOST} link set ovb-front alias {alias} addrgenmode none",
        f"ip -n {HOST} link set ovb-front up",
        f"ip -n {HOST} addr add 10.1.0.1/24 dev ovb-front",
    ]
    assert made[4:6] == [f"ip netns exec {HOST} sysctl -w net.ipv4.ip_forward=1",
                         f"ip netns exec {HOST} sysctl -w net/ipv4/conf/ovb-front/route_localnet=1"]
    assert made[6].startswith(f"ip netns exec {HOST} nft -f - <<'EOF'\nadd table inet overlays_{eng.instance}\n")
    assert made[6].endswith("\nEOF") and len(made) == 7  # bridge-nf-call-* were 0 already: nothing said

    eng.create_sandbox(SandboxSpec.parse("web", [EndpointRequest.parse("front")], ports=parse_publish("8080:80")))
    box = eng.sandbox("web")
    ns, veth, ep = box.netns, box.endpoints[0].host_ifname, box.endpoints[0]
    assert rec.take() == [
        f"ip netns add {ns}",
        f"ip -n {ns} link set lo up",
        f"ip -n {HOST} link add {veth} mtu 1500 type veth peer name eth0 mtu 1500 address {ep.mac} netns {ns}",
        f"ip -n {HOST} link set {veth} alias overlays:{eng.instance}:sandbox=web,network=front addrgenmode none",
        f"ip -n {HOST} link set {veth} master ovb-front up",
        f"ip -n {ns} addr add {ep.ip}/24 dev eth0",
        f"ip -n {ns} link set eth0 addrgenmode none",
        f"ip -n {ns} link set eth0 up",
        f"ip -n {ns} route add default via 10.1.0.1 proto static",
        f"ip netns exec {HOST} nft 'add element inet overlays_{eng.instance} publish_any_tcp "
        f"{{ 8080 : {ep.ip} . 80 }}'",
    ]

    eng.remove_sandbox("web")
    removed = rec.take()
    assert removed[-1] == f"ip netns del {ns}" and "delete element" in removed[0]
    eng.remove_network("front")
    assert rec.take()[-2:] == [f"ip netns exec {HOST} nft 'delete table inet overlays_{eng.instance}'",
                               f"ip -n {HOST} link del ovb-front"]


def test_a_step_that_changed_nothing_says_nothing(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    rec = Recorder()
    k = Explaining(kernel, rec)
    with k.open(HOST) as host:
        host.ensure_bridge("br0", "ours", 1500, "02:00:00:00:00:01")
        rec.take()
        host.ensure_bridge("br0", "ours", 1500, "02:00:00:00:00:01")  # there, up, with its MAC
        host.ensure_address("br0", "10.0.0.1", 24)
        host.ensure_address("br0", "10.0.0.1", 24)
        host.ensure_up("br0")
        host.delete_link("nosuch")
        host.ensure_default_route("10.0.0.254")
        host.ensure_default_route("10.0.0.9")  # one is there: kept
    k.set_sysctl(HOST, "net.ipv4.ip_forward", "1")
    k.set_sysctl(HOST, "net.ipv4.ip_forward", "1")
    k.delete_netns("nosuch")
    k.nft_delete_table(HOST, "inet", "nosuch")
    assert rec.take() == [f"ip -n {HOST} addr add 10.0.0.1/24 dev br0",
                          f"ip -n {HOST} route add default via 10.0.0.254 proto static",
                          f"ip netns exec {HOST} sysctl -w net.ipv4.ip_forward=1"]


class HalfBuilt(FakeLinks):
    """Makes the bridge, then fails before bringing it up (as a tag or up request refused would)."""

    def ensure_bridge(self, name: str, alias: str, mtu: int, mac: str) -> None:
        self.ns.links[name] = Link(self.kernel.index(), name, "bridge", mac, mtu, None, False, None)
        raise KernelError("bring up", name, self.netns, "injected")


class HalfKernel(FakeKernel):
    def open(self, netns: str | None) -> FakeLinks:
        return HalfBuilt(self, netns)


def test_a_step_that_failed_halfway_says_what_it_did_get_done(tmp_path: Path) -> None:
    rec = Recorder()
    k = Explaining(HalfKernel(HOST), rec)
    with k.open(HOST) as host, pytest.raises(KernelError):
        host.ensure_bridge("br0", "ours", 1500, "02:00:00:00:00:01")
    assert rec.take() == [f"ip -n {HOST} link add br0 mtu 1500 address 02:00:00:00:00:01 type bridge"]


def test_overlay_entries_say_bridge_fdb_and_ip_neigh(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    rec = Recorder()
    with Explaining(kernel, rec).open(HOST) as host:
        host.ns.links["eth0"] = Link(2, "eth0", "veth", "", 1500, None, True, None)  # type: ignore[attr-defined]
        host.ensure_vxlan("ovx-m", "ours", 4242, "10.254.0.11", "eth0", 1450)
        host.ensure_fdb("ovx-m", "00:00:00:00:00:00", "10.254.0.12")
        host.ensure_fdb("ovx-m", "02:6F:0A:50:00:03", "10.254.0.12")
        host.ensure_fdb("ovx-m", "02:6f:0a:50:00:03", "10.254.0.12")  # the same entry again
        host.ensure_neigh("ovx-m", "10.80.0.3", "02:6f:0a:50:00:03")
        host.delete_neigh("ovx-m", "10.80.0.3")
        host.delete_fdb("ovx-m", "02:6f:0a:50:00:03", "10.254.0.12")
        host.delete_fdb("ovx-m", "02:6f:0a:50:00:03", "10.254.0.12")
    assert rec.take() == [
        f"ip -n {HOST} link add ovx-m mtu 1450 type vxlan id 4242 local 10.254.0.11 dev eth0 dstport 4789"
        " nolearning proxy",
        f"ip -n {HOST} link set ovx-m alias ours addrgenmode none",
        f"ip -n {HOST} link set ovx-m up",
        f"bridge -n {HOST} fdb append 00:00:00:00:00:00 dev ovx-m dst 10.254.0.12 self permanent",
        f"bridge -n {HOST} fdb replace 02:6f:0a:50:00:03 dev ovx-m dst 10.254.0.12 self permanent",
        f"ip -n {HOST} neigh replace 10.80.0.3 lladdr 02:6f:0a:50:00:03 dev ovx-m nud permanent",
        f"ip -n {HOST} neigh del 10.80.0.3 dev ovx-m",
        f"bridge -n {HOST} fdb del 02:6f:0a:50:00:03 dev ovx-m dst 10.254.0.12 self",
    ]


def test_namespaces_are_named_as_ip_names_them() -> None:
    assert Where().tool("ip") == "ip" and Where().run("sysctl -w a=1") == "sysctl -w a=1"
    assert Where.of_path(Path("/run/netns/ov-1-web")) == Where(name="ov-1-web")
    pid = Where.of_path(Path("/proc/4242/ns/net"))
    assert pid.tool("ip") == "nsenter --net=/proc/4242/ns/net ip" and pid.as_peer() == "4242"
    odd = Where.of_path(Path("/var/run/cni/my ns"))
    assert odd.run("nft 'x'") == "nsenter --net='/var/run/cni/my ns' nft 'x'"
    assert nft_command(Where("h"), "add element inet t s { \"a\" }\n") == \
        "ip netns exec h nft 'add element inet t s { \"a\" }'"
    assert nft_command(Where(), "add table inet t\ndelete table inet t\n") == \
        "nft -f - <<'EOF'\nadd table inet t\ndelete table inet t\nEOF"


def test_the_journal_keeps_operations_newest_first_and_stays_short(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    operations.append(tmp_path, "h1", "overlays network create front", ["ip link add ovb-front type bridge"])
    operations.append(tmp_path, "h1", "overlays run --name a", [], error="network x does not exist")
    with open(operations.journal_path(tmp_path, "h1"), "a") as f:
        f.write('{"time": "soon", "lines": "not a list"}\nnot json\n')
    operations.append(tmp_path, "h2", "another host's", ["x"])
    found = operations.recent(tmp_path, "h1")
    assert [op.command for op in found] == ["overlays run --name a", "overlays network create front"]
    assert found[0].error == "network x does not exist" and not found[0].ok
    assert found[1].to_json()["lines"] == ["ip link add ovb-front type bridge"]

    operations.append(tmp_path, "h3", "overlays up -f big.yaml", [f"line {i}" for i in range(1000)])
    (big,) = operations.recent(tmp_path, "h3")
    assert len(big.lines) == operations.MAX_LINES + 1 and big.lines[-1].startswith("# ... and 600 more")

    monkeypatch.setattr(operations, "MAX_BYTES", 2000)
    for i in range(100):
        operations.append(tmp_path, "h4", f"op {i}", ["ip link set x up"])
    kept = operations.recent(tmp_path, "h4", limit=1000)
    assert len(kept) == operations.KEEP and kept[0].command == "op 99"  # compacted at every append past 2000


def test_what_the_recording_made_is_forgotten_when_it_is_deleted(tmp_path: Path) -> None:
    """A name made, deleted, and made again by someone else is read again, not assumed bare."""
    kernel = FakeKernel(HOST)
    rec = Recorder()
    k = Explaining(kernel, rec)
    with k.open(HOST) as host:
        host.ensure_bridge("br0", "ours", 1500, "02:00:00:00:00:01")
        host.delete_link("br0")
        kernel.open(HOST).ensure_bridge("br0", "ours", 1500, "02:00:00:00:00:01")  # not through the recorder
        kernel.open(HOST).ensure_address("br0", "10.0.0.1", 24)
        rec.take()
        host.ensure_address("br0", "10.0.0.1", 24)
    assert rec.take() == []
