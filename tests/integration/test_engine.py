"""The Python API on the real kernel: rollback at every step, and engines side by side."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from overlays import EndpointRequest, Engine, KernelError, NetworkSpec, SandboxSpec
from overlays.kernel.faults import FaultyKernel
from overlays.kernel.linux import LinuxKernel
from overlays.kernel.netns import NETNS_DIR

from .conftest import _instances, can_ping, ip_json, sh, teardown


def kernel_view(host: str, instance: str) -> tuple[list[object], list[str]]:
    """Links and addresses of the host, and the sandbox namespaces of one engine instance."""
    addrs = [(a["ifname"], [i["local"] for i in a["addr_info"]]) for a in ip_json(host, "addr", "show")]
    namespaces = sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(f"ov-{instance}-"))
    return addrs, namespaces


def fail_at_every_step(base: Engine, spec: SandboxSpec, view: Callable[[], object]) -> FaultyKernel:
    """Create ``spec`` with a failure injected at step 1, 2, ... until it succeeds; after each failure
    ``view()`` (the kernel as an independent tool sees it) and the records are as before. Returns
    the kernel that let it succeed (its steps)."""
    before = view()
    for fail_at in range(1, 40):
        faulty = FaultyKernel(LinuxKernel(), fail_at)
        eng = Engine(host_netns=base.host_netns, state_dir=base.ctx.state_dir, kernel=faulty)
        try:
            eng.create_sandbox(spec)
        except KernelError as e:
            assert "injected failure" in str(e)
            assert view() == before, f"left behind at step {fail_at}"
            assert base.sandboxes() == []
            continue
        finally:
            eng.close()
        return faulty
    pytest.fail("run never succeeded")


def test_a_failure_at_any_step_of_run_leaves_nothing(host: str, state_dir: Path) -> None:
    base = Engine(host_netns=host, state_dir=state_dir)
    _instances.add(base.ctx.instance)
    try:
        base.create_network(NetworkSpec.parse("f1", subnet="10.41.1.0/24"))
        base.create_network(NetworkSpec.parse("f2", subnet="10.41.2.0/24"))
        spec = SandboxSpec.parse("victim", [EndpointRequest.parse("f1"), EndpointRequest.parse("f2")])
        succeeded = fail_at_every_step(base, spec, lambda: kernel_view(host, base.ctx.instance))
        assert len(succeeded.steps) >= 8  # netns, lo, and per network: veth, port, address, up (and a route)
        box = base.sandbox("victim")
        assert can_ping(host, str(box.endpoints[1].ip))
    finally:
        teardown(base)


def test_two_engines_on_two_hosts_use_the_same_names_without_colliding(
    make_netns: Callable[[str], str], tmp_path: Path
) -> None:
    engines = [Engine(host_netns=make_netns(f"e{i}"), state_dir=tmp_path / f"s{i}") for i in range(2)]
    try:
        for eng in engines:
            _instances.add(eng.ctx.instance)
            eng.create_network(NetworkSpec.parse("same", subnet="10.42.0.0/24"))
            eng.create_sandbox(SandboxSpec.parse("web", [EndpointRequest.parse("same")]))
        a, b = (eng.sandbox("web") for eng in engines)
        assert a.netns != b.netns
        assert str(a.endpoints[0].ip) == str(b.endpoints[0].ip) == "10.42.0.2"
        for eng in engines:
            assert can_ping(eng.ctx.host_netns or "", "10.42.0.2")
    finally:
        for eng in engines:
            teardown(eng)


def test_missing_host_namespace_is_a_clear_error(tmp_path: Path) -> None:
    eng = Engine(host_netns="ot-no-such-host", state_dir=tmp_path)
    with pytest.raises(Exception, match="host namespace ot-no-such-host does not exist"):
        eng.create_network(NetworkSpec.parse("n", subnet="10.43.0.0/24"))
    assert eng.networks() == []
    eng.close()


def test_a_failure_at_any_step_of_run_with_a_port_leaves_the_firewall_as_it_was(host: str, state_dir: Path) -> None:
    from overlays.model import parse_publish

    base = Engine(host_netns=host, state_dir=state_dir)
    _instances.add(base.ctx.instance)
    table = f"overlays_{base.ctx.instance}"
    try:
        base.create_network(NetworkSpec.parse("f1", subnet="10.41.3.0/24"))
        spec = SandboxSpec.parse("web", [EndpointRequest.parse("f1")], ports=parse_publish("8080:80"))
        succeeded = fail_at_every_step(base, spec, lambda: (
            kernel_view(host, base.ctx.instance), sh(host, "nft", "list", "table", "inet", table).stdout))
        assert "nft_apply" in succeeded.steps
        assert "8080" in sh(host, "nft", "list", "map", "inet", table, "publish_any_tcp").stdout
    finally:
        teardown(base)
