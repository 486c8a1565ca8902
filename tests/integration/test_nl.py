"""The netlink channel against the kernel: get, dump, ACK and error, checked through ``ip -j``."""

from __future__ import annotations

import errno
import ipaddress
import subprocess
from collections.abc import Callable, Iterator

import pytest

from overlays.errors import KernelError
from overlays.kernel import netns, nl, rtnl
from overlays.kernel.nl import IFADDR, IFINFO, NetlinkError
from overlays.kernel.rtnl import Rtnl

from .conftest import ip_json, unique

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


def link_msg(index: int = 0, name: str | None = None, up: bool = False) -> bytes:
    head = IFINFO.pack(index=index, flags=IFF_UP if up else 0, change=IFF_UP if up else 0)
    return head + (nl.attr_str(rtnl.IFLA_IFNAME, name) if name else b"")


def test_get_by_name_answers_one_link(channel: nl.Channel) -> None:
    (lo,) = channel.request(RTM_GETLINK, nl.NLM_F_REQUEST, IFINFO, link_msg(name="lo"))
    assert lo["index"] == 1 and lo.attrs.text(rtnl.IFLA_IFNAME) == "lo"


def test_get_of_a_missing_link_raises_enodev(channel: nl.Channel) -> None:
    with pytest.raises(NetlinkError) as caught:
        channel.request(RTM_GETLINK, nl.NLM_F_REQUEST, IFINFO, link_msg(name="nothere"))
    assert caught.value.code == errno.ENODEV


def test_dump_lists_every_link(ns: str, channel: nl.Channel) -> None:
    for i in range(40):  # enough to span several dump datagrams
        ip(ns, "link", "add", f"d{i}", "type", "bridge")
    msgs = channel.request(RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, IFINFO, link_msg())
    names = {m.attrs.text(rtnl.IFLA_IFNAME) for m in msgs}
    assert names == {str(link["ifname"]) for link in ip_json(ns, "link", "show")}


def test_a_change_is_acknowledged_and_made(ns: str, channel: nl.Channel) -> None:
    ip(ns, "link", "add", "d0", "type", "bridge")
    assert channel.request(RTM_NEWLINK, nl.NLM_F_REQUEST, IFINFO, link_msg(name="d0", up=True)) == []
    assert "UP" in ip_json(ns, "link", "show", "d0")[0]["flags"]  # type: ignore[operator]


def test_a_refused_change_raises_its_errno(ns: str, channel: nl.Channel) -> None:
    body = link_msg(name="lo") + nl.nest(rtnl.IFLA_LINKINFO, nl.attr_str(rtnl.IFLA_INFO_KIND, "bridge"))
    with pytest.raises(NetlinkError) as caught:
        channel.request(RTM_NEWLINK, nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL, IFINFO, body)
    assert caught.value.code == errno.EEXIST
    # The channel stays usable after an error.
    assert channel.request(RTM_GETLINK, nl.NLM_F_REQUEST, IFINFO, link_msg(name="lo"))[0]["index"] == 1


def test_an_address_dump_is_filtered_by_link_in_the_kernel(ns: str, channel: nl.Channel) -> None:
    for i, net in enumerate(["10.1.0.1/24", "10.2.0.1/24"]):
        ip(ns, "link", "add", f"d{i}", "type", "bridge")
        ip(ns, "addr", "add", net, "dev", f"d{i}")
    index = int(ip_json(ns, "link", "show", "d1")[0]["ifindex"])  # type: ignore[call-overload]
    query = IFADDR.pack(family=2, index=index)
    msgs = channel.request(RTM_GETADDR, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, IFADDR, query)
    assert [(m["index"], m.attrs.ip(rtnl.IFA_ADDRESS)) for m in msgs] == [(index, "10.2.0.1")]


def test_rtnl_on_a_fresh_namespace_has_no_routes(ns: str) -> None:
    with Rtnl.open(ns) as links:
        assert not links.has_default_route()
        assert links.route_prefixes() == [ipaddress.IPv4Network("127.0.0.0/8")]  # lo's address only


def test_rtnl_veth_peer_is_made_in_the_other_namespace(make_netns: Callable[[str], str], ns: str) -> None:
    other = make_netns("nlp")
    with Rtnl.open(ns) as links:
        links.ensure_bridge("br0", "ov:test", 1400, "02:6e:00:00:00:02")
        links.ensure_veth("v0", "ov:v0", 1400, "eth0", netns.path_of(other), "02:6f:0a:00:00:02")
        links.ensure_veth("v0", "ov:v0", 1400, "eth0", netns.path_of(other), "02:6f:0a:00:00:02")  # idempotent
        links.ensure_port("v0", "br0")
        link = links.link("v0")
        assert link is not None and link.alias == "ov:v0" and link.up
        assert link.master == links.link("br0").index  # type: ignore[union-attr]
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
    with Rtnl.open(ns) as links:
        assert links.link("nothere") is None
        links.delete_link("nothere")
        with pytest.raises(KernelError, match="find link nothere"):
            links.ensure_up("nothere")
        with pytest.raises(KernelError, match="find link nothere"):
            links.ensure_port("nothere", "lo")


def test_veths_speak_no_ipv6_on_either_end(ns: str) -> None:
    """Neither end of an endpoint's veth makes IPv6 addresses; the sandbox's lo keeps ::1."""
    inner = unique("v6")
    path = netns.create(inner)
    try:
        with Rtnl.open(ns) as links:
            links.ensure_bridge("br0", "ov:test", 1500, "02:6e:00:00:00:02")
            links.ensure_veth("v0", "ov:v0", 1500, "eth0", path, "02:6f:0a:00:00:03")
            links.ensure_port("v0", "br0")
        with Rtnl.open(inner) as inside:
            inside.ensure_up("lo")
            inside.ensure_up("eth0", ipv6=False)
        v6 = {str(i["ifname"]): [a["local"] for a in i["addr_info"]]  # type: ignore[attr-defined]
              for i in ip_json(inner, "-6", "addr", "show")}
        assert {name: addrs for name, addrs in v6.items() if addrs} == {"lo": ["::1"]}
        (host_end,) = ip_json(ns, "-d", "link", "show", "v0")
        (sandbox_end,) = ip_json(inner, "-d", "link", "show", "eth0")
        assert host_end["inet6_addr_gen_mode"] == sandbox_end["inet6_addr_gen_mode"] == "none"
        assert "UP" in sandbox_end["flags"]  # type: ignore[operator]
        assert not ip_json(ns, "-6", "addr", "show", "dev", "v0")
    finally:
        netns.delete(inner)


def test_a_veth_whose_peer_name_is_taken_says_so(make_netns: Callable[[str], str], ns: str) -> None:
    other = make_netns("nlt")
    ip(other, "link", "add", "eth0", "type", "bridge")
    with Rtnl.open(ns) as links:
        with pytest.raises(KernelError, match="eth0 exists already in"):
            links.ensure_veth("v0", "ov:v0", 1500, "eth0", netns.path_of(other), "02:6f:0a:00:00:04")
        assert links.link("v0") is None  # nothing half-made on our side
