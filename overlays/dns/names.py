"""The names table: who is called what on which network, and who may ask.

Per network, every name (a sandbox's name, its aliases, its hostname) maps to the
addresses of all the sandboxes that carry it (several under one alias get all their
addresses), and every address maps back to the sandbox names that hold it. Each name
is also known as ``NAME.NETWORK`` (as Docker answers), which picks one network for a
sandbox on several; reverse answers use that form (``web.front.``), which resolves
forward to the same address.

A query is answered for a *scope*: the set of networks the asking sandbox is on, so a
name on ``back`` is never answered to a sandbox that is only on ``front``. A name the
scope does not know is not ours: it is forwarded, except for a sandbox whose networks
are all internal (or that has none), which gets NXDOMAIN. Reverse names of addresses
inside the subnet of any network we serve (``ours``) are ours even when nobody holds
them: NXDOMAIN, never sent upstream (our private addresses are nobody else's business).

Pure data, no sockets: the server owns one table and changes it from its own thread.
``generation`` counts changes, so the answer cache knows when to forget.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from overlays.errors import InvalidSpec
from overlays.kernel.dnsctl import Record

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network
Scope = frozenset[str]


def normal(name: str) -> str:
    """Names compare without case and without the root's trailing dot."""
    return name.rstrip(".").lower()


@dataclass(frozen=True)
class Forwarding:
    """Where a scope's other names go: ``servers`` (empty: the host's resolvers), or nowhere."""

    allowed: bool
    servers: tuple[str, ...] = ()


@dataclass
class Network:
    """One network's names: name -> addresses (with how many sandboxes give each), address -> names."""

    internal: bool = False
    upstreams: tuple[str, ...] = ()
    subnets: tuple[Subnet, ...] = ()
    names: dict[str, dict[Address, int]] = field(default_factory=lambda: defaultdict(dict))
    reverse: dict[Address, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, key: str, addresses: Iterable[Address], counts: dict[str, dict[Address, int]]) -> None:
        bucket = counts[key]
        for a in addresses:
            bucket[a] = bucket.get(a, 0) + 1

    def remove(self, key: str, addresses: Iterable[Address], counts: dict[str, dict[Address, int]]) -> None:
        bucket = counts.get(key)
        if bucket is None:
            return
        for a in addresses:
            left = bucket.get(a, 0) - 1
            if left > 0:
                bucket[a] = left
            else:
                bucket.pop(a, None)
        if not bucket:
            del counts[key]

    def empty(self) -> bool:
        return not self.names and not self.reverse


@dataclass(frozen=True)
class _Entry:
    """One record, resolved: the keys it adds to its network's table."""

    network: str
    keys: tuple[str, ...]
    ptr: str
    addresses: tuple[Address, ...]
    subnets: tuple[Subnet, ...]


def _resolve(record: Record) -> _Entry:
    try:
        addresses = tuple(dict.fromkeys(ipaddress.ip_address(a) for a in record.addresses))
        subnets = tuple(ipaddress.ip_network(s) for s in record.subnet.split(",") if s)  # one per family
    except ValueError as e:
        raise InvalidSpec(f"DNS record {record.name} on {record.network}: {e}") from e
    for server in record.upstreams:
        try:
            ipaddress.ip_address(server)
        except ValueError as e:
            raise InvalidSpec(f"network {record.network}: DNS server {server!r} is not an IP address") from e
    net = normal(record.network)
    labels = [normal(n) for n in (record.name, *record.aliases) if normal(n)]
    keys = tuple(dict.fromkeys([*labels, *(f"{n}.{net}" for n in labels)]))
    return _Entry(net, keys, f"{normal(record.name)}.{net}", addresses, subnets)


class NamesTable:
    """Every local and remote sandbox's names, by network."""

    def __init__(self) -> None:
        self.networks: dict[str, Network] = {}
        self._entries: dict[str, tuple[_Entry, ...]] = {}
        self._scopes: dict[str, Scope] = {}
        self._options: dict[str, tuple[bool, tuple[str, ...]]] = {}
        self.generation = 0

    # -- changes ----------------------------------------------------------------

    def set(self, sandbox: str, records: Iterable[Record]) -> None:
        """The sandbox's names are exactly these now; its scope is the records' networks."""
        records = list(records)
        entries = tuple(_resolve(r) for r in records)  # all checked before anything changes
        self.drop(sandbox)
        for record, entry in zip(records, entries, strict=True):
            net = self.networks.setdefault(entry.network, Network())
            net.internal, net.upstreams, net.subnets = record.internal, tuple(record.upstreams), entry.subnets
            for key in entry.keys:
                net.add(key, entry.addresses, net.names)
            for a in entry.addresses:
                bucket = net.reverse[a]
                bucket[entry.ptr] = bucket.get(entry.ptr, 0) + 1
        self._entries[sandbox] = entries
        self._scopes[sandbox] = frozenset(e.network for e in entries)
        self.generation += 1

    def drop(self, sandbox: str) -> None:
        """Forget the sandbox's names (nothing to do if it had none)."""
        entries = self._entries.pop(sandbox, ())
        self._scopes.pop(sandbox, None)
        for entry in entries:
            net = self.networks.get(entry.network)
            if net is None:
                continue
            for key in entry.keys:
                net.remove(key, entry.addresses, net.names)
            for a in entry.addresses:
                bucket = net.reverse.get(a)
                if bucket is not None:
                    left = bucket.get(entry.ptr, 0) - 1
                    if left > 0:
                        bucket[entry.ptr] = left
                    else:
                        bucket.pop(entry.ptr, None)
                    if not bucket:
                        del net.reverse[a]
            if net.empty():
                del self.networks[entry.network]
        if entries:
            self.generation += 1

    # -- questions ----------------------------------------------------------------

    def scope(self, sandbox: str) -> Scope:
        return self._scopes.get(sandbox, frozenset())

    def sandboxes(self) -> list[str]:
        return sorted(self._entries)

    def lookup(self, scope: Scope, name: str) -> list[Address] | None:
        """Addresses of ``name`` on the scope's networks; None: no such name there (not ours)."""
        key = normal(name)
        found: dict[Address, None] | None = None
        for net_name in sorted(scope):
            net = self.networks.get(net_name)
            addresses = net.names.get(key) if net else None
            if addresses is not None:
                found = found if found is not None else {}
                found.update(dict.fromkeys(sorted(addresses, key=_order)))
        return None if found is None else list(found)

    def reverse(self, scope: Scope, address: Address) -> list[str] | None:
        """Names (``name.network``) holding ``address`` on the scope's networks; None: not ours."""
        names: list[str] = []
        for net_name in sorted(scope):
            net = self.networks.get(net_name)
            if net is not None and address in net.reverse:
                names += sorted(net.reverse[address])
        return names or None

    def ours(self, address: Address) -> bool:
        """Whether ``address`` is inside the subnet of a network we serve (held by someone or not)."""
        return any(address in subnet for net in self.networks.values() for subnet in net.subnets)

    def forwarding(self, scope: Scope) -> Forwarding:
        """Whether (and where) a scope's unknown names are forwarded.

        Only a sandbox on at least one non-internal network forwards (none at all: no
        way out, so no DNS way out either). ``--dns`` servers of its networks replace the
        host's resolvers; several networks with their own: all of them, in order.
        """
        open_nets = [self.networks[n] for n in sorted(scope) if n in self.networks and not self.networks[n].internal]
        if not open_nets:
            return Forwarding(False)
        servers = tuple(dict.fromkeys(s for net in open_nets for s in net.upstreams))
        return Forwarding(True, servers)

    def counts(self) -> dict[str, int]:
        return {"sandboxes": len(self._entries), "networks": len(self.networks),
                "names": sum(len(n.names) for n in self.networks.values())}


def _order(a: Address) -> tuple[int, int]:
    return a.version, int(a)
