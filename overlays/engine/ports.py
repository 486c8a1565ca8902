"""Published ports: claims in the store, and where each port leads.

Claims. Every (protocol, host port) has one store key, ``ports/<proto>/<port>``,
whose value maps the host addresses it is published on (``*`` for all of them)
to the owning sandbox. A claim reads that key and rewrites it, so the commit
compares it: two processes publishing the same port cannot both succeed, and
"all addresses" versus one address of the same port is caught as well (a key
per address could not see that without a range read, which is not compared).

Target. A sandbox's ports lead to the address of its first endpoint on a
network whose driver lets ports be published there (a bridge network that is not
internal); ``connect`` and ``disconnect`` move them when that changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from overlays.drivers.firewall import Publish
from overlays.engine.netdrivers import driver_for
from overlays.engine.records import PORT_CLAIMS_PREFIX, port_claim_key
from overlays.errors import Conflict, InvalidSpec
from overlays.kernel.api import Links
from overlays.model.ports import PortMapping
from overlays.model.state import Endpoint, IPAddress, Network, Sandbox
from overlays.store.base import Txn


def claim_key(m: PortMapping) -> str:
    return port_claim_key(m.protocol, m.host_port)


def claim(txn: Txn, sandbox: str, mappings: Iterable[PortMapping]) -> None:
    """Record ``sandbox`` as the publisher of each mapping; a port taken already is a Conflict."""
    for m in mappings:
        bindings: dict[str, str] = dict((txn.get(claim_key(m)) or {}).get("bindings", {}))
        # One address clashes with itself and with "all addresses"; "all addresses" clashes with any.
        clashing = [h for h in bindings if h in (m.host_key, "*") or m.host_key == "*"]
        if clashing:
            where = "0.0.0.0" if clashing[0] == "*" else clashing[0]
            raise Conflict(
                f"port {m.host_port}/{m.protocol} is already published on {where} by sandbox {bindings[clashing[0]]}"
            )
        bindings[m.host_key] = sandbox
        txn.put(claim_key(m), {"bindings": bindings})


def all_claims(txn: Txn) -> dict[tuple[str, int], dict[str, str]]:
    """Every port published on this host: (protocol, port) -> {host address or '*': sandbox}."""
    found = {}
    for key, value in txn.range(PORT_CLAIMS_PREFIX).items():
        _, protocol, port = key.split("/")
        found[(protocol, int(port))] = dict(value.get("bindings", {}))
    return found


def release(txn: Txn, sandbox: str, mappings: Iterable[PortMapping]) -> None:
    """Drop ``sandbox``'s claims (only its own: a claim another sandbox holds is left alone)."""
    for m in mappings:
        bindings: dict[str, str] = dict((txn.get(claim_key(m)) or {}).get("bindings", {}))
        if bindings.get(m.host_key) != sandbox:
            continue
        del bindings[m.host_key]
        if bindings:
            txn.put(claim_key(m), {"bindings": bindings})
        else:
            txn.delete(claim_key(m))


def check_host_ips(host: Links, mappings: Iterable[PortMapping]) -> None:
    """Each host IP asked for must be an address of the host namespace."""
    wanted = {m.host_ip for m in mappings if m.host_ip is not None}
    if not wanted:
        return
    have = set(host.addresses()) | (set(host.addresses(6)) if any(ip.version == 6 for ip in wanted) else set())
    for ip in sorted(wanted - have, key=str):
        where = f" (namespace {host.netns})" if host.netns else ""
        raise InvalidSpec(f"cannot publish on {ip}: it is not an address of the host{where}")


def targets(eps: Iterable[Endpoint], networks: Mapping[str, Network]) -> tuple[IPAddress, ...]:
    """The addresses published ports lead to: those of the first endpoint on a network that takes published
    ports, one per family (none if no endpoint can take them)."""
    for ep in sorted(eps, key=lambda e: (len(e.ifname), e.ifname)):
        net = networks.get(ep.network)
        if net is not None and driver_for(net).publishes(net):
            return tuple(ip for ip, _, _ in ep.addresses)
    return ()


def require_targets(sandbox: str, eps: Iterable[Endpoint], networks: Mapping[str, Network],
                    mappings: Iterable[PortMapping] = ()) -> tuple[IPAddress, ...]:
    """``targets``, refused in one line when there are none, or none of a family a host IP asks for."""
    eps = list(eps)
    found = targets(eps, networks)
    if not found:
        why = "; ".join(driver_for(networks[n]).why_no_ports(networks[n]) for n in sorted({e.network for e in eps}))
        raise InvalidSpec(f"sandbox {sandbox}: cannot publish ports on {why}")
    for m in mappings:
        if m.host_ip is not None and all(ip.version != m.host_ip.version for ip in found):
            raise InvalidSpec(f"sandbox {sandbox}: cannot publish {m.host_text}:{m.host_port}: its addresses "
                              f"({', '.join(map(str, found))}) have no IPv{m.host_ip.version} one to lead to")
    return found


def publishes(mappings: Iterable[PortMapping], to: tuple[IPAddress, ...]) -> list[Publish]:
    """One map element per mapping and family: a port on all host addresses leads to the sandbox's address of
    each family; one on a host address, to the sandbox's address of that address's family."""
    return [Publish(m, ip) for m in mappings for ip in to if m.host_ip is None or m.host_ip.version == ip.version]


def published(box: Sandbox, networks: Mapping[str, Network]) -> list[Publish]:
    """The map elements ``box``'s ports have with its endpoints as given (none if no endpoint can take them)."""
    if not box.ports:
        return []
    return publishes(box.ports, targets(box.endpoints, networks))
