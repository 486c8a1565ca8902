"""What the engine tells the host's DNS server, and when, on a fake kernel (its DNS server is a dict)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overlays import EndpointRequest, Engine, InvalidSpec, NetworkSpec, SandboxSpec
from overlays.agent.names import RemoteNames, key_of
from overlays.dns import answers
from overlays.dns.names import NamesTable
from overlays.engine import hostagent, hostdns, records
from overlays.kernel.dnsctl import Record
from overlays.kernel.faults import FaultyKernel
from overlays.kernel.rtnl_types import Link
from overlays.model.state import EndpointRegistration, HostRegistration, Network
from overlays.store import MemoryStore
from overlays.store.base import Event
from overlays.topology import resolve
from overlays.topology.plan import network_print

from .fakes import FakeKernel

HOST = "fakehost"


def make_engine(tmp_path: Path, kernel: FakeKernel, store: MemoryStore | None = None, node: str = HOST,
                warnings: list[str] | None = None) -> Engine:
    return Engine(host_netns=HOST, state_dir=tmp_path, store=store or MemoryStore(), node=node,
                  kernel=kernel, check_root=False,  # type: ignore[arg-type]
                  warn=(warnings.append if warnings is not None else None))


def served(kernel: FakeKernel, node: str = HOST) -> dict[str, tuple[str | None, tuple[Record, ...]]]:
    return kernel.dns_served.get(node, {})


def test_a_sandbox_is_registered_with_its_name_hostname_and_aliases_per_network(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    eng = make_engine(tmp_path, kernel)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24", dns=["192.0.2.53"]))
    eng.create_network(NetworkSpec.parse("back", subnet="10.2.0.0/24", internal=True))
    box = eng.create_sandbox(SandboxSpec.parse("web", [EndpointRequest.parse("front", aliases=["www"]),
                                                       EndpointRequest.parse("back", aliases=["api"])], "webhost"))
    path, found = served(kernel)["web"]
    assert path == str(kernel.netns_path(box.netns))
    assert found == (Record("front", "web", ("10.1.0.2",), ("www", "webhost"), upstreams=("192.0.2.53",),
                            subnet="10.1.0.0/24"),
                     Record("back", "web", ("10.2.0.2",), ("api", "webhost"), internal=True, subnet="10.2.0.0/24"))
    assert kernel.etc[box.netns]["resolv.conf"].startswith("nameserver 127.0.0.11")


def test_connect_and_disconnect_send_the_whole_new_list_and_rm_forgets_all(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    eng = make_engine(tmp_path, kernel)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    eng.create_network(NetworkSpec.parse("back", subnet="10.2.0.0/24"))
    box = eng.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("front")]))
    eng.connect(EndpointRequest.parse("back", aliases=["db"]), "a")
    assert [(r.network, r.aliases) for r in served(kernel)["a"][1]] == [("front", ()), ("back", ("db",))]
    eng.disconnect("front", "a")
    assert [r.network for r in served(kernel)["a"][1]] == ["back"]
    eng.remove_sandbox("a")
    assert "a" not in served(kernel) and box.netns not in kernel.etc


def test_a_failed_create_leaves_no_names_and_no_files(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    store = MemoryStore()
    eng = make_engine(tmp_path, kernel, store)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    for fail_at in range(1, 30):
        faulty = Engine(host_netns=HOST, state_dir=tmp_path, store=store, node=HOST, check_root=False,
                        kernel=FaultyKernel(kernel, fail_at))  # type: ignore[arg-type]
        try:
            faulty.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("front")]))
        except Exception:
            assert served(kernel) == {} and kernel.etc == {}, f"left after failing at step {fail_at}"
            continue
        break
    else:
        pytest.fail("create never succeeded")
    assert fail_at > 3 and "a" in served(kernel)


def test_dns_turned_off_registers_nothing_and_writes_no_file(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    eng = Engine(host_netns=HOST, state_dir=tmp_path, store=MemoryStore(), kernel=kernel,  # type: ignore[arg-type]
                 check_root=False, dns=False)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    eng.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("front")]))
    assert served(kernel) == {} and kernel.etc == {}


def test_no_server_warns_and_the_sandbox_is_made_anyway(tmp_path: Path) -> None:
    class Unreachable(FakeKernel):
        def dns(self, state_dir: Path, node: str) -> object:  # type: ignore[override]
            from overlays.kernel import dnsctl

            return dnsctl.Client(dnsctl.socket_path(state_dir, node))

    warnings: list[str] = []
    kernel = Unreachable(HOST)
    eng = Engine(host_netns=HOST, state_dir=tmp_path, store=MemoryStore(), kernel=kernel,  # type: ignore[arg-type]
                 check_root=False, warn=warnings.append)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    box = eng.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("front")]))
    assert box.state == "ready"
    assert len(warnings) == 1 and "store was handed in" in warnings[0] and "names are not served" in warnings[0]
    eng.remove_sandbox("a")  # no server: nothing to unregister, no agent started, no new warning
    assert len(warnings) == 1 and not hostagent.record_path(eng.ctx).exists()


def test_the_agent_started_on_demand_is_recorded_and_its_command_names_this_host(tmp_path: Path) -> None:
    eng = make_engine(tmp_path, FakeKernel(HOST))
    eng.ctx.store_url = "etcd://10.0.0.1:2379"
    argv = hostagent.argv(eng.ctx)
    assert argv[1:3] == ["-m", "overlays"] and argv[-2:] == ["agent", "--on-demand"]
    assert argv[argv.index("--node"):argv.index("--node") + 2] == ["--node", HOST]
    assert "--host-netns" in argv and "etcd://10.0.0.1:2379" in argv
    assert hostagent.started(eng.ctx) is None
    hostagent._write_record(eng.ctx, hostagent.Started(1, 1))  # pid 1 never has that start time
    assert json.loads(hostagent.record_path(eng.ctx).read_text())["on_demand"] is True
    assert hostagent.started(eng.ctx) is None  # not that process: never signalled


def test_network_dns_servers_are_parsed_recorded_and_refused_where_they_make_no_sense() -> None:
    spec = NetworkSpec.parse("front", dns=["192.0.2.53", "2001:db8::53", "192.0.2.53"])
    assert [str(s) for s in spec.dns] == ["192.0.2.53", "2001:db8::53"]
    with pytest.raises(InvalidSpec, match=r"network front: DNS server 'dns\.example' is not an IP address"):
        NetworkSpec.parse("front", dns=["dns.example"])
    with pytest.raises(InvalidSpec, match="network inner: --dns does not apply to an internal network"):
        NetworkSpec.parse("inner", internal=True, dns=["192.0.2.53"])
    net = Network.from_record({"name": "n", "driver": "bridge", "subnet": "10.1.0.0/24", "gateway": "10.1.0.1",
                               "ip_range": None, "mtu": 1500, "bridge": "b", "created": 0})
    assert net.dns == () and "dns" not in net.to_record()  # records written before --dns read the same


def test_topology_dns_is_strict_and_prints_only_when_set() -> None:
    topo = resolve({"networks": {"front": {"dns": ["192.0.2.53"]}, "back": None}})
    assert [str(s) for s in topo.network("front").spec.dns] == ["192.0.2.53"]
    assert json.loads(network_print(topo.network("front")))["dns"] == ["192.0.2.53"]
    assert "dns" not in json.loads(network_print(topo.network("back")))  # older records' prints stay equal
    for raw, message in (({"dns": "192.0.2.53"}, "networks.n.dns: expected a list of IP address strings"),
                         ({"dns": [53]}, "networks.n.dns[0]: expected an IP address string, got a number"),
                         ({"dns": ["x"]}, "networks.n: network n: DNS server 'x' is not an IP address")):
        with pytest.raises(InvalidSpec, match=message.replace("[", r"\[").replace("]", r"\]")):
            resolve({"networks": {"n": raw}}, "f.yaml")


def test_overlay_registrations_carry_aliases_and_hostname_and_old_ones_still_read(tmp_path: Path) -> None:
    kernel = FakeKernel(HOST)
    with kernel.open(HOST) as host:  # an underlay, and this host registered as its agent would
        host.ns.links["eth0"] = Link(2, "eth0", "veth", "", 1500, None, True, None)
        host.ensure_address("eth0", "10.254.0.11", 24)
        host.ensure_default_route("10.254.0.1")
    store = MemoryStore()
    lease = store.grant_lease(60)
    me = HostRegistration(HOST, "10.254.0.11", "eth0", 1500, lease, 0.0)
    store.commit({}, {records.host_key(HOST): me.to_record()}, [], {records.host_key(HOST): lease})
    eng = make_engine(tmp_path, kernel, store)
    eng.create_network(NetworkSpec.parse("mesh", subnet="10.80.0.0/24", driver="overlay"))
    eng.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("mesh", aliases=["api"])], "alpha"))
    (reg,) = eng.shared_endpoints()
    assert (reg.aliases, reg.hostname) == (("api",), "alpha")
    old = {"node": "h2", "sandbox": "b", "ip": "10.80.0.9", "mac": "02:00:00:00:00:09", "vtep": "10.254.0.12"}
    assert EndpointRegistration.from_record(old, "mesh") == EndpointRegistration("mesh", "h2", "b", "10.80.0.9",
                                                                                  old["mac"], old["vtep"])


def test_remote_names_follow_other_hosts_registrations_and_skip_this_hosts(tmp_path: Path) -> None:
    store = MemoryStore()
    eng = make_engine(tmp_path, FakeKernel(HOST), store)
    mesh = Network.from_record({"name": "mesh", "driver": "overlay", "subnet": "10.80.0.0/24",
                                "gateway": "10.80.0.1", "ip_range": None, "mtu": 1450, "bridge": "ovb-mesh",
                                "created": 0, "vni": 4096, "dns": ["192.0.2.53"]})

    def put(reg: EndpointRegistration) -> None:
        store.commit({}, {records.registration_key(reg.network, reg.node, reg.sandbox): reg.to_record()}, [])

    store.commit({}, {records.network_key("mesh"): mesh.to_record()}, [])
    put(EndpointRegistration("mesh", "h2", "b", "10.80.0.9", "02:00:00:00:00:09", "10.254.0.12", ("db",), "bee"))
    put(EndpointRegistration("mesh", HOST, "a", "10.80.0.2", "02:00:00:00:00:02", "10.254.0.11"))
    sent: list[tuple[str, tuple[Record, ...] | None]] = []
    remote = RemoteNames(eng.ctx, lambda key, found: sent.append((key, found)))
    assert remote.full() == 1
    assert sent == [(key_of("h2", "b"), (Record("mesh", "b", ("10.80.0.9",), ("db", "bee"),
                                                upstreams=("192.0.2.53",), subnet="10.80.0.0/24"),))]
    assert remote.networks_changed(["mesh"]) == 0  # nothing changed: nothing sent
    store.commit({}, {}, [records.registration_key("mesh", "h2", "b")])
    assert remote.networks_changed(["mesh"]) == 1 and sent[-1] == (key_of("h2", "b"), None)


def test_records_of_leaves_a_shared_segments_subnet_to_its_own_resolvers() -> None:
    net = Network.from_record({"name": "lan", "driver": "macvlan", "subnet": "192.168.1.0/24",
                               "gateway": "192.168.1.1", "ip_range": None, "mtu": 1500, "bridge": "",
                               "created": 0, "parent": "eth0"})
    reg = EndpointRegistration("lan", "h", "x", "192.168.1.50", "02:00:00:00:00:01", "")
    assert hostdns.remote_records([reg], {"lan": net})[0].subnet == ""


def test_free_addresses_of_our_subnets_are_nxdomain_and_never_forwarded() -> None:
    from dnslib import QTYPE, RCODE, DNSRecord

    table = NamesTable()
    table.set("a", [Record("front", "a", ("10.1.0.2",), subnet="10.1.0.0/24")])
    table.set("m", [Record("lan", "m", ("192.168.1.50",))])  # a shared segment: no subnet of ours
    scope = table.scope("a") | table.scope("m")

    def ask(name: str) -> bytes | answers.Forward | None:
        return answers.answer(bytes(DNSRecord.question(name, "PTR").pack()), table, scope, 512)

    found = ask("2.0.1.10.in-addr.arpa")
    assert isinstance(found, bytes) and [str(r.rdata) for r in DNSRecord.parse(found).rr] == ["a.front."]
    free = ask("99.0.1.10.in-addr.arpa")
    assert isinstance(free, bytes)
    reply = DNSRecord.parse(free)
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.header.aa == 1 and reply.q.qtype == QTYPE.PTR
    assert isinstance(ask("99.1.168.192.in-addr.arpa"), answers.Forward)  # the LAN's own resolvers know it
    assert isinstance(ask("7.2.0.192.in-addr.arpa"), answers.Forward)  # not ours at all


def test_remote_names_apply_a_registrations_events_without_reading_the_store(tmp_path: Path) -> None:
    store = MemoryStore()
    eng = make_engine(tmp_path, FakeKernel(HOST), store)
    mesh = Network.from_record({"name": "mesh", "driver": "overlay", "subnet": "10.80.0.0/24",
                                "gateway": "10.80.0.1", "ip_range": None, "mtu": 1450, "bridge": "ovb-mesh",
                                "created": 0, "vni": 4096})
    store.commit({}, {records.network_key("mesh"): mesh.to_record()}, [])
    b = EndpointRegistration("mesh", "h2", "b", "10.80.0.9", "02:00:00:00:00:09", "10.254.0.12")
    store.commit({}, {records.registration_key("mesh", "h2", "b"): b.to_record()}, [])
    sent: list[tuple[str, tuple[Record, ...] | None]] = []
    remote = RemoteNames(eng.ctx, lambda key, found: sent.append((key, found)))
    remote.full()
    c = EndpointRegistration("mesh", "h3", "c", "10.80.0.10", "02:00:00:00:00:0a", "10.254.0.13", ("cache",))
    c_key, b_key = records.registration_key("mesh", "h3", "c"), records.registration_key("mesh", "h2", "b")
    # Events that the store never saw: had apply read the store, it would not find c, and would find b.
    assert remote.apply([Event("put", c_key, c.to_record(), 7), Event("delete", b_key, None, 8)]) == 2
    assert sent[-2:] == [(key_of("h2", "b"), None),
                         (key_of("h3", "c"), (Record("mesh", "c", ("10.80.0.10",), ("cache",),
                                                     subnet="10.80.0.0/24"),))]
    # A network it holds nothing of is read from the store instead (here: nothing there).
    assert remote.apply([Event("put", records.registration_key("other", "h3", "d"), c.to_record(), 9)]) == 0
    assert set(remote.served()) == {key_of("h3", "c")}
