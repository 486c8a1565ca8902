"""What an endpoint request can ask for (MAC, interface name, aliases), labels, and adoption with endpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from overlays import Conflict, EndpointRequest, Engine, InvalidSpec, KernelError, NetworkSpec, SandboxSpec
from overlays.kernel.faults import FaultyKernel
from overlays.model import parse_publish
from overlays.store import MemoryStore

from .fakes import FakeKernel, object_records

HOST = "fakehost"
RUNTIME_NS = "runtime-ns"  # a namespace a container runtime made


def engine(tmp_path: Path, kernel: FakeKernel, store: MemoryStore | None = None) -> Engine:
    eng = Engine(host_netns=HOST, state_dir=tmp_path, store=store or MemoryStore(), kernel=kernel,  # type: ignore[arg-type]
                 check_root=False)
    return eng


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel(HOST, RUNTIME_NS)


@pytest.fixture
def eng(tmp_path: Path, kernel: FakeKernel) -> Engine:
    e = engine(tmp_path, kernel)
    e.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    return e


def test_a_mac_asked_for_is_used_and_claimed_on_its_network(eng: Engine, kernel: FakeKernel) -> None:
    box = eng.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("front", mac="0A:11:22:33:44:55")]))
    assert box.endpoints[0].mac == "0a:11:22:33:44:55"
    assert kernel.namespaces[box.netns].links["eth0"].mac == "0a:11:22:33:44:55"
    with pytest.raises(Conflict, match="MAC 0a:11:22:33:44:55 on network front is already taken by a"):
        eng.create_sandbox(SandboxSpec.parse("b", [EndpointRequest.parse("front", mac="0a:11:22:33:44:55")]))
    eng.remove_sandbox("a")
    assert eng.create_sandbox(SandboxSpec.parse("b", [EndpointRequest.parse("front", mac="0a:11:22:33:44:55")]))


@pytest.mark.parametrize(("mac", "why"), [
    ("01:00:5e:00:00:01", "is a multicast address"),
    ("02:6f:0a:01:00:02", "are overlays' own"),
    ("00:00:00:00:00:00", "is the null address"),
    ("nope", "is not a MAC address"),
])
def test_macs_that_cannot_be_a_sandbox_s_are_refused(mac: str, why: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(why)):
        EndpointRequest.parse("front", mac=mac)


def test_an_interface_name_asked_for_is_used_and_must_be_free(eng: Engine, kernel: FakeKernel) -> None:
    eng.create_network(NetworkSpec.parse("back", subnet="10.2.0.0/24"))
    box = eng.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("front", ifname="net1"),
                                                     EndpointRequest.parse("back")]))
    assert [e.ifname for e in box.endpoints] == ["net1", "eth0"], "asked for, else the first free ethN"
    assert set(kernel.namespaces[box.netns].links) == {"lo", "net1", "eth0"}
    eng.disconnect("back", "a")
    with pytest.raises(Conflict, match="sandbox a already has an interface net1"):
        eng.connect(EndpointRequest.parse("back", ifname="net1"), "a")
    with pytest.raises(InvalidSpec, match="interface net1 given twice"):
        SandboxSpec.parse("c", [EndpointRequest.parse("front", ifname="net1"),
                                EndpointRequest.parse("back", ifname="net1")])
    with pytest.raises(InvalidSpec, match="is not an interface name"):
        EndpointRequest.parse("front", ifname="lo")


def test_aliases_and_labels_are_recorded(eng: Engine) -> None:
    spec = SandboxSpec.parse("a", [EndpointRequest.parse("front", aliases=["web", "www.example", "web"])])
    box = eng.create_sandbox(spec, labels={"cni.containerid": "abc123"})
    again = eng.sandbox("a")
    assert again.endpoints[0].aliases == box.endpoints[0].aliases == ("web", "www.example")
    assert again.label("cni.containerid") == "abc123"
    with pytest.raises(InvalidSpec, match="alias 'not valid' on network front is not a valid DNS name"):
        EndpointRequest.parse("front", aliases=["not valid"])


@pytest.mark.parametrize("name", ["none", "host"])
def test_reserved_network_names_are_refused(eng: Engine, name: str) -> None:
    with pytest.raises(InvalidSpec, match=f"network name '{name}' is reserved"):
        NetworkSpec.parse(name)


def test_adopting_a_namespace_wires_its_endpoints_and_ports_and_never_deletes_it(tmp_path: Path) -> None:
    for fail_at in range(1, 40):
        kernel, store = FakeKernel(HOST, RUNTIME_NS), MemoryStore()
        engine(tmp_path, kernel, store).create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
        before = (kernel.snapshot(), object_records(store))
        eng = engine(tmp_path, FaultyKernel(kernel, fail_at), store)  # type: ignore[arg-type]
        try:
            box = eng.adopt("ctr", netns_path=str(tmp_path), networks=[EndpointRequest.parse("front")],
                            ports=parse_publish("8080:80"), labels={"id": "c1"})
        except KernelError as e:
            assert "injected failure" in str(e)
            assert (kernel.snapshot(), object_records(store)) == before, f"left behind at step {fail_at}"
            continue
        break
    else:
        pytest.fail("adopt never succeeded")
    assert box.adopted and box.endpoints[0].state == "ready" and box.label("id") == "c1"
    assert any(("publish_any_tcp", "8080") in t for t in kernel.nft_tables[HOST].values())
    clean = engine(tmp_path, kernel, store)
    clean.remove_sandbox("ctr")
    assert clean.sandboxes() == []
    assert not any(("publish_any_tcp", "8080") in t for t in kernel.nft_tables[HOST].values())
