"""Where each object lives in the store, and typed reads of it.

    (all under nodes/<node>/, this host's own; overlay networks are shared: see overlay.py)
    networks/<name>                 a Network
    sandboxes/<name>                a Sandbox (without its endpoints)
    endpoints/<sandbox>/<network>   an Endpoint
    ipam/<network>/<ip>             an address taken (see ipam)
    meta/networks                   bumped by every network create/remove, so
                                    concurrent creates cannot both pass the overlap check
"""

from __future__ import annotations

from overlays.engine.context import NodeTxn
from overlays.errors import NotFound
from overlays.model.state import Endpoint, Network, Sandbox
from overlays.store.base import Txn

NETWORK_GENERATION = "meta/networks"


def network_key(name: str) -> str:
    return f"networks/{name}"


def sandbox_key(name: str) -> str:
    return f"sandboxes/{name}"


def endpoint_key(sandbox: str, network: str) -> str:
    return f"endpoints/{sandbox}/{network}"


def get_network(txn: Txn, name: str) -> Network:
    """This host's network of that name, else the shared (overlay) network."""
    record = txn.get(network_key(name))
    if record is None and isinstance(txn, NodeTxn):
        record = txn.root.get(network_key(name))
    if record is None:
        raise NotFound(f"network {name} does not exist")
    return Network.from_record(record)


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


def bump_network_generation(txn: Txn) -> None:
    current = txn.get(NETWORK_GENERATION) or {"generation": 0}
    txn.put(NETWORK_GENERATION, {"generation": current["generation"] + 1})
