"""A lab's infrastructure: the fabric (a switch namespace), its simulated hosts and the outside peer.

Each simulated host is a network namespace whose ``eth0`` is a veth into the fabric
namespace's bridge; the outside peer is one more port on that switch (or, without
simulated hosts, a veth straight from the host namespace). Hosts route out through
the outside peer, so it plays the internet and a client. See drivers/fabric.py.
"""

from __future__ import annotations

from overlays.drivers import fabric
from overlays.kernel.api import Kernel
from overlays.model.names import short_hash
from overlays.topology.plan import OUTSIDE
from overlays.topology.spec import Topology


class Infra:
    """The namespaces and wires of one lab (``local_netns``: the host namespace of a lab without hosts)."""

    def __init__(self, topology: Topology, kernel: Kernel, local_netns: str | None) -> None:
        self.topology = topology
        self.kernel = kernel
        self.local_netns = local_netns

    @property
    def name(self) -> str:
        return self.topology.name

    def wire(self, role: str) -> fabric.Wire:
        """The veth that connects ``role`` (a host, or the outside peer) to the lab."""
        topo = self.topology
        prefix = topo.fabric.prefixlen
        if role == OUTSIDE and not topo.lab:
            return fabric.Wire(self.local_netns, "ovo-" + _short(self.name), fabric.netns_of(self.name, OUTSIDE),
                               fabric.UNDERLAY_IFNAME, fabric.outside_address(topo.fabric), prefix,
                               a_ip=fabric.host_address(topo.fabric, 0))
        if role == OUTSIDE:
            return fabric.Wire(fabric.netns_of(self.name, "fabric"), "outside", fabric.netns_of(self.name, OUTSIDE),
                               fabric.UNDERLAY_IFNAME, fabric.outside_address(topo.fabric), prefix)
        index = topo.hosts.index(role)
        return fabric.Wire(fabric.netns_of(self.name, "fabric"), f"h-{role}", fabric.netns_of(self.name, role),
                           fabric.UNDERLAY_IFNAME, fabric.host_address(topo.fabric, index), prefix)

    def host_address(self, host: str) -> str:
        """The address by which the outside peer reaches ``host``."""
        index = self.topology.hosts.index(host) if self.topology.lab else 0
        return str(fabric.host_address(self.topology.fabric, index))

    def outside_netns(self) -> str | None:
        return fabric.netns_of(self.name, OUTSIDE) if self.topology.outside else None

    def ok(self, role: str) -> bool:
        """Read-only: the role's namespaces and wire are there."""
        return fabric.wire_is_up(self.kernel, self.wire(role))

    def build(self, role: str) -> None:
        """Make (or complete) ``role``: its namespace, the switch if a lab has one, and its wire."""
        topo = self.topology
        route = str(fabric.outside_address(topo.fabric)) if topo.outside else None
        if role == OUTSIDE:
            if topo.lab:
                fabric.ensure_switch(self.kernel, self.name)
            fabric.ensure_namespace(self.kernel, fabric.netns_of(self.name, OUTSIDE))
            fabric.ensure_wire(self.kernel, self.name, self.wire(OUTSIDE), fabric.FABRIC_BRIDGE if topo.lab else None,
                               None)
            if not topo.lab and self.local_netns is not None:
                # The host (a namespace) routes out through the outside peer, unless it has a route already.
                with self.kernel.open(self.local_netns) as host:
                    if not host.has_default_route():  # whatever its metric
                        host.ensure_default_route(route or "")
            return
        fabric.ensure_switch(self.kernel, self.name)
        fabric.ensure_namespace(self.kernel, fabric.netns_of(self.name, role))
        fabric.ensure_wire(self.kernel, self.name, self.wire(role), fabric.FABRIC_BRIDGE, route)

    def remove(self, role: str) -> None:
        """Remove ``role``'s namespace (its wire goes with it); by name only, so a role the topology no longer
        declares (a host dropped from the file, or a rollback's) is removed all the same."""
        if role == OUTSIDE and not self.topology.lab:
            wire = self.wire(role)
            if self.kernel.netns_exists(wire.b_netns):
                with self.kernel.open(wire.a_netns) as host:
                    host.delete_link(wire.a_if)
        self.kernel.delete_netns(fabric.netns_of(self.name, role))

    def remove_switch(self) -> None:
        self.kernel.delete_netns(fabric.netns_of(self.name, "fabric"))

    def host_exists(self, host: str) -> bool:
        return self.kernel.netns_exists(fabric.netns_of(self.name, host))


def _short(name: str) -> str:
    return name[:4] + short_hash(name, length=6)
