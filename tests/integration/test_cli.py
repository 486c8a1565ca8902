"""The overlays command as a user runs it, on a host namespace of the test's own."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from .conftest import Cli, can_ping, ip_json, sh


def links(netns: str) -> list[str]:
    return sorted(str(link["ifname"]) for link in ip_json(netns, "link", "show"))


def test_seed_scenario_two_sandboxes_ping_each_other(cli: Cli, host: str) -> None:
    cli("network", "create", "front", "--subnet", "10.31.0.0/24", check=True)
    cli("run", "--name", "a", "--network", "none", check=True)
    cli("run", "--name", "b", "--network", "none", check=True)
    cli("connect", "front", "a", check=True)
    cli("connect", "front", "b", "--ip", "10.31.0.20", check=True)
    a = json.loads(cli("inspect", "a", "--json", check=True).stdout)
    b = json.loads(cli("inspect", "b", "--json", check=True).stdout)
    assert a["endpoints"][0]["ip"] == "10.31.0.2/24" and a["endpoints"][0]["interface"] == "eth0"
    assert b["endpoints"][0]["ip"] == "10.31.0.20/24"
    assert can_ping(a["netns"], "10.31.0.20") and can_ping(b["netns"], "10.31.0.2")
    assert can_ping(host, "10.31.0.2"), "the host reaches its sandboxes"
    # Independent view: the sandbox's eth0 has the recorded MAC and address, and a default route.
    eth0 = ip_json(a["netns"], "addr", "show", "eth0")[0]
    assert eth0["address"] == a["endpoints"][0]["mac"]
    assert ip_json(a["netns"], "route", "show", "default")[0]["gateway"] == "10.31.0.1"
    # IPv4 only: neither end of the veth makes an IPv6 address (no DAD, RS or MLD on the bridge).
    assert [i["family"] for i in eth0["addr_info"]] == ["inet"]  # type: ignore[union-attr]
    assert ip_json(a["netns"], "-d", "link", "show", "eth0")[0]["inet6_addr_gen_mode"] == "none"
    ports = ip_json(host, "-d", "link", "show", "master", "ovb-front")
    assert len(ports) == 2 and {p["inet6_addr_gen_mode"] for p in ports} == {"none"}
    ps = cli("ps", check=True).stdout
    assert "a " in ps and "front=10.31.0.20" in ps
    cli("rm", "a", "b", check=True)
    cli("network", "rm", "front", check=True)
    assert links(host) == ["lo"]
    assert json.loads(cli("ps", "--json", check=True).stdout) == []


def test_mtu_is_set_on_bridge_and_both_veth_ends(cli: Cli, host: str) -> None:
    cli("network", "create", "small", "--subnet", "10.32.0.0/24", "--mtu", "1400", check=True)
    cli("run", "--name", "m", "--network", "small", check=True)
    box = json.loads(cli("inspect", "m", "--json", check=True).stdout)
    host_ifname = box["endpoints"][0]["host_interface"]
    mtus = {str(link["ifname"]): link["mtu"] for link in ip_json(host, "link", "show")}
    assert mtus[host_ifname] == 1400 and mtus["ovb-small"] == 1400
    assert ip_json(box["netns"], "link", "show", "eth0")[0]["mtu"] == 1400
    # A full-size packet with DF set passes; one byte more is refused at the sandbox.
    assert sh(box["netns"], "ping", "-c1", "-W1", "-M", "do", "-s", "1372", "10.32.0.1", check=False).returncode == 0
    assert sh(box["netns"], "ping", "-c1", "-W1", "-M", "do", "-s", "1373", "10.32.0.1", check=False).returncode != 0


def test_second_network_is_eth1_and_disconnect_keeps_a_default_route(cli: Cli) -> None:
    cli("network", "create", "one", "--subnet", "10.33.1.0/24", check=True)
    cli("network", "create", "two", "--subnet", "10.33.2.0/24", check=True)
    cli("run", "--name", "x", "--network", "one", check=True)
    out = cli("connect", "two", "x", check=True).stdout
    assert "eth1 10.33.2.2/24" in out
    netns = json.loads(cli("inspect", "x", "--json", check=True).stdout)["netns"]
    cli("disconnect", "one", "x", check=True)
    assert [str(link["ifname"]) for link in ip_json(netns, "link", "show")] == ["lo", "eth1"]
    assert ip_json(netns, "route", "show", "default")[0]["gateway"] == "10.33.2.1"
    assert can_ping(netns, "10.33.2.1")


def test_foreground_run_passes_the_exit_code_and_rm_flag_cleans_up(cli: Cli) -> None:
    done = cli("run", "--name", "fg", "--hostname", "web1", "--", "sh", "-c", "hostname; exit 3")
    assert done.returncode == 3 and done.stdout.strip() == "web1"
    assert "exited" in cli("ps", check=True).stdout
    assert cli("run", "--rm", "--name", "gone", "--", "true").returncode == 0
    assert "gone" not in cli("ps", check=True).stdout
    assert cli("exec", "fg", "--", "sh", "-c", "exit 4").returncode == 4


def test_detached_process_is_stopped_by_rm(cli: Cli) -> None:
    name = cli("run", "-d", "--name", "bg", "--", "sleep", "60", check=True).stdout.strip()
    assert name == "bg"
    pid = json.loads(cli("inspect", "bg", "--json", check=True).stdout)["pid"]
    assert cli("rm", "bg").returncode != 0, "a running sandbox needs -f"
    cli("rm", "-f", "bg", check=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1][0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"pid {pid} still running after rm -f")


def test_attach_adopts_an_existing_process_namespace(cli: Cli, host: str) -> None:
    # Like `docker run --network none`: a process in a namespace overlays did not make.
    proc = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        time.sleep(0.2)
        cli("network", "create", "adopt", "--subnet", "10.34.0.0/24", check=True)
        cli("attach", "ext", "--pid", str(proc.pid), check=True)
        cli("connect", "adopt", "ext", check=True)
        assert can_ping(host, "10.34.0.2")
        in_proc = subprocess.run(["nsenter", "-t", str(proc.pid), "-n", "ip", "-j", "addr", "show", "eth0"],
                                 capture_output=True, text=True, check=True)
        assert "10.34.0.2" in in_proc.stdout
        cli("rm", "ext", check=True)
        assert proc.poll() is None, "rm of an adopted sandbox must not kill its process"
        assert links(host) == ["lo", "ovb-adopt"]
    finally:
        proc.kill()
        proc.wait()


def test_network_rm_force_and_prune(cli: Cli, host: str) -> None:
    cli("network", "create", "busy", "--subnet", "10.35.1.0/24", check=True)
    cli("network", "create", "idle", "--subnet", "10.35.2.0/24", check=True)
    cli("run", "--name", "s", "--network", "busy", check=True)
    refused = cli("network", "rm", "busy")
    assert refused.returncode == 1 and "has 1 sandbox(es) attached (s)" in refused.stderr
    assert "removed: idle" in cli("network", "prune", check=True).stdout
    cli("network", "rm", "--force", "busy", check=True)
    assert links(host) == ["lo"]
    assert json.loads(cli("inspect", "s", "--json", check=True).stdout)["endpoints"] == []


def _state(cli: Cli, host: str) -> tuple[Any, Any, list[str]]:
    nets = json.loads(cli("network", "ls", "--json", check=True).stdout)
    boxes = json.loads(cli("ps", "--json", check=True).stdout)
    return nets, boxes, links(host)


def test_bad_input_gives_one_clear_line_and_changes_nothing(cli: Cli, host: str) -> None:
    cli("network", "create", "base", "--subnet", "10.36.0.0/29", check=True)
    cli("run", "--name", "taken", "--network", "base", "--ip", "10.36.0.2", check=True)
    before = _state(cli, host)
    cases = [
        (("network", "create", "n1", "--subnet", "10.36.300.0/24"), "is not a valid CIDR"),
        (("network", "create", "n1", "--subnet", "10.37.0.0/24", "--gateway", "10.38.0.1"), "is not a host address"),
        (("network", "create", "n1", "--subnet", "10.36.0.0/24"), "overlaps network base"),
        (("network", "create", "base", "--subnet", "10.39.0.0/24"), "network base already exists"),
        (("network", "create", "bad/name"), "is invalid"),
        (("network", "create", "x" * 64), "is too long"),
        (("run", "--name", "s1", "--network", "base", "--ip", "10.99.0.5"), "outside network base's subnet"),
        (("run", "--name", "s1", "--network", "base", "--ip", "10.36.0.2"), "already taken by taken"),
        (("run", "--name", "s1", "--network", "nope"), "network nope does not exist"),
        (("run", "--name", "taken"), "sandbox taken already exists"),
        (("connect", "base", "ghost"), "sandbox ghost does not exist"),
        (("exec", "ghost", "--", "true"), "sandbox ghost does not exist"),
        (("network", "create", "n2", "--mtu", "99"), "MTU 99 is out of range"),
    ]
    for args, message in cases:
        done = cli(*args)
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    # Exhaust the /29 (6 hosts: gateway, taken, then four more), then one too many.
    for i in range(4):
        cli("run", "--name", f"fill{i}", "--network", "base", check=True)
    full = cli("run", "--name", "over", "--network", "base")
    assert full.returncode != 0 and "no free address left in 10.36.0.0/29" in full.stderr
    for i in range(4):
        cli("rm", f"fill{i}", check=True)
    assert _state(cli, host) == before


def test_unprivileged_user_gets_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           *cli.argv("--state-dir", str(tmp_path / "u"), "network", "create", "n")],
                          env=cli.env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "permission denied" in done.stderr and "root" in done.stderr


def test_sixteen_concurrent_runs_get_distinct_working_addresses(cli: Cli, host: str) -> None:
    cli("network", "create", "crowd", "--subnet", "10.40.0.0/24", check=True)
    procs = [
        subprocess.Popen(cli.argv("run", "-d", "--name", f"c{i}", "--network", "crowd", "--", "sleep", "60"),
                         env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(16)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    boxes = json.loads(cli("ps", "--json", check=True).stdout)
    ips = {b["endpoints"][0]["ip"] for b in boxes}
    assert len(boxes) == 16 and len(ips) == 16
    for ip in ips:
        assert can_ping(host, ip.split("/")[0]), ip
