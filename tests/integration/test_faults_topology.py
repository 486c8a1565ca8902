"""Faults in topology files: applied by up, toggled by a later up, shown by plan, honoured by check, removed by down."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from overlays.topology import Lab, resolve

from .conftest import Cli, _instances, sh, unique
from .test_faults import NOTHING, ours_in, udp_through


def file_of(name: str) -> dict[str, Any]:
    return {"name": name, "networks": {"n": {"subnet": "10.59.0.0/24"}},
            "sandboxes": {"a": {"networks": ["n"]}, "b": {"networks": ["n"]}, "c": {"networks": ["n"]}},
            "faults": {"split": {"partition": [["a"], "b,c"]},
                       "deaf-c": {"impair": "c", "loss": 100, "direction": "in", "enabled": False}}}


def lab_for(raw: dict[str, Any], host: str, state_dir: Path) -> Lab:
    lab = Lab(resolve(copy.deepcopy(raw), "test.yaml"), host_netns=host, state_dir=state_dir)
    _instances.add(lab.main.ctx.instance)
    return lab


def through(lab: Lab, a: str, b: str) -> int:
    box = lab.sandbox(b)
    return udp_through(lab.sandbox(a).netns, box.netns, str(box.endpoints[0].ip))


def test_faults_of_the_file_are_applied_toggled_and_removed(host: str, state_dir: Path) -> None:
    raw = file_of(unique("ft"))
    lab = lab_for(raw, host, state_dir)
    try:
        assert [str(a) for a in lab.plan()][-1] == "apply fault split (partition a | b,c)"
        lab.up()
        assert through(lab, "a", "b") == 0 and through(lab, "c", "a") == 0 and through(lab, "b", "c") == 5
        assert lab.plan() == [], "a second up changes nothing"
        table = f"overlays_{lab.main.instance}_faults"
        sh(lab.sandbox("b").netns, "nft", "delete", "table", "ip", table)  # drift: by hand
        assert lab.main.fault_problems() == ["the fault table of sandbox b is missing"]
        assert [str(a) for a in lab.plan()] == ["repair fault split (it is not in force)"]
        lab.up()
        assert through(lab, "c", "a") == 0 and lab.main.fault_problems() == []

        off = copy.deepcopy(raw)
        off["faults"]["split"]["enabled"] = False
        off["faults"]["deaf-c"]["enabled"] = True
        lab2 = lab_for(off, host, state_dir)
        assert [str(a) for a in lab2.plan()] == ["remove fault split",
                                                 "apply fault deaf-c (impair c on n: loss 100% (in))"]
        lab2.up()
        assert through(lab2, "a", "b") == 5 and through(lab2, "a", "c") == 0 and through(lab2, "c", "a") == 5
        assert lab2.plan() == []

        lab2.engine("local").heal(everything=True)  # behind up's back
        assert [str(a) for a in lab2.plan()] == ["repair fault deaf-c (it is not in force)"]
        lab2.up()
        assert through(lab2, "b", "c") == 0

        edited = copy.deepcopy(off)
        edited["faults"]["deaf-c"]["direction"] = "out"
        lab3 = lab_for(edited, host, state_dir)
        assert [str(a) for a in lab3.plan()] == ["change fault deaf-c (its declaration changed)"]
        lab3.up()
        assert through(lab3, "b", "c") == 5 and through(lab3, "c", "b") == 0
        for extra in (lab2, lab3):
            extra.close()
    finally:
        lab.down()
        lab.close()
    after = lab_for(raw, host, state_dir)
    assert not after.main.faults()
    after.close()


def test_check_expects_exactly_the_pairs_a_declared_partition_cuts(host: str, state_dir: Path) -> None:
    raw = file_of(unique("fc"))
    raw["faults"]["split"]["oneway"] = True  # a's packets to b and c dropped: a ping needs both ways, so all fail
    lab = lab_for(raw, host, state_dir)
    try:
        lab.up()
        report = lab.check()
        assert report.passed, report.matrix()
        cut = {(p.source, p.target) for p in report.probes if p.kind == "cut"}
        assert cut == {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")}
        assert "xx" in report.matrix()
        lab.engine("local").heal(["split"])  # the file says cut: a pair that reaches is a failure
        failed = {(p.source, p.target) for p in lab.check().failures()}
        assert failed == cut
    finally:
        lab.down()
        lab.close()


def test_the_cli_takes_a_file_and_down_leaves_nothing(cli: Cli, host: str, tmp_path: Path) -> None:
    raw = file_of(unique("fl"))
    del raw["faults"]
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(raw))
    cli("up", "-f", str(path), check=True)
    done = cli("partition", "-f", str(path), "a", "b", "--name", "ab", check=True)
    assert done.stdout.strip() == "partition ab in force: a | b"
    cli("impair", "-f", str(path), "c", "--rate", "5mbit", "--loss", "1", check=True)
    shown = json.loads(cli("partition", "--show", "--json", "-f", str(path), check=True).stdout)
    assert sorted(f["kind"] for f in shown) == ["impair", "partition"]
    plan = cli("plan", "-f", str(path), check=True).stdout
    assert "up to date" in plan, "faults made by hand are not the file's: up leaves them alone"
    boxes = {b["name"]: b for b in json.loads(cli("ps", "--json", check=True).stdout)}
    cli("down", "-f", str(path), check=True)
    assert cli("partition", "--show", check=True).stdout.strip() == "no faults in force"
    for box in boxes.values():
        assert not Path("/run/netns", box["netns"]).exists()
    assert ours_in(host, "")["tables"] == NOTHING["tables"]
