"""A dual-stack topology file end to end: up with static ``ip6:`` addresses, IPv6 between its sandboxes,
nothing left to do after, an edit of the IPv6 subnet rebuilds the network, down leaves nothing."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from overlays.topology import Lab, resolve

from .conftest import _instances, can_ping, ip_json, sh, unique


def dual_stack_file() -> dict[str, Any]:
    return {"name": unique("v6"),
            "networks": {"front": {"subnet": ["10.61.0.0/24", "fd00:61::/64"]}, "back": {"ipv6": True}},
            "sandboxes": {"a": {"networks": {"front": {"ip": "10.61.0.10", "ip6": "fd00:61::10"}, "back": {}}},
                          "b": {"networks": {"front": {"ip6": "fd00:61::20"}}}}}


def lab_for(raw: dict[str, Any], host: str, state_dir: Path) -> Lab:
    lab = Lab(resolve(copy.deepcopy(raw), "v6.yaml"), host_netns=host, state_dir=state_dir)
    _instances.add(lab.main.ctx.instance)
    return lab


def addresses6(netns: str, ifname: str) -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for link in ip_json(netns, "-6", "addr", "show", "dev", ifname)
            for a in link["addr_info"]}  # type: ignore[union-attr]


def test_a_dual_stack_file_goes_up_reaches_over_ipv6_plans_nothing_and_goes_down(host: str, state_dir: Path) -> None:
    raw = dual_stack_file()
    lab = lab_for(raw, host, state_dir)
    try:
        planned = lab.plan()
        assert lab.up() == planned
        a, b = lab.engine("local").sandbox("a"), lab.engine("local").sandbox("b")
        assert addresses6(a.netns, "eth0") == {"fd00:61::10/64"}, "the static ip6 from the file, and no link-local"
        assert addresses6(b.netns, "eth0") == {"fd00:61::20/64"}
        assert next(ep.ip6 for ep in a.endpoints if ep.network == "back") is not None, "ipv6: true gave a /64"
        assert can_ping(a.netns, "fd00:61::20") and can_ping(b.netns, "fd00:61::10")
        assert can_ping(b.netns, "10.61.0.10"), "and IPv4 beside it"
        assert lab_for(raw, host, state_dir).plan() == []

        edited = copy.deepcopy(raw)
        edited["networks"]["front"]["subnet"] = ["10.61.0.0/24", "fd00:62::/64"]
        edited["sandboxes"]["a"]["networks"]["front"]["ip6"] = "fd00:62::10"
        edited["sandboxes"]["b"]["networks"]["front"]["ip6"] = "fd00:62::20"
        again = lab_for(edited, host, state_dir)
        assert "recreate network front on local (its declaration changed)" in [str(x) for x in again.plan()]
        again.up()
        assert again.plan() == []
        a = again.engine("local").sandbox("a")
        assert addresses6(a.netns, "eth0") == {"fd00:62::10/64"}
        assert can_ping(a.netns, "fd00:62::20")
        again.close()
    finally:
        lab.down()
        lab.close()
    assert [str(link["ifname"]) for link in ip_json(host, "link", "show")] == ["lo"]
    assert sh(host, "nft", "list", "ruleset").stdout.strip() == ""
