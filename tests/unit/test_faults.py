"""Faults without root: parsing, the Jepsen shapes, the rendered nft text, the tc messages, the file's section,
and the engine's fault operations on the fake kernel (rolled back at every step, finished after a crash)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from overlays import EndpointRequest, Engine, InvalidSpec, KernelError, NetworkSpec, NotFound, SandboxSpec
from overlays.drivers import faults as render
from overlays.engine import records
from overlays.kernel import nl, tc
from overlays.kernel.faults import FaultyKernel
from overlays.model import nemesis
from overlays.model.faults import (
    HOST,
    Drops,
    Faults,
    ImpairSpec,
    Partition,
    PartitionSpec,
    Peer,
    group_cuts,
    grudge_cuts,
    local_drops,
    parse_duration,
    parse_percent,
    parse_rate,
)
from overlays.store import MemoryStore
from overlays.topology import TopologyError, resolve
from overlays.topology.plan import Record, plan
from overlays.topology.schema import topology_schema

from .fakes import FakeKernel, object_records

HOST_NS = "fakehost"

# -- parsing ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("2", 2),
                                               ("1.5s", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration("--for", text) == seconds


@pytest.mark.parametrize("text", ["soon", "0s", "-1s", "1d", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidSpec, match="--for"):
        parse_duration("--for", text)


def test_percentages_and_rates() -> None:
    assert [parse_percent("--loss", v) for v in ("10", "10%", 0.5, None, 100)] == [10, 10, 0.5, 0, 100]
    for bad in ("ten", "101", "-1", "0.001"):
        with pytest.raises(InvalidSpec, match="--loss"):
            parse_percent("--loss", bad)
    assert [parse_rate("--rate", r) for r in ("10mbit", "500kbit", "1gbit", "1Mbit", "100kbps")] == [
        10_000_000, 500_000, 1_000_000_000, 1_000_000, 800_000]
    for bad in ("fast", "10mb", "1bit", "1tbit"):
        with pytest.raises(InvalidSpec, match="--rate"):
            parse_rate("--rate", bad)


def test_impair_specs_say_what_is_wrong() -> None:
    spec = ImpairSpec.parse("a", loss="10%", rate="10mbit", direction="out")
    assert spec.describe() == "loss 10%, rate 10mbit (out)"
    for kwargs, message in (({}, "say what to impair"), ({"jitter": 5}, "--jitter needs --delay"),
                            ({"loss": 1, "direction": "sideways"}, "direction 'sideways' is not one of"),
                            ({"delay": "soon"}, "--delay 'soon' is not a number of milliseconds")):
        with pytest.raises(InvalidSpec, match=message):
            ImpairSpec.parse("a", **kwargs)


# -- partitions as cuts -----------------------------------------------------------------------------------------------


def test_groups_become_cuts_both_ways_or_one_way() -> None:
    assert sorted(group_cuts([["a"], ["b", "c"]])) == [("a", "b"), ("a", "c"), ("b", "a"), ("c", "a")]
    assert sorted(group_cuts([["a"], ["b"], ["c"]], oneway=True)) == [("a", "b"), ("a", "c")]
    assert sorted(grudge_cuts({"b": {"a"}})) == [("a", "b")]


def test_each_host_keeps_the_drops_of_its_own_members() -> None:
    peers = (Peer("a", "sandbox", "h1", ("10.0.0.2",)), Peer("b", "sandbox", "h2", ("10.0.0.3",),
                                                             ("192.0.2.2 . tcp . 8080",)))
    spec = PartitionSpec("p", (("a", "b"),), peers, "a -> b")
    port = "10.0.0.2 . 192.0.2.2 . tcp . 8080"  # from a, to b's published port: both hosts, before DNAT
    assert local_drops(spec, "h1") == {"": Drops(ports=(port,))}, "a sends: its host drops what goes to b's port"
    assert local_drops(spec, "h2") == {"": Drops(ports=(port,)), "b": Drops(from_=("10.0.0.2",))}
    assert local_drops(spec, "h3") == {}
    hosts = (Peer("h1", HOST, "h1", ("10.254.0.11",)), Peer("h2", HOST, "h2", ("10.254.0.12",)))
    both = PartitionSpec("q", tuple(group_cuts([["h1"], ["h2"]])), hosts, "h1 | h2")
    assert local_drops(both, "h1") == {"": Drops(from_=("10.254.0.12",))}


def test_a_spec_refuses_unknown_members_and_mixed_kinds() -> None:
    with pytest.raises(InvalidSpec, match="member b is not known"):
        PartitionSpec("p", (("a", "b"),), (Peer("a", "sandbox", "h", ()),), "a | b")
    with pytest.raises(InvalidSpec, match="give sandboxes or hosts, not both"):
        PartitionSpec("p", (("a", "h"),), (Peer("a", "sandbox", "h", ()), Peer("h", HOST, "h", ())), "a | h")


# -- the Jepsen shapes ------------------------------------------------------------------------------------------------


def test_halves_isolate_and_bridge() -> None:
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    assert nemesis.halves(nodes) == [["n1", "n2"], ["n3", "n4", "n5"]]
    shuffled = nemesis.halves(nodes, random.Random(1))
    assert sorted(shuffled[0] + shuffled[1]) == nodes and len(shuffled[0]) == 2
    assert nemesis.isolate(nodes, "n3") == [["n3"], ["n1", "n2", "n4", "n5"]]
    with pytest.raises(InvalidSpec, match="cannot isolate n9"):
        nemesis.isolate(nodes, "n9")
    grudge = nemesis.bridge(nodes)  # halves [n1, n2] | [n3, n4, n5]; n3 in the middle
    assert grudge == {"n1": {"n4", "n5"}, "n2": {"n4", "n5"}, "n4": {"n1", "n2"}, "n5": {"n1", "n2"}}


def test_every_node_of_a_majorities_ring_sees_a_majority_of_its_own() -> None:
    nodes = [f"n{i}" for i in range(1, 6)]
    grudge = nemesis.majorities_ring(nodes, random.Random(3))
    seen = {node: frozenset(set(nodes) - dropped) for node, dropped in grudge.items()}
    assert set(seen) == set(nodes)
    assert all(len(s) == 3 and node in s for node, s in seen.items())
    assert len(set(seen.values())) == 5, "no two nodes see the same majority"
    with pytest.raises(InvalidSpec, match="at least 3 nodes"):
        nemesis.majorities_ring(["a", "b"])


# -- the rendered table -----------------------------------------------------------------------------------------------


def test_draws_take_their_share_of_ten_thousand() -> None:
    assert render.draws("eth0", 10) == '"eth0" . 0-999'
    assert render.draws("eth1", 100) == '"eth1" . 0-9999'
    assert render.draws("eth0", 0.01) == '"eth0" . 0'


def test_the_table_is_rendered_whole_with_the_time_left() -> None:
    now = 1000.0
    faults = Faults()
    faults.partitions["p"] = Partition("p", "a | b", (("a", "b"),), {"a": Drops(from_=("10.0.0.3",))}, now + 2.5)
    faults.impairments[("a", "n")] = _impairment(loss=10, direction="out", expires=None)
    script = render.render("abc123", render.table_state(faults, "a"), now)
    lines = script.splitlines()
    assert lines[:3] == ["add table ip overlays_abc123_faults", "delete table ip overlays_abc123_faults",
                         "add table ip overlays_abc123_faults"]
    assert "add element ip overlays_abc123_faults cut_from { 10.0.0.3 timeout 2500ms }" in lines
    assert 'add element ip overlays_abc123_faults loss_out { "eth0" . 0-999 }' in lines
    assert 'add element ip overlays_abc123_faults impaired_out { "eth0" : jump impair_out }' in lines
    assert "add rule ip overlays_abc123_faults in ip saddr @cut_from drop comment \"partition\"" in lines
    assert not any("loss_in {" in line and "element" in line for line in lines), "out only"
    assert all("eth0" not in line for line in lines if line.startswith(("add rule", "add set"))), "rules name nothing"


def test_an_empty_or_ended_table_is_deleted_and_the_later_end_wins() -> None:
    now = 1000.0
    state = render.TableState()
    assert render.render("x", state, now) == "add table ip overlays_x_faults\ndelete table ip overlays_x_faults\n"
    state.add("cut_from", ["10.0.0.3"], now - 1)  # ended
    assert render.render("x", state, now).count("\n") == 2
    state.add("cut_from", ["10.0.0.3"], now + 5)
    state.add("cut_from", ["10.0.0.3"], now + 1)
    assert state.sets["cut_from"]["10.0.0.3"] == now + 5
    state.add("cut_from", ["10.0.0.3"], None)
    assert state.sets["cut_from"]["10.0.0.3"] is None


def _impairment(**kwargs: Any) -> Any:
    from overlays.model.faults import Impairment

    expires = kwargs.pop("expires", None)
    spec = ImpairSpec.parse("a", "n", expires=expires, **kwargs)
    return Impairment(spec, "n", "eth0")


def test_shaping_per_direction() -> None:
    faults = Faults()
    faults.impairments[("a", "n")] = _impairment(rate="10mbit", direction="in")
    assert render.shaping(faults, "a") == {"eth0": render.Shaping(None, tc.Shape(rate=10_000_000))}
    faults.impairments[("a", "n")] = _impairment(loss=5)
    assert render.shaping(faults, "a") == {}, "loss is nft's: no qdisc"


# -- tc messages ------------------------------------------------------------------------------------------------------


def _as_answer(body: bytes) -> nl.Message:
    fields = tc.TCMSG.unpack(body, 0)
    return nl.Message(tc.RTM_NEWQDISC, 0, fields, nl.Attrs.parse(body, tc.TCMSG.size, len(body)))


@pytest.mark.parametrize("shape", [tc.Shape(rate=10_000_000), tc.Shape(rate=40_000_000_000),
                                   tc.Shape(delay_us=100_000, jitter_us=10_000),
                                   tc.Shape(rate=5_000_000, delay_us=20_000)])
def test_qdisc_messages_read_back_as_what_was_asked(shape: tc.Shape) -> None:
    msg = _as_answer(tc.qdisc_message(7, shape))
    assert (msg["index"], msg["handle"], msg["parent"]) == (7, tc.OURS, tc.TC_H_ROOT)
    found = tc._qdisc_from(msg)
    assert found.kind == shape.kind and found.shape == shape


def test_tbf_sizes_its_burst_and_queue_from_the_rate() -> None:
    options = tc._qdisc_from(_as_answer(tc.qdisc_message(1, tc.Shape(rate=10_000_000))))
    assert options.rate == 10_000_000
    body = tc.tbf_options(10_000_000)
    attrs = nl.Attrs.parse(body, 4, len(body))
    parms = attrs.blob(tc.TCA_TBF_PARMS) or b""
    limit = tc._TBF_TAIL.unpack_from(parms, 24)[0]
    assert len(parms) == 36 and attrs.u32(tc.TCA_TBF_BURST) == 64 * 1024
    assert limit == 250_000 + 64 * 1024  # 200 ms at 1.25 MB/s, and the burst


def test_the_redirect_filter_names_its_ifb() -> None:
    body = tc.redirect_message(3, tc.INGRESS_HANDLE, 9)
    msg = nl.Message(tc.RTM_NEWTFILTER, 0, tc.TCMSG.unpack(body, 0), nl.Attrs.parse(body, tc.TCMSG.size, len(body)))
    assert msg["info"] == (tc.OUR_PRIO << 16) | 0x0300  # ETH_P_ALL in network order
    assert tc._mirred_target(msg) == 9
    assert tc._U32_SEL.size == 16 and tc._U32_KEY.size == 16 and tc._MIRRED.size == 28 and tc.TCMSG.size == 20


# -- the file's faults ------------------------------------------------------------------------------------------------

BASE: dict[str, Any] = {"hosts": ["h1", "h2"], "networks": {"m": {"driver": "overlay"}, "l": None},
                        "sandboxes": {"a": {"host": "h1", "networks": ["m"]},
                                      "b": {"host": "h2", "networks": ["m", "l"]}}}


def with_faults(faults: Any) -> dict[str, Any]:
    return {**BASE, "faults": faults}


def test_a_file_declares_partitions_and_impairments() -> None:
    topo = resolve(with_faults({"split": {"partition": [["h1"], "h2"]},
                                "slow": {"impair": "b", "network": "l", "rate": "1mbit", "loss": "5%",
                                         "enabled": False}}), "f.yaml")
    split, slow = topo.faults
    assert (split.groups, split.enabled, split.describe()) == ((("h1",), ("h2",)), True, "partition h1 | h2")
    assert slow.impair is not None and (slow.impair.rate, slow.impair.loss, slow.enabled) == (1_000_000, 5, False)
    assert slow.describe() == "impair b on l: loss 5%, rate 1mbit (both)"
    jsonschema.validate(with_faults({"split": {"partition": [["h1"], "h2"]}}), topology_schema())


BAD: list[tuple[Any, str]] = [
    ({"x": {"oneway": True}}, "faults.x: say either partition: [[a], [b, c]] or impair: SANDBOX"),
    ({"x": {"partition": [["a"]]}}, "faults.x.partition: a partition needs at least two groups"),
    ({"x": {"partition": [["a"], ["zed"]]}}, "faults.x.partition[1]: 'zed' is not a sandbox or host of this file"),
    ({"x": {"partition": [["a"], ["h2"]]}}, "faults.x.partition: give hosts or sandboxes, not both"),
    ({"x": {"partition": [["a"], ["b"]], "loss": 5}}, "faults.x.loss: not a key of a partition fault"),
    ({"x": {"partition": "a,b"}}, "faults.x.partition: expected a list of groups"),
    ({"x": {"impair": "b", "loss": 5}}, "faults.x: sandbox b is on 2 networks: say which with network:"),
    ({"x": {"impair": "a", "network": "l", "loss": 5}}, "faults.x.network: sandbox a is not on network 'l'"),
    ({"x": {"impair": "a", "loss": 500}}, "faults.x: --loss 500 must be between 0 and 100"),
    ({"x": {"impair": "a"}}, "faults.x: impair a: say what to impair"),
    ({"x": {"impair": "a", "loss": 1, "enabled": "yes"}}, "faults.x.enabled: expected true or false"),
    ({"bad name": {"impair": "a", "loss": 1}}, "faults.bad name: fault name 'bad name' is invalid"),
]


@pytest.mark.parametrize(("faults", "message"), BAD, ids=[m.split(": ")[1] for _, m in BAD])
def test_bad_fault_sections_name_the_file_and_the_path(faults: Any, message: str) -> None:
    with pytest.raises(TopologyError) as err:
        resolve(with_faults(faults), "f.yaml")
    assert str(err.value).startswith(f"f.yaml: {message}"), str(err.value)


def test_plan_applies_enabled_faults_last_and_heals_dropped_ones() -> None:
    topo = resolve(with_faults({"split": {"partition": [["a"], ["b"]]}, "off": {"impair": "a", "loss": 1,
                                                                                "enabled": False}}))

    class NoEngine:
        def network(self, name: str) -> None:
            raise NotFound(name)

        sandbox = network

    actions = plan(topo, Record(), lambda host: NoEngine(), lambda role: False)  # type: ignore[arg-type,return-value]
    assert [str(a) for a in actions][-1] == "apply fault split (partition a | b)"
    assert not any(a.name == "off" for a in actions)


# -- the engine on the fake kernel ------------------------------------------------------------------------------------


def make_engine(tmp_path: Path, kernel: Any, store: MemoryStore) -> Engine:
    return Engine(host_netns=HOST_NS, state_dir=tmp_path, store=store, kernel=kernel, check_root=False)


def two_sandboxes(tmp_path: Path) -> tuple[FakeKernel, MemoryStore, Engine]:
    kernel, store = FakeKernel(HOST_NS), MemoryStore()
    eng = make_engine(tmp_path, kernel, store)
    eng.create_network(NetworkSpec.parse("n", subnet="10.1.0.0/24"))
    for name in ("a", "b"):
        eng.create_sandbox(SandboxSpec.parse(name, [EndpointRequest.parse("n")]))
    return kernel, store, eng


def partition_of(eng: Engine, *groups: list[str], expires: float | None = None) -> PartitionSpec:
    members = [m for g in groups for m in g]
    return PartitionSpec("p", tuple(group_cuts(groups)), tuple(eng.partition_peers(members)), "a | b", expires)


def test_a_partition_is_recorded_ready_and_put_in_both_namespaces(tmp_path: Path) -> None:
    kernel, _store, eng = two_sandboxes(tmp_path)
    made = eng.partition(partition_of(eng, ["a"], ["b"]))
    assert made.state == "ready" and set(made.targets) == {"a", "b"}
    table = render.table_name(eng.instance)
    for box in ("a", "b"):
        assert table in kernel.nft_tables[eng.sandbox(box).netns]
    assert eng.heal() == ["p"]
    assert all(table not in kernel.nft_tables.get(eng.sandbox(b).netns, {}) for b in ("a", "b"))
    assert not eng.faults()


def test_an_impairment_fails_cleanly_at_every_kernel_step(tmp_path: Path) -> None:
    kernel, store, eng = two_sandboxes(tmp_path)
    before_kernel, before_store = kernel.snapshot(), object_records(store)
    spec = ImpairSpec.parse("a", loss=5, rate="5mbit", duplicate=1)
    n = 1
    while True:
        faulty = make_engine(tmp_path, FaultyKernel(kernel, fail_at=n), store)  # type: ignore[arg-type]
        try:
            faulty.impair(spec)
        except KernelError:
            assert kernel.snapshot() == before_kernel, f"kernel not rolled back after step {n}"
            assert object_records(store) == before_store, f"records not rolled back after step {n}"
            n += 1
            continue
        break
    assert n == 6, "table, egress shape, ifb, its shape, the redirect"
    assert kernel.snapshot() != before_kernel
    inside = kernel.namespaces[eng.sandbox("a").netns]
    assert inside.shapes == {"eth0": tc.Shape(rate=5_000_000), "ovi-eth0": tc.Shape(rate=5_000_000)}
    assert inside.redirects == {"eth0": "ovi-eth0"}
    eng.heal(everything=True)
    assert kernel.snapshot() == before_kernel


def test_what_a_killed_command_left_pending_the_next_operation_finishes(tmp_path: Path) -> None:
    kernel, _store, eng = two_sandboxes(tmp_path)
    drops = local_drops(partition_of(eng, ["a"], ["b"]), eng.node)
    pending = Partition("p", "a | b", (("a", "b"), ("b", "a")), drops)  # recorded, never put in force
    eng.ctx.transact(lambda txn: txn.put(records.partition_key("p"), pending.to_record()))
    assert render.table_name(eng.instance) not in kernel.nft_tables.get(eng.sandbox("a").netns, {})
    left = eng.heal_expired()
    assert left.partitions["p"].state == "ready"
    assert render.table_name(eng.instance) in kernel.nft_tables[eng.sandbox("a").netns]


def test_what_is_due_is_healed_and_what_a_removed_sandbox_had_is_forgotten(tmp_path: Path) -> None:
    kernel, store, eng = two_sandboxes(tmp_path)
    eng.partition(partition_of(eng, ["a"], ["b"], expires=time.time() + 0.05))
    eng.impair(ImpairSpec.parse("b", rate="1mbit"))
    eng.link_down("b")
    time.sleep(0.06)
    assert eng.faults().partitions == {}, "a listing leaves out what is due"
    eng.heal_expired()
    assert render.table_name(eng.instance) not in kernel.nft_tables.get(eng.sandbox("a").netns, {})
    eng.remove_sandbox("b")
    assert not eng.heal_expired()
    assert [k for k, _ in object_records(store) if "/faults/" in k] == []


def test_links_go_down_at_the_host_end_and_the_engine_says_what_is_wrong(tmp_path: Path) -> None:
    kernel, _store, eng = two_sandboxes(tmp_path)
    ep = eng.link_down("a")
    assert not kernel.namespaces[HOST_NS].links[ep.host_ifname].up
    assert kernel.namespaces[eng.sandbox("a").netns].links["eth0"].up, "the sandbox's end keeps its routes"
    with pytest.raises(InvalidSpec, match="the link of sandbox b on n is not down"):
        eng.link_up("b")
    with pytest.raises(NotFound, match="sandbox zed does not exist"):
        eng.link_down("zed")
    eng.link_up("a")
    assert kernel.namespaces[HOST_NS].links[ep.host_ifname].up


def test_delay_is_refused_without_netem_and_taken_with_it(tmp_path: Path) -> None:
    kernel, _store, eng = two_sandboxes(tmp_path)
    with pytest.raises(InvalidSpec, match="CONFIG_NET_SCH_NETEM"):
        eng.impair(ImpairSpec.parse("a", delay=10))
    assert not eng.faults()
    kernel.netem = True
    eng.impair(ImpairSpec.parse("a", delay=10, jitter=2, direction="out"))
    assert kernel.namespaces[eng.sandbox("a").netns].shapes == {"eth0": tc.Shape(delay_us=10_000, jitter_us=2000)}


def test_a_link_taken_down_is_no_drift_and_a_repair_puts_faults_back(tmp_path: Path) -> None:
    kernel, _store, eng = two_sandboxes(tmp_path)
    ep = eng.link_down("a")
    eng.partition(partition_of(eng, ["a"], ["b"]))
    assert eng.sandbox_problems("a") == [], "its link is down on purpose"
    kernel.delete_netns(eng.sandbox("a").netns)  # drift: the namespace (and its fault table) gone
    assert eng.sandbox_problems("a") != []
    eng.repair_sandbox("a")
    assert render.table_name(eng.instance) in kernel.nft_tables[eng.sandbox("a").netns], "the partition came back"
    assert not kernel.namespaces[HOST_NS].links[ep.host_ifname].up, "and the link is down again"
    assert eng.sandbox_problems("a") == []


def test_only_the_sets_in_use_and_their_rules_are_rendered() -> None:
    state = render.TableState()
    state.add("cut_from", ["10.0.0.9"], None)
    lines = render.render("x", state, 0.0).splitlines()
    assert [line.split()[1] for line in lines[3:]] == ["set", "chain", "rule", "element"]
    assert "add chain ip overlays_x_faults in { type filter hook prerouting priority raw; policy accept; }" in lines
