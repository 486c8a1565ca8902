"""Where each object lives in the store, and typed reads of it: every key is made here.

This host's own records (under ``nodes/<node>/``, see context.NodeTxn):

    networks/<name>                 a Network (bridge and macvlan networks)
    sandboxes/<name>                a Sandbox (without its endpoints)
    endpoints/<sandbox>/<network>   an Endpoint
    ipam/<network>/<ip>             an address taken (see ipam)
    macs/<network>/<mac>            a MAC asked for (derived MACs follow their address)
    ifnames/<name>                  a host-side interface name (a veth) and the endpoint holding it
    ports/<proto>/<port>            who publishes a host port (see engine.ports)
    topologies/<name>               what a topology file's ``up`` made (see topology)
    faults/partitions/<name>        a Partition: this host's part of it (see engine.faults)
    faults/impairments/<sandbox>/<network>   an Impairment of one endpoint
    faults/links-down/<sandbox>/<network>    a LinkDown: an endpoint whose link is down
    meta/networks                   bumped by every network create/remove, so
                                    concurrent creates cannot both pass the overlap check

What hosts share (the root of the store; overlay networks, see netdrivers.overlay):

    networks/<name>                     an overlay network: subnet, VNI, MTU (one for all hosts)
    vni/<vni>                           which network holds a VNI (created only if absent)
    ipam/<network>/<ip>                 its addresses, allocated once for all hosts
    hosts/<node>                        a HostRegistration, under its agent's lease
    overlay/<network>/<node>/<sandbox>  an EndpointRegistration, under the same lease: when a
                                        host dies, its endpoints vanish with it, everywhere
    meta/networks                       bumped by every overlay network create
"""

from __future__ import annotations

from collections.abc import Iterable

from overlays.engine.context import NodeTxn
from overlays.errors import NotFound
from overlays.model.state import Endpoint, EndpointRegistration, HostRegistration, Network, Sandbox
from overlays.store.base import Txn

NETWORK_GENERATION = "meta/networks"


def network_key(name: str) -> str:
    return f"networks/{name}"


SANDBOXES_PREFIX = "sandboxes/"
NETWORKS_PREFIX = "networks/"


def sandbox_key(name: str) -> str:
    return f"{SANDBOXES_PREFIX}{name}"


def endpoint_key(sandbox: str, network: str) -> str:
    return f"endpoints/{sandbox}/{network}"


def ifname_key(name: str) -> str:
    """A kernel interface name of this host held by an endpoint: who holds it."""
    return f"ifnames/{name}"


def mac_key(network: str, mac: str) -> str:
    """A MAC asked for on a network (derived ones need no claim: they follow the address)."""
    return f"macs/{network}/{mac}"


PORT_CLAIMS_PREFIX = "ports/"


def port_claim_key(protocol: str, port: int) -> str:
    return f"{PORT_CLAIMS_PREFIX}{protocol}/{port}"


def topology_key(name: str) -> str:
    return f"topologies/{name}"


FAULTS_PREFIX = "faults/"
PARTITIONS_PREFIX = "faults/partitions/"
IMPAIRMENTS_PREFIX = "faults/impairments/"
LINKS_DOWN_PREFIX = "faults/links-down/"


def partition_key(name: str) -> str:
    return f"{PARTITIONS_PREFIX}{name}"


def impairment_key(sandbox: str, network: str) -> str:
    return f"{IMPAIRMENTS_PREFIX}{sandbox}/{network}"


def link_down_key(sandbox: str, network: str) -> str:
    return f"{LINKS_DOWN_PREFIX}{sandbox}/{network}"


def vni_key(vni: int) -> str:
    return f"vni/{vni}"


VNI_PREFIX = "vni/"


HOSTS_PREFIX = "hosts/"


def host_key(node: str) -> str:
    return f"{HOSTS_PREFIX}{node}"


def registrations_prefix(network: str, node: str | None = None) -> str:
    """The registrations of a network (of one host's endpoints only, with ``node``)."""
    return f"overlay/{network}/" + (f"{node}/" if node is not None else "")


def registration_key(network: str, node: str, sandbox: str) -> str:
    return f"{registrations_prefix(network, node)}{sandbox}"


REGISTRATIONS_PREFIX = "overlay/"


# -- typed reads ----------------------------------------------------------------------------------------------------


def find_network(txn: Txn, name: str) -> Network | None:
    """This host's network of that name, else the shared (overlay) network; None if neither exists."""
    record = txn.get(network_key(name))
    if record is None and isinstance(txn, NodeTxn):
        record = txn.root.get(network_key(name))
    return Network.from_record(record) if record is not None else None


def get_network(txn: Txn, name: str) -> Network:
    found = find_network(txn, name)
    if found is None:
        raise NotFound(f"network {name} does not exist")
    return found


def networks_named(txn: Txn, names: Iterable[str], missing_ok: bool = False) -> dict[str, Network]:
    """The networks of these names, read once each (NotFound for a missing one unless ``missing_ok``)."""
    found: dict[str, Network] = {}
    for name in dict.fromkeys(names):
        net = find_network(txn, name) if missing_ok else get_network(txn, name)
        if net is not None:
            found[name] = net
    return found


def list_networks(txn: Txn) -> list[Network]:
    """This host's networks and the shared (overlay) ones."""
    found = [Network.from_record(v) for v in txn.range("networks/").values()]
    if isinstance(txn, NodeTxn):
        found += [Network.from_record(v) for v in txn.root.range("networks/").values()]
    return sorted(found, key=lambda n: n.name)


def endpoints_of(txn: Txn, sandbox: str) -> list[Endpoint]:
    eps = [Endpoint.from_record(v) for v in txn.range(f"endpoints/{sandbox}/").values()]
    return sorted(eps, key=lambda e: int(e.ifname[3:]) if e.ifname[3:].isdigit() else 0)


def all_endpoints(txn: Txn) -> list[Endpoint]:
    return [Endpoint.from_record(v) for v in txn.range("endpoints/").values()]


def get_sandbox(txn: Txn, name: str) -> Sandbox:
    record = txn.get(sandbox_key(name))
    if record is None:
        raise NotFound(f"sandbox {name} does not exist")
    return Sandbox.from_record(record, tuple(endpoints_of(txn, name)))


def list_sandboxes(txn: Txn) -> list[Sandbox]:
    by_sandbox: dict[str, list[Endpoint]] = {}
    for ep in all_endpoints(txn):
        by_sandbox.setdefault(ep.sandbox, []).append(ep)
    return [
        Sandbox.from_record(v, tuple(sorted(by_sandbox.get(v["name"], []), key=lambda e: e.ifname)))
        for v in txn.range("sandboxes/").values()
    ]


def host_idle(txn: NodeTxn) -> bool:
    """Whether this host has no sandbox and no network of its own left (overlay networks are every host's)."""
    return not txn.range(SANDBOXES_PREFIX) and not txn.range(NETWORKS_PREFIX)


def bump_network_generation(txn: Txn) -> None:
    current = txn.get(NETWORK_GENERATION) or {"generation": 0}
    txn.put(NETWORK_GENERATION, {"generation": current["generation"] + 1})


def find_host(root: Txn, node: str) -> HostRegistration | None:
    record = root.get(host_key(node))
    return HostRegistration.from_record(record) if record is not None else None


def all_hosts(root: Txn) -> list[HostRegistration]:
    return [HostRegistration.from_record(v) for v in root.range(HOSTS_PREFIX).values()]


def all_registrations(root: Txn) -> list[EndpointRegistration]:
    """Every endpoint registered on any overlay network (the network is the key's second part)."""
    return [EndpointRegistration.from_record(v, k.split("/")[1])
            for k, v in root.range(REGISTRATIONS_PREFIX).items() if k.count("/") == 3]


def registrations(root: Txn, network: str, node: str | None = None) -> list[EndpointRegistration]:
    """The endpoints registered on an overlay network (by one host only, with ``node``)."""
    return [EndpointRegistration.from_record(v, network)
            for v in root.range(registrations_prefix(network, node)).values()]
