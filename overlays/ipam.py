"""IP address management over the store protocol.

The allocator is pure (which address is free, which subnet is free); the store
part records each allocation as its own key ``ipam/<network>/<ip>``, created only
if absent, so two processes that pick the same address cannot both commit: the
loser's transaction retries and picks the next one.

Allocation goes round the pool from the last address given out (kept as a hint,
``ipam-next/<network>``), as the CNI host-local plugin does: a fresh network hands
out .2, .3, ... in order, a new sandbox costs a read or two whatever the network's
size (reading every allocation made the 1,000th attach 15 ms slower than the first),
and a just-released address is not handed straight to someone else.

A dual-stack network has two pools, IPv4 (``network.subnet``) and IPv6 (``subnet6``), one
hint each; their allocation keys never meet (the addresses differ). IPv6 subnets not given
are /64s of a ULA /48 (RFC 4193) chosen at random once per store scope (``ipam-ula``).
"""

from __future__ import annotations

import ipaddress
import itertools
import secrets
from collections.abc import Iterable, Iterator

from overlays.errors import Conflict, Exhausted, InvalidSpec
from overlays.model.specs import IPAddress, IPNetwork, Network
from overlays.store.base import Txn

# Where networks created without --subnet come from: /24s of 10.88.0.0/14,
# skipping any that overlap another network or a route of the host namespace.
DEFAULT_POOLS = (ipaddress.ip_network("10.88.0.0/14"),)
DEFAULT_PREFIX = 24
DEFAULT_PREFIX6 = 64
ULA_KEY = "ipam-ula"
# Addresses tried after the hint before reading the network's whole allocation list.
PROBES = 8


def _key(network: str, ip: IPAddress | None = None) -> str:
    return f"ipam/{network}/" + (str(ip) if ip is not None else "")


def _hint_key(network: str, version: int = 4) -> str:
    return f"ipam-next/{network}" + ("" if version == 4 else "/6")


def hint_keys(network: Network) -> list[str]:
    """The keys a dynamic allocation on ``network`` reads first (one per pool): to prefetch them."""
    return [_hint_key(network.name, subnet.version) for subnet in network.subnets]


def host_addresses(
    subnet: IPNetwork, ip_range: IPNetwork | None, after: IPAddress | None = None
) -> Iterator[IPAddress]:
    """Usable addresses of the ip-range if given, else the subnet: from just past ``after``
    (if it lies in the pool) to the end, then from the start round to ``after``."""
    pool = ip_range or subnet
    first, last = int(pool.network_address), int(pool.broadcast_address)
    start = int(after) + 1 if after is not None and first <= int(after) < last else first
    reserved = {int(subnet.network_address), int(subnet.broadcast_address)}
    make = type(pool.network_address)
    for n in itertools.chain(range(start, last + 1), range(first, start)):
        if n not in reserved:
            yield make(n)


def free_subnet(taken: Iterable[IPNetwork], pools: Iterable[IPNetwork] = DEFAULT_POOLS) -> IPNetwork:
    """The first default-sized subnet of the pools that overlaps nothing in ``taken``."""
    taken = list(taken)
    for pool in pools:
        for candidate in pool.subnets(new_prefix=DEFAULT_PREFIX):
            if not any(candidate.overlaps(t) for t in taken):  # type: ignore[arg-type]
                return candidate
    raise Exhausted("no free subnet left in the default pools; give one with --subnet")


def ula_prefix(txn: Txn) -> ipaddress.IPv6Network:
    """This scope's ULA /48: chosen at random the first time (a 40-bit global ID, RFC 4193), then kept."""
    found = txn.get(ULA_KEY)
    if found is None:
        prefix = ipaddress.IPv6Network(((0xFD << 120) | (secrets.randbits(40) << 80), 48))
        if txn.create(ULA_KEY, {"prefix": str(prefix)}):
            return prefix
        found = txn.get(ULA_KEY) or {}
    return ipaddress.IPv6Network(found["prefix"])


def free_subnet6(txn: Txn, taken: Iterable[IPNetwork]) -> IPNetwork:
    """The first /64 of this scope's ULA prefix that overlaps nothing in ``taken``."""
    taken = [t for t in taken if t.version == 6]
    for candidate in ula_prefix(txn).subnets(new_prefix=DEFAULT_PREFIX6):
        if not any(candidate.overlaps(t) for t in taken):  # type: ignore[arg-type]
            return candidate
    raise Exhausted("no free /64 left in this host's ULA prefix; give one with --subnet")


def default_gateway(subnet: IPNetwork) -> IPAddress:
    return ipaddress.ip_address(int(subnet.network_address) + 1)


def reserve(txn: Txn, network: Network, ip: IPAddress, owner: str) -> None:
    """Record ``ip`` as taken on ``network`` by ``owner`` (the gateway, a sandbox)."""
    if not txn.create(_key(network.name, ip), {"owner": owner}):
        holder = (txn.get(_key(network.name, ip)) or {}).get("owner", "?")
        raise Conflict(f"address {ip} on network {network.name} is already taken by {holder}")


def allocate(txn: Txn, network: Network, owner: str, requested: IPAddress | None = None,
             exclude: frozenset[IPAddress] = frozenset(), version: int | None = None) -> IPAddress:
    """Give ``owner`` an address on ``network`` (in its pool of ``version``; None: its first pool):
    ``requested`` if free, else the first free one not in ``exclude`` (addresses others are about to
    ask for by name: a topology's static ones)."""
    subnet = network.subnet if version is None else _pool(network, version)
    if requested is not None:
        _check_static(network, subnet, requested)
        reserve(txn, network, requested, owner)
        return requested
    hint_key = _hint_key(network.name, subnet.version)
    hint = txn.peek(hint_key)
    after = ipaddress.ip_address(hint["last"]) if hint else None
    ip_range = network.ip_range if network.ip_range is not None and network.ip_range.version == subnet.version else None
    candidates = (a for a in host_addresses(subnet, ip_range, after) if a not in exclude)
    for addr in itertools.islice(candidates, PROBES):
        if txn.create(_key(network.name, addr), {"owner": owner}):
            return _given(txn, hint_key, addr)
    # Crowded near the hint: read what is taken once, and go on from there.
    used = {k.rsplit("/", 1)[1] for k in txn.range(_key(network.name))}
    for addr in candidates:
        # A writer may have taken it since the range read: then simply try the next one.
        if str(addr) not in used and txn.create(_key(network.name, addr), {"owner": owner}):
            return _given(txn, hint_key, addr)
    raise Exhausted(f"network {network.name}: no free address left in {ip_range or subnet}")


def _pool(network: Network, version: int) -> IPNetwork:
    found = network.pool(version)
    if found is None:
        raise InvalidSpec(f"network {network.name} has no IPv{version} subnet")
    return found[0]


def _given(txn: Txn, hint_key: str, addr: IPAddress) -> IPAddress:
    """Move the hint on (a blind write: concurrent allocators may race on it, which costs only a probe)."""
    txn.put(hint_key, {"last": str(addr)})
    return addr


def taken(txn: Txn, network: str) -> dict[str, str]:
    """Every address taken on ``network``, with who holds it."""
    return {k.rsplit("/", 1)[1]: str(v.get("owner", "?")) for k, v in txn.range(_key(network)).items()}


def release(txn: Txn, network: str, ip: IPAddress) -> None:
    txn.delete(_key(network, ip))


def release_all(txn: Txn, network: str) -> None:
    for key in txn.range(_key(network)):
        txn.delete(key)
    txn.delete(_hint_key(network))
    txn.delete(_hint_key(network, 6))


def _check_static(network: Network, subnet: IPNetwork, ip: IPAddress) -> None:
    if ip.version != subnet.version:
        option = "--ip6" if ip.version == 6 else "--ip"
        raise InvalidSpec(f"address {ip} ({option}): network {network.name} has no IPv{ip.version} subnet")
    if ip not in subnet:
        raise InvalidSpec(f"address {ip} is outside network {network.name}'s subnet {subnet}")
    if ip in (subnet.network_address, subnet.broadcast_address):
        raise InvalidSpec(f"address {ip} is not a host address of {subnet} (network {network.name})")
