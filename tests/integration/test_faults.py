"""Faults on the real kernel: each one in force and healed, from the CLI and the engine.

Traffic is sent with sockets made inside the namespaces (``netns.inside``): what a
partition, a loss or a link flap does is seen by whether datagrams and connections
get through; what is left behind is read with ``nft``, ``tc`` and ``ip`` (an
independent view).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from overlays import Engine
from overlays.errors import KernelError, NotFound
from overlays.kernel import netns
from overlays.kernel.faults import FaultyKernel
from overlays.kernel.linux import LinuxKernel
from overlays.model.faults import ImpairSpec

from .conftest import Cli, can_ping, ip_json, sh, unique


def ns(engine: Engine, sandbox: str) -> str:
    return engine.sandbox(sandbox).netns


def ip(engine: Engine, sandbox: str) -> str:
    return str(engine.sandbox(sandbox).endpoints[0].ip)


def udp_through(src: str, dst: str, dst_ip: str, count: int = 5) -> int:
    """How many of ``count`` datagrams sent from namespace ``src`` reach ``dst_ip`` in namespace ``dst``."""
    with netns.inside(netns.path_of(dst)):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.inside(netns.path_of(src)):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((dst_ip, 0))
        rx.settimeout(0.3)
        for _ in range(count):
            with contextlib.suppress(OSError):  # dropped on its way out: the kernel says EPERM
                tx.sendto(b"x", (dst_ip, rx.getsockname()[1]))
        got = 0
        try:
            while got < count * 3:
                rx.recv(16)
                got += 1
        except TimeoutError:
            pass
        return got


@contextmanager
def listening(where: str, port: int) -> Iterator[None]:
    """A TCP socket listening on ``port`` inside namespace ``where`` (the kernel accepts for it)."""
    with netns.inside(netns.path_of(where)):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(16)
        yield


def connects(src: str, address: str, port: int) -> bool:
    with netns.inside(netns.path_of(src)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(1.0)
        try:
            s.connect((address, port))
        except OSError:
            return False
        return True


def ours_in(where: str, instance: str) -> dict[str, object]:
    """What of ours a namespace holds: fault tables, qdiscs other than the defaults, ifb devices."""
    tables = sh(where, "nft", "-j", "list", "tables").stdout
    faults = [t["table"]["name"] for t in json.loads(tables)["nftables"] if "table" in t
              and t["table"]["name"].endswith("_faults")]
    qdiscs = [q["kind"] for q in json.loads(sh(where, "tc", "-j", "qdisc", "show").stdout)
              if q["kind"] not in ("noqueue", "pfifo_fast")]
    ifbs = [str(link["ifname"]) for link in ip_json(where, "-d", "link", "show", "type", "ifb")]
    return {"tables": faults, "qdiscs": qdiscs, "ifbs": ifbs}


NOTHING: dict[str, object] = {"tables": [], "qdiscs": [], "ifbs": []}


def wait_until(check: Callable[[], bool], patience: float = 10.0) -> bool:
    deadline = time.monotonic() + patience
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def trio(cli: Cli) -> Engine:
    """Three sandboxes on one bridge network: a, b (publishing 8080 -> 80) and c."""
    cli("network", "create", "n", "--subnet", "10.57.0.0/24", check=True)
    cli("run", "--name", "a", "--network", "n", check=True)
    cli("run", "--name", "b", "--network", "n", "-p", "8080:80", check=True)
    cli("run", "--name", "c", "--network", "n", check=True)
    return Engine(host_netns=cli.env["OVERLAYS_HOST_NETNS"], state_dir=cli.env["OVERLAYS_STATE_DIR"])


# -- partitions ------------------------------------------------------------------------------------------------------


def test_a_partition_cuts_bridged_sandboxes_both_ways_and_heals(cli: Cli, trio: Engine) -> None:
    a, b, c = (ns(trio, x) for x in "abc")
    assert udp_through(a, b, ip(trio, "b")) == 5
    done = cli("partition", "a", "b,c", "--name", "split", check=True)
    assert done.stdout.strip() == "partition split in force: a | b,c"
    assert udp_through(a, b, ip(trio, "b")) == 0 and udp_through(b, a, ip(trio, "a")) == 0
    assert udp_through(c, a, ip(trio, "a")) == 0
    assert udp_through(b, c, ip(trio, "c")) == 5, "inside a group all is well"
    shown = json.loads(cli("partition", "--show", "--json", check=True).stdout)
    assert [(f["kind"], f["name"], f["what"], f["state"]) for f in shown] == [("partition", "split", "a | b,c",
                                                                             "ready")]
    assert cli("heal", check=True).stdout.strip() == "healed: split"
    assert udp_through(a, b, ip(trio, "b")) == 5 and udp_through(b, a, ip(trio, "a")) == 5
    for where in (a, b, c):
        assert ours_in(where, trio.instance) == NOTHING
    trio.close()


def test_a_oneway_partition_is_one_way(cli: Cli, trio: Engine) -> None:
    a, b = ns(trio, "a"), ns(trio, "b")
    cli("partition", "a", "b", "--oneway", check=True)
    assert udp_through(a, b, ip(trio, "b")) == 0, "a's packets to b are dropped"
    assert udp_through(b, a, ip(trio, "a")) == 5, "b's packets to a are not"
    cli("heal", check=True)
    assert udp_through(a, b, ip(trio, "b")) == 5
    trio.close()


def test_a_partition_holds_for_published_ports(cli: Cli, trio: Engine, host: str) -> None:
    gateway = "10.57.0.1"  # a reaches b's port 8080 at the host's address on its network (hairpin)
    with listening(ns(trio, "b"), 80):
        assert connects(ns(trio, "a"), gateway, 8080)
        cli("partition", "a", "b", check=True)
        assert not connects(ns(trio, "a"), gateway, 8080)
        assert connects(ns(trio, "c"), gateway, 8080), "c is not partitioned"
        assert ours_in(host, trio.instance)["tables"], "the host keeps the cut before DNAT"
        cli("heal", check=True)
        assert connects(ns(trio, "a"), gateway, 8080)
    assert ours_in(host, trio.instance)["tables"] == []
    trio.close()


def test_partitions_add_up_and_heal_one_by_one(cli: Cli, trio: Engine) -> None:
    a, b, c = (ns(trio, x) for x in "abc")
    cli("partition", "a", "b", "--name", "ab", check=True)
    cli("partition", "a", "c", "--name", "ac", check=True)
    assert udp_through(a, b, ip(trio, "b")) == 0 and udp_through(a, c, ip(trio, "c")) == 0
    cli("heal", "ab", check=True)
    assert udp_through(a, b, ip(trio, "b")) == 5 and udp_through(a, c, ip(trio, "c")) == 0
    missing = cli("heal", "nope")
    assert missing.returncode == 1 and missing.stderr.strip() == (
        f"overlays: error: no partition or impairment nope is in force on host {trio.node}")
    cli("heal", "--all", check=True)
    assert udp_through(a, c, ip(trio, "c")) == 5
    trio.close()


def test_a_partition_for_a_while_heals_by_itself(cli: Cli, trio: Engine) -> None:
    a, b = ns(trio, "a"), ns(trio, "b")
    cli("partition", "a", "b", "--for", "1s", check=True)
    assert udp_through(a, b, ip(trio, "b")) == 0
    assert wait_until(lambda: udp_through(a, b, ip(trio, "b"), 1) == 1), "the element's timeout ended it"
    assert trio.faults().partitions == {}
    trio.heal_expired()  # what the next operation does: the records and the table go
    assert ours_in(a, trio.instance) == NOTHING
    trio.close()


def test_bad_partitions_are_one_line_and_change_nothing(cli: Cli, trio: Engine) -> None:
    for args, message in ((["a"], "a partition needs at least two groups (like: a b,c)"),
                          (["a", "a,b"], "partition member a is in two groups"),
                          (["a", "zed"], "sandbox zed does not exist"),
                          (["a", "b", "--for", "soon"], "duration 'soon' is not a duration (like 500ms, 30s, 5m, 1h)")):
        done = cli("partition", *args)
        assert done.returncode == 1 and done.stderr.strip() == f"overlays: error: {message}", done.stderr
    assert trio.faults().partitions == {}
    assert ours_in(ns(trio, "a"), trio.instance) == NOTHING
    trio.close()


# -- impairments -----------------------------------------------------------------------------------------------------


def test_loss_per_direction_and_cleared(cli: Cli, trio: Engine) -> None:
    a, b = ns(trio, "a"), ns(trio, "b")
    cli("impair", "a", "--loss", "100", "--direction", "out", check=True)
    assert udp_through(a, b, ip(trio, "b")) == 0 and udp_through(b, a, ip(trio, "a")) == 5
    cli("impair", "a", "--loss", "100%", "--direction", "in", check=True)  # replaces the first
    assert udp_through(a, b, ip(trio, "b")) == 5 and udp_through(b, a, ip(trio, "a")) == 0
    assert cli("impair", "a", "--clear", check=True).stdout.strip() == "cleared: a on n"
    assert udp_through(b, a, ip(trio, "a")) == 5
    assert ours_in(a, trio.instance) == NOTHING
    trio.close()


def test_a_share_of_loss_drops_about_that_share(cli: Cli, trio: Engine) -> None:
    cli("impair", "a", "--loss", "50", "--direction", "out", check=True)
    got = udp_through(ns(trio, "a"), ns(trio, "b"), ip(trio, "b"), count=400)
    assert 120 < got < 280, got  # 200 expected; 8 standard deviations either side
    trio.close()


def test_duplication_per_direction(cli: Cli, trio: Engine) -> None:
    a, b = ns(trio, "a"), ns(trio, "b")
    cli("impair", "a", "--duplicate", "100", "--direction", "out", check=True)
    assert udp_through(a, b, ip(trio, "b")) == 10, "every datagram a sends arrives twice"
    assert udp_through(b, a, ip(trio, "a")) == 5
    cli("impair", "a", "--duplicate", "100", "--direction", "in", check=True)
    assert udp_through(b, a, ip(trio, "a")) == 10, "every datagram a receives is delivered twice"
    assert udp_through(a, b, ip(trio, "b")) == 5
    trio.close()


def test_a_rate_shapes_both_ways_through_an_ifb_and_is_cleared(cli: Cli, trio: Engine) -> None:
    a = ns(trio, "a")
    done = cli("impair", "a", "--rate", "10mbit", check=True)
    assert done.stdout.strip() == "a on n (eth0) impaired: rate 10mbit (both)"
    qdiscs = {q["dev"]: q for q in json.loads(sh(a, "tc", "-j", "qdisc", "show").stdout) if q.get("root")}
    assert qdiscs["eth0"]["kind"] == "tbf" and qdiscs["eth0"]["options"]["rate"] == 1_250_000
    assert qdiscs["ovi-eth0"]["kind"] == "tbf" and qdiscs["ovi-eth0"]["options"]["rate"] == 1_250_000
    redirect = json.loads(sh(a, "tc", "-j", "filter", "show", "dev", "eth0", "ingress").stdout)
    assert any(act.get("to_dev") == "ovi-eth0" for f in redirect for act in f.get("options", {}).get("actions", []))
    assert udp_through(ns(trio, "b"), a, ip(trio, "a")) == 5, "shaped, not cut"
    cli("impair", "a", "--rate", "20mbit", "--direction", "out", check=True)
    assert ours_in(a, trio.instance) == {"tables": [], "qdiscs": ["tbf"], "ifbs": []}
    cli("heal", "--all", check=True)
    assert ours_in(a, trio.instance) == NOTHING
    trio.close()


def test_delay_needs_netem(cli: Cli, trio: Engine) -> None:
    if LinuxKernel().has_qdisc("netem"):
        cli("impair", "a", "--delay", "50", "--jitter", "5", "--direction", "out", check=True)
        qdiscs = json.loads(sh(ns(trio, "a"), "tc", "-j", "qdisc", "show", "dev", "eth0").stdout)
        assert qdiscs[0]["kind"] == "netem"
        cli("heal", "--all", check=True)
        assert ours_in(ns(trio, "a"), trio.instance) == NOTHING
        trio.close()
        return
    refused = cli("impair", "a", "--delay", "50")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("overlays: error: impair a: --delay and --jitter need the netem qdisc, which "
                                      "this kernel lacks (build it with CONFIG_NET_SCH_NETEM)")
    assert trio.faults().impairments == {}
    trio.close()
    pytest.skip("this kernel has no netem (CONFIG_NET_SCH_NETEM): --delay is refused, as checked")


def test_bad_impairments_are_one_line(cli: Cli, trio: Engine) -> None:
    for args, message in ((["a"], "impair a: say what to impair (--loss, --duplicate, --rate, --delay) or --clear it"),
                          (["a", "--loss", "120"], "--loss '120' must be between 0 and 100"),
                          (["a", "--rate", "fast"], "--rate 'fast' is not a rate (like 10mbit, 500kbit, 1gbit;"
                                                    " kbps is kilobytes/s)"),
                          (["a", "--loss", "1", "--network", "x"], "sandbox a is not connected to network x"),
                          (["a", "--clear"], "sandbox a has no impairment in force")):
        done = cli("impair", *args)
        assert done.returncode == 1 and done.stderr.strip() == f"overlays: error: {message}", done.stderr
    trio.close()


# -- link flaps ------------------------------------------------------------------------------------------------------


def test_a_link_flap_keeps_address_routes_and_published_ports(cli: Cli, trio: Engine, host: str) -> None:
    b = ns(trio, "b")
    routes = sh(b, "ip", "route", "show").stdout
    with listening(b, 80):
        assert connects(ns(trio, "a"), "10.57.0.1", 8080)
        assert cli("link", "down", "b", check=True).stdout.strip() == "link eth0 of b on n is down"
        assert not can_ping(ns(trio, "a"), ip(trio, "b"))
        assert not connects(ns(trio, "a"), "10.57.0.1", 8080)
        assert cli("link", "up", "b", "n", check=True).stdout.strip() == "link eth0 of b on n is up"
        assert sh(b, "ip", "route", "show").stdout == routes
        # As after a real flap, a neighbour still being asked for while it was away answers on ARP's next try.
        assert wait_until(lambda: can_ping(ns(trio, "a"), ip(trio, "b")))
        assert connects(ns(trio, "a"), "10.57.0.1", 8080), "the published port came back with the link"
    assert trio.sandbox_problems("b") == []
    not_down = cli("link", "up", "b")
    assert not_down.returncode == 1 and "the link of sandbox b on n is not down" in not_down.stderr
    trio.close()


def test_a_link_down_for_a_while_comes_back_by_itself(cli: Cli, trio: Engine) -> None:
    cli("link", "down", "c", "--for", "1s", check=True)
    assert not can_ping(ns(trio, "a"), ip(trio, "c"))
    assert wait_until(lambda: can_ping(ns(trio, "a"), ip(trio, "c"))), "the timer brought it back up"
    assert wait_until(lambda: not trio.faults().links and not _timers(cli))
    trio.close()


def _timers(cli: Cli) -> list[str]:
    state = cli.env["OVERLAYS_STATE_DIR"]
    found = subprocess.run(["pgrep", "-f", f"overlays.engine.faulttimer --state-dir {state} "], capture_output=True,
                           text=True).stdout.split()
    return found


# -- durations outlive their setter ----------------------------------------------------------------------------------


def _killed_while_waiting(cli: Cli, *args: str, in_force: Callable[[], bool]) -> None:
    proc = subprocess.Popen(cli.argv(*args, "--wait"), env=cli.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(in_force), "the fault came into force"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def test_a_partition_for_a_while_heals_after_its_setter_was_killed(cli: Cli, trio: Engine) -> None:
    a, b = ns(trio, "a"), ns(trio, "b")
    _killed_while_waiting(cli, "partition", "a", "b", "--for", "1s",
                          in_force=lambda: udp_through(a, b, ip(trio, "b"), 1) == 0)
    assert wait_until(lambda: udp_through(a, b, ip(trio, "b"), 1) == 1)
    trio.close()


def test_a_rate_for_a_while_is_removed_after_its_setter_was_killed(cli: Cli, trio: Engine) -> None:
    a = ns(trio, "a")
    _killed_while_waiting(cli, "impair", "a", "--rate", "1mbit", "--loss", "1", "--for", "1s",
                          in_force=lambda: ours_in(a, trio.instance)["qdiscs"] == ["tbf", "ingress", "tbf"])
    assert wait_until(lambda: ours_in(a, trio.instance) == NOTHING), "the timer removed qdiscs, ifb and table"
    assert wait_until(lambda: not _timers(cli) and trio.faults().impairments == {})
    trio.close()


def test_wait_heals_at_once_on_ctrl_c(cli: Cli, trio: Engine) -> None:
    a, b = ns(trio, "a"), ns(trio, "b")
    proc = subprocess.Popen(cli.argv("partition", "a", "b", "--wait"), env=cli.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert wait_until(lambda: udp_through(a, b, ip(trio, "b"), 1) == 0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and out.splitlines()[-1] == "healed"
    assert udp_through(a, b, ip(trio, "b")) == 5
    trio.close()


# -- every step rolled back ------------------------------------------------------------------------------------------


def test_a_failing_kernel_step_rolls_an_impairment_back(host: str, state_dir: Path, cli: Cli) -> None:
    cli("network", "create", "n", "--subnet", "10.58.0.0/24", check=True)
    cli("run", "--name", "a", "--network", "n", check=True)
    plain = Engine(host_netns=host, state_dir=state_dir)
    before = ours_in(ns(plain, "a"), plain.instance)
    spec = ImpairSpec.parse("a", loss=5, rate="5mbit")
    n = 1
    while True:
        faulty = Engine(host_netns=host, state_dir=state_dir, kernel=FaultyKernel(LinuxKernel(), fail_at=n))
        try:
            faulty.impair(spec)
        except KernelError as e:
            assert "injected failure" in str(e)
            assert ours_in(ns(plain, "a"), plain.instance) == before, f"step {n} was not rolled back"
            assert plain.faults().impairments == {}
            n += 1
            continue
        finally:
            faulty.close()
        break
    assert n > 4, "the walk went through the table, the qdiscs, the ifb and the redirect"
    assert ours_in(ns(plain, "a"), plain.instance)["qdiscs"] == ["tbf", "ingress", "tbf"]
    plain.heal(everything=True)
    assert ours_in(ns(plain, "a"), plain.instance) == NOTHING
    plain.close()


# -- other drivers: macvlan and an overlay across simulated hosts ----------------------------------------------------


def test_macvlan_sandboxes_are_partitioned_and_flapped(cli: Cli, host: str, make_netns: Callable[[str], str]) -> None:
    peer = make_netns("pr")
    subprocess.run(["ip", "-n", host, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", peer],
                   check=True)
    for where, dev, addr in ((host, "lan0", "10.37.0.2/24"), (peer, "eth0", "10.37.0.1/24")):
        subprocess.run(["ip", "-n", where, "addr", "add", addr, "dev", dev], check=True)
        subprocess.run(["ip", "-n", where, "link", "set", dev, "up"], check=True)
    cli("network", "create", "lan", "--driver", "macvlan", "--parent", "lan0", check=True)
    cli("run", "--name", "m1", "--network", "lan", check=True)
    cli("run", "--name", "m2", "--network", "lan", check=True)
    eng = Engine(host_netns=host, state_dir=cli.env["OVERLAYS_STATE_DIR"])
    m1, m2 = ns(eng, "m1"), ns(eng, "m2")
    assert udp_through(m1, m2, ip(eng, "m2")) == 5
    cli("partition", "m1", "m2", check=True)
    assert udp_through(m1, m2, ip(eng, "m2")) == 0 and udp_through(m2, m1, ip(eng, "m1")) == 0
    assert can_ping(m1, "10.37.0.1"), "the segment's router is not partitioned"
    cli("heal", check=True)
    routes = sh(m1, "ip", "route", "show").stdout
    cli("link", "down", "m1", check=True)
    assert not can_ping(m1, "10.37.0.1")
    cli("link", "up", "m1", check=True)
    assert sh(m1, "ip", "route", "show").stdout == routes, "the default route was put back"
    assert wait_until(lambda: can_ping(m1, "10.37.0.1")) and udp_through(m2, m1, ip(eng, "m1")) == 5
    eng.close()


def test_overlay_sandboxes_and_hosts_of_a_lab_are_partitioned(host: str, state_dir: Path) -> None:
    from overlays.topology import Lab, resolve

    from .conftest import _instances

    raw = {"name": unique("fo"), "hosts": ["h1", "h2"],
           "networks": {"mesh": {"driver": "overlay", "subnet": "10.82.0.0/24"}},
           "sandboxes": {"x1": {"host": "h1", "networks": ["mesh"]}, "y1": {"host": "h1", "networks": ["mesh"]},
                         "x2": {"host": "h2", "networks": ["mesh"]}}}
    with Lab(resolve(raw, "test.yaml"), state_dir=state_dir) as lab:
        for h in ("h1", "h2"):
            _instances.add(lab.engine(h).instance)
        x1, y1, x2 = (lab.sandbox(n) for n in ("x1", "y1", "x2"))
        assert udp_through(x1.netns, x2.netns, str(x2.endpoints[0].ip)) == 5
        with lab.partitioned(["x1"], ["x2"]):  # two ends on two hosts: each host keeps its own end's drops
            assert udp_through(x1.netns, x2.netns, str(x2.endpoints[0].ip)) == 0
            assert udp_through(x2.netns, x1.netns, str(x1.endpoints[0].ip)) == 0
            assert udp_through(y1.netns, x2.netns, str(x2.endpoints[0].ip)) == 5
        assert udp_through(x2.netns, x1.netns, str(x1.endpoints[0].ip)) == 5
        handle = lab.partition(["h1"], ["h2"])  # the hosts: their VXLAN traffic stops
        assert udp_through(y1.netns, x2.netns, str(x2.endpoints[0].ip)) == 0
        assert udp_through(x1.netns, y1.netns, str(y1.endpoints[0].ip)) == 5, "inside h1 all is well"
        hosts = [lab.host_netns(h) or "" for h in ("h1", "h2")]
        assert all(ours_in(h, lab.engine("h1").instance)["tables"] for h in hosts)
        handle.heal()
        assert udp_through(y1.netns, x2.netns, str(x2.endpoints[0].ip)) == 5
        assert not any(ours_in(h, "")["tables"] for h in hosts)
        with pytest.raises(NotFound, match="zed is not a sandbox or a host of topology"):
            lab.partition(["x1"], ["zed"])
        lab.impair("x2", loss=100, direction="in")
        assert udp_through(x1.netns, x2.netns, str(x2.endpoints[0].ip)) == 0
    # down healed it all and removed the lab
    assert not [n for n in netns.NETNS_DIR.iterdir() if n.name.startswith(f"ovl-{raw['name']}-")]


def test_faults_of_a_sandbox_removed_go_with_it(cli: Cli, trio: Engine) -> None:
    cli("partition", "a", "b", check=True)
    cli("impair", "c", "--rate", "1mbit", check=True)
    cli("rm", "c", check=True)
    left = trio.heal_expired()  # the next operation: c's impairment and its records are gone with it
    assert left.impairments == {} and [p.shape for p in left.partitions.values()] == ["a | b"]
    trio.close()
