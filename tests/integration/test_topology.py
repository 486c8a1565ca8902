"""Topology files end to end: up, check, idempotent up, minimal edits, drift, down."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from overlays.errors import KernelError
from overlays.kernel.faults import FaultyKernel
from overlays.kernel.linux import LinuxKernel
from overlays.kernel.netns import NETNS_DIR
from overlays.topology import Lab, resolve

from .conftest import Cli, _instances, ip_json, unique

EXAMPLES = Path(__file__).parents[2] / "examples"


def example(name: str) -> dict[str, Any]:
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    raw["name"] = unique("t")  # lab namespaces are global: a unique name per test run
    return dict(raw)


def lab_for(raw: dict[str, Any], host: str, state_dir: Path, kernel: Any = None) -> Lab:
    lab = Lab(resolve(copy.deepcopy(raw), "test.yaml"), host_netns=None if raw.get("hosts") else host,
              state_dir=state_dir, kernel=kernel)
    _instances.add(lab.main.ctx.instance)
    return lab


def leftovers(lab_name: str) -> list[str]:
    return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(f"ovl-{lab_name}-"))


@pytest.mark.parametrize("name", ["seed.yaml", "three-tier.yaml", "two-host-lab.yaml", "overlay-lab.yaml"])
def test_example_goes_up_checks_out_is_idempotent_and_goes_down(name: str, host: str, state_dir: Path) -> None:
    raw = example(name)
    lab = lab_for(raw, host, state_dir)
    try:
        assert lab.up(), "the first up creates things"
        report = lab.check()
        assert report.passed, report.matrix()
        assert len(report.probes) >= 2
        # A second up: no actions, and not one changing kernel step.
        counting = FaultyKernel(LinuxKernel())
        again = lab_for(raw, host, state_dir, kernel=counting)
        assert again.up() == []
        assert counting.steps == [], counting.steps
        again.close()
    finally:
        lab.down()
        lab.close()
    assert leftovers(raw["name"]) == []
    assert [str(link["ifname"]) for link in ip_json(host, "link", "show")] == ["lo"]


def test_an_edit_is_applied_with_the_fewest_changes(host: str, state_dir: Path) -> None:
    raw = example("three-tier.yaml")
    lab = lab_for(raw, host, state_dir)
    try:
        lab.up()
        edited = copy.deepcopy(raw)
        edited["sandboxes"]["cache"] = {"networks": ["data"]}          # a sandbox added
        edited["sandboxes"]["web"]["ports"] = ["9090:80"]               # a port changed
        edited["networks"]["spare"] = {"subnet": "10.60.9.0/24"}        # a network added ...
        lab2 = lab_for(edited, host, state_dir)
        lab2.up()
        del edited["networks"]["spare"]                                  # ... and removed again
        lab3 = lab_for(edited, host, state_dir)
        assert [str(a) for a in lab3.plan()] == ["remove network spare on local"]
        lab3.up()
        assert lab3.plan() == []
        assert lab3.check().passed, lab3.check().matrix()
        assert lab3.sandbox("app").netns == lab.sandbox("app").netns, "untouched sandboxes are left alone"
        assert [p.host_port for p in lab3.sandbox("web").ports] == [9090], "the changed port was applied"
        for extra in (lab2, lab3):
            extra.close()
    finally:
        lab.down()
        lab.close()


def test_drift_is_repaired_by_up(host: str, state_dir: Path) -> None:
    raw = example("seed.yaml")
    lab = lab_for(raw, host, state_dir)
    try:
        lab.up()
        ep = lab.sandbox("a").endpoints[0]
        subprocess.run(["ip", "-n", host, "link", "del", ep.host_ifname], check=True)
        assert [a.verb for a in lab.plan()] == ["repair"]
        assert not lab.check().passed
        lab.up()
        assert lab.plan() == [] and lab.check().passed
    finally:
        lab.down()
        lab.close()


class _FailsSecondSandbox(FaultyKernel):
    """The real kernel, except that making the second sandbox's namespace fails (or is interrupted)."""

    def __init__(self, failure: type[BaseException] = KernelError) -> None:
        super().__init__(LinuxKernel())
        self.sandboxes = 0
        self.failure = failure

    def create_netns(self, name: str) -> Path:
        if name.startswith("ov-"):
            self.sandboxes += 1
            if self.sandboxes == 2:
                if self.failure is KernelError:
                    raise KernelError("create netns", name, None, "injected failure")
                raise self.failure("injected interruption")
        return super().create_netns(name)


def test_an_up_that_fails_halfway_rolls_back_to_the_state_before(host: str, state_dir: Path) -> None:
    raw = example("three-tier.yaml")
    broken = lab_for(raw, host, state_dir, kernel=_FailsSecondSandbox())
    with pytest.raises(KernelError, match="injected failure"):
        broken.up()
    broken.close()
    assert [str(link["ifname"]) for link in ip_json(host, "link", "show")] == ["lo"], "nothing is left"
    assert leftovers(raw["name"]) == []
    lab = lab_for(raw, host, state_dir)
    try:
        assert lab.record().objects == {}, "nor any record of it"
        assert all(a.verb == "create" and not a.detail for a in lab.plan())
        lab.up()
        assert lab.plan() == [] and lab.check().passed
    finally:
        lab.down()
        lab.close()


@pytest.mark.parametrize("name", ["two-host-lab.yaml", "overlay-lab.yaml"])
def test_a_lab_whose_first_up_fails_halfway_leaves_no_host_behind(name: str, host: str, state_dir: Path) -> None:
    raw = example(name)
    broken = lab_for(raw, host, state_dir, kernel=_FailsSecondSandbox())
    with pytest.raises(KernelError, match="injected failure"):
        broken.up()
    assert broken.record().agents == {} and broken.record().hosts == []
    broken.close()
    assert leftovers(raw["name"]) == [], "every host's part, the switch and the agents are gone"


def test_an_edit_that_fails_halfway_rolls_back_to_the_topology_before(host: str, state_dir: Path) -> None:
    raw = example("three-tier.yaml")
    lab = lab_for(raw, host, state_dir)
    try:
        lab.up()
        before = (lab.record().objects, [b.endpoints for b in lab.main.sandboxes()])
        edited = copy.deepcopy(raw)
        edited["networks"]["extra"] = {"subnet": "10.79.0.0/24"}
        edited["sandboxes"]["late1"] = {"networks": ["extra"]}
        edited["sandboxes"]["late2"] = {"networks": ["extra"]}
        broken = lab_for(edited, host, state_dir, kernel=_FailsSecondSandbox())
        with pytest.raises(KernelError, match="injected failure"):
            broken.up()
        broken.close()
        assert (lab.record().objects, [b.endpoints for b in lab.main.sandboxes()]) == before
        assert "extra" not in {n.name for n in lab.main.networks()}
        assert lab.plan() == [] and lab.check().passed
    finally:
        lab.down()
        lab.close()


def test_an_up_interrupted_halfway_is_completed_by_the_next_up(host: str, state_dir: Path) -> None:
    raw = example("three-tier.yaml")
    broken = lab_for(raw, host, state_dir, kernel=_FailsSecondSandbox(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        broken.up()
    broken.close()
    lab = lab_for(raw, host, state_dir)
    try:
        missing = [a for a in lab.plan() if a.kind == "sandbox"]
        assert missing and all(a.verb == "create" and a.detail == "it is missing" for a in missing), missing
        assert len(missing) == len(raw["sandboxes"]) - 1  # the first one was made
        lab.up()
        assert lab.plan() == [] and lab.check().passed
    finally:
        lab.down()
        lab.close()
    assert [str(link["ifname"]) for link in ip_json(host, "link", "show")] == ["lo"]


def test_down_after_an_up_that_stopped_halfway_removes_what_was_made(host: str, state_dir: Path) -> None:
    raw = example("three-tier.yaml")
    broken = lab_for(raw, host, state_dir, kernel=_FailsSecondSandbox(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        broken.up()
    broken.down()  # the record names sandboxes that were never made: down must not trip on them
    broken.close()
    assert leftovers(raw["name"]) == []
    assert [str(link["ifname"]) for link in ip_json(host, "link", "show")] == ["lo"]


def test_down_leaves_what_the_file_did_not_create(cli: Cli, host: str, state_dir: Path, tmp_path: Path) -> None:
    cli("network", "create", "mine", "--subnet", "10.77.0.0/24", check=True)
    cli("run", "--name", "keep", "--network", "mine", check=True)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(example("seed.yaml")))
    cli("up", "-f", str(path), check=True)
    assert "up to date, no changes" in cli("up", "-f", str(path), check=True).stdout
    assert cli("check", "-f", str(path)).returncode == 0
    cli("down", "-f", str(path), check=True)
    assert cli("inspect", "keep", check=True).returncode == 0
    assert [n["name"] for n in yaml.safe_load(cli("network", "ls", "--json", check=True).stdout)] == ["mine"]


def test_bad_files_are_one_clear_line_and_change_nothing(cli: Cli, host: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("networks:\n  n: {subnet: 10.0.0.0/24}\nsandboxes:\n  s: {networks: [n], ports: [80000]}\n")
    for command in ("up", "plan", "check", "down"):
        done = cli(command, "-f", str(path))
        assert done.returncode != 0
        assert f"{path}: sandboxes.s.ports[0]: publish '80000'" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert [str(link["ifname"]) for link in ip_json(host, "link", "show")] == ["lo"]


def test_python_api_context_manager_always_tears_down(host: str, state_dir: Path) -> None:
    raw = example("two-host-lab.yaml")
    with pytest.raises(RuntimeError), lab_for(raw, host, state_dir) as lab:
        assert lab.exec("client1", ["ping", "-c1", "-W1", lab.host_address("h2")]) == 0
        raise RuntimeError("the test body failed")
    assert leftovers(raw["name"]) == []


@pytest.mark.parametrize("meddling", [
    "delete element inet {table} publish_any_tcp {{ 8080 }}",
    "flush table inet {table}",
    "delete table inet {table}",
    "flush ruleset",
])
def test_up_sees_and_repairs_a_firewall_someone_meddled_with(meddling: str, host: str, state_dir: Path) -> None:
    raw = example("seed.yaml")
    lab = lab_for(raw, host, state_dir)
    try:
        lab.up()
        table = f"overlays_{lab.main.instance}"
        subprocess.run(["ip", "netns", "exec", host, "nft", meddling.format(table=table)], check=True)
        assert lab.main.firewall_problems(), "the drift is seen"
        assert [(a.verb, a.kind) for a in lab.plan()] == [("repair", "firewall")]
        lab.up()
        assert lab.main.firewall_problems() == [] and lab.plan() == []
        assert lab.check().passed, "the published port answers again"
    finally:
        lab.down()
        lab.close()


def test_check_of_a_lab_whose_namespaces_are_gone_says_so_in_one_line(cli: Cli, state_dir: Path,
                                                                      tmp_path: Path) -> None:
    from overlays.engine.context import instance_id
    from overlays.model.names import netns_name

    raw = example("two-host-lab.yaml")
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    cli("up", "-f", str(path), check=True)
    try:
        gone = netns_name("client1", instance_id(state_dir, f"ovl-{raw['name']}-h1"))
        subprocess.run(["ip", "netns", "del", gone], check=True)
        done = cli("check", "-f", str(path))
        assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
        assert f"FAIL: sandbox client1: its namespace {gone} is gone" in done.stdout, done.stdout
        subprocess.run(["ip", "netns", "del", f"ovl-{raw['name']}-h2"], check=True)
        done = cli("check", "-f", str(path))
        assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout, done.stderr
        assert (f"FAIL: host h2 of topology {raw['name']}: its namespace ovl-{raw['name']}-h2 is gone "
                "(overlays up -f FILE makes it again)") in done.stdout.splitlines(), done.stdout
    finally:
        cli("down", "-f", str(path), check=True)
    assert leftovers(raw["name"]) == []
    api = netns_name("api", instance_id(state_dir, f"ovl-{raw['name']}-h2"))
    assert not (NETNS_DIR / api).exists(), "down removes the sandboxes of a host whose namespace went"


def test_check_of_thirty_sandboxes_is_not_fooled_by_the_kernels_arp_table_limit(host: str, state_dir: Path) -> None:
    """All pairs of 30 sandboxes need ~1,740 neighbour entries; the kernel's one table refuses past gc_thresh3."""
    limit = int(Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3").read_text())
    if limit >= 2 * 30 * 29:
        pytest.skip(f"this machine's ARP table takes {limit} entries: 30 sandboxes cannot overflow it")
    raw = {"name": unique("arp"), "networks": {"flat": {"subnet": "10.77.0.0/24"}},
           "sandboxes": {f"a{i:02d}": {"networks": ["flat"]} for i in range(30)}}
    lab = lab_for(raw, host, state_dir)
    try:
        lab.up()
        for _ in range(2):  # the first fills the table from empty caches, the second from full ones
            report = lab.check()
            assert report.passed, report.matrix()
    finally:
        lab.down()
