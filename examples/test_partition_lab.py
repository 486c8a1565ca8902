"""A pytest example: partition a three-node lab and assert on what each node can reach.

    sudo .venv/bin/pytest examples/test_partition_lab.py

The lab is examples/faults-lab.yaml: three simulated hosts (network namespaces on one
fabric), one sandbox each on an overlay network. ``lab.partition`` returns a handle
(``.heal()``), ``lab.partitioned`` holds inside a ``with`` block only, and the Jepsen
shapes (``isolate``, ``partition_halves``, ``partition_bridge``,
``partition_majorities_ring``) pick their groups from the lab's hosts. ``make test``
runs this file too.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from overlays.topology import Lab, resolve

FILE = Path(__file__).with_name("faults-lab.yaml")
NODES = {"h1": "n1", "h2": "n2", "h3": "n3"}  # host -> the node (sandbox) it runs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    raw = yaml.safe_load(FILE.read_text())
    raw["name"] = f"ex{os.getpid() % 100000}"  # a lab's namespaces are the machine's: one name per run
    with Lab(resolve(raw, str(FILE)), state_dir=tmp_path_factory.mktemp("state")) as lab:
        yield lab


def reachable(lab: Lab) -> set[tuple[str, str]]:
    """Every ordered pair of nodes (a, b) where a's ping to b is answered (all pinged at once)."""
    nodes = sorted(NODES.values())
    candidates = [(a, b) for a in nodes for b in nodes if a != b]
    with ThreadPoolExecutor(len(candidates)) as pool:
        answered = list(pool.map(lambda pair: lab.reaches(*pair), candidates))
    return {pair for pair, ok in zip(candidates, answered, strict=True) if ok}


def pairs(*nodes: str) -> set[tuple[str, str]]:
    return {(a, b) for a in nodes for b in nodes if a != b}


def test_a_healthy_lab_is_fully_connected(lab: Lab) -> None:
    assert reachable(lab) == pairs("n1", "n2", "n3")


def test_a_host_cut_off_reaches_no_one_and_heals(lab: Lab) -> None:
    with lab.partitioned(["h1"], ["h2", "h3"]):
        assert reachable(lab) == pairs("n2", "n3")
    assert reachable(lab) == pairs("n1", "n2", "n3")


def test_a_bridge_keeps_the_middle_node_in_touch_with_both_sides(lab: Lab) -> None:
    handle = lab.partition_bridge()  # halves [h1] and [h2, h3]; h2 is the bridge
    try:
        assert reachable(lab) == pairs("n1", "n2") | pairs("n2", "n3")
    finally:
        handle.heal()
    assert reachable(lab) == pairs("n1", "n2", "n3")


def test_random_halves_split_the_lab_in_two(lab: Lab) -> None:
    handle = lab.partition_halves(random.Random(7))
    small, large = handle.spec.shape.split(" | ")
    try:
        assert reachable(lab) == pairs(*(NODES[h] for h in large.split(",")))
        assert len(small.split(",")) == 1
    finally:
        handle.heal()


def test_sandboxes_can_be_partitioned_too(lab: Lab) -> None:
    with lab.partitioned(["n3"], ["n1", "n2"], oneway=True):  # n3's packets to n1 and n2 are dropped
        assert reachable(lab) == pairs("n1", "n2")  # a ping needs both ways: n3 is out either way
    assert reachable(lab) == pairs("n1", "n2", "n3")


def test_isolating_one_node_leaves_the_others_a_majority(lab: Lab) -> None:
    with lab.isolate("h3"):  # a handle is a context manager too: healed on leaving the block
        assert reachable(lab) == pairs("n1", "n2")
    assert reachable(lab) == pairs("n1", "n2", "n3")
