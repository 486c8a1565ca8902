"""Jepsen's partition shapes (``jepsen.nemesis``), as pure functions of a list of nodes.

Each returns either groups (for ``Lab.partition``) or a grudge (receiver -> the
senders it drops, for ``Lab.cut``): a bridge and a ring of majorities are not
groups, since who reaches whom there is not transitive.

    halves(nodes)           two halves, the smaller first (random: shuffled first)
    isolate(nodes)          one node alone (random unless named) against the rest
    majorities_ring(nodes)  each node sees a majority, no two nodes the same one
    bridge(nodes)           two halves, and one node in the middle that sees both
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from overlays.errors import InvalidSpec

Groups = list[list[str]]
Grudge = dict[str, set[str]]


def _enough(nodes: Sequence[str], least: int, shape: str) -> list[str]:
    if len(nodes) < least:
        raise InvalidSpec(f"{shape} needs at least {least} nodes, got {len(nodes)}")
    if len(set(nodes)) != len(nodes):
        raise InvalidSpec(f"{shape}: a node is named twice")
    return list(nodes)


def bisect(nodes: Sequence[str]) -> Groups:
    """Cut in half, the smaller half first (as Jepsen's ``bisect``)."""
    half = len(nodes) // 2
    return [list(nodes[:half]), list(nodes[half:])]


def halves(nodes: Sequence[str], rng: random.Random | None = None) -> Groups:
    """Two halves; with ``rng``, randomly chosen ones (Jepsen's partition-random-halves)."""
    chosen = _enough(nodes, 2, "a partition into halves")
    if rng is not None:
        rng.shuffle(chosen)
    return bisect(chosen)


def isolate(nodes: Sequence[str], node: str | None = None, rng: random.Random | None = None) -> Groups:
    """One node against the rest: ``node``, else one picked at random (Jepsen's partition-random-node)."""
    chosen = _enough(nodes, 2, "isolating a node")
    if node is None:
        node = (rng or random.Random()).choice(chosen)
    elif node not in chosen:
        raise InvalidSpec(f"cannot isolate {node}: it is not one of {', '.join(chosen)}")
    return [[node], [n for n in chosen if n != node]]


def complete_grudge(groups: Sequence[Sequence[str]]) -> Grudge:
    """No node hears any node outside its own group."""
    everyone = {n for g in groups for n in g}
    return {n: everyone - set(g) for g in groups for n in g}


def majorities_ring(nodes: Sequence[str], rng: random.Random | None = None) -> Grudge:
    """Every node sees a majority (itself and its next neighbours on a ring), no two the same one."""
    ring = _enough(nodes, 3, "a ring of majorities")
    if rng is not None:
        rng.shuffle(ring)
    size, majority = len(ring), len(ring) // 2 + 1
    grudge: Grudge = {}
    for i, node in enumerate(ring):
        sees = {ring[(i + k) % size] for k in range(majority)}
        grudge[node] = set(ring) - sees
    return grudge


def bridge(nodes: Sequence[str]) -> Grudge:
    """Two halves that do not hear each other, and the first node of the second half, heard by and hearing all."""
    chosen = _enough(nodes, 3, "a bridge")
    first, second = bisect(chosen)
    middle = second[0]
    grudge = complete_grudge([first, second])
    grudge.pop(middle)
    return {node: senders - {middle} for node, senders in grudge.items()}
