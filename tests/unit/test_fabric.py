"""The lab fabric on the fake kernel: the switch namespace and what it is set to."""

from __future__ import annotations

from overlays.drivers import fabric

from .fakes import FakeKernel


def test_switch_keeps_bridged_traffic_out_of_the_ip_hooks() -> None:
    kernel = FakeKernel()
    fabric.ensure_switch(kernel, "lab")
    ns = fabric.netns_of("lab", "fabric")
    assert fabric.FABRIC_BRIDGE in kernel.namespaces[ns].links
    for family in ("iptables", "ip6tables", "arptables"):
        assert kernel.sysctls[(ns, f"net.bridge.bridge-nf-call-{family}")] == "0"


def test_switch_is_idempotent() -> None:
    kernel = FakeKernel()
    fabric.ensure_switch(kernel, "lab")
    before = kernel.snapshot()
    fabric.ensure_switch(kernel, "lab")
    assert kernel.snapshot() == before
