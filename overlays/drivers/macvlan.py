"""Macvlan: the kernel steps of a network whose sandboxes sit straight on a host interface's segment.

Each endpoint is a macvlan device on the parent interface, in bridge mode (the
sandboxes of one parent reach each other, and everything else on the parent's
segment, with addresses and MACs of their own), created straight inside the sandbox
namespace under its final name. Nothing of it lives in the host namespace, so there
is nothing to tag there: it goes with the sandbox. The parent is the user's, never
changed. As with Docker's macvlan driver, the host itself cannot reach its macvlan
sandboxes through the parent (the kernel does not hairpin between a device and its
macvlans); they are reached from the segment.
"""

from __future__ import annotations

from pathlib import Path

from overlays.drivers.bridge import inside_problems
from overlays.errors import NotFound
from overlays.kernel.api import Links
from overlays.model.state import Endpoint, Network
from overlays.undo import Undo


def require_parent(host: Links, net: Network) -> None:
    """The parent interface exists in the host namespace."""
    if net.parent is None or host.link(net.parent) is None:
        where = f" in {host.netns}" if host.netns else ""
        raise NotFound(f"network {net.name}: parent interface {net.parent} does not exist{where}")


def attach(host: Links, sandbox: Links, sandbox_path: Path, net: Network, ep: Endpoint, undo: Undo,
           default_route: bool) -> None:
    """Wire ``ep``: a macvlan on the parent, made inside the sandbox, addressed, up, with the route out."""
    require_parent(host, net)
    assert net.parent is not None  # checked just now
    if sandbox.link(ep.ifname) is None:  # else: made already (a repair)
        host.ensure_macvlan(net.parent, ep.mtu, ep.ifname, sandbox_path, ep.mac)
        undo.push(f"delete macvlan {ep.ifname} of {ep.sandbox}", sandbox.delete_link, ep.ifname)
    sandbox.ensure_address(ep.ifname, str(ep.ip), ep.prefixlen)
    sandbox.ensure_up(ep.ifname, ipv6=False)
    if default_route:
        sandbox.ensure_default_route(str(ep.gateway))


def detach(sandbox: Links, ep: Endpoint) -> None:
    sandbox.delete_link(ep.ifname)


def problems(sandbox: Links, ep: Endpoint) -> list[str]:
    """Read-only: the sandbox's macvlan device exists, is up, and has its MAC and address."""
    link = sandbox.link(ep.ifname)
    if link is not None and link.kind != "macvlan":
        return [f"{ep.ifname} of sandbox {ep.sandbox} on {ep.network} is a {link.kind}, not a macvlan"]
    return inside_problems(sandbox, ep)
