"""Faults across a lab: members named by the file's sandboxes or hosts, each host's engine keeping its part.

A partition's members are resolved here, on every host they live on (their addresses,
their published ports; a lab host by its fabric address), into one ``PartitionSpec``
that every involved host's engine gets whole: each keeps the drops of its own members
(see model/faults.py), so the two ends of a cut need not live on one host. Healing
asks every host of the lab. A lab with hosts partitions hosts (their VXLAN and
underlay traffic stops) or sandboxes; a lab without hosts, sandboxes.

    with Lab.from_file("examples/overlay-lab.yaml") as lab:
        with lab.partitioned(["h1"], ["h2", "h3"]):
            assert not lab.reaches("a1", "b1")
        assert lab.reaches("a1", "b1")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from overlays.errors import InvalidSpec, NotFound
from overlays.kernel import netns
from overlays.model.faults import (
    HOST,
    Faults,
    Impairment,
    ImpairSpec,
    PartitionSpec,
    Peer,
    check_groups,
    default_name,
    describe_groups,
    expiry,
    group_cuts,
    grudge_cuts,
    local_drops,
)

if TYPE_CHECKING:
    from overlays.topology.lab import Lab

Duration = str | float | None


def nodes(lab: Lab) -> list[str]:
    """What shapes partition by default: the lab's hosts, else its sandboxes."""
    return list(lab.topology.hosts) or [s.spec.name for s in lab.topology.sandboxes]


def host_of(lab: Lab, member: str) -> str:
    """The lab host a member lives on (a host: itself)."""
    if member in lab.topology.hosts:
        return member
    decl = lab.topology.sandbox(member)
    if decl is None:
        what = "a sandbox or a host" if lab.topology.lab else "a sandbox"
        raise NotFound(f"{member} is not {what} of topology {lab.name}")
    return decl.host


def members(lab: Lab, names: Iterable[str]) -> list[Peer]:
    """The partition members ``names``, as the hosts that drop their packets will know them."""
    found: list[Peer] = []
    boxes: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        host = host_of(lab, name)
        if name == host:
            found.append(Peer(name, HOST, lab.engine(host).node, (lab.host_address(host),)))
        else:
            boxes.setdefault(host, []).append(name)
    for host, names_there in boxes.items():
        found += lab.engine(host).partition_peers(names_there)
    return found


class Partitioned:
    """A partition in force across a lab; ``heal()`` ends it (also on leaving a ``with`` block)."""

    def __init__(self, lab: Lab, spec: PartitionSpec) -> None:
        self.lab = lab
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def heal(self) -> None:
        heal(self.lab, [self.name], missing_ok=True)

    def __enter__(self) -> Partitioned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.heal()


def cut(lab: Lab, cuts: Sequence[tuple[str, str]], shape: str, duration: Duration = None, name: str | None = None,
        origin: str = "python") -> Partitioned:
    """Drop packets from each sender to each receiver of ``cuts``; the hosts involved each apply their part."""
    involved = sorted({m for c in cuts for m in c})
    spec = PartitionSpec(name or default_name(shape), tuple(cuts), tuple(members(lab, involved)), shape,
                         expiry(duration), origin)
    done: list[str] = []
    try:
        for host in sorted({host_of(lab, m) for m in involved}):
            if local_drops(spec, lab.engine(host).node):  # a host whose members only send keeps nothing
                lab.engine(host).partition(spec)
                done.append(host)
    except BaseException:
        for host in done:
            lab.engine(host).heal([spec.name])
        raise
    return Partitioned(lab, spec)


def partition(lab: Lab, groups: Sequence[Sequence[str]], oneway: bool = False, duration: Duration = None,
              name: str | None = None, origin: str = "python") -> Partitioned:
    """Every member of a group cut from the members of the others (``oneway``: from the first group's only)."""
    groups = [list(g) for g in groups]
    check_groups(groups)
    return cut(lab, group_cuts(groups, oneway), describe_groups(groups, oneway), duration, name, origin)


def grudge(lab: Lab, grudge: dict[str, set[str]], duration: Duration = None, name: str | None = None,
           origin: str = "python") -> Partitioned:
    """Jepsen's form: each receiver drops what the senders it holds a grudge against send it."""
    cuts = grudge_cuts(grudge)
    if not cuts:
        raise InvalidSpec("that grudge cuts nothing")
    shape = "; ".join(f"{r} ignores {','.join(sorted(s))}" for r, s in sorted(grudge.items()) if s)
    return cut(lab, cuts, shape, duration, name, origin)


def _hosts_up(lab: Lab) -> list[str]:
    return [h for h in lab.topology.host_names() if not lab.topology.lab or lab.infra.host_exists(h)]


def heal(lab: Lab, names: Sequence[str] = (), everything: bool = False, origin: str | None = None,
         missing_ok: bool = False) -> list[str]:
    """Heal on every host: the partitions (and impairments) named, else every partition; ``everything``: all."""
    healed: list[str] = []
    left = set(names)
    for host in _hosts_up(lab):
        engine = lab.engine(host)
        if names:
            here = engine.faults()
            mine = [n for n in names if n in here.partitions or any(i.spec.name == n for i in
                                                                    here.impairments.values())]
            left -= set(mine)
            if mine:
                healed += engine.heal(mine)
        else:
            healed += engine.heal(everything=everything, origin=origin)
    if left and not missing_ok:
        raise NotFound(f"no partition or impairment {', '.join(sorted(left))} is in force in topology {lab.name}")
    return sorted(set(healed))


class Impaired:
    """An impairment in force; ``clear()`` lifts it (also on leaving a ``with`` block)."""

    def __init__(self, lab: Lab, record: Impairment) -> None:
        self.lab = lab
        self.record = record

    def clear(self) -> None:
        engine = self.lab.engine(host_of(self.lab, self.record.sandbox))
        with contextlib.suppress(NotFound):  # ended already
            engine.clear_impairment(self.record.sandbox, self.record.network)

    def __enter__(self) -> Impaired:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


def impair(lab: Lab, spec: ImpairSpec) -> Impaired:
    return Impaired(lab, lab.engine(host_of(lab, spec.sandbox)).impair(spec))


def in_force(lab: Lab) -> dict[str, Faults]:
    """Each host's faults in force."""
    return {host: lab.engine(host).faults() for host in _hosts_up(lab)}


def cut_pairs(lab: Lab) -> dict[tuple[str, str], str]:
    """Sandbox pairs (sender, receiver) whose packets a partition in force drops -> the partition's name."""
    found: dict[tuple[str, str], str] = {}
    for faults in in_force(lab).values():
        for p in faults.partitions.values():
            for pair in sandbox_cuts(lab, p.cuts):
                found.setdefault(pair, p.name)
    return found


def sandbox_cuts(lab: Lab, cuts: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Cuts between sandboxes, with a cut between two hosts standing for every pair of their sandboxes."""
    hosts = set(lab.topology.hosts)
    found: set[tuple[str, str]] = set()
    for sender, receiver in cuts:
        if sender in hosts or receiver in hosts:
            found |= {(a.spec.name, b.spec.name) for a in lab.topology.sandboxes if a.host == sender
                      for b in lab.topology.sandboxes if b.host == receiver}
        else:
            found.add((sender, receiver))
    return found


def reaches(lab: Lab, source: str, target: str, count: int = 1) -> bool:
    """Whether a ping from sandbox ``source`` to sandbox ``target`` is answered (any of ``count``)."""
    from overlays.topology.check import ping

    src, dst = lab.sandbox(source), lab.sandbox(target)
    shared = [e for e in dst.endpoints if e.network in {x.network for x in src.endpoints}]
    if not shared:
        raise InvalidSpec(f"sandboxes {source} and {target} share no network")
    path = str(netns.path_of(src.netns))
    return ping(path, str(shared[0].ip), count)


@contextmanager
def partitioned(lab: Lab, groups: Sequence[Sequence[str]], oneway: bool = False,
                name: str | None = None) -> Iterator[Partitioned]:
    handle = partition(lab, groups, oneway, name=name)
    try:
        yield handle
    finally:
        handle.heal()
