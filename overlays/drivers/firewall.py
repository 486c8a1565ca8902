"""The firewall driver: nftables scripts for one engine instance, rendered by pure functions.

Design note. Everything lives in one table of our own, ``inet overlays_<instance>``;
we never flush the ruleset or touch another table. The table's *rules* are fixed:
they never mention a network, a sandbox or a port. Everything that varies is an
element of a named set or map, so that

* adding a network or a published port is adding elements (one per object, a
  constant cost whatever their number: lookups in sets and maps are hashed);
* each engine operation is a short script of ``add element`` / ``delete element``
  lines, applied as one nft transaction;
* ensuring the table (``skeleton``) is idempotent and keeps every element:
  ``add`` of a table, set, map or chain that exists is a no-op, and our chains are
  flushed and refilled inside the same transaction, so no packet sees them empty.

Sets and maps:

    bridges        ifname                   every bridge of ours
    same_bridge    ifname . ifname          (b . b) per bridge: traffic staying in its network
    internal       ifname                   bridges of --internal networks
    nat_bridges    ifname                   bridges of masquerading networks
    masq_subnets   ipv4_addr (interval)     subnets masqueraded on their way out
    hairpin        ipv4_addr . ifname       (subnet . bridge): a sandbox reaching a port
                                            published by its own network
    publish_tcp    ipv4_addr . port : ipv4_addr . port    published on one host address
    publish_udp
    publish_any_tcp  port : ipv4_addr . port              published on every host address
    publish_any_udp

and the same for IPv6 (``masq_subnets6``, ``hairpin6``, ``publish6_tcp`` ... with ipv6_addr):
a table of the ``inet`` family sees both, each DNAT and masquerade rule matches one family,
and the rules on interface names (isolation, internal) hold for both at once. A port
published on every host address is an element of each family's map, leading to the
sandbox's address of that family. There is no IPv6 twin of the 127.0.0.1 publish: the
kernel has no route_localnet for IPv6 and drops what a DNAT would send from ::1, so a
publish on [::1] is refused when it is parsed (model.ports).

Chains (the rules in ``_RULES`` below): ``prerouting`` and ``output`` (nat) send
packets addressed to the host to ``publish``, which DNATs through the maps;
``postrouting`` (nat) masquerades egress, hairpin traffic and host-to-127.0.0.1
publishes; ``forward`` (filter) accepts established traffic first, then enforces
internal networks and isolation between networks; ``input`` (filter) keeps
sandboxes away from the host's loopback services (our bridges have
route_localnet=1 so that 127.0.0.1 publishes work from the host).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from overlays.model.names import OWNER_TAG
from overlays.model.ports import PortMapping
from overlays.model.specs import Network

FAMILY = "inet"
LOOPBACK = "127.0.0.0/8"

_SETS = (
    ("set", "bridges", "type ifname;"),
    ("set", "same_bridge", "type ifname . ifname;"),
    ("set", "internal", "type ifname;"),
    ("set", "nat_bridges", "type ifname;"),
    ("set", "masq_subnets", "type ipv4_addr; flags interval;"),
    ("set", "hairpin", "type ipv4_addr . ifname; flags interval;"),
    ("map", "publish_tcp", "type ipv4_addr . inet_service : ipv4_addr . inet_service;"),
    ("map", "publish_udp", "type ipv4_addr . inet_service : ipv4_addr . inet_service;"),
    ("map", "publish_any_tcp", "type inet_service : ipv4_addr . inet_service;"),
    ("map", "publish_any_udp", "type inet_service : ipv4_addr . inet_service;"),
    ("set", "masq_subnets6", "type ipv6_addr; flags interval;"),
    ("set", "hairpin6", "type ipv6_addr . ifname; flags interval;"),
    ("map", "publish6_tcp", "type ipv6_addr . inet_service : ipv6_addr . inet_service;"),
    ("map", "publish6_udp", "type ipv6_addr . inet_service : ipv6_addr . inet_service;"),
    ("map", "publish6_any_tcp", "type inet_service : ipv6_addr . inet_service;"),
    ("map", "publish6_any_udp", "type inet_service : ipv6_addr . inet_service;"),
)

_CHAINS = (
    ("prerouting", "type nat hook prerouting priority dstnat; policy accept;"),
    ("output", "type nat hook output priority -100; policy accept;"),
    ("postrouting", "type nat hook postrouting priority srcnat; policy accept;"),
    ("forward", "type filter hook forward priority filter; policy accept;"),
    ("input", "type filter hook input priority filter; policy accept;"),
    ("publish", None),
)

_RULES = (
    ("prerouting", f'ip daddr {LOOPBACK} return comment "never DNAT a martian addressed to loopback"'),
    ("prerouting", "fib daddr type local jump publish"),
    ("output", "fib daddr type local jump publish"),
    ("publish", "meta l4proto tcp dnat ip to ip daddr . th dport map @publish_tcp"),
    ("publish", "meta l4proto udp dnat ip to ip daddr . th dport map @publish_udp"),
    ("publish", "meta nfproto ipv4 meta l4proto tcp dnat ip to th dport map @publish_any_tcp"),
    ("publish", "meta nfproto ipv4 meta l4proto udp dnat ip to th dport map @publish_any_udp"),
    ("publish", "meta l4proto tcp dnat ip6 to ip6 daddr . th dport map @publish6_tcp"),
    ("publish", "meta l4proto udp dnat ip6 to ip6 daddr . th dport map @publish6_udp"),
    ("publish", "meta nfproto ipv6 meta l4proto tcp dnat ip6 to th dport map @publish6_any_tcp"),
    ("publish", "meta nfproto ipv6 meta l4proto udp dnat ip6 to th dport map @publish6_any_udp"),
    ("postrouting", f'ct status dnat ip saddr {LOOPBACK} masquerade comment "host to loopback publish"'),
    ("postrouting", 'ct status dnat ip saddr . oifname @hairpin masquerade comment "hairpin"'),
    ("postrouting", 'ip saddr @masq_subnets oifname != @bridges masquerade comment "egress"'),
    ("postrouting", 'ct status dnat ip6 saddr . oifname @hairpin6 masquerade comment "hairpin (IPv6)"'),
    ("postrouting", 'ip6 saddr @masq_subnets6 oifname != @bridges masquerade comment "egress (IPv6)"'),
    ("forward", "ct state established,related accept"),
    ("forward", 'iifname . oifname @same_bridge accept comment "stays in its network"'),
    ("forward", 'iifname @internal drop comment "internal: nothing leaves"'),
    ("forward", 'oifname @internal drop comment "internal: nothing enters"'),
    ("forward", 'ct status dnat oifname @bridges accept comment "published ports"'),
    ("forward", 'iifname @bridges oifname @bridges drop comment "isolation between networks"'),
    ("forward", 'oifname @nat_bridges drop comment "masqueraded: reached through published ports only"'),
    ("input", f'iifname @bridges ip daddr {LOOPBACK} ct state new,invalid drop comment "no loopback"'),
)


@dataclass(frozen=True)
class Publish:
    """A published port and the sandbox address it leads to."""

    mapping: PortMapping
    target: ipaddress.IPv4Address | ipaddress.IPv6Address


Elements = dict[str, list[str]]


def table_name(instance: str) -> str:
    """Our table for one engine instance (state dir + host namespace), e.g. ``overlays_1a2b3c``."""
    return f"{OWNER_TAG}_{instance}"


def _q(ifname: str) -> str:
    return f'"{ifname}"'


def network_elements(net: Network) -> Elements:
    """The set elements that describe one network."""
    bridge = _q(net.bridge)
    found: Elements = {"bridges": [bridge], "same_bridge": [f"{bridge} . {bridge}"]}
    if net.internal:
        found["internal"] = [bridge]
        return found
    for subnet in net.subnets:
        six = "6" if subnet.version == 6 else ""
        found.setdefault(f"hairpin{six}", []).append(f"{subnet} . {bridge}")
        if net.masquerade:
            found.setdefault(f"masq_subnets{six}", []).append(str(subnet))
    if net.masquerade:
        found["nat_bridges"] = [bridge]
    return found


def publish_elements(publishes: Iterable[Publish]) -> Elements:
    """The map elements (key : value) for published ports."""
    found: Elements = {}
    for p in sorted(publishes, key=lambda p: (p.mapping.protocol, p.mapping.host_port, p.mapping.host_key)):
        m = p.mapping
        value = f"{p.target} . {m.container_port}"
        family = "publish6" if p.target.version == 6 else "publish"
        if m.host_ip is None:
            found.setdefault(f"{family}_any_{m.protocol}", []).append(f"{m.host_port} : {value}")
        else:
            found.setdefault(f"{family}_{m.protocol}", []).append(f"{m.host_ip} . {m.host_port} : {value}")
    return found


def _merge(*parts: Elements) -> Elements:
    merged: Elements = {}
    for part in parts:
        for name, elements in part.items():
            merged.setdefault(name, []).extend(elements)
    return merged


def _key(element: str) -> str:
    """A map element's key (the part before `` : ``); a set element is its own key."""
    return element.split(" : ", 1)[0]


def add_elements(table: str, elements: Elements) -> list[str]:
    return [
        f"add element {FAMILY} {table} {name} {{ {', '.join(items)} }}"
        for name, items in elements.items()
        if items
    ]


def delete_elements(table: str, elements: Elements) -> list[str]:
    """Idempotent removal: add first (a no-op if present), so the delete never misses."""
    lines = add_elements(table, elements)
    lines += [
        f"delete element {FAMILY} {table} {name} {{ {', '.join(_key(e) for e in items)} }}"
        for name, items in elements.items()
        if items
    ]
    return lines


def skeleton(table: str) -> list[str]:
    """Ensure the table, its sets, maps, chains and rules; keeps every element."""
    lines = [f"add table {FAMILY} {table}"]
    lines += [f"add {kind} {FAMILY} {table} {name} {{ {body} }}" for kind, name, body in _SETS]
    for chain, hook in _CHAINS:
        lines.append(f"add chain {FAMILY} {table} {chain}" + (f" {{ {hook} }}" if hook else ""))
    lines += [f"flush chain {FAMILY} {table} {chain}" for chain, _ in _CHAINS]
    lines += [f"add rule {FAMILY} {table} {chain} {rule}" for chain, rule in _RULES]
    return lines


def table_elements(networks: Iterable[Network], publishes: Iterable[Publish]) -> dict[str, frozenset[str]]:
    """Every set and map of the table as it should be, element by element (in nft's text notation)."""
    merged = _merge(*(network_elements(n) for n in networks), publish_elements(publishes))
    return {name: frozenset(merged.get(name, ())) for _, name, _ in _SETS}


def table_rules() -> dict[str, tuple[str | None, ...]]:
    """The comments of each chain's rules, in order (None for a rule without one): the rules as they should be."""
    found: dict[str, tuple[str | None, ...]] = {chain: () for chain, _ in _CHAINS}
    for chain, rule in _RULES:
        comment = rule.split('comment "', 1)[1].rstrip('"') if 'comment "' in rule else None
        found[chain] = (*found[chain], comment)
    return found


def script(lines: Iterable[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


# -- what each engine operation applies ------------------------------------------------------------------------------


def network_up(instance: str, net: Network) -> str:
    """The table exists with its rules, and ``net`` is in its sets."""
    table = table_name(instance)
    return script(skeleton(table) + add_elements(table, network_elements(net)))


def network_down(instance: str, net: Network) -> str:
    """``net`` leaves the sets (the table stays: other networks use it)."""
    table = table_name(instance)
    return script(delete_elements(table, network_elements(net)))


def publish(instance: str, publishes: Iterable[Publish]) -> str:
    table = table_name(instance)
    return script(add_elements(table, publish_elements(publishes)))


def unpublish(instance: str, publishes: Iterable[Publish]) -> str:
    table = table_name(instance)
    return script(delete_elements(table, publish_elements(publishes)))


def retarget(instance: str, old: Iterable[Publish], new: Iterable[Publish]) -> str:
    """Move published ports to another address of their sandbox (after connect/disconnect)."""
    table = table_name(instance)
    return script(delete_elements(table, publish_elements(old)) + add_elements(table, publish_elements(new)))


def render_table(instance: str, networks: Iterable[Network], publishes: Iterable[Publish]) -> str:
    """The whole table from scratch, replacing whatever is there (one transaction)."""
    table = table_name(instance)
    elements = _merge(*(network_elements(n) for n in networks), publish_elements(publishes))
    lines = [f"add table {FAMILY} {table}", f"delete table {FAMILY} {table}"]
    return script(lines + skeleton(table) + add_elements(table, elements))
