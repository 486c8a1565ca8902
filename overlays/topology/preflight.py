"""What a topology must agree with before ``up`` changes anything: the store and the hosts as they are.

consistency.py checks the file against itself; this checks it against what exists
outside it, read-only, so that ``plan`` fails exactly where ``up`` would have failed
halfway: subnets that overlap a network the file does not own or a host's routes, a
VNI held by another network, a static address or a published port someone else
holds, a macvlan parent or a published host address the host lacks, a command that
is not on the PATH. A simulated host of a lab that does not exist yet is known all
the same: it will hold its fabric address and routes, and nothing else.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from overlays.drivers import fabric
from overlays.engine import HostView
from overlays.errors import NotFound
from overlays.model.state import IPNetwork, Network
from overlays.topology.consistency import declared_subnets
from overlays.topology.plan import EVERYWHERE, NETWORK, SANDBOX, Key, Record
from overlays.topology.spec import LOCAL_HOST, NetworkDecl, SandboxDecl, Topology, TopologyError

if TYPE_CHECKING:
    from overlays.engine import Engine

Fail = Callable[[str, str], TopologyError]


def check(topo: Topology, record: Record, engine_of: Callable[[str], Engine], host_exists: Callable[[str], bool],
          fail: Fail) -> None:
    """Raise the first way in which ``topo`` cannot be brought up on the hosts and store as they are now."""
    for host in topo.host_names():
        engine = engine_of(host)
        view = _view(topo, host, engine, host_exists)
        networks = engine.networks()
        theirs = [n for n in networks if Key(_record_host(n, host), NETWORK, n.name) not in record.objects]
        routed_by_networks = {s for n in networks for s in n.subnets}
        for decl in topo.networks:
            if host in _hosts(topo, decl):
                _network(decl, host, view, theirs, routed_by_networks, engine, fail)
        boxes = [b for b in topo.sandboxes if b.host == host]
        mine = {k.name for k in record.objects if k.kind == SANDBOX and k.host == host}
        _sandboxes(topo, boxes, mine, view, engine, fail)


def _record_host(net: Network, host: str) -> str:
    return EVERYWHERE if net.driver == "overlay" else host  # how the record keys a network that spans hosts


def _hosts(topo: Topology, decl: NetworkDecl) -> tuple[str, ...]:
    return topo.host_names() if decl.overlay else decl.hosts


def _view(topo: Topology, host: str, engine: Engine, host_exists: Callable[[str], bool]) -> HostView:
    """The host as it is, or, for a lab host still to be made, as it will be: its fabric address, eth0 and lo."""
    if host != LOCAL_HOST and not host_exists(host):
        address = fabric.host_address(topo.fabric, topo.hosts.index(host))
        return HostView((topo.fabric,), (address,), frozenset({"lo", fabric.UNDERLAY_IFNAME}))
    try:
        return engine.host_facts()
    except NotFound as e:
        raise TopologyError(f"{topo.source}: {e}") from e


def _network(decl: NetworkDecl, host: str, view: HostView, theirs: list[Network], routed_by_networks: set[IPNetwork],
             engine: Engine, fail: Fail) -> None:
    spec, path = decl.spec, f"networks.{decl.spec.name}"
    for subnet in declared_subnets(decl):
        for other in theirs:
            clash = next((o for o in other.subnets if o.version == subnet.version and subnet.overlaps(o)), None)
            if other.name != spec.name and clash is not None:
                raise fail(f"{path}.subnet", f"subnet {subnet} overlaps network {other.name} ({clash}) "
                           f"on host {host}, which this file does not own")
        if spec.driver == "bridge":  # a network's own bridge routes its subnet: that is no overlap
            for route in view.routes:  # the host's routes of both families
                clear = route in routed_by_networks or route.version != subnet.version
                if not clear and subnet.overlaps(route):  # type: ignore[arg-type]
                    raise fail(f"{path}.subnet", f"subnet {subnet} overlaps {route}, routed by host {host}")
    if spec.vni is not None:
        holder = engine.vni_holder(spec.vni)
        if holder is not None and holder != spec.name:
            raise fail(f"{path}.vni", f"VNI {spec.vni} is held by network {holder}, which this file does not own")
    if spec.parent is not None and spec.parent not in view.links:
        raise fail(f"{path}.parent", f"parent interface {spec.parent} does not exist on host {host}")


def _sandboxes(topo: Topology, boxes: list[SandboxDecl], mine: set[str], view: HostView, engine: Engine,
               fail: Fail) -> None:
    claims = engine.port_claims() if any(b.spec.ports for b in boxes) else {}
    existing = {n.name for n in engine.networks()}
    taken = {net: engine.taken_addresses(net) for net in _static_networks(boxes) if net in existing}
    declared: dict[str, set[str]] = {}  # network -> the sandboxes of the file that stay on it
    for b in boxes:
        for r in b.spec.networks:
            declared.setdefault(r.network, set()).add(b.spec.name)
    for box in boxes:
        path = f"sandboxes.{box.spec.name}"
        if box.command and not _runnable(box.command[0]):
            raise fail(f"{path}.command", f"command {box.command[0]!r} is not found on the PATH of host "
                       f"{box.host if topo.lab else 'the engine'} (PATH={os.environ.get('PATH', '')})")
        for request in box.spec.networks:
            for key, ip in (("ip", request.ip), ("ip6", request.ip6)):
                holder = taken.get(request.network, {}).get(str(ip)) if ip else None
                if holder is None or _owner_name(holder) == box.spec.name:
                    continue
                keeps = _owner_name(holder) in declared.get(request.network, set())  # and will not let it go
                if _owner_name(holder) not in mine or keeps:
                    raise fail(f"{path}.networks.{request.network}.{key}",
                               f"address {ip} on network {request.network} is held by {holder}")
        for m in box.spec.ports:
            if m.host_ip is not None and not m.host_ip.is_loopback and m.host_ip not in view.addresses:
                raise fail(f"{path}.ports", f"cannot publish on {m.host_ip}: it is not an address of host {box.host}")
            for where, holder in claims.get((m.protocol, m.host_port), {}).items():
                clash = m.host_key == "*" or where in ("*", m.host_key)
                if clash and holder not in mine and holder != box.spec.name:
                    raise fail(f"{path}.ports", f"port {m.host_port}/{m.protocol} is already published by sandbox "
                               f"{holder}, which this file does not own")


def _static_networks(boxes: list[SandboxDecl]) -> set[str]:
    return {r.network for b in boxes for r in b.spec.networks if r.ip is not None or r.ip6 is not None}


def _owner_name(owner: str) -> str:
    return owner.rsplit("/", 1)[-1]  # overlay addresses are held as node/sandbox


def _runnable(command: str) -> bool:
    if "/" in command:
        return os.path.isfile(command) and os.access(command, os.X_OK)
    return shutil.which(command) is not None
