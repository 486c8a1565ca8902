"""Bridges and veth pairs: the kernel steps of bridge networks (and of each host's part of an overlay).

The bridge holds the gateway address (bridge networks), so the host reaches every
sandbox and each sandbox's default route points at it. Its MAC is pinned (see
``Rtnl.ensure_bridge``). A veth's sandbox end is created straight inside the sandbox
namespace with its final name and MAC: no move, no rename, no window in which a
half-made interface is visible.
"""

from __future__ import annotations

import errno
import ipaddress
from pathlib import Path

from overlays.errors import Conflict, KernelError
from overlays.kernel.api import Kernel, Links
from overlays.model.names import owner_alias
from overlays.model.state import Endpoint, Network
from overlays.undo import Undo

BRIDGE_PORTS_MAX = 1023
# Per namespace: whether frames bridged between two ports pass through the IP (and ARP) hooks.
BRIDGE_NF_SYSCTLS = tuple(f"net.bridge.bridge-nf-call-{f}" for f in ("iptables", "ip6tables", "arptables"))


def network_alias(instance: str, network: str) -> str:
    return owner_alias(instance, f"network={network}")


def endpoint_alias(instance: str, ep: Endpoint) -> str:
    return owner_alias(instance, f"sandbox={ep.sandbox},network={ep.network}")


def bridged_traffic_unfiltered(kernel: Kernel, netns: str | None) -> None:
    """Frames bridged between two ports of one bridge skip the IP hooks (br_netfilter, where loaded).

    ``bridge-nf-call-*`` is 1 in every new namespace here: without this, every frame
    between two sandboxes of one network (or every VXLAN packet through a lab's switch)
    crosses the prerouting, forward and postrouting hooks for nothing.
    """
    for key in BRIDGE_NF_SYSCTLS:
        kernel.set_sysctl(netns, key, "0", missing_ok=True)


def setup_bridge(host: Links, net: Network, alias: str, mac: str, with_gateway: bool) -> None:
    """The bridge exists, is up, has its pinned MAC and (``with_gateway``) holds the gateway address."""
    host.ensure_bridge(net.bridge, alias, net.mtu, mac)
    if with_gateway:
        for subnet, gateway in net.pools:
            host.ensure_address(net.bridge, str(gateway), subnet.prefixlen)
        if net.pool(6) is not None:
            host.ensure_address(net.bridge, ROUTER_LINK_LOCAL, 64)


# The bridge's IPv6 link-local address. Linux sends a Neighbour Solicitation from a link-local
# address unless the packet that needs it comes from an address of that link: without one, the
# host cannot forward to its sandboxes what comes from elsewhere (egress replies, published ports),
# and drops it silently. Every bridge may hold the same one: link-local addresses are per link.
ROUTER_LINK_LOCAL = "fe80::1"


def bridge_ready(host: Links, net: Network, mac: str) -> bool:
    """The usual case of an attach, in one lookup: the bridge is there, up, with its MAC."""
    link = host.link(net.bridge)
    return link is not None and link.up and link.mac == mac


def bridge_problems(host: Links, net: Network, mac: str, with_gateway: bool) -> list[str]:
    """Read-only: what is wrong with the bridge (missing, down, another MAC, its gateway address gone)."""
    link = host.link(net.bridge)
    if link is None or not link.up:
        return [f"bridge {net.bridge} of network {net.name} is missing or down"]
    found = []
    if link.mac != mac:
        found.append(f"bridge {net.bridge} of network {net.name} has MAC {link.mac}, not its own {mac}")
    for subnet, gateway in net.pools if with_gateway else ():
        if _interface(gateway, subnet.prefixlen) not in host.interface_addresses(net.bridge, gateway.version):
            found.append(f"bridge {net.bridge} of network {net.name} lost its gateway address {gateway}")
    return found


def _interface(ip: object, prefixlen: int) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(f"{ip}/{prefixlen}")


def inside_problems(sandbox: Links, ep: Endpoint) -> list[str]:
    """Read-only: the endpoint's interface inside the sandbox is there, up, with its MAC and address."""
    link = sandbox.link(ep.ifname)
    what = f"{ep.ifname} of sandbox {ep.sandbox} on {ep.network}"
    if link is None:
        return [f"{what} is missing"]
    found = [] if link.up else [f"{what} is down"]
    if link.mac != ep.mac:
        found.append(f"{what} has MAC {link.mac}, not {ep.mac}")
    for ip, prefixlen, _ in ep.addresses:
        if _interface(ip, prefixlen) not in sandbox.interface_addresses(ep.ifname, ip.version):
            found.append(f"{what} lost its address {ip}/{prefixlen}")
    return found


def teardown_bridge(host: Links, net: Network) -> None:
    host.delete_link(net.bridge)


def attach_veth(host: Links, sandbox: Links, sandbox_path: Path, net: Network, ep: Endpoint, instance: str,
                undo: Undo, default_route: bool) -> None:
    """Wire ``ep``: veth into the sandbox, port on the bridge, address, and (``default_route``) the route out."""
    host.ensure_veth(ep.host_ifname, endpoint_alias(instance, ep), ep.mtu, ep.ifname, sandbox_path, ep.mac)
    undo.push(f"delete veth {ep.host_ifname}", host.delete_link, ep.host_ifname)
    if ep.address(6) is not None:  # before its sandbox speaks IPv6: no MLD storm across the bridge (see kernel/bpf.py)
        host.drop_mld_reports(ep.host_ifname)
    try:
        host.ensure_port(ep.host_ifname, net.bridge)
    except KernelError as e:
        if e.errno == errno.EXFULL:  # the kernel's way of saying "1,023 ports, no more"
            raise Conflict(f"network {net.name} is full: a Linux bridge takes at most {BRIDGE_PORTS_MAX} ports "
                           f"and {net.bridge} has them all; create another network") from e
        raise
    add_addresses(sandbox, ep, default_route)


def add_addresses(sandbox: Links, ep: Endpoint, default_route: bool) -> None:
    """The endpoint's addresses (one per family), the link up, and (``default_route``) a route out per family.

    The link makes no IPv6 addresses of its own (no link-local, so no DAD, router
    solicitations or MLD reports: see Rtnl.ensure_up); its static IPv6 one is added
    without DAD, and IPv6 routes need no link-local address.
    """
    for ip, prefixlen, _ in ep.addresses:
        sandbox.ensure_address(ep.ifname, str(ip), prefixlen)
    sandbox.ensure_up(ep.ifname, ipv6=False)
    for _, _, gateway in ep.addresses if default_route else ():
        sandbox.ensure_default_route(str(gateway))


def delete_leftover_veth(host: Links, ep: Endpoint, instance: str) -> None:
    """Before ``ep``'s veth is made: a veth of that name left by an earlier one goes.

    Either it carries this endpoint's own tag (an earlier sandbox of this name, its namespace
    deleted without a wait), or it carries no tag at all: the record names it, so it is ours,
    made by a process killed between creating and tagging it (the kernel takes no alias on
    creation). A link of that name that carries anyone else's tag is left alone, and
    attaching then refuses it.
    """
    link = host.link(ep.host_ifname)  # one request, answered ENODEV in the usual case
    if link is not None and link.kind == "veth" and link.alias in (None, endpoint_alias(instance, ep)):
        host.delete_link(ep.host_ifname)


def detach_veth(host: Links, ep: Endpoint) -> None:
    """Deleting the host end removes the pair, and with it the sandbox's address and routes."""
    host.delete_link(ep.host_ifname)


def veth_problems(host: Links, net: Network, ep: Endpoint) -> list[str]:
    """Read-only: the host end of ``ep`` exists, is up and is a port of the network's bridge (and, dual-stack,
    still drops the sandbox's MLD reports: without the filter the bridge floods them to every port)."""
    veth, br = host.link(ep.host_ifname), host.link(net.bridge)
    if veth is None or br is None or veth.master != br.index or not veth.up:
        return [f"veth {ep.host_ifname} of sandbox {ep.sandbox} on {ep.network} is missing or detached"]
    if ep.address(6) is not None and not host.drops_mld_reports(ep.host_ifname):
        return [f"veth {ep.host_ifname} of sandbox {ep.sandbox} on {ep.network} lost its MLD report filter"]
    return []
