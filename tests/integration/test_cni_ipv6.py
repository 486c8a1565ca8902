"""The installed overlays-cni on a dual-stack network, exec'd as libcni does: both addresses and both default
routes in the container and in the result, IPv6 between two containers, DEL frees both addresses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from overlays import Engine

from .conftest import Cli, can_ping, ip_json
from .runtimes import Libcni

SUBNETS = ("10.63.0.0/24", "fd00:63::/64")


@pytest.fixture
def dual(cli: Cli, host: str, tmp_path: Path) -> Libcni:
    """Dual-stack network ``dual`` installed into CNI dirs of the test's own, and libcni's view of it."""
    cli("network", "create", "dual", "--subnet", SUBNETS[0], "--subnet", SUBNETS[1], check=True)
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    cli("cni", "install", "dual", "--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir), check=True)
    return Libcni(host, bin_dir, json.loads((conf_dir / "overlays-dual.conflist").read_text()))


def default_gateway(netns: str, family: str) -> str | None:
    routes = ip_json(netns, family, "route", "show", "default")
    return str(routes[0]["gateway"]) if routes else None


def test_add_gives_both_families_and_del_frees_both(dual: Libcni, host: str, state_dir: Path,
                                                    make_netns: Callable[[str], str]) -> None:
    a, b = make_netns("a"), make_netns("b")
    result = dual.add("c1", f"/run/netns/{a}", args="IP=fd00:63::10")
    assert [(ip["address"], ip["gateway"]) for ip in result["ips"]] == [
        ("10.63.0.2/24", "10.63.0.1"), ("fd00:63::10/64", "fd00:63::1")]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.63.0.1"}, {"dst": "::/0", "gw": "fd00:63::1"}]
    inside = {f"{x['local']}/{x['prefixlen']}" for link in ip_json(a, "addr", "show", "dev", "eth0")
              for x in link["addr_info"]}  # type: ignore[union-attr]
    assert inside == {"10.63.0.2/24", "fd00:63::10/64"}, "what the result says, and no link-local address"
    assert (default_gateway(a, "-4"), default_gateway(a, "-6")) == ("10.63.0.1", "fd00:63::1")
    dual.add("c2", f"/run/netns/{b}", runtime={"ips": ["fd00:63::20/64"]})
    assert can_ping(a, "fd00:63::20") and can_ping(b, "fd00:63::10")

    dual.delete("c1", f"/run/netns/{a}")
    engine = Engine(host_netns=host, state_dir=state_dir)
    try:
        taken = set(engine.taken_addresses("dual"))
    finally:
        engine.close()
    assert "fd00:63::10" not in taken and "10.63.0.2" not in taken and "fd00:63::20" in taken
    assert [x["ifname"] for x in ip_json(a, "link", "show")] == ["lo"]
    dual.delete("c2", f"/run/netns/{b}")
