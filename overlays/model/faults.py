"""Faults on demand, as data: what a user asks for (specs) and what a host keeps in force (records).

A partition is a set of *cuts*: directed pairs (sender, receiver) whose packets are
dropped, the shape Jepsen calls a grudge (receiver -> the senders it ignores). Groups
("a | b,c") are the common way to write one: every member of a group is cut from every
member of the others, both ways, or with ``oneway`` only from the first group to the
others. Members are sandboxes or, in a lab, hosts; each is known by its ``Peer``: its
own addresses and the published ports that lead to it (``address . proto . port``).

Records are resolved when a fault is made: the addresses a host drops are written
down then (as Jepsen's iptables rules name addresses), so a record is all that is
needed to put the fault back in the kernel, and nothing is looked up again later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from overlays.errors import InvalidSpec
from overlays.model.names import validate_name

DIRECTIONS = ("in", "out", "both")
SANDBOX, HOST = "sandbox", "host"
HOST_TARGET = ""  # a record's target for the host namespace itself (a host of a lab)
BASIS = 10000  # probabilities are drawn as numgen random mod BASIS: steps of 0.01 %

_DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)?$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_RATE = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>[kmgt]?)(?P<what>bit|bps)$", re.IGNORECASE)
_RATE_PREFIX = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
RATE_MIN, RATE_MAX = 8000, 100 * 1000**3  # bit/s: 1 kB/s to 100 Gbit/s


def parse_duration(what: str, text: str | float) -> float:
    """``500ms``, ``1s``, ``2m``, ``1h`` or a number of seconds, more than 0."""
    found = _DURATION.match(str(text).strip())
    if not found:
        raise InvalidSpec(f"{what} {text!r} is not a duration (like 500ms, 30s, 5m, 1h)")
    seconds = float(found["n"]) * _DURATION_UNITS[found["unit"]]
    if seconds <= 0:
        raise InvalidSpec(f"{what} {text!r} must be more than 0")
    return seconds


def parse_percent(what: str, value: str | float | None) -> float:
    """A share of packets: ``10``, ``10%`` or ``0.5``, from 0 to 100 (None: 0)."""
    if value is None:
        return 0.0
    text = str(value).strip().removesuffix("%")
    try:
        pct = float(text)
    except ValueError as e:
        raise InvalidSpec(f"{what} {value!r} is not a percentage (like 10 or 0.5%)") from e
    if not 0 <= pct <= 100:
        raise InvalidSpec(f"{what} {value!r} must be between 0 and 100")
    if 0 < pct < 100 / BASIS:
        raise InvalidSpec(f"{what} {value!r} is below the smallest step (0.01%)")
    return pct


def parse_rate(what: str, text: str | None) -> int | None:
    """A rate as tc writes it, in bit/s: ``10mbit``, ``500kbit``, ``1gbit``; ``bps`` is bytes/s (None: none)."""
    if text is None:
        return None
    found = _RATE.match(str(text).strip())
    if not found:
        raise InvalidSpec(f"{what} {text!r} is not a rate (like 10mbit, 500kbit, 1gbit; kbps is kilobytes/s)")
    bits = float(found["n"]) * _RATE_PREFIX[found["unit"].lower()] * (8 if found["what"].lower() == "bps" else 1)
    if not RATE_MIN <= bits <= RATE_MAX:
        raise InvalidSpec(f"{what} {text!r} is out of range (8kbit to 100gbit)")
    return int(bits)


def expiry(duration: str | float | None) -> float | None:
    """When a fault given ``duration`` (seconds, or text like 500ms) ends: wall-clock time, as records keep it."""
    import time

    return None if duration is None else time.time() + parse_duration("duration", duration)


def format_rate(bits: int) -> str:
    for unit, size in (("gbit", 1000**3), ("mbit", 1000**2), ("kbit", 1000)):
        if bits >= size and bits % (size // 1000 or 1) == 0:
            return f"{bits / size:g}{unit}"
    return f"{bits}bit"


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise InvalidSpec(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    return direction


def basis_points(pct: float) -> int:
    """How many of the BASIS random draws a share of ``pct`` percent takes."""
    return round(pct * BASIS / 100)


# -- partitions ------------------------------------------------------------------------------------------------------

Cut = tuple[str, str]  # (sender, receiver): packets from sender to receiver are dropped


@dataclass(frozen=True)
class Peer:
    """A partition's member as the hosts that drop its packets see it."""

    name: str
    kind: str  # SANDBOX or HOST
    node: str  # the host (engine node) it lives on, or is
    addresses: tuple[str, ...]
    published: tuple[str, ...] = ()  # "address . proto . port" that lead to it (its published ports)


def group_cuts(groups: Sequence[Sequence[str]], oneway: bool = False) -> list[Cut]:
    """Every member of a group cut from every member of the others (``oneway``: first group's sends only)."""
    cuts: list[Cut] = []
    for i, group in enumerate(groups):
        for j, other in enumerate(groups):
            if i == j or (oneway and i != 0):
                continue
            cuts += [(a, b) for a in group for b in other]
    return cuts


def grudge_cuts(grudge: Mapping[str, Iterable[str]]) -> list[Cut]:
    """A grudge (receiver -> the senders it ignores) as cuts."""
    return [(sender, receiver) for receiver, senders in grudge.items() for sender in senders]


def check_groups(groups: Sequence[Sequence[str]]) -> None:
    if len(groups) < 2:
        raise InvalidSpec("a partition needs at least two groups (like: a b,c)")
    seen: set[str] = set()
    for group in groups:
        if not group:
            raise InvalidSpec("a partition's group is empty")
        for member in group:
            validate_name("partition member", member)
            if member in seen:
                raise InvalidSpec(f"partition member {member} is in two groups")
            seen.add(member)


def describe_groups(groups: Sequence[Sequence[str]], oneway: bool) -> str:
    return (" -> " if oneway else " | ").join(",".join(g) for g in groups)


def default_name(shape: str) -> str:
    """A partition's name when none is given: the same groups make the same name (and replace it)."""
    from overlays.model.names import short_hash

    return "p-" + short_hash(shape, length=6)


@dataclass(frozen=True)
class PartitionSpec:
    """A partition to put in force: its cuts and what its members look like (all hosts' members)."""

    name: str
    cuts: tuple[Cut, ...]
    peers: tuple[Peer, ...]
    shape: str  # how the user wrote it, for listings
    expires: float | None = None  # wall-clock time (time.time()) it heals at; None: until healed
    origin: str = "cli"

    def __post_init__(self) -> None:
        validate_name("partition", self.name)
        if not self.cuts:
            raise InvalidSpec(f"partition {self.name} cuts nothing")
        known = {p.name for p in self.peers}
        for member in {m for cut in self.cuts for m in cut} - known:
            raise InvalidSpec(f"partition {self.name}: member {member} is not known")
        if len({p.kind for p in self.peers}) > 1:
            raise InvalidSpec(f"partition {self.name}: give sandboxes or hosts, not both")

    def peer(self, name: str) -> Peer:
        return next(p for p in self.peers if p.name == name)


@dataclass(frozen=True)
class Drops:
    """What one namespace drops for one partition, on arrival: whatever comes from ``from_`` (addresses), and
    ``ports``: what comes from an address to a published port (``from . to . proto . port``, before NAT)."""

    from_: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()

    def to_record(self) -> dict[str, list[str]]:
        return {"from": list(self.from_), "ports": list(self.ports)}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Drops:
        return cls(tuple(r.get("from", ())), tuple(r.get("ports", ())))


def local_drops(spec: PartitionSpec, node: str) -> dict[str, Drops]:
    """What each namespace of host ``node`` drops for ``spec``: always on arrival, so a sender never learns.

    A receiver drops what comes from the sender's addresses (a sandbox's own namespace; a lab
    host's, for hosts). A published port is reached at a host's address and arrives NATed,
    so the hosts drop those: the sender's, where the packet arrives from its sandbox, and the
    receiver's, where one that was not NATed on its way (a macvlan sender) arrives. Jepsen
    drops at the receiver too: a sender whose packets vanish sees no error, as on a real network.
    """
    acc: dict[str, tuple[set[str], set[str]]] = {}

    def target(name: str) -> tuple[set[str], set[str]]:
        return acc.setdefault(name, (set(), set()))

    for sender_name, receiver_name in spec.cuts:
        sender, receiver = spec.peer(sender_name), spec.peer(receiver_name)
        if receiver.node == node:
            target(HOST_TARGET if receiver.kind == HOST else receiver.name)[0].update(sender.addresses)
        if receiver.published and node in (sender.node, receiver.node):
            target(HOST_TARGET)[1].update(f"{a} . {p}" for a in sender.addresses for p in receiver.published)
    return {t: Drops(tuple(sorted(a)), tuple(sorted(b))) for t, (a, b) in sorted(acc.items())}


@dataclass(frozen=True)
class Partition:
    """A partition in force on one host: this host's part of it (its namespaces' drops)."""

    name: str
    shape: str
    cuts: tuple[Cut, ...]
    targets: dict[str, Drops]  # sandbox name (HOST_TARGET: the host namespace) -> what it drops
    expires: float | None = None
    origin: str = "cli"
    state: str = "pending"

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name, "shape": self.shape, "cuts": [list(c) for c in self.cuts],
                "targets": {t: d.to_record() for t, d in self.targets.items()}, "expires": self.expires,
                "origin": self.origin, "state": self.state}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Partition:
        return cls(r["name"], r.get("shape", ""), tuple((str(a), str(b)) for a, b in r.get("cuts", ())),
                   {t: Drops.from_record(d) for t, d in (r.get("targets") or {}).items()}, r.get("expires"),
                   r.get("origin", "cli"), r.get("state", "ready"))


# -- impairments and link flaps --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImpairSpec:
    """Impairments of one endpoint (a sandbox on a network), per direction: in, out or both."""

    sandbox: str
    network: str | None = None  # None: the sandbox's only network
    loss: float = 0.0  # percent of packets dropped
    duplicate: float = 0.0  # percent of packets sent twice
    rate: int | None = None  # bit/s
    delay: float = 0.0  # ms (needs netem)
    jitter: float = 0.0  # ms (needs netem)
    direction: str = "both"
    expires: float | None = None
    name: str = ""  # a topology file's name for it
    origin: str = "cli"

    @classmethod
    def parse(cls, sandbox: str, network: str | None = None, *, loss: str | float | None = None,
              duplicate: str | float | None = None, rate: str | None = None, delay: str | float | None = None,
              jitter: str | float | None = None, direction: str = "both", expires: float | None = None,
              name: str = "", origin: str = "cli") -> ImpairSpec:
        validate_name("sandbox", sandbox)
        if network is not None:
            validate_name("network", network)
        spec = cls(sandbox, network, parse_percent("--loss", loss), parse_percent("--duplicate", duplicate),
                   parse_rate("--rate", rate), _millis("--delay", delay), _millis("--jitter", jitter),
                   check_direction(direction), expires, name, origin)
        if spec.jitter and not spec.delay:
            raise InvalidSpec(f"impair {sandbox}: --jitter needs --delay")
        if not (spec.loss or spec.duplicate or spec.rate or spec.delay):
            raise InvalidSpec(f"impair {sandbox}: say what to impair (--loss, --duplicate, --rate, --delay)"
                              " or --clear it")
        return spec

    def describe(self) -> str:
        parts = [f"loss {self.loss:g}%" if self.loss else "", f"duplicate {self.duplicate:g}%" if self.duplicate
                 else "", f"rate {format_rate(self.rate)}" if self.rate else "",
                 f"delay {self.delay:g}ms" if self.delay else "", f"jitter {self.jitter:g}ms" if self.jitter else ""]
        return ", ".join(p for p in parts if p) + f" ({self.direction})"


def _millis(what: str, value: str | float | None) -> float:
    if value is None:
        return 0.0
    text = str(value).strip().removesuffix("ms")
    try:
        ms = float(text)
    except ValueError as e:
        raise InvalidSpec(f"{what} {value!r} is not a number of milliseconds") from e
    if not 0 <= ms <= 60_000:
        raise InvalidSpec(f"{what} {value!r} must be between 0 and 60000 ms")
    return ms


Timer = tuple[int, int]  # (pid, start time) of the process that heals a fault at its expiry


@dataclass(frozen=True)
class Impairment:
    """An impairment in force: its spec, resolved to the endpoint's interface inside the sandbox."""

    spec: ImpairSpec
    network: str
    ifname: str
    timer: Timer | None = None
    state: str = "pending"

    @property
    def sandbox(self) -> str:
        return self.spec.sandbox

    @property
    def expires(self) -> float | None:
        return self.spec.expires

    def shapes(self) -> bool:
        """Whether it needs qdiscs (rate, delay), which do not expire by themselves as nft elements do."""
        return bool(self.spec.rate or self.spec.delay)

    def to_record(self) -> dict[str, Any]:
        s = self.spec
        return {"sandbox": s.sandbox, "network": self.network, "ifname": self.ifname, "loss": s.loss,
                "duplicate": s.duplicate, "rate": s.rate, "delay": s.delay, "jitter": s.jitter,
                "direction": s.direction, "expires": s.expires, "name": s.name, "origin": s.origin,
                "timer": list(self.timer) if self.timer else None, "state": self.state}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Impairment:
        spec = ImpairSpec(r["sandbox"], r["network"], float(r.get("loss") or 0), float(r.get("duplicate") or 0),
                          r.get("rate"), float(r.get("delay") or 0), float(r.get("jitter") or 0),
                          r.get("direction", "both"), r.get("expires"), r.get("name", ""), r.get("origin", "cli"))
        timer = r.get("timer")
        return cls(spec, r["network"], r["ifname"], (int(timer[0]), int(timer[1])) if timer else None,
                   r.get("state", "ready"))


@dataclass(frozen=True)
class LinkDown:
    """An endpoint whose link is down (``overlays link down``), until ``link up`` or its expiry."""

    sandbox: str
    network: str
    ifname: str
    expires: float | None = None
    timer: Timer | None = None
    origin: str = "cli"
    state: str = "pending"

    def to_record(self) -> dict[str, Any]:
        return {"sandbox": self.sandbox, "network": self.network, "ifname": self.ifname, "expires": self.expires,
                "timer": list(self.timer) if self.timer else None, "origin": self.origin, "state": self.state}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> LinkDown:
        timer = r.get("timer")
        return cls(r["sandbox"], r["network"], r["ifname"], r.get("expires"),
                   (int(timer[0]), int(timer[1])) if timer else None, r.get("origin", "cli"), r.get("state", "ready"))


@dataclass
class Faults:
    """Every fault in force on one host, as its records say."""

    partitions: dict[str, Partition] = field(default_factory=dict)
    impairments: dict[tuple[str, str], Impairment] = field(default_factory=dict)  # (sandbox, network)
    links: dict[tuple[str, str], LinkDown] = field(default_factory=dict)

    def copy(self) -> Faults:
        return Faults(dict(self.partitions), dict(self.impairments), dict(self.links))

    def __bool__(self) -> bool:
        return bool(self.partitions or self.impairments or self.links)

    def expired(self, now: float) -> Faults:
        """The faults whose time is up."""
        def over(expires: float | None) -> bool:
            return expires is not None and expires <= now

        return Faults({k: v for k, v in self.partitions.items() if over(v.expires)},
                      {k: v for k, v in self.impairments.items() if over(v.expires)},
                      {k: v for k, v in self.links.items() if over(v.expires)})

    def without(self, gone: Faults) -> Faults:
        return Faults({k: v for k, v in self.partitions.items() if k not in gone.partitions},
                      {k: v for k, v in self.impairments.items() if k not in gone.impairments},
                      {k: v for k, v in self.links.items() if k not in gone.links})

    def timers(self) -> set[Timer]:
        found = {i.timer for i in self.impairments.values() if i.timer is not None}
        return found | {link.timer for link in self.links.values() if link.timer is not None}

    def targets(self) -> set[str]:
        """Every namespace a fault acts in (sandbox names; HOST_TARGET for the host's own)."""
        found = {t for p in self.partitions.values() for t in p.targets}
        return found | {s for s, _ in self.impairments} | {s for s, _ in self.links}

    def ready(self) -> Faults:
        return Faults({k: replace(v, state="ready") for k, v in self.partitions.items()},
                      {k: replace(v, state="ready") for k, v in self.impairments.items()},
                      {k: replace(v, state="ready") for k, v in self.links.items()})

    def pending_targets(self) -> set[str]:
        """Namespaces with a fault a command recorded but may not have finished putting in force."""
        found = {t for p in self.partitions.values() if p.state != "ready" for t in p.targets}
        found |= {s for (s, _), i in self.impairments.items() if i.state != "ready"}
        return found | {s for (s, _), link in self.links.items() if link.state != "ready"}
