"""The fault driver: what each namespace's kernel holds for the faults in force, rendered by pure functions.

Design note. Drops happen inside the namespaces where packets arrive, never on a path
between them: traffic between two sandboxes of one bridge is bridged (the host's
forward hook never sees it, and overlays keeps bridged frames out of the IP hooks in
host namespaces it manages), an overlay's packets cross other hosts inside VXLAN, and
a macvlan sandbox's frames never enter the host's IP stack at all. So each namespace a
fault acts in gets one table of ours, ``ip overlays_<instance>_faults`` (IPv4, as
overlays' endpoints are; never another table): a sandbox's namespace (ours, all of it)
drops what comes from the peers it is cut from, and a lab's host drops what comes from
the hosts it is cut from (their VXLAN and underlay traffic). Dropping on arrival, as
Jepsen does, keeps partitions silent: a drop on the way out would fail the sender's
``sendto`` with EPERM, which no real network does. A published port is reached at a
host's address and arrives NATed, so its cuts are kept by host namespaces before DNAT:
the sender's host, which its packets enter from the sandbox, and the publisher's (a
sender that is not NATed on its way, on macvlan, arrives there with its own address).

Loss and duplication act where the endpoint's interface sends (``out``) or receives
(``in``). A packet lost on its way out is refused to its sender as a local firewall
drop is (EPERM for UDP and ICMP; TCP retransmits as after any loss), where netem's
loss would be silent; what is lost on its way in, nobody hears of.

As in the firewall's table, the rules are fixed and name nothing; what varies are
set elements, each with the fault's remaining time as an nft ``timeout``, so a fault
given a duration ends in the kernel on time by itself, whatever became of the command
that set it. Only the sets that hold something are rendered, with their rules (every
rule costs each packet that crosses its hook, faulty or not):

    cut_from      ipv4_addr                         addresses this namespace does not hear from
    cut_ports     ipv4_addr . ipv4_addr . proto . port   (host namespaces) from an address to a
                                                    published port, matched before its DNAT
    impaired_out  oifname : jump impair_out         the interfaces with loss or duplication:
    impaired_in   iifname : jump impair_in          one hashed lookup, so others pay no more
    loss_out      oifname . random draw (interval)  "eth0" . 0-999: 10 % of eth0's sends dropped
    loss_in       iifname . random draw             ... of what arrives
    dup_out       oifname . random draw             sent twice (``dup to ip daddr``: the copy is
    dup_in        iifname . random draw             routed again; arriving ones via loopback)

Chains: ``in`` on prerouting at raw priority (before conntrack: a dropped packet leaves
no state), ``out`` on postrouting (after routing, so forwarded packets of a host are
caught too); ``impair_in`` and ``impair_out`` hold the draws, for impaired interfaces.
A random draw is ``numgen random mod 10000``: loss in steps of 0.01 %. A share of
packets is a share of what the stack hands the hook: a UDP datagram is one, but with
segmentation offload a TCP burst of up to 64 KB is one there too, so TCP's losses come
in bursts (the share of its bytes is kept), as they do with netem.

The table is rendered whole for each change and replaces the old one in the same nft
transaction (``add``, ``delete``, ``add``: no packet sees it half made); a namespace
with nothing in force has no table. Rates and delays are qdiscs (kernel/tc.py), put on
the sandbox's side of the endpoint: its interface's egress for ``out``, an ifb for ``in``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from overlays.kernel.api import Links
from overlays.kernel.tc import Shape
from overlays.model.faults import BASIS, Faults, Impairment, basis_points
from overlays.model.names import OWNER_TAG, is_ours, owner_alias

FAMILY = "ip"
_DRAW = "numgen random mod 10000"
_SETS = (
    ("set", "cut_from", "type ipv4_addr; flags timeout;"),
    ("set", "cut_ports", "type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags timeout;"),
    ("map", "impaired_out", "type ifname : verdict; flags timeout;"),
    ("map", "impaired_in", "type ifname : verdict; flags timeout;"),
    ("set", "loss_out", f"typeof oifname . {_DRAW}; flags interval, timeout;"),
    ("set", "loss_in", f"typeof iifname . {_DRAW}; flags interval, timeout;"),
    ("set", "dup_out", f"typeof oifname . {_DRAW}; flags interval, timeout;"),
    ("set", "dup_in", f"typeof iifname . {_DRAW}; flags interval, timeout;"),
)
_CHAINS = (
    ("in", " type filter hook prerouting priority raw; policy accept;"),
    ("out", " type filter hook postrouting priority filter; policy accept;"),
    ("impair_in", ""),
    ("impair_out", ""),
)
_RULES = (  # (chain, the set it looks in, rule)
    ("in", "cut_from", 'ip saddr @cut_from drop comment "partition"'),
    ("in", "cut_ports",
     'ip saddr . ip daddr . meta l4proto . th dport @cut_ports drop comment "partition: published ports"'),
    # One hashed lookup of the interface sends the packets of an impaired one on; the others go their way.
    ("in", "impaired_in", "iifname vmap @impaired_in"),
    ("impair_in", "loss_in", f'iifname . {_DRAW} @loss_in drop comment "loss"'),
    ("impair_in", "dup_in", f'iifname . {_DRAW} @dup_in fib daddr type local dup to ip daddr comment "duplicate"'),
    ("out", "impaired_out", "oifname vmap @impaired_out"),
    ("impair_out", "loss_out", f'oifname . {_DRAW} @loss_out drop comment "loss"'),
    ("impair_out", "dup_out", f'oifname . {_DRAW} @dup_out dup to ip daddr comment "duplicate"'),
)

Expiry = float | None  # wall-clock time an element ends at; None: never


def table_name(instance: str) -> str:
    return f"{OWNER_TAG}_{instance}_faults"


def ifb_name(ifname: str) -> str:
    """The ifb that shapes what ``ifname`` receives (inside the sandbox: names are the namespace's own)."""
    return f"ovi-{ifname}"[:15]


@dataclass
class TableState:
    """The elements one namespace's table holds: set name -> element -> expiry."""

    sets: dict[str, dict[str, Expiry]] = field(default_factory=dict)

    def add(self, name: str, elements: Iterable[str], expires: Expiry) -> None:
        have = self.sets.setdefault(name, {})
        for element in elements:
            old = have.get(element, 0.0)
            # Two faults drop the same thing: it stays dropped until the later one ends.
            have[element] = None if old is None or expires is None else max(old, expires)

    def live(self, now: float) -> dict[str, dict[str, Expiry]]:
        return {name: {e: x for e, x in elements.items() if x is None or x > now}
                for name, elements in self.sets.items() if any(x is None or x > now for x in elements.values())}


def draws(ifname: str, pct: float) -> str:
    """The element that takes ``pct`` percent of ``ifname``'s random draws."""
    n = min(basis_points(pct), BASIS)
    return f'"{ifname}" . 0-{n - 1}' if n > 1 else f'"{ifname}" . 0'


def _directions(direction: str) -> tuple[str, ...]:
    return ("in", "out") if direction == "both" else (direction,)


def table_state(faults: Faults, target: str) -> TableState:
    """What ``target``'s table holds for ``faults`` (a sandbox's name, or HOST_TARGET)."""
    state = TableState()
    for p in faults.partitions.values():
        drops = p.targets.get(target)
        if drops is not None:
            state.add("cut_from", drops.from_, p.expires)
            state.add("cut_ports", drops.ports, p.expires)
    for imp in faults.impairments.values():
        if imp.sandbox != target:
            continue
        for way in _directions(imp.spec.direction):
            if imp.spec.loss:
                state.add(f"loss_{way}", [draws(imp.ifname, imp.spec.loss)], imp.expires)
            if imp.spec.duplicate:
                state.add(f"dup_{way}", [draws(imp.ifname, imp.spec.duplicate)], imp.expires)
            if imp.spec.loss or imp.spec.duplicate:
                state.add(f"impaired_{way}", [f'"{imp.ifname}" : jump impair_{way}'], imp.expires)
    return state


def _element(key: str, expires: Expiry, now: float) -> str:
    """A set element, or a map's (``key : value``), with the time it has left."""
    if expires is None:
        return key
    key, colon, value = key.partition(" : ")
    return f"{key} timeout {max(1, math.ceil((expires - now) * 1000))}ms{colon}{value}"


def render(instance: str, state: TableState, now: float) -> str:
    """The whole table for ``state``, replacing the old one in one transaction; or its removal if it holds nothing."""
    table = table_name(instance)
    live = state.live(now)
    lines = [f"add table {FAMILY} {table}", f"delete table {FAMILY} {table}"]
    if not live:
        return "".join(f"{line}\n" for line in lines)
    lines.append(f"add table {FAMILY} {table}")
    # Only the sets that hold something, and their rules: every rule costs each packet that crosses the hook.
    lines += [f"add {kind} {FAMILY} {table} {name} {{ {body} }}" for kind, name, body in _SETS if name in live]
    rules = [(chain, rule) for chain, name, rule in _RULES if name in live]
    lines += [f"add chain {FAMILY} {table} {name}" + (f" {{{hook} }}" if hook else "") for name, hook in _CHAINS
              if any(chain == name for chain, _ in rules)]
    lines += [f"add rule {FAMILY} {table} {chain} {rule}" for chain, rule in rules]
    for name, elements in live.items():
        items = ", ".join(_element(k, x, now) for k, x in sorted(elements.items()))
        lines.append(f"add element {FAMILY} {table} {name} {{ {items} }}")
    return "".join(f"{line}\n" for line in lines)


# -- rates and delays ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shaping:
    """What one endpoint's interface shapes: its egress (``out``), and through an ifb what it receives (``in``)."""

    out: Shape | None = None
    into: Shape | None = None


def shape_of(imp: Impairment) -> Shape | None:
    s = imp.spec
    if not (s.rate or s.delay):
        return None
    return Shape(rate=s.rate, delay_us=int(s.delay * 1000), jitter_us=int(s.jitter * 1000))


def shaping(faults: Faults, target: str) -> dict[str, Shaping]:
    """Every interface of sandbox ``target`` that an impairment shapes, and how."""
    found: dict[str, Shaping] = {}
    for imp in faults.impairments.values():
        shape = shape_of(imp)
        if imp.sandbox != target or shape is None:
            continue
        ways = _directions(imp.spec.direction)
        found[imp.ifname] = Shaping(shape if "out" in ways else None, shape if "in" in ways else None)
    return found


def apply_shaping(inside: Links, ifname: str, want: Shaping, instance: str, mtu: int) -> None:
    """Make ``ifname``'s qdiscs (and its ifb) match ``want``; what is right already stays untouched."""
    if want.out is not None:
        inside.ensure_shape(ifname, want.out)
    else:
        inside.delete_shape(ifname)
    ifb = ifb_name(ifname)
    if want.into is not None:
        inside.ensure_ifb(ifb, owner_alias(instance, f"ifb for {ifname}"), mtu)
        inside.ensure_shape(ifb, want.into)
        inside.ensure_redirect(ifname, ifb)
        return
    inside.delete_redirect(ifname)
    link = inside.link(ifb)
    if link is not None and is_ours(link.alias, instance):
        inside.delete_link(ifb)
