"""The bridge driver: one Linux bridge per network, one veth pair per endpoint.

The bridge holds the gateway address, so the host reaches every sandbox and each
sandbox's default route points at it. A veth's sandbox end is created straight
inside the sandbox namespace with its final name and MAC: no move, no rename, no
window in which a half-made interface is visible.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from overlays.errors import Conflict, KernelError
from overlays.kernel.api import Links
from overlays.model.names import owner_alias
from overlays.model.specs import Endpoint, Network
from overlays.undo import Undo

BRIDGE_PORTS_MAX = 1023


def network_alias(instance: str, network: str) -> str:
    return owner_alias(instance, f"network={network}")


def endpoint_alias(instance: str, ep: Endpoint) -> str:
    return owner_alias(instance, f"sandbox={ep.sandbox},network={ep.network}")


def setup_network(host: Links, net: Network, instance: str) -> None:
    """The bridge exists, carries the gateway address and is up."""
    host.ensure_bridge(net.bridge, network_alias(instance, net.name), net.mtu)
    host.ensure_address(net.bridge, str(net.gateway), net.subnet.prefixlen)


def teardown_network(host: Links, net: Network) -> None:
    host.delete_link(net.bridge)


def attach(
    host: Links, sandbox: Links, sandbox_path: Path, net: Network, ep: Endpoint, instance: str, undo: Undo
) -> None:
    """Wire ``ep``: veth into the sandbox, port on the bridge, address, default route (not via an overlay:
    its bridge has no address on the host)."""
    host.ensure_veth(ep.host_ifname, endpoint_alias(instance, ep), ep.mtu, ep.ifname, sandbox_path, ep.mac)
    undo.push(f"delete veth {ep.host_ifname}", host.delete_link, ep.host_ifname)
    try:
        host.ensure_port(ep.host_ifname, net.bridge)
    except KernelError as e:
        if e.cause == os.strerror(errno.EXFULL):  # the kernel's way of saying "1,023 ports, no more"
            raise Conflict(f"network {net.name} is full: a Linux bridge takes at most {BRIDGE_PORTS_MAX} ports "
                           f"and {net.bridge} has them all; create another network") from e
        raise
    sandbox.ensure_address(ep.ifname, str(ep.ip), ep.prefixlen)
    sandbox.ensure_up(ep.ifname, ipv6=False)  # IPv4 only: see Rtnl.ensure_up
    if not net.overlay:
        sandbox.ensure_default_route(str(ep.gateway))


def detach(host: Links, ep: Endpoint) -> None:
    """Deleting the host end removes the pair, and with it the sandbox's address and routes."""
    host.delete_link(ep.host_ifname)
