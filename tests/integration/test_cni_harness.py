"""The installed overlays-cni, exec'd exactly as libcni does, over every verb and every spec version it claims.

No Debian runtime sends GC or STATUS (their libcni stops at spec 1.0.0), so this
harness is where those are tested for real. The plugin runs inside the test's host
namespace; each "container" is a namespace the test makes, as a runtime would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overlays import Engine
from overlays.cni import names
from overlays.topology import Lab, resolve

from .conftest import Cli, _instances, can_ping, ip_json, unique
from .runtimes import (
    HOST_OUT,
    Libcni,
    cni_servers,
    eventually,
    fetch,
    no_server_outlives_its_attachments,
    outside_peer,
    serving,
)

SUBNET = "10.61.0.0/24"
ALL_VERSIONS = ["0.4.0", "1.0.0", "1.1.0"]


@pytest.fixture(autouse=True)
def no_server_left() -> Iterator[None]:
    """Torn down after the test's own fixtures: its attachments are gone, and so must its servers be."""
    with no_server_outlives_its_attachments():
        yield


@pytest.fixture
def lib(cli: Cli, host: str, tmp_path: Path) -> Libcni:
    """Network ``front`` installed into CNI dirs of the test's own, and libcni's view of it."""
    cli("network", "create", "front", "--subnet", SUBNET, check=True)
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    cli("cni", "install", "front", "--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir), check=True)
    return Libcni(host, bin_dir, json.loads((conf_dir / "overlays-front.conflist").read_text()))


def engine_of(host: str, state_dir: Path) -> Engine:
    return Engine(host_netns=host, state_dir=state_dir)


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def eth0(netns: str) -> dict[str, object] | None:
    found = [link for link in ip_json(netns, "addr", "show") if link["ifname"] == "eth0"]
    return found[0] if found else None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_every_verb_at_every_version(lib: Libcni, host: str, state_dir: Path,
                                     make_netns: Callable[[str], str], version: str) -> None:
    container = make_netns("c")
    cid = f"{container}{'0' * 40}"
    result = lib.add(cid, netns_path(container), version)
    # The result, in the version's shape, says what the kernel now holds.
    inside = [itf for itf in result["interfaces"] if itf.get("sandbox")]
    assert len(inside) == 1 and inside[0]["name"] == "eth0" and inside[0]["sandbox"] == netns_path(container)
    ip = result["ips"][0]
    assert result["interfaces"][ip["interface"]] is inside[0]
    assert ip["address"] == "10.61.0.2/24" and ip["gateway"] == "10.61.0.1"
    assert ("version" in ip) == (version == "0.4.0")
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.61.0.1"}]
    link = eth0(container)
    assert link is not None and link["address"] == inside[0]["mac"]
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"]] == [("10.61.0.2", 24)]  # type: ignore[attr-defined]
    host_side = {str(h["ifname"]): h for h in ip_json(host, "link", "show")}
    assert host_side[result["interfaces"][0]["name"]]["master"] == "ovb-front"
    # One state with the CLI: the same engine instance sees an adopted sandbox.
    with engine_of(host, state_dir) as eng:
        box = eng.sandbox(names.sandbox_name(cid, "eth0"))
        assert box.adopted and box.netns.startswith(f"ov-{eng.ctx.instance}-")
        assert eng.network("front")[1] == [box.name]

    env = lib.environment("CHECK", cid, netns_path(container))
    assert lib.exec(env, lib.config(version, prev=result))[:2] == (None, 0)
    for verb in ("GC", "STATUS"):
        doc, code, _ = lib.exec(lib.environment(verb), lib.config(version))
        if version == "1.1.0":
            assert (doc, code) == (None, 0), doc
        else:
            assert doc is not None and (code, doc["code"]) == (1, 1), doc  # GC and STATUS came with 1.1.0
    with engine_of(host, state_dir) as eng:  # GC without valid attachments listed nothing as stale here
        assert [b.name for b in eng.sandboxes()] == ([] if version == "1.1.0" else [box.name])
    if version == "1.1.0":
        result = lib.add(cid, netns_path(container), version)

    for _ in range(2):  # DEL is idempotent
        lib.delete(cid, netns_path(container), version, prev=result)
    assert eth0(container) is None
    assert [str(h["ifname"]) for h in ip_json(host, "link", "show")] == ["lo", "ovb-front"]
    assert Path(netns_path(container)).exists(), "the runtime's namespace is the runtime's to delete"
    with engine_of(host, state_dir) as eng:
        assert eng.sandboxes() == []
    doc, code, _ = lib.exec(lib.environment("VERSION"), b'{"cniVersion": "%s"}' % version.encode())
    assert code == 0 and doc == {"cniVersion": version, "supportedVersions": ALL_VERSIONS}


@pytest.mark.parametrize(("drop", "extra", "code", "named"), [
    ("CNI_COMMAND", {}, 4, "CNI_COMMAND"),
    ("CNI_NETNS", {}, 4, "CNI_NETNS"),
    ("CNI_CONTAINERID", {}, 4, "CNI_CONTAINERID"),
    ("", {"CNI_IFNAME": "eth 0"}, 4, "CNI_IFNAME"),
    ("", {"CNI_COMMAND": "PLUG"}, 4, "PLUG"),
    ("", {"CNI_ARGS": "IP"}, 4, "CNI_ARGS"),
])
def test_bad_environments_change_nothing(lib: Libcni, host: str, state_dir: Path, make_netns: Callable[[str], str],
                                         drop: str, extra: dict[str, str], code: int, named: str) -> None:
    container = make_netns("c")
    env = lib.environment("ADD", "c1", netns_path(container)) | extra
    env.pop(drop, None)
    doc, status, _ = lib.exec(env, lib.config("1.0.0"))
    assert doc is not None and (status, doc["code"]) == (1, code) and named in doc["msg"]
    assert eth0(container) is None
    with engine_of(host, state_dir) as eng:
        assert eng.sandboxes() == []


@pytest.mark.parametrize(("stdin", "code"), [(b"{", 6), (b"[]", 6), (b'{"cniVersion": "1.0.0"}', 7),
                                             (b'{"cniVersion": "0.3.1", "name": "front"}', 1)])
def test_bad_json_changes_nothing(lib: Libcni, make_netns: Callable[[str], str], stdin: bytes, code: int) -> None:
    container = make_netns("c")
    doc, status, _ = lib.exec(lib.environment("ADD", "c1", netns_path(container)), stdin)
    assert doc is not None and (status, doc["code"]) == (1, code)
    assert eth0(container) is None


def test_a_missing_netns_fails_add_and_not_del(lib: Libcni, host: str, state_dir: Path) -> None:
    gone = "/run/netns/ot-no-such-netns"
    doc, code, _ = lib.exec(lib.environment("ADD", "c1", gone), lib.config("1.0.0"))
    assert doc is not None and (code, doc["code"]) == (1, 101) and gone in doc["msg"]
    lib.delete("c1", gone)
    with engine_of(host, state_dir) as eng:
        assert eng.sandboxes() == []


def test_del_after_the_runtime_deleted_the_namespace(lib: Libcni, host: str, state_dir: Path,
                                                     make_netns: Callable[[str], str]) -> None:
    container = make_netns("c")
    result = lib.add("c1", netns_path(container))
    subprocess.run(["ip", "netns", "del", container], check=True)  # our adopted name keeps it alive till DEL
    lib.delete("c1", "", prev=result)  # libcni may send no netns at all
    assert [str(h["ifname"]) for h in ip_json(host, "link", "show")] == ["lo", "ovb-front"]
    with engine_of(host, state_dir) as eng:
        assert eng.sandboxes() == []


def test_gc_removes_a_stale_attachment_and_keeps_the_valid_ones(lib: Libcni, host: str, state_dir: Path,
                                                                 make_netns: Callable[[str], str]) -> None:
    keep, stale = make_netns("k"), make_netns("s")
    kept = lib.add("keep1", netns_path(keep), "1.1.0")
    forgotten = lib.add("stale1", netns_path(stale), "1.1.0")
    valid = {"cni.dev/valid-attachments": [{"containerID": "keep1", "ifname": "eth0"}]}
    doc, code, _ = lib.exec(lib.environment("GC"), lib.config("1.1.0", **valid))
    assert (doc, code) == (None, 0)
    links = {str(h["ifname"]) for h in ip_json(host, "link", "show")}
    assert kept["interfaces"][0]["name"] in links and forgotten["interfaces"][0]["name"] not in links
    assert eth0(keep) is not None and eth0(stale) is None
    with engine_of(host, state_dir) as eng:
        assert [b.name for b in eng.sandboxes()] == [names.sandbox_name("keep1", "eth0")]


def test_static_address_mac_and_interface_name(lib: Libcni, make_netns: Callable[[str], str]) -> None:
    a, b = make_netns("a"), make_netns("b")
    result = lib.add("c1", netns_path(a), args="IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.61.0.77;MAC=02:42:0a:3d:00:09")
    assert result["ips"][0]["address"] == "10.61.0.77/24"
    link = eth0(a)
    assert link is not None and link["address"] == result["interfaces"][1]["mac"] == "02:42:0a:3d:00:09"
    for args, taken in (("IP=10.61.0.77", "10.61.0.77"), ("MAC=02:42:0a:3d:00:09", "02:42:0a:3d:00:09")):
        doc, code, _ = lib.exec(lib.environment("ADD", "c2", netns_path(b), args=args), lib.config("1.0.0"))
        assert doc is not None and (code, doc["code"]) == (1, 102) and taken in doc["msg"]
    assert eth0(b) is None
    # A second attachment of one container, by another name (as podman's second network would be).
    second = lib.add("c1", netns_path(a), ifname="net1")
    assert [i["name"] for i in second["interfaces"] if i.get("sandbox")] == ["net1"]
    assert [x["ifname"] for x in ip_json(a, "link", "show")] == ["lo", "eth0", "net1"]
    lib.delete("c1", netns_path(a), ifname="net1")
    assert [x["ifname"] for x in ip_json(a, "link", "show")] == ["lo", "eth0"]
    doc, code, _ = lib.exec(lib.environment("ADD", "c2", netns_path(b), args="IP=fd00::7"), lib.config("1.0.0"))
    assert doc is not None and (code, doc["code"]) == (1, 7) and "network front has no IPv6 subnet" in doc["msg"]


def test_published_port_answers_from_outside(lib: Libcni, make_netns: Callable[[str], str], host: str,
                                             tmp_path: Path) -> None:
    container, peer = make_netns("c"), outside_peer(make_netns, host)
    ports = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
             {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": HOST_OUT}]
    result = lib.add("web1", netns_path(container), runtime={"portMappings": ports})
    with serving(container, tmp_path) as page:
        for port in (8080, 8081):
            assert fetch(peer, f"http://{HOST_OUT}:{port}/") == page
        env = lib.environment("CHECK", "web1", netns_path(container))
        assert lib.exec(env, lib.config("1.0.0", prev=result))[:2] == (None, 0)
        lib.delete("web1", netns_path(container), prev=result)
        assert fetch(peer, f"http://{HOST_OUT}:8080/", tries=1) == ""


def test_check_names_what_the_kernel_lost(lib: Libcni, host: str, make_netns: Callable[[str], str]) -> None:
    container = make_netns("c")
    result = lib.add("c1", netns_path(container))
    subprocess.run(["ip", "-n", container, "link", "set", "eth0", "down"], check=True)
    doc, code, _ = lib.exec(lib.environment("CHECK", "c1", netns_path(container)), lib.config("1.0.0", prev=result))
    assert doc is not None and (code, doc["code"]) == (1, 100) and "eth0" in doc["msg"] and "down" in doc["msg"], doc


def test_add_and_status_refuse_outside_the_host_namespace(lib: Libcni, make_netns: Callable[[str], str]) -> None:
    container, elsewhere = make_netns("c"), make_netns("x")
    doc, code, _ = lib.exec(lib.environment("ADD", "c1", netns_path(container)), lib.config("1.0.0"), elsewhere)
    assert doc is not None and (code, doc["code"]) == (1, 107) and "another network namespace" in doc["msg"]
    doc, code, _ = lib.exec(lib.environment("STATUS"), lib.config("1.1.0"), elsewhere)
    assert doc is not None and (code, doc["code"]) == (1, 50)
    assert eth0(container) is None


def test_cni_commands_of_the_cli(lib: Libcni, cli: Cli, host: str, state_dir: Path, tmp_path: Path) -> None:
    printed = json.loads(cli("cni", "conflist", "front", check=True).stdout)
    assert printed == lib.conflist
    plugin = printed["plugins"][0]
    assert (plugin["stateDir"], plugin["hostNetns"], plugin["node"], plugin["store"]) == (
        str(state_dir.resolve()), host, host, None)
    missing = cli("cni", "conflist", "nope")
    assert missing.returncode == 1 and missing.stderr.strip() == "overlays: error: network nope does not exist"
    dirs = ["--conf-dir", str(tmp_path / "net.d"), "--bin-dir", str(tmp_path / "bin")]
    assert cli("cni", "uninstall", "front", *dirs, check=True).returncode == 0
    assert not (tmp_path / "bin" / "overlays-cni").exists() and list((tmp_path / "net.d").iterdir()) == []
    again = cli("cni", "uninstall", "front", *dirs)
    assert again.returncode == 1 and "no conflist for network front" in again.stderr


def test_the_cli_sees_an_attachment_as_a_sandbox_like_any_other(lib: Libcni, cli: Cli,
                                                                 make_netns: Callable[[str], str]) -> None:
    container = make_netns("c")
    lib.add("web1", netns_path(container))
    name = names.sandbox_name("web1", "eth0")
    ps = cli("ps", check=True).stdout
    assert name in ps and "adopted" in ps and "front=10.61.0.2" in ps
    refused = cli("network", "rm", "front")
    assert refused.returncode == 1 and name in refused.stderr
    # Removed from our side first: the runtime's namespace stays, its DEL later is still a success.
    cli("rm", "-f", name, check=True)
    assert Path(netns_path(container)).exists() and eth0(container) is None
    lib.delete("web1", netns_path(container))
    cli("network", "rm", "front", check=True)


# -- what the network gives: overlay and macvlan networks through CNI -------------------------------------------------


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Lab]:
    """Two simulated hosts with an overlay network ``mesh``, and sandbox b1 on h2."""
    raw = {"name": unique("v"), "hosts": ["h1", "h2"],
           "networks": {"mesh": {"driver": "overlay", "subnet": "10.64.0.0/24"}},
           "sandboxes": {"b1": {"host": "h2", "networks": ["mesh"]}}}
    lab = Lab(resolve(raw, "cni-overlay.yaml"), state_dir=tmp_path / "lab")
    _instances.add(lab.main.ctx.instance)
    try:
        lab.up()
        for name in lab.topology.hosts:
            _instances.add(lab.engine(name).ctx.instance)
        yield lab
    finally:
        lab.down()
        lab.close()


def test_an_overlay_network_gives_no_default_route(mesh: Lab, make_netns: Callable[[str], str],
                                                    tmp_path: Path) -> None:
    h1 = mesh.engine("h1")
    cli = Cli(str(h1.host_netns), mesh.state_dir)
    cli.env |= {"OVERLAYS_STORE": mesh.store_url, "OVERLAYS_NODE": h1.node}
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    cli("cni", "install", "mesh", "--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir), check=True)
    lib = Libcni(str(h1.host_netns), bin_dir, json.loads((conf_dir / "overlays-mesh.conflist").read_text()))
    container = make_netns("c")
    result = lib.add("c1", netns_path(container))
    assert result["routes"] == [] and "gateway" not in result["ips"][0], result
    assert [r for r in ip_json(container, "route", "show") if r.get("dst") == "default"] == []
    far = mesh.sandbox("b1").endpoints[0].ip
    mesh.wait_converged()
    assert can_ping(container, str(far), count=3), "the container reaches the other host's sandbox over the overlay"
    assert lib.exec(lib.environment("CHECK", "c1", netns_path(container)), lib.config("1.0.0", prev=result))[:2] == (
        None, 0)
    lib.delete("c1", netns_path(container), prev=result)
    assert h1.sandboxes() == []


SEGMENT = "10.65.0"


def test_a_macvlan_network_has_no_host_interface_and_routes_via_the_segment(
        cli: Cli, host: str, make_netns: Callable[[str], str], tmp_path: Path) -> None:
    peer = make_netns("pr")  # the segment's router at .1, behind the host's lan0
    for argv in (["-n", host, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", peer],
                 ["-n", host, "addr", "add", f"{SEGMENT}.2/24", "dev", "lan0"],
                 ["-n", host, "link", "set", "lan0", "up"],
                 ["-n", peer, "addr", "add", f"{SEGMENT}.1/24", "dev", "eth0"],
                 ["-n", peer, "link", "set", "eth0", "up"]):
        subprocess.run(["ip", *argv], check=True)
    cli("network", "create", "lan", "--driver", "macvlan", "--parent", "lan0", check=True)
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    cli("cni", "install", "lan", "--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir), check=True)
    lib = Libcni(host, bin_dir, json.loads((conf_dir / "overlays-lan.conflist").read_text()))
    container = make_netns("c")
    result = lib.add("m1", netns_path(container), "0.4.0")
    assert [i["name"] for i in result["interfaces"]] == ["eth0"] and result["interfaces"][0]["sandbox"]
    assert result["ips"][0]["interface"] == 0 and result["ips"][0]["gateway"] == f"{SEGMENT}.1"
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": f"{SEGMENT}.1"}]
    link = eth0(container)
    assert link is not None and link["address"] == result["interfaces"][0]["mac"]
    assert can_ping(container, f"{SEGMENT}.1")
    doc, code, _ = lib.exec(lib.environment("ADD", "m2", netns_path(make_netns("d"))),
                            lib.config("1.0.0", runtime={"portMappings": [{"hostPort": 80, "containerPort": 80}]}))
    assert doc is not None and (code, doc["code"]) == (1, 7) and "cannot publish ports on macvlan" in doc["msg"]
    lib.delete("m1", netns_path(container), "0.4.0", prev=result)
    assert eth0(container) is None
    assert [str(x["ifname"]) for x in ip_json(host, "link", "show")] == ["lo", "lan0"]


# -- the resident server behind the launcher ---------------------------------------------------------------------------


def test_a_server_comes_with_the_first_add_and_leaves_with_the_last_del(lib: Libcni, host: str,
                                                                        make_netns: Callable[[str], str]) -> None:
    a, b = make_netns("a"), make_netns("b")
    assert cni_servers(host) == []
    first = lib.add("c1", netns_path(a))  # no server yet: done by the exec'd process, which then starts one
    assert eventually(lambda: len(cni_servers(host)) == 1)
    (pid,) = cni_servers(host)
    second = lib.add("c2", netns_path(b))  # answered by the server
    assert first["ips"][0]["address"] != second["ips"][0]["address"]
    lib.delete("c1", netns_path(a), prev=first)
    assert eth0(a) is None and cni_servers(host) == [pid], "an attachment remains: so does the server"
    lib.delete("c2", netns_path(b), prev=second)
    assert eth0(b) is None
    assert eventually(lambda: cni_servers(host) == []), "no attachment remains: neither may the server"


def test_a_killed_server_is_replaced_and_its_answered_del_finished(lib: Libcni, host: str, state_dir: Path,
                                                                   make_netns: Callable[[str], str]) -> None:
    a, b = make_netns("a"), make_netns("b")
    lib.add("c1", netns_path(a))
    assert eventually(lambda: len(cni_servers(host)) == 1)
    (pid,) = cni_servers(host)
    # As if it had answered c1's DEL and died before removing it: its marker stays, and so does c1.
    marker = state_dir / "cni-removing" / host / names.sandbox_name("c1", "eth0")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    os.kill(pid, signal.SIGKILL)
    assert eventually(lambda: cni_servers(host) == [])
    result = lib.add("c2", netns_path(b))  # no server: done here, then a new server that finishes the marker's DEL
    assert result["ips"][0]["address"]
    with engine_of(host, state_dir) as eng:
        assert eventually(lambda: [x.name for x in eng.sandboxes()] == [names.sandbox_name("c2", "eth0")])
    assert eth0(a) is None and not marker.exists()
    lib.delete("c2", netns_path(b), prev=result)
    assert eventually(lambda: cni_servers(host) == [])
