"""Adopting a namespace someone else made (a container runtime's), with endpoints and published ports;
and what check() finds when the kernel drifts from the record."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from overlays import EndpointRequest, Engine, NetworkSpec
from overlays.model import parse_publish

from .conftest import ip_json, sh
from .test_firewall import HOST_OUT, OUTSIDE, outside, peer, serve_argv, wait_answer  # noqa: F401 (fixtures)


def test_an_adopted_namespace_gets_endpoints_and_published_ports_and_outlives_the_sandbox(
    engine: Engine, host: str, outside: str, make_netns: Callable[[str], str]  # noqa: F811
) -> None:
    engine.create_network(NetworkSpec.parse("front", subnet="10.38.0.0/24"))
    runtime = make_netns("rt")  # what a container runtime made; the container's process would live in it
    box = engine.adopt("ctr", netns_path=f"/run/netns/{runtime}",
                       networks=[EndpointRequest.parse("front", mac="0a:00:00:00:00:07", aliases=["api"])],
                       ports=parse_publish("8080:8000"), labels={"container": "c7"})
    assert box.adopted and engine.sandbox("ctr").label("container") == "c7"
    eth0 = ip_json(runtime, "addr", "show", "eth0")[0]
    assert eth0["address"] == "0a:00:00:00:00:07"
    server = subprocess.Popen(["ip", "netns", "exec", runtime, *serve_argv("ctr", 8000)])
    try:
        assert wait_answer(outside, HOST_OUT, 8080) == f"ctr {OUTSIDE}", "published from the outside"
    finally:
        server.kill()
        server.wait()
    engine.remove_sandbox("ctr")
    assert Path(f"/run/netns/{runtime}").exists(), "the runtime's namespace is the runtime's"
    assert [link["ifname"] for link in ip_json(runtime, "link", "show")] == ["lo"], "our interface went"


def test_check_names_what_the_kernel_lost(engine: Engine, host: str) -> None:
    engine.create_network(NetworkSpec.parse("front", subnet="10.39.0.0/24"))
    from overlays import SandboxSpec

    box = engine.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("front")]))
    assert engine.check("a") == [] and engine.network_problems("front") == []
    sh(box.netns, "ip", "addr", "flush", "dev", "eth0")  # takes the default route with it
    assert engine.check("a") == ["eth0 of sandbox a on front lost its address 10.39.0.2/24",
                                 "sandbox a has no default route"]
    sh(box.netns, "ip", "link", "set", "eth0", "down")
    assert "eth0 of sandbox a on front is down" in engine.check("a")
    engine.repair_sandbox("a")
    assert engine.check("a") == []
    sh(host, "ip", "addr", "del", "10.39.0.1/24", "dev", "ovb-front")
    assert engine.network_problems("front") == ["bridge ovb-front of network front lost its gateway address 10.39.0.1"]
    engine.repair_network("front")
    assert engine.network_problems("front") == []
