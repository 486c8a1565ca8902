"""overlays doctor: each kind of inconsistency found and repaired, and nothing that is not ours touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from overlays import Engine
from overlays.engine import records

from .conftest import Cli, can_ping, ip_json, sh, stop_agent


def doctor(cli: Cli, *args: str) -> tuple[int, list[dict[str, Any]]]:
    done = cli("doctor", "--json", *args)
    return done.returncode, json.loads(done.stdout)["found"] if done.stdout else []


def problems(cli: Cli) -> list[str]:
    return [str(f["problem"]) for f in doctor(cli)[1]]


@pytest.fixture
def web(cli: Cli, host: str) -> dict[str, Any]:
    cli("network", "create", "front", "--subnet", "10.44.0.0/24", check=True)
    cli("run", "--name", "web", "--network", "front", "-p", "8080:80", check=True)
    assert doctor(cli) == (0, []), "a healthy host"
    return dict(json.loads(cli("inspect", "web", "--json", check=True).stdout))


def fixed(cli: Cli, expect: str) -> None:
    """doctor finds ``expect``, exits 1; --fix repairs it all and exits 0; a second look finds nothing."""
    code, found = doctor(cli)
    assert code == 1 and any(expect in f["problem"] for f in found), found
    done = cli("doctor", "--fix")
    assert done.returncode == 0, done.stdout + done.stderr
    assert doctor(cli) == (0, [])


def test_drift_inside_a_sandbox_and_on_the_bridge(cli: Cli, host: str, web: dict[str, Any]) -> None:
    ns = web["netns"]
    sh(ns, "ip", "addr", "flush", "dev", "eth0")
    fixed(cli, "eth0 of sandbox web on front lost its address 10.44.0.2/24")
    sh(ns, "ip", "link", "set", "eth0", "down")
    fixed(cli, "eth0 of sandbox web on front is down")
    sh(ns, "ip", "route", "del", "default")
    fixed(cli, "sandbox web has no default route")
    sh(host, "ip", "addr", "del", "10.44.0.1/24", "dev", "ovb-front")
    fixed(cli, "bridge ovb-front of network front lost its gateway address 10.44.0.1")
    assert can_ping(ns, "10.44.0.1")
    subprocess.run(["ip", "netns", "del", ns], check=True)
    fixed(cli, f"namespace {ns} of sandbox web is missing")
    assert can_ping(ns, "10.44.0.1")


def test_a_dual_stack_port_that_lost_its_mld_filter(cli: Cli, host: str) -> None:
    cli("network", "create", "dual", "--subnet", "10.45.0.0/24", "--subnet", "fd00:45::/64", check=True)
    cli("run", "--name", "v6", "--network", "dual", check=True)
    box = json.loads(cli("inspect", "v6", "--json", check=True).stdout)
    assert doctor(cli) == (0, []), "a healthy host"
    veth = box["endpoints"][0]["host_interface"]
    sh(host, "tc", "filter", "del", "dev", veth, "ingress")
    fixed(cli, f"veth {veth} of sandbox v6 on dual lost its MLD report filter")
    veth = json.loads(cli("inspect", "v6", "--json", check=True).stdout)["endpoints"][0]["host_interface"]
    assert "overlays_mld" in sh(host, "tc", "filter", "show", "dev", veth, "ingress").stdout
    assert can_ping(box["netns"], "fd00:45::1")


@pytest.mark.parametrize("meddling", ["flush table inet {t}", "delete table inet {t}",
                                      "delete element inet {t} publish_any_tcp {{ 8080 }}",
                                      "add element inet {t} publish_any_tcp {{ 9999 : 10.44.0.77 . 80 }}"])
def test_our_nft_table_meddled_with(cli: Cli, host: str, web: dict[str, Any], state_dir: Path, meddling: str) -> None:
    from overlays.engine.context import instance_id

    stop_agent(host, state_dir)  # else its self-heal puts the table back before doctor looks (test_selfheal.py)
    table = f"overlays_{instance_id(state_dir, host)}"
    sh(host, "nft", meddling.format(t=table))
    fixed(cli, "nft")
    assert "8080 : 10.44.0.2 . 80" in sh(host, "nft", "list", "map", "inet", table, "publish_any_tcp").stdout


def test_what_a_crash_leaves_is_finished_or_removed(cli: Cli, host: str, web: dict[str, Any], state_dir: Path) -> None:
    eng = Engine(host_netns=host, state_dir=state_dir)
    try:
        ctx = eng.ctx
        # a record left pending by a create killed before its ready mark
        box = eng.sandbox("web")
        ctx.transact(lambda txn: txn.put(records.sandbox_key("web"), {**box.to_record(), "state": "pending"}))
        fixed(cli, "sandbox web was left pending by an interrupted operation")
        # a namespace of ours no record names (a create killed after making it, before its record... or an rm)
        stray = f"ov-{ctx.instance}-ghost"
        subprocess.run(["ip", "netns", "add", stray], check=True)
        fixed(cli, f"namespace {stray} is ours by name but no sandbox names it")
        assert not os.path.exists(f"/run/netns/{stray}")
        # a veth killed between its creation and its tag: untagged, but its name claimed in the store
        ctx.transact(lambda txn: txn.put(records.ifname_key("ovv-half-000001"), {"owner": "half/front"}))
        sh(host, "ip", "link", "add", "ovv-half-000001", "type", "veth", "peer", "name", "ovh-peer")
        fixed(cli, "link ovv-half-000001 is untagged, with a name we claimed")
        assert "ovh-peer" not in {link["ifname"] for link in ip_json(host, "link", "show")}, "its peer went with it"
        # a link that carries our tag, no record naming it
        sh(host, "ip", "link", "add", "ovb-lost", "type", "bridge")
        sh(host, "ip", "link", "set", "ovb-lost", "alias", f"overlays:{ctx.instance}:network=lost")
        fixed(cli, "link ovb-lost carries our tag but no record names it")
        # an address held for a sandbox that has no endpoint any more
        ctx.transact(lambda txn: txn.put("ipam/front/10.44.0.99", {"owner": "gone"}))
        fixed(cli, "address 10.44.0.99 on network front is held for gone, which has no endpoint")
    finally:
        eng.close()


def test_a_host_with_sandboxes_and_no_agent_gets_one_again(cli: Cli, host: str, web: dict[str, Any],
                                                          state_dir: Path) -> None:
    from overlays.engine import hostagent

    stop_agent(host, state_dir)  # as a kill -9 of it would leave the host
    fixed(cli, "no agent runs for host")
    eng = Engine(host_netns=host, state_dir=state_dir)
    try:
        agent = hostagent.started(eng.ctx)
        assert agent is not None and agent.alive(), "doctor --fix started the host's agent"
    finally:
        eng.close()
    assert "10.44.0.2" in cli("exec", "web", "--", "getent", "hosts", "web", check=True).stdout


def test_a_process_we_started_that_no_record_names_is_stopped(cli: Cli, host: str, web: dict[str, Any],
                                                              state_dir: Path) -> None:
    from overlays.engine.context import instance_id

    env = dict(os.environ, OVERLAYS_SANDBOX=f"{instance_id(state_dir, host)}/ghost")
    orphan = subprocess.Popen(["ip", "netns", "exec", host, "sleep", "60"], env=env)
    try:
        time.sleep(0.2)  # ip has exec'd sleep
        code, found = doctor(cli)
        assert code == 1 and any("started by us for sandbox ghost" in f["problem"] for f in found), found
        assert cli("doctor", "--fix").returncode == 0
        assert orphan.wait(timeout=10) is not None
    finally:
        orphan.kill()
        orphan.wait()


def test_a_forward_drop_in_another_table_is_named_not_touched(cli: Cli, host: str, web: dict[str, Any]) -> None:
    if shutil.which("iptables-nft") is None:
        pytest.skip("iptables-nft is not installed")
    sh(host, "iptables-nft", "-P", "FORWARD", "DROP")
    code, found = doctor(cli)
    assert code == 1
    (drop,) = [f for f in found if "policy drop on the forward hook" in f["problem"]]
    assert drop["problem"].startswith("table ip filter chain FORWARD") and not drop["fixable"]
    assert "iptables -I FORWARD -i ovb-+ -j ACCEPT" in drop["repair"]
    assert cli("doctor", "--fix").returncode == 1, "nothing of it is ours to fix"
    assert "policy drop" in sh(host, "nft", "list", "chain", "ip", "filter", "FORWARD").stdout


def theirs_now(host, foreign_ns):
    """What belongs to someone else: links, a table and a namespace doctor must leave alone."""
    return (sh(host, "ip", "-d", "link", "show").stdout,
            sh(host, "nft", "list", "table", "inet", "overlays_notours").stdout,
            os.path.exists(f"/run/netns/{foreign_ns}"))


def test_nothing_foreign_is_touched(cli: Cli, host: str, web: dict[str, Any], make_netns: Callable[[str], str],
                                    state_dir: Path) -> None:
    foreign_ns = make_netns("fo")
    sh(host, "ip", "link", "add", "ovv-theirs", "type", "veth", "peer", "name", "theirs1")
    sh(host, "ip", "link", "set", "ovv-theirs", "alias", "someone-else:made:this")
    sh(host, "ip", "link", "add", "ovb-their", "type", "bridge")
    sh(host, "nft", "add table inet overlays_notours; add chain inet overlays_notours c; "
       "add set inet overlays_notours s { type ifname; }; add element inet overlays_notours s { \"x\" }")
    stranger = subprocess.Popen(["ip", "netns", "exec", foreign_ns, "sleep", "60"])
    try:
        time.sleep(0.2)
        before = theirs_now(host, foreign_ns)
        web_ns = web["netns"]
        subprocess.run(["ip", "netns", "del", web_ns], check=True)  # something for --fix to do
        assert cli("doctor", "--fix").returncode == 0
        after = theirs_now(host, foreign_ns)
        theirs = [line for line in before[0].splitlines() if "theirs" in line or "ovb-their" in line]
        assert all(line in after[0] for line in theirs) and before[1:] == after[1:]
        assert stranger.poll() is None, "a process that is not ours runs on"
    finally:
        stranger.kill()
        stranger.wait()
        sh(host, "nft", "delete table inet overlays_notours", check=False)


def test_doctor_on_a_healthy_host_exits_0_and_says_so(cli: Cli, host: str) -> None:
    done = cli("doctor")
    assert done.returncode == 0 and done.stdout.strip() == "all is well"
