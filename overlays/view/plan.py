"""The picture of a topology file: what ``overlays up -f FILE`` would build.

Addresses are the ones the file declares; the rest are left to ``up`` (its IPAM
picks them), and the picture says so rather than guessing. Names that ``up``
derives (bridges, lab namespaces, fabric addresses) are derived here the same way,
through the same functions, so the picture of a file matches its live picture.
"""

from __future__ import annotations

from pathlib import Path

from overlays.drivers import fabric
from overlays.engine import DEFAULT_STATE_DIR
from overlays.engine.context import instance_id
from overlays.ipam import default_gateway
from overlays.model.names import bridge_name, overlay_bridge_names
from overlays.model.specs import IPAddress, IPNetwork, NetworkSpec
from overlays.topology.plan import OUTSIDE
from overlays.topology.spec import LOCAL_HOST, NetworkDecl, SandboxDecl, Topology
from overlays.view.build import Builder, host_id, network_id, pairs
from overlays.view.model import Graph

AUTO = "auto"  # what the picture says of an address that up allocates


def plan_graph(topo: Topology, host_netns: str | None = None, state_dir: str | Path | None = None) -> Graph:
    """The picture of ``topo``; ``host_netns`` and ``state_dir`` as ``up`` would get them (they name bridges)."""
    b = Builder(f"topology {topo.name} ({topo.source})", "plan")
    state = Path(state_dir) if state_dir else DEFAULT_STATE_DIR
    for index, host in enumerate(topo.host_names()):
        _host(b, topo, host, index, host_netns)
    for decl in topo.networks:
        _network(b, topo, decl, state, host_netns)
    for box in topo.sandboxes:
        _sandbox(b, topo, box)
    _underlay(b, topo)
    return b.graph()


def _netns_of(topo: Topology, host: str, host_netns: str | None) -> str | None:
    return fabric.netns_of(topo.name, host) if topo.lab else host_netns


def _host(b: Builder, topo: Topology, host: str, index: int, host_netns: str | None) -> None:
    netns = _netns_of(topo, host, host_netns)
    lines = [f"netns {netns}" if netns else "the machine's own namespace"]
    address = None
    if topo.lab:
        address = f"{fabric.host_address(topo.fabric, index)}/{topo.fabric.prefixlen}"
        lines.append(f"{fabric.UNDERLAY_IFNAME} {address}")
    agent = "runs one (overlay networks)" if topo.overlays and topo.lab else None
    b.host(host, lines, pairs([("node", f"{topo.name}.{host}" if topo.lab else None), ("namespace", netns),
                               ("underlay", address), ("agent", agent)]))


def _network(b: Builder, topo: Topology, decl: NetworkDecl, state: Path, host_netns: str | None) -> None:
    spec = decl.spec
    pools = _pools(spec)
    subnet = ", ".join(p for p, _ in pools)  # as the live picture joins a dual-stack network's subnets
    gateway = ", ".join(g for _, g in pools)
    common = [("driver", spec.driver), ("subnet", subnet), ("ip range", spec.ip_range),
              ("mtu", spec.mtu or "the underlay's minus 50")]
    if decl.overlay:
        b.overlay_network(spec.name, subnet, str(spec.vni or AUTO),
                          pairs([*common, ("vni", spec.vni or AUTO), ("bridge", next(overlay_bridge_names(spec.name))),
                                 ("hosts", ", ".join(decl.hosts)), ("way out", "none: east-west only")]))
        return
    if spec.parent is not None:
        for host in decl.hosts:
            b.macvlan_network(host, spec.name, subnet, spec.parent, pairs([*common, ("parent", spec.parent),
                                                                           ("gateway", f"{gateway} (on the segment)")]))
        return
    flags = [f for f, on in (("internal: no way out", spec.internal), ("routed: no masquerade", not spec.masquerade))
             if on]
    for host in decl.hosts:
        bridge = bridge_name(spec.name, instance_id(state, _netns_of(topo, host, host_netns)))
        details = pairs([*common, ("gateway", gateway), ("bridge", bridge), ("internal", spec.internal),
                         ("masquerade", spec.masquerade)])
        b.bridge_network(host, spec.name, subnet, gateway, bridge, details, flags)


def _vtep(topo: Topology, host: str) -> str:
    if topo.lab:
        return str(fabric.host_address(topo.fabric, topo.hosts.index(host)))
    return "the host's underlay address"


def _leg(b: Builder, topo: Topology, host: str, decl: NetworkDecl) -> None:
    """An overlay network's bridge and VXLAN device on a host that has sandboxes on it."""
    spec = decl.spec
    if not b.has(network_id(spec.name, host)):
        vni, vtep, bridge = str(spec.vni or AUTO), _vtep(topo, host), next(overlay_bridge_names(spec.name))
        b.overlay_leg(host, spec.name, vni, vtep, bridge,
                      pairs([("host", host), ("network", spec.name), ("bridge", bridge), ("vni", vni),
                             ("vtep", vtep)]))


def _sandbox(b: Builder, topo: Topology, box: SandboxDecl) -> None:
    command = " ".join(box.command)
    lines = [f"runs {_cut(command, 32)}"] if command else []
    node = b.sandbox(box.host, box.spec.name, lines,
                     pairs([("host", box.host), ("command", command), ("hostname", box.spec.hostname)]))
    for i, request in enumerate(box.spec.networks):
        decl = topo.network(request.network)
        if decl.overlay:
            _leg(b, topo, box.host, decl)
        target = network_id(request.network, box.host)
        ifname = f"eth{i}"
        address = " ".join(_address(request.static(version), subnet) for version, subnet in _families(decl.spec))
        given = [request.static(version) is not None for version, _ in _families(decl.spec)]
        source = "the file" if all(given) else ("the file and IPAM, at up" if any(given) else "IPAM, at up")
        b.interface(node, target, ifname, address,
                    pairs([("network", request.network), ("interface", ifname), ("address", address),
                           ("address from", source)]))
    b.published(box.host, box.spec.name, box.spec.ports)


def _families(spec: NetworkSpec) -> list[tuple[int, IPNetwork | None]]:
    """The address families a network serves, IPv4 first, each with its subnet if the file gives one."""
    return [(v, subnet) for v, on, subnet in ((4, spec.ipv4, spec.subnet), (6, spec.ipv6, spec.subnet6)) if on]


def _pools(spec: NetworkSpec) -> list[tuple[str, str]]:
    """(subnet, gateway) per family, as the file gives them or ``auto`` where up chooses."""
    free = {4: f"{AUTO} (a free /24)", 6: f"{AUTO} (a free /64)"}
    found = []
    for version, subnet in _families(spec):
        gateway = spec.gateway if version == 4 else spec.gateway6
        found.append((str(subnet) if subnet else free[version],
                      str(gateway or (default_gateway(subnet) if subnet else AUTO))))
    return found


def _address(ip: IPAddress | None, subnet: IPNetwork | None) -> str:
    return f"{ip}/{subnet.prefixlen}" if ip and subnet else str(ip or AUTO)


def _underlay(b: Builder, topo: Topology) -> None:
    """The lab's switch (one port per host) and the outside peer, as up wires them."""
    if topo.lab:
        switch = b.node("fabric", "fabric", fabric.FABRIC_BRIDGE, [f"{topo.fabric} switch"],
                        pairs([("subnet", topo.fabric), ("namespace", fabric.netns_of(topo.name, "fabric")),
                               ("role", "the lab's underlay: a switch all hosts share")]))
        for index, host in enumerate(topo.hosts):
            address = fabric.host_address(topo.fabric, index)
            b.edge(switch, host_id(host), "underlay", f"{fabric.UNDERLAY_IFNAME} {address}",
                   pairs([("host", host), ("address", f"{address}/{topo.fabric.prefixlen}")]))
    if not topo.outside:
        return
    address = fabric.outside_address(topo.fabric)
    peer = b.node("outside", "outside", "outside", [f"{fabric.UNDERLAY_IFNAME} {address}"],
                  pairs([("namespace", fabric.netns_of(topo.name, OUTSIDE)),
                         ("role", "plays the internet and a client of published ports")]))
    if topo.lab:
        b.edge(peer, "fabric", "underlay", f"{fabric.UNDERLAY_IFNAME} {address}")
    else:
        near = fabric.host_address(topo.fabric, 0)
        b.edge(peer, host_id(LOCAL_HOST), "underlay", f"{address} - {near}",
               pairs([("outside", f"{address}/{topo.fabric.prefixlen}"),
                      ("host side", f"{near}/{topo.fabric.prefixlen}")]))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
