"""The plugin's verbs on a real engine over a fake kernel and a memory store (no root), and the conflist files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from overlays import EndpointRequest, Engine, NetworkSpec
from overlays.cni import conflist, names, protocol
from overlays.cni.config import parse
from overlays.cni.plugin import EnginePlugin, attachment_of
from overlays.errors import Conflict, InvalidSpec, NotFound
from overlays.store import MemoryStore

from .fakes import FakeKernel

HOST = "fakehost"
CID = "ab" * 32


class AdoptingKernel(FakeKernel):
    """The fake kernel, remembering which runtime namespace each adopted one is (the kernel compares inodes)."""

    def __init__(self, *hosts: str) -> None:
        super().__init__(*hosts)
        self.sources: dict[Path, Path] = {}

    def adopt_netns(self, name: str, source: Path) -> Path:
        path = super().adopt_netns(name, source)
        self.sources[path] = Path(source)
        return path

    def same(self, ours: Path, theirs: Path) -> bool:
        if ours not in self.sources or not theirs.exists():
            raise FileNotFoundError(2, "gone", str(theirs))
        return self.sources[ours] == theirs


class Runtime:
    """Execs the protocol the way libcni does, against one engine, and remembers each ADD's result."""

    def __init__(self, tmp_path: Path) -> None:
        self.kernel = AdoptingKernel(HOST)
        self.engine = Engine(host_netns=HOST, state_dir=tmp_path, store=MemoryStore(), kernel=self.kernel,  # type: ignore[arg-type]
                             check_root=False)
        self.engine.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
        self.tmp = tmp_path
        self.warnings: list[str] = []

    def netns(self, label: str) -> str:
        path = self.tmp / f"netns-{label}"  # what the runtime made; the fake kernel only needs it to exist
        path.touch()
        return str(path)

    def call(self, command: str, cid: str = CID, ifname: str = "eth0", netns: str = "", version: str = "1.1.0",
             args: str = "", **conf: Any) -> tuple[dict[str, Any], int]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_PATH": "/opt/cni/bin",
               "CNI_NETNS": netns or self.netns(cid[:8]), "CNI_ARGS": args}
        stdin = json.dumps({"cniVersion": version, "name": "front", "type": "overlays-cni", **conf}).encode()

        def backend(req: protocol.Request, warn: protocol.Warn) -> EnginePlugin:
            return EnginePlugin(parse(req), warn, engine=self.engine, host_check=False, same_netns=self.kernel.same)

        out, code = protocol.handle(env, stdin, backend, self.warnings.append)
        return (json.loads(out) if out else {}), code

    def boxes(self) -> list[str]:
        return sorted(b.name for b in self.engine.sandboxes())


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    return Runtime(tmp_path)


def test_add_adopts_the_runtime_namespace_and_connects_it(rt: Runtime) -> None:
    netns = rt.netns("c1")
    result, code = rt.call("ADD", netns=netns)
    assert code == 0, result
    box = rt.engine.sandbox(names.sandbox_name(CID, "eth0"))
    ep = box.endpoints[0]
    assert box.adopted and (ep.network, ep.ifname, str(ep.ip)) == ("front", "eth0", "10.1.0.2")
    assert result["interfaces"][1] == {"name": "eth0", "mac": ep.mac, "mtu": 1500, "sandbox": netns}
    assert result["ips"] == [{"interface": 1, "address": "10.1.0.2/24", "gateway": "10.1.0.1"}]
    assert rt.kernel.namespaces[box.netns].links["eth0"].mac == ep.mac


def test_static_ip_from_cni_args_or_the_ips_capability(rt: Runtime) -> None:
    a, _ = rt.call("ADD", cid="a1", args="IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.0.50")
    b, _ = rt.call("ADD", cid="b1", runtimeConfig={"ips": ["10.1.0.60/24"]})
    assert [a["ips"][0]["address"], b["ips"][0]["address"]] == ["10.1.0.50/24", "10.1.0.60/24"]


def test_a_taken_address_is_a_conflict_and_leaves_nothing(rt: Runtime) -> None:
    rt.call("ADD", cid="a1", args="IP=10.1.0.50")
    doc, code = rt.call("ADD", cid="b1", args="IP=10.1.0.50")
    assert (code, doc["code"]) == (1, 102)
    assert "10.1.0.50" in doc["msg"]
    assert rt.boxes() == [names.sandbox_name("a1", "eth0")]


def test_add_on_a_missing_network_rolls_the_adoption_back(rt: Runtime) -> None:
    rt.engine.remove_network("front")
    doc, code = rt.call("ADD")
    assert (code, doc["code"]) == (1, 101)
    assert "network front does not exist" in doc["msg"]
    assert rt.boxes() == []


def test_add_twice_without_del_is_a_conflict(rt: Runtime) -> None:
    rt.call("ADD")
    doc, code = rt.call("ADD")
    assert (code, doc["code"]) == (1, 102)
    assert "DEL it first" in doc["msg"]


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"runtimeConfig": {"ips": ["10.1.0.7", "10.1.0.8"]}}, "10.1.0.7, 10.1.0.8: one IPv4 address per attachment"),
    ({"args": "IP=fd00::5,fd00::6"}, "fd00::5, fd00::6: one IPv6 address per attachment"),
    ({"runtimeConfig": {"portMappings": [{"hostPort": 53, "containerPort": 53, "protocol": "sctp"}]}},
     "published port 53->53/sctp: overlays publishes tcp and udp only"),
    ({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "::1"}]}},
     "the kernel cannot forward connections to [::1]"),
])
def test_what_the_engine_cannot_do_yet_is_refused_before_any_change(rt: Runtime, kwargs: dict[str, Any],
                                                                    named: str) -> None:
    doc, code = rt.call("ADD", **kwargs)
    assert (code, doc["code"]) == (1, 106)
    assert named in doc["msg"]
    assert rt.boxes() == []


def test_add_is_one_adoption_with_ports_aliases_and_labels(rt: Runtime) -> None:
    ports = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
             {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "0.0.0.0"}]
    doc, code = rt.call("ADD", runtimeConfig={"portMappings": ports, "aliases": {"front": ["web"], "other": ["x"]}})
    assert code == 0, doc
    box = rt.engine.sandbox(names.sandbox_name(CID, "eth0"))
    assert sorted(map(str, box.ports)) == ["0.0.0.0:5353->53/udp", "0.0.0.0:8080->80/tcp"]
    assert box.endpoints[0].aliases == ("web",)
    assert dict(box.labels) == {"cni.containerID": CID, "cni.ifname": "eth0", "cni.network": "front"}
    assert rt.warnings == []
    # A port another container holds is a conflict that leaves nothing behind.
    doc, code = rt.call("ADD", cid="b1", runtimeConfig={"portMappings": ports[:1]})
    assert (code, doc["code"]) == (1, 102) and "8080" in doc["msg"]
    assert rt.boxes() == [box.name]
    rt.call("DEL")
    assert rt.call("ADD", cid="b1", runtimeConfig={"portMappings": ports[:1]})[1] == 0


def test_static_mac_and_another_interface_name(rt: Runtime) -> None:
    netns = rt.netns("c1")
    a, code = rt.call("ADD", netns=netns, ifname="net1", args="MAC=02:42:AC:11:00:02")
    assert code == 0, a
    assert [i["name"] for i in a["interfaces"]][1:] == ["net1"] and a["interfaces"][1]["mac"] == "02:42:ac:11:00:02"
    box = rt.engine.sandbox(names.sandbox_name(CID, "net1"))
    assert rt.kernel.namespaces[box.netns].links["net1"].mac == "02:42:ac:11:00:02"
    b, code = rt.call("ADD", cid="b1", runtimeConfig={"mac": "02:42:ac:11:00:03"})
    assert code == 0 and b["interfaces"][1]["mac"] == "02:42:ac:11:00:03"
    doc, code = rt.call("ADD", cid="c1", args="MAC=02:42:ac:11:00:03")
    assert (code, doc["code"]) == (1, 102) and "MAC 02:42:ac:11:00:03" in doc["msg"]


@pytest.mark.parametrize(("kwargs", "code", "named"), [
    ({"args": "MAC=02:6f:0a:01:00:09"}, 4, "overlays' own"),
    ({"runtimeConfig": {"mac": "03:42:ac:11:00:02"}}, 7, "multicast"),
    ({"runtimeConfig": {"aliases": {"front": ["not a name"]}}}, 7, "alias 'not a name'"),
    ({"ifname": "lo"}, 4, "CNI_IFNAME"),
])
def test_what_the_engine_refuses_is_named(rt: Runtime, kwargs: dict[str, Any], code: int, named: str) -> None:
    doc, status = rt.call("ADD", **kwargs)
    assert (status, doc["code"]) == (1, code) and named in doc["msg"]
    assert rt.boxes() == []


def test_del_and_gc_take_only_what_the_labels_say(rt: Runtime) -> None:
    """A sandbox with an attachment's name but no attachment's labels (made by hand) is not the runtime's."""
    name = names.sandbox_name("c1", "eth0")
    rt.engine.adopt(name, netns_path=rt.netns("hand"), networks=[EndpointRequest.parse("front")])
    assert rt.call("DEL", cid="c1") == ({}, 0)
    assert rt.call("GC") == ({}, 0)
    assert rt.boxes() == [name]


@pytest.mark.parametrize(("conf", "args", "code", "named"), [
    ({"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}, "", 7, "hostPort"),
    ({"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 80, "protocol": "icmp"}]}}, "", 7,
     "icmp"),
    ({"runtimeConfig": {"ips": ["10.1.0.300"]}}, "", 7, "10.1.0.300"),
    ({}, "IP=nope", 4, "CNI_ARGS IP"),
    ({}, "FOO=1", 4, "FOO"),
    ({"stateDir": 5}, "", 7, "stateDir"),
])
def test_bad_plugin_input_names_the_key(rt: Runtime, conf: dict[str, Any], args: str, code: int,
                                        named: str) -> None:
    doc, status = rt.call("ADD", args=args, **conf)
    assert (status, doc["code"]) == (1, code)
    assert named in doc["msg"]
    assert rt.boxes() == []


def dual_stack(rt: Runtime, internal: bool = False) -> None:
    rt.engine.create_network(NetworkSpec.parse("dual", subnet=["10.2.0.0/24", "fd00:2::/64"], internal=internal))


def test_add_on_a_dual_stack_network_gives_both_addresses_gateways_and_default_routes(rt: Runtime) -> None:
    dual_stack(rt)
    result, code = rt.call("ADD", name="dual")
    assert code == 0, result
    assert result["ips"] == [{"interface": 1, "address": "10.2.0.2/24", "gateway": "10.2.0.1"},
                             {"interface": 1, "address": "fd00:2::2/64", "gateway": "fd00:2::1"}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.2.0.1"}, {"dst": "::/0", "gw": "fd00:2::1"}]
    old, _ = rt.call("ADD", cid="old1", name="dual", version="0.4.0")
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"], "0.x results name each address's family"


def test_a_network_that_does_not_route_out_gives_both_addresses_but_no_gateway_or_route(rt: Runtime) -> None:
    """As an overlay network does (east-west only): the result never promises a way out the sandbox lacks."""
    dual_stack(rt)
    rt.call("ADD", name="dual")
    (ep,) = rt.engine.sandbox(names.sandbox_name(CID, "eth0")).endpoints
    att = attachment_of(protocol.Request("ADD", "1.1.0", {"name": "dual"}, CID, "/run/netns/c"), ep, False)
    assert [(ip.address, ip.gateway) for ip in att.ips] == [("10.2.0.2/24", None), ("fd00:2::2/64", None)]
    assert att.routes == ()


def test_static_ipv6_from_cni_args_or_the_ips_capability(rt: Runtime) -> None:
    dual_stack(rt)
    a, _ = rt.call("ADD", cid="a1", name="dual", args="IP=fd00:2::50")
    b, _ = rt.call("ADD", cid="b1", name="dual", runtimeConfig={"ips": ["10.2.0.60/24", "fd00:2::60/64"]})
    assert [ip["address"] for ip in a["ips"]] == ["10.2.0.2/24", "fd00:2::50/64"]
    assert [ip["address"] for ip in b["ips"]] == ["10.2.0.60/24", "fd00:2::60/64"]
    doc, code = rt.call("ADD", cid="c1", name="dual", args="IP=fd00:2::50")
    assert (code, doc["code"]) == (1, 102) and "fd00:2::50" in doc["msg"]


def test_a_static_ipv6_on_an_ipv4_network_is_refused_naming_both(rt: Runtime) -> None:
    doc, code = rt.call("ADD", args="IP=fd00::5")
    assert (code, doc["code"]) == (1, 7)
    assert "--ip6 fd00::5: network front has no IPv6 subnet (10.1.0.0/24)" in doc["msg"]
    assert rt.boxes() == []


def test_del_frees_both_addresses(rt: Runtime) -> None:
    dual_stack(rt)
    rt.call("ADD", name="dual", args="IP=fd00:2::50")
    assert set(rt.engine.taken_addresses("dual")) >= {"10.2.0.2", "fd00:2::50"}
    assert rt.call("DEL", name="dual") == ({}, 0)
    assert not set(rt.engine.taken_addresses("dual")) & {"10.2.0.2", "fd00:2::50"}
    again, code = rt.call("ADD", cid="new1", name="dual", args="IP=fd00:2::50")
    assert code == 0 and again["ips"][1]["address"] == "fd00:2::50/64", "the static IPv6 address is free again"


def test_check_compares_both_addresses_with_the_prev_result(rt: Runtime) -> None:
    dual_stack(rt)
    netns = rt.netns("c1")
    added, _ = rt.call("ADD", name="dual", netns=netns)
    assert rt.call("CHECK", name="dual", netns=netns, prevResult=added) == ({}, 0)
    tampered = dict(added, ips=[added["ips"][0], {"interface": 1, "address": "fd00:2::99/64"}])
    doc, code = rt.call("CHECK", name="dual", netns=netns, prevResult=tampered)
    assert code == 1 and "fd00:2::99/64" in doc["msg"] and "fd00:2::2/64" in doc["msg"], doc


def test_del_removes_the_attachment_and_is_idempotent(rt: Runtime) -> None:
    rt.call("ADD")
    for _ in range(3):
        assert rt.call("DEL", netns="/run/netns/gone") == ({}, 0)
    assert rt.boxes() == []
    assert rt.engine.network("front")[1] == []


def test_check_passes_after_add_and_fails_on_mismatch_or_unknown(rt: Runtime) -> None:
    netns = rt.netns("c1")
    added, _ = rt.call("ADD", netns=netns)
    assert rt.call("CHECK", netns=netns, prevResult=added) == ({}, 0)
    tampered = dict(added, ips=[{"interface": 1, "address": "10.1.0.99/24"}])
    doc, code = rt.call("CHECK", netns=netns, prevResult=tampered)
    assert code == 1 and "10.1.0.99/24" in doc["msg"]
    doc, code = rt.call("CHECK", cid="other", netns=netns)
    assert (code, doc["code"]) == (1, 3)
    doc, code = rt.call("CHECK", netns=rt.netns("another"))
    assert code == 1 and "holds another namespace" in doc["msg"]
    box = rt.engine.sandbox(names.sandbox_name(CID, "eth0"))
    del rt.kernel.namespaces[box.netns].links["eth0"]  # the kernel lost what the record says
    doc, code = rt.call("CHECK", netns=netns, prevResult=added)
    assert (code, doc["code"]) == (1, 100) and "eth0" in doc["msg"], doc
    Path(netns).unlink()  # the runtime's namespace went away
    doc, code = rt.call("CHECK", netns=netns)
    assert code == 1 and "is gone" in doc["msg"]


def test_gc_removes_only_stale_attachments_of_this_network(rt: Runtime) -> None:
    for cid in ("keep1", "stale1", "stale2"):
        rt.call("ADD", cid=cid)
    rt.engine.adopt("hand-made", netns_path=rt.netns("hand"))  # not an attachment: GC leaves it alone
    rt.engine.connect("front", "hand-made")
    doc, code = rt.call("GC", **{"cni.dev/valid-attachments": [{"containerID": "keep1", "ifname": "eth0"}]})
    assert (doc, code) == ({}, 0)
    assert rt.boxes() == sorted(["hand-made", names.sandbox_name("keep1", "eth0")])


def test_gc_keeps_going_past_a_failure_and_reports_it(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    for cid in ("stale1", "stale2"):
        rt.call("ADD", cid=cid)
    real = rt.engine.remove_sandbox
    broken = names.sandbox_name("stale1", "eth0")

    def remove(name: str, force: bool = False, wait: bool = True) -> None:
        if name == broken:
            raise Conflict("the kernel said no")
        real(name, force, wait)

    monkeypatch.setattr(rt.engine, "remove_sandbox", remove)
    doc, code = rt.call("GC")
    assert (code, doc["code"]) == (1, 100)
    assert broken in doc["msg"] and "the kernel said no" in doc["msg"]
    assert rt.boxes() == [broken]


def test_status_says_whether_an_add_can_succeed(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert rt.call("STATUS") == ({}, 0)
    rt.engine.create_network(NetworkSpec.parse("tiny", subnet="10.2.0.0/30"))  # one address: .2
    rt.engine.adopt("x", netns_path=rt.netns("x"))
    rt.engine.connect("tiny", "x")
    doc, code = rt.call("STATUS", name="tiny")
    assert (code, doc["code"]) == (1, 50)
    assert "no free address" in doc["msg"]
    doc, code = rt.call("STATUS", name="nope")
    assert (code, doc["code"]) == (1, 50)
    assert "network nope does not exist" in doc["msg"]


def test_conflist_install_and_uninstall_in_given_dirs(tmp_path: Path) -> None:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    launcher = conflist.launcher("/usr/bin/python3", ["/opt/overlays", "/opt/site"])
    doc = conflist.build("front", state_dir=tmp_path / "state", store=None, node="h1", host_netns="h1")
    path, plugin = conflist.install(doc, conf_dir, bin_dir, launcher)
    assert json.loads(path.read_text()) == doc
    assert doc["plugins"][0]["capabilities"] == {"portMappings": True, "ips": True, "mac": True, "aliases": True}
    assert plugin.read_text() == launcher and plugin.stat().st_mode & 0o777 == 0o755
    back = conflist.build("back", state_dir=tmp_path / "state", store=None, node="h1", host_netns="h1")
    conflist.install(back, conf_dir, bin_dir, launcher)  # a second network shares the plugin
    assert conflist.uninstall("front", conf_dir, bin_dir) == [path]
    assert plugin.exists()
    assert conflist.uninstall("back", conf_dir, bin_dir) == [conf_dir / "overlays-back.conflist", plugin]
    assert list(conf_dir.iterdir()) == [] and list(bin_dir.iterdir()) == []
    with pytest.raises(NotFound, match="no conflist for network front"):
        conflist.uninstall("front", conf_dir, bin_dir)


def test_the_launcher_is_the_thin_client_behind_python_without_site(tmp_path: Path) -> None:
    text = conflist.launcher("/usr/bin/python3", ["/opt/overlays", "/opt/site"])
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/python3 -IS" and lines[1] == conflist.LAUNCHER_MARK
    key = conflist.install_key(["/opt/overlays"])
    assert lines[-1] == f"    sys.exit(main({key!r}, ['/opt/overlays', '/opt/site']))"
    compile(text, "overlays-cni", "exec")  # the client's source, whole
    imports = {line.split()[1] for line in lines if line.startswith(("import ", "from "))}
    assert imports == {"_socket", "posix", "sys"}, "the client imports built-in modules only"
    with pytest.raises(InvalidSpec, match="cannot be a script's #! line"):
        conflist.launcher("/" + "x" * 300, ["/opt"])


def test_install_refuses_to_replace_what_is_not_ours(tmp_path: Path) -> None:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    (conf_dir / "10-front.conflist").write_text(json.dumps({"name": "front", "plugins": [{"type": "bridge"}]}))
    doc = conflist.build("front", state_dir=tmp_path, store=None, node="n", host_netns=None)
    launcher = conflist.launcher("/usr/bin/python3", ["/opt/overlays"])
    with pytest.raises(Conflict, match=r"10-front\.conflist already configures a CNI network named front"):
        conflist.install(doc, conf_dir, bin_dir, launcher)
    (conf_dir / "10-front.conflist").unlink()
    bin_dir.mkdir()
    (bin_dir / "overlays-cni").write_text("#!/bin/sh\nsomeone else's\n")
    with pytest.raises(Conflict, match="is not overlays' overlays-cni"):
        conflist.install(doc, conf_dir, bin_dir, launcher)
    assert list(conf_dir.iterdir()) == []
    (bin_dir / "overlays-cni").unlink()
    (bin_dir / "overlays-cni").symlink_to(tmp_path / "venv" / "overlays-cni")  # what earlier versions linked
    assert conflist.install(doc, conf_dir, bin_dir, launcher)[1].read_text() == launcher


def test_store_url_is_made_absolute_for_the_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert conflist.store_url("lab.db") == str(tmp_path / "lab.db")
    assert conflist.store_url("etcd://h1:2379") == "etcd://h1:2379"
    assert conflist.store_url(None) is None



def test_a_port_on_an_ipv6_host_address_maps_to_a_publish_there() -> None:
    from overlays.cni.config import PluginConf, Publish
    from overlays.cni.plugin import port_mappings

    conf = PluginConf("front", ports=(Publish(8080, 80, "tcp", "fd00:9::1"), Publish(53, 53, "udp", "::")))
    assert [str(m) for m in port_mappings(conf)] == ["[fd00:9::1]:8080->80/tcp", "0.0.0.0:53->53/udp"]
