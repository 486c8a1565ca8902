"""The bridge driver: one Linux bridge per network on this host, holding the gateway; a veth per endpoint.

The network is in our nftables table (egress masquerade, isolation, internal,
published ports), so it comes up there with its bridge and leaves with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from overlays.drivers import bridge
from overlays.engine import firewall, records
from overlays.engine.context import Context, NodeTxn
from overlays.engine.netdrivers.base import (
    HostFacts,
    NetworkDriver,
    check_new,
    check_new6,
    free_name,
    new_network,
    reserve_gateways,
)
from overlays.errors import OverlaysError
from overlays.kernel.api import Links
from overlays.model.names import bridge_mac, bridge_names, veth_names
from overlays.model.specs import DEFAULT_MTU, NetworkSpec
from overlays.model.state import Endpoint, Network
from overlays.undo import Undo, best_effort


class BridgeDriver(NetworkDriver):
    name = "bridge"
    in_firewall = True

    def record(self, txn: NodeTxn, ctx: Context, spec: NetworkSpec, facts: HostFacts) -> Network:
        subnet = check_new(txn, spec, facts, routed_too=True)
        subnet6 = check_new6(txn, txn, spec, facts, routed_too=True)
        device = free_name(bridge_names(spec.name, ctx.instance), (n.bridge for n in records.list_networks(txn)))
        network = new_network(spec, subnet, spec.mtu or DEFAULT_MTU, bridge=device, subnet6=subnet6)
        txn.put(records.network_key(network.name), network.to_record())
        reserve_gateways(txn, network)
        return network

    def host_ifnames(self, ctx: Context, network: Network, sandbox: str) -> Iterator[str]:
        return veth_names(sandbox, network.name, ctx.instance)

    def setup(self, ctx: Context, host: Links, network: Network, undo: Undo) -> None:
        undo.push(f"delete bridge {network.bridge}", bridge.teardown_bridge, host, network)
        self._bridge(ctx, host, network)
        undo.push(f"remove network {network.name} from the firewall", self._leave_firewall, ctx, network)
        firewall.network_up(ctx, network)

    def _bridge(self, ctx: Context, host: Links, network: Network) -> None:
        alias = bridge.network_alias(ctx.instance, network.name)
        bridge.setup_bridge(host, network, alias, _mac(ctx, network), with_gateway=True)

    def teardown(self, ctx: Context, host: Links, network: Network) -> None:
        failures = best_effort([("leave the firewall", lambda: self._leave_firewall(ctx, network)),
                                (f"delete bridge {network.bridge}", lambda: bridge.teardown_bridge(host, network))])
        if failures:
            raise OverlaysError("; ".join(failures))

    def _leave_firewall(self, ctx: Context, network: Network) -> None:
        firewall.network_down(ctx, network, in_table=lambda n: n.driver == self.name)

    def attach(self, ctx: Context, host: Links, inside: Links, inside_path: Path, network: Network, ep: Endpoint,
               undo: Undo) -> None:
        if not bridge.bridge_ready(host, network, _mac(ctx, network)):
            self._bridge(ctx, host, network)  # completes a network left half-made
        bridge.attach_veth(host, inside, inside_path, network, ep, ctx.instance, undo,
                           default_route=self.routes_out(network))

    def clear_leftovers(self, ctx: Context, host: Links, ep: Endpoint) -> None:
        bridge.delete_leftover_veth(host, ep, ctx.instance)

    def detach(self, ctx: Context, host: Links, inside: Links | None, ep: Endpoint) -> None:
        bridge.detach_veth(host, ep)

    def publishes(self, network: Network) -> bool:
        return not network.internal

    def why_no_ports(self, network: Network) -> str:
        return f"internal network {network.name}"

    def routes_out(self, network: Network) -> bool:
        return True  # internal networks too: their gateway is reachable, the firewall keeps the rest in

    def problems(self, ctx: Context, host: Links, network: Network) -> list[str]:
        return bridge.bridge_problems(host, network, _mac(ctx, network), with_gateway=True)

    def endpoint_problems(self, ctx: Context, host: Links, inside: Links, network: Network, ep: Endpoint) -> list[str]:
        return bridge.veth_problems(host, network, ep) or bridge.inside_problems(inside, ep)


def _mac(ctx: Context, network: Network) -> str:
    return bridge_mac(network.name, ctx.node)
