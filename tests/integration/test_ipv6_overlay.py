"""IPv6 across VXLAN overlays on simulated hosts: dual-stack and IPv6-only networks, entries per family."""

from __future__ import annotations

import pytest

from overlays import EndpointRequest, NetworkSpec, SandboxSpec
from overlays.drivers import fabric
from overlays.topology import Lab

from .conftest import ip_json, sh
from .test_overlay import eventually_pings, lab, wait_for

__all__ = ["lab"]  # the three-host lab fixture of test_overlay


def neighbours(lab: Lab, host: str, device: str, family: str) -> dict[str, str]:
    found = ip_json(fabric.netns_of(lab.name, host), family, "neigh", "show", "dev", device, "nud", "permanent")
    return {str(n["dst"]): str(n.get("lladdr")) for n in found}


@pytest.mark.parametrize("subnets", [["10.82.0.0/24", "fd00:82::/64"], ["fd00:83::/64"]], ids=["dual", "v6only"])
def test_overlay_sandboxes_reach_each_other_over_ipv6_across_hosts(lab: Lab, subnets: list[str]) -> None:
    net = lab.engine("h1").create_network(NetworkSpec.parse("six", driver="overlay", subnet=subnets))
    here = lab.engine("h1").create_sandbox(SandboxSpec.parse("p1", [EndpointRequest.parse("six")]))
    there = lab.engine("h2").create_sandbox(SandboxSpec.parse("q1", [EndpointRequest.parse("six")]))
    ip6_here, ip6_there = (str(b.endpoints[0].address(6)) for b in (here, there))
    assert net.mtu == 1450, "MTU unchanged: the underlay is IPv4"
    assert eventually_pings(here.netns, ip6_there) and eventually_pings(there.netns, ip6_here)
    if len(subnets) == 2:
        assert eventually_pings(here.netns, str(there.endpoints[0].ip)), "IPv4 too"
    # Each host answers the other's addresses from its VXLAN device's table, one entry per family.
    mac_there = there.endpoints[0].mac
    wait_for(lambda: neighbours(lab, "h1", "ovx-six", "-6").get(ip6_there) == mac_there, timeout=5)
    assert (str(there.endpoints[0].ip) in neighbours(lab, "h1", "ovx-six", "-4")) == (len(subnets) == 2)
    # Names of the other host's sandbox, fed by the control plane: its IPv6 address too.
    wait_for(lambda: ip6_there in sh(here.netns, "getent", "ahostsv6", "q1", check=False).stdout, timeout=10)
    lab.engine("h2").remove_sandbox("q1", force=True)
    wait_for(lambda: ip6_there not in neighbours(lab, "h1", "ovx-six", "-6"), timeout=5)
    lab.engine("h1").remove_sandbox("p1", force=True)
    lab.engine("h1").remove_network("six")
