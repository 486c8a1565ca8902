"""The netlink channel against the kernel: get, dump, ACK and error, checked through ``ip -j``."""

from __future__ import annotations

import errno
import ipaddress
import subprocess
from collections.abc import Callable, Iterator

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from overlays.errors import KernelError
from overlays.kernel import netns, nl
from overlays.kernel.rtnl import Rtnl

from .conftest import ip_json

RTM_NEWLINK, RTM_GETLINK, RTM_GETADDR = 16, 18, 22
IFF_UP = 1


@pytest.fixture
def ns(make_netns: Callable[[str], str]) -> str:
    return make_netns("nl")


@pytest.fixture
def channel(ns: str) -> Iterator[nl.Channel]:
    ch = nl.Channel(netns.netlink_socket(netns.path_of(ns)))
    yield ch
    ch.close()


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def link_msg(index: int = 0, name: str | None = None) -> ifinfmsg:
    msg = ifinfmsg()
    msg["index"] = index
    msg["attrs"] = [("IFLA_IFNAME", name)] if name else []
    return msg


def test_get_by_name_answers_one_link(channel: nl.Channel) -> None:
    (lo,) = channel.request(link_msg(name="lo"), RTM_GETLINK, nl.NLM_F_REQUEST)
    assert lo["index"] == 1 and lo.get_attr("IFLA_IFNAME") == "lo"


def test_get_of_a_missing_link_raises_enodev(channel: nl.Channel) -> None:
    with pytest.raises(NetlinkError) as caught:
        channel.request(link_msg(name="nothere"), RTM_GETLINK, nl.NLM_F_REQUEST)
    assert caught.value.code == errno.ENODEV


def test_dump_lists_every_link_and_keep_trims_them(ns: str, channel: nl.Channel) -> None:
    for i in range(40):  # enough to span several dump datagrams
        ip(ns, "link", "add", f"d{i}", "type", "bridge")
    msgs = channel.request(link_msg(), RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, keep=["IFLA_IFNAME"])
    names = {m.get_attr("IFLA_IFNAME") for m in msgs}
    assert names == {str(link["ifname"]) for link in ip_json(ns, "link", "show")}
    assert all(len(m["attrs"]) == 1 for m in msgs)


def test_a_change_is_acknowledged_and_made(ns: str, channel: nl.Channel) -> None:
    ip(ns, "link", "add", "d0", "type", "bridge")
    msg = link_msg(name="d0")
    msg["flags"] = msg["change"] = IFF_UP
    assert channel.request(msg, RTM_NEWLINK) == []
    assert "UP" in ip_json(ns, "link", "show", "d0")[0]["flags"]  # type: ignore[operator]


def test_a_refused_change_raises_its_errno(ns: str, channel: nl.Channel) -> None:
    msg = link_msg(name="lo")
    msg["attrs"].append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]}))
    with pytest.raises(NetlinkError) as caught:
        channel.request(msg, RTM_NEWLINK, nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL)
    assert caught.value.code == errno.EEXIST
    # The channel stays usable after an error.
    assert channel.request(link_msg(name="lo"), RTM_GETLINK, nl.NLM_F_REQUEST)[0]["index"] == 1


def test_an_address_dump_is_filtered_by_link_in_the_kernel(ns: str, channel: nl.Channel) -> None:
    for i, net in enumerate(["10.1.0.1/24", "10.2.0.1/24"]):
        ip(ns, "link", "add", f"d{i}", "type", "bridge")
        ip(ns, "addr", "add", net, "dev", f"d{i}")
    index = int(ip_json(ns, "link", "show", "d1")[0]["ifindex"])  # type: ignore[call-overload]
    query = ifaddrmsg()
    query["family"] = 2
    query["index"] = index
    msgs = channel.request(query, RTM_GETADDR, nl.NLM_F_REQUEST | nl.NLM_F_DUMP)
    assert [(m["index"], m.get_attr("IFA_ADDRESS")) for m in msgs] == [(index, "10.2.0.1")]


def test_rtnl_on_a_fresh_namespace_has_no_routes(ns: str) -> None:
    with Rtnl.open(ns) as rtnl:
        assert not rtnl.has_default_route()
        assert rtnl.route_prefixes() == [ipaddress.IPv4Network("127.0.0.0/8")]  # lo's address only


def test_rtnl_veth_peer_is_made_in_the_other_namespace(make_netns: Callable[[str], str], ns: str) -> None:
    other = make_netns("nlp")
    with Rtnl.open(ns) as rtnl:
        rtnl.ensure_bridge("br0", "ov:test", 1400)
        rtnl.ensure_veth("v0", "ov:v0", 1400, "eth0", netns.path_of(other), "02:6f:0a:00:00:02")
        rtnl.ensure_veth("v0", "ov:v0", 1400, "eth0", netns.path_of(other), "02:6f:0a:00:00:02")  # idempotent
        rtnl.ensure_port("v0", "br0")
        link = rtnl.link("v0")
        assert link is not None and link.alias == "ov:v0" and link.up
        assert link.master == rtnl.link("br0").index  # type: ignore[union-attr]
    (peer,) = ip_json(other, "link", "show", "eth0")
    assert (peer["mtu"], peer["address"]) == (1400, "02:6f:0a:00:00:02")
    with Rtnl.open(other) as inside:
        inside.ensure_address("eth0", "10.3.0.2", 24)
        inside.ensure_address("eth0", "10.3.0.2", 24)
        inside.ensure_up("eth0")
        inside.ensure_default_route("10.3.0.1")
        assert inside.has_default_route()
    addrs = ip_json(other, "-4", "addr", "show", "eth0")[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.3.0.2", 24)]  # type: ignore[attr-defined]


def test_rtnl_missing_links_read_and_delete_as_before(ns: str) -> None:
    with Rtnl.open(ns) as rtnl:
        assert rtnl.link("nothere") is None
        rtnl.delete_link("nothere")
        with pytest.raises(KernelError, match="find link nothere"):
            rtnl.ensure_up("nothere")
        with pytest.raises(KernelError, match="find link nothere"):
            rtnl.ensure_port("nothere", "lo")
