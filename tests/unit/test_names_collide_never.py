"""Kernel names that cannot collide: two sandboxes whose veth names would be cut to the same string."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import NamedTuple

import pytest

from overlays import Conflict, EndpointRequest, Engine, NetworkSpec, SandboxSpec
from overlays.engine import records
from overlays.model.names import veth_name
from overlays.store import MemoryStore

from .fakes import FakeKernel

HOST = "fakehost"


def colliding_pair(network: str, instance: str) -> tuple[str, str]:
    """Two sandbox names whose first veth-name candidates are one string (a 24-bit hash: a birthday search)."""
    seen: dict[str, str] = {}
    for n in itertools.count():
        name = f"coll{n}"
        veth = veth_name(name, network, instance)
        if veth in seen:
            return seen[veth], name
        seen[veth] = name
    raise AssertionError("unreachable")


class Setup(NamedTuple):
    eng: Engine
    kernel: FakeKernel
    store: MemoryStore
    pair: tuple[str, str]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    kernel, store = FakeKernel(HOST), MemoryStore()
    eng = Engine(host_netns=HOST, state_dir=tmp_path, store=store, kernel=kernel, check_root=False)  # type: ignore[arg-type]
    eng.create_network(NetworkSpec.parse("n", subnet="10.1.0.0/16"))
    return Setup(eng, kernel, store, colliding_pair("n", eng.instance))


def test_the_second_of_two_colliding_names_gets_another_and_the_first_keeps_its_veth(setup: Setup) -> None:
    eng, kernel, _, (first, second) = setup
    a = eng.create_sandbox(SandboxSpec.parse(first, [EndpointRequest.parse("n")]))
    b = eng.create_sandbox(SandboxSpec.parse(second, [EndpointRequest.parse("n")]))
    assert a.endpoints[0].host_ifname == veth_name(second, "n", eng.instance)  # the very name b would have had
    assert b.endpoints[0].host_ifname != a.endpoints[0].host_ifname
    host = kernel.namespaces[HOST].links
    assert {a.endpoints[0].host_ifname, b.endpoints[0].host_ifname} <= set(host)
    assert "eth0" in kernel.namespaces[a.netns].links, "the first sandbox keeps its eth0"
    eng.remove_sandbox(first)
    again = eng.create_sandbox(SandboxSpec.parse(first, [EndpointRequest.parse("n")]))
    assert again.endpoints[0].host_ifname == a.endpoints[0].host_ifname, "a released name is free again"


def test_a_veth_no_claim_names_is_never_deleted_for_a_newcomer(setup: Setup) -> None:
    """A sandbox recorded before names were claimed: the newcomer is refused, the older one stays whole."""
    eng, kernel, store, (first, second) = setup
    a = eng.create_sandbox(SandboxSpec.parse(first, [EndpointRequest.parse("n")]))
    claim = f"nodes/{eng.node}/{records.ifname_key(a.endpoints[0].host_ifname)}"
    assert store.commit({}, {}, [claim])  # as if made by an older overlays
    with pytest.raises(Conflict, match="not ours"):
        eng.create_sandbox(SandboxSpec.parse(second, [EndpointRequest.parse("n")]))
    assert "eth0" in kernel.namespaces[a.netns].links and a.endpoints[0].host_ifname in kernel.namespaces[HOST].links
    assert [box.name for box in eng.sandboxes()] == [first]
