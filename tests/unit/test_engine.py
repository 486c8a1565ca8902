"""The engine on a fake kernel and a memory store: semantics and rollback at every step."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from overlays import Conflict, EndpointRequest, Engine, KernelError, NetworkSpec, NotFound, SandboxSpec
from overlays.kernel.faults import FaultyKernel
from overlays.store import MemoryStore

from .fakes import FakeKernel, object_records

HOST = "fakehost"


def make_engine(tmp_path: Path, kernel: object | None = None, store: MemoryStore | None = None) -> Engine:
    return Engine(host_netns=HOST, state_dir=tmp_path, store=store or MemoryStore(),
                  kernel=kernel or FakeKernel(HOST), check_root=False)  # type: ignore[arg-type]


def sandbox(name: str, *nets: str) -> SandboxSpec:
    return SandboxSpec.parse(name, [EndpointRequest.parse(n) for n in nets])


def test_network_gets_a_bridge_holding_the_gateway(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    eng = make_engine(tmp_path, kernel)
    net = eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    host = kernel.namespaces[HOST]
    assert host.links[net.bridge].kind == "bridge"
    assert host.addrs[net.bridge] == {("10.1.0.1", 24)}


def test_sandboxes_get_distinct_addresses_and_a_default_route(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    eng = make_engine(tmp_path, kernel)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    a = eng.create_sandbox(sandbox("a", "front"))
    b = eng.create_sandbox(sandbox("b", "front"))
    assert [str(a.endpoints[0].ip), str(b.endpoints[0].ip)] == ["10.1.0.2", "10.1.0.3"]
    inside = kernel.namespaces[a.netns]
    assert inside.links["eth0"].mac == a.endpoints[0].mac
    assert inside.default_gw == "10.1.0.1"
    assert kernel.namespaces[HOST].links[a.endpoints[0].host_ifname].master is not None


def test_connect_adds_eth1_and_disconnect_moves_the_default_route(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    eng = make_engine(tmp_path, kernel)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    eng.create_network(NetworkSpec.parse("back", subnet="10.2.0.0/24"))
    box = eng.create_sandbox(sandbox("a", "front"))
    ep = eng.connect("back", "a", ipaddress.ip_address("10.2.0.9"))
    assert (ep.ifname, str(ep.ip)) == ("eth1", "10.2.0.9")
    eng.disconnect("front", "a")
    assert kernel.namespaces[box.netns].default_gw == "10.2.0.1"
    assert [e.network for e in eng.sandbox("a").endpoints] == ["back"]


def test_removal_releases_addresses_and_namespaces(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    eng = make_engine(tmp_path, kernel)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    before = kernel.snapshot()
    box = eng.create_sandbox(sandbox("a", "front"))
    eng.remove_sandbox("a")
    assert kernel.snapshot() == before
    assert box.netns not in kernel.namespaces
    # Allocation goes round the pool (like host-local): the next sandbox gets the next address,
    # and the released one is free to be asked for.
    assert str(eng.create_sandbox(sandbox("b", "front")).endpoints[0].ip) == "10.1.0.3"
    again = eng.create_sandbox(SandboxSpec.parse("c", [EndpointRequest.parse("front", "10.1.0.2")]))
    assert str(again.endpoints[0].ip) == "10.1.0.2"


def test_network_rm_refuses_while_attached_unless_forced(tmp_path: Path) -> None:
    eng = make_engine(tmp_path)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    eng.create_sandbox(sandbox("a", "front"))
    with pytest.raises(Conflict, match="network front has 1 sandbox"):
        eng.remove_network("front")
    eng.remove_network("front", force=True)
    assert eng.networks() == []
    assert eng.sandbox("a").endpoints == ()


def test_overlapping_and_duplicate_networks_are_refused(tmp_path: Path) -> None:
    eng = make_engine(tmp_path)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    with pytest.raises(Conflict, match="overlaps network front"):
        eng.create_network(NetworkSpec.parse("other", subnet="10.1.0.128/25"))
    with pytest.raises(Conflict, match="already exists"):
        eng.create_network(NetworkSpec.parse("front", subnet="10.9.0.0/24"))
    assert [n.name for n in eng.networks()] == ["front"]


def test_default_subnets_skip_taken_ones(tmp_path: Path) -> None:
    eng = make_engine(tmp_path)
    eng.create_network(NetworkSpec.parse("manual", subnet="10.88.0.0/24"))
    auto = eng.create_network(NetworkSpec.parse("auto"))
    assert str(auto.subnet) == "10.88.1.0/24"


def test_unknown_objects_are_not_found(tmp_path: Path) -> None:
    eng = make_engine(tmp_path)
    with pytest.raises(NotFound, match="network nope does not exist"):
        eng.create_sandbox(sandbox("a", "nope"))
    with pytest.raises(NotFound, match="sandbox ghost does not exist"):
        eng.remove_sandbox("ghost")
    assert eng.sandboxes() == []


records = object_records


def _fails_cleanly_at_every_step(tmp_path: Path, prepare: Callable[[Engine], None],
                                 operation: Callable[[Engine], object]) -> int:
    """Run ``operation`` with a failure injected at step 1, 2, ... until it succeeds.

    After each failure, kernel and store must be exactly as before the operation.
    Returns the number of steps the operation takes.
    """
    for fail_at in range(1, 50):
        kernel, store = FakeKernel(HOST), MemoryStore()
        prepare(make_engine(tmp_path, kernel, store))
        before_kernel, before_store = kernel.snapshot(), records(store)
        faulty = FaultyKernel(kernel, fail_at)  # type: ignore[arg-type]
        try:
            operation(make_engine(tmp_path, faulty, store))
        except KernelError as e:
            assert "injected failure" in str(e)
            assert kernel.snapshot() == before_kernel, f"kernel state left after failing at step {fail_at}"
            assert records(store) == before_store, f"records left after failing at step {fail_at}"
            continue
        return fail_at - 1
    raise AssertionError("operation never succeeded")


def _two_networks(eng: Engine) -> None:
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    eng.create_network(NetworkSpec.parse("back", subnet="10.2.0.0/24"))


def test_run_rolls_back_at_every_step(tmp_path: Path) -> None:
    steps = _fails_cleanly_at_every_step(tmp_path, _two_networks,
                                         lambda eng: eng.create_sandbox(sandbox("a", "front", "back")))
    assert steps >= 8  # netns, lo, and per network: bridge, address, veth, port, address, up, route


def test_connect_rolls_back_at_every_step(tmp_path: Path) -> None:
    def prepare(eng: Engine) -> None:
        _two_networks(eng)
        eng.create_sandbox(sandbox("a", "front"))

    assert _fails_cleanly_at_every_step(tmp_path, prepare, lambda eng: eng.connect("back", "a")) >= 4


def test_network_create_rolls_back_at_every_step(tmp_path: Path) -> None:
    steps = _fails_cleanly_at_every_step(tmp_path, lambda eng: None,
                                         lambda eng: eng.create_network(NetworkSpec.parse("n", subnet="10.5.0.0/24")))
    # bridge, gateway address; forwarding, bridge-nf-call x3, route_localnet; the firewall's one transaction
    assert steps == 8


def test_run_with_a_published_port_rolls_back_at_every_step(tmp_path: Path) -> None:
    from overlays.model import parse_publish

    spec = SandboxSpec.parse("web", [EndpointRequest.parse("front")], ports=parse_publish("8080:80"))
    steps = _fails_cleanly_at_every_step(tmp_path, _two_networks, lambda eng: eng.create_sandbox(spec))
    assert steps >= 7  # netns, lo, veth, port, address, up, route, and the firewall's publish


def test_connect_that_moves_published_ports_rolls_back_at_every_step(tmp_path: Path) -> None:
    from overlays.model import parse_publish

    def prepare(eng: Engine) -> None:
        _two_networks(eng)
        eng.create_network(NetworkSpec.parse("sealed", subnet="10.3.0.0/24", internal=True))
        eng.create_sandbox(SandboxSpec.parse("web", [EndpointRequest.parse("sealed"), EndpointRequest.parse("back")],
                                             ports=parse_publish("8080:80")))
        eng.disconnect("back", "web")  # its port waits for a network that takes it

    assert _fails_cleanly_at_every_step(tmp_path, prepare, lambda eng: eng.connect("front", "web")) >= 6
