"""Pictures without root: each example file drawn in every format, escaping, the live model, the UI's pieces."""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from overlays import EndpointRequest, Engine, NetworkSpec, SandboxSpec
from overlays.cli.main import main
from overlays.errors import InvalidSpec
from overlays.model.ports import parse_publish
from overlays.model.state import Endpoint, Network, Sandbox
from overlays.store import MemoryStore
from overlays.topology import load
from overlays.view import dot, mermaid
from overlays.view.build import port_lines
from overlays.view.live import Shared, build
from overlays.view.model import Edge, Graph, GraphError, Node
from overlays.view.plan import plan_graph
from overlays.view.render import render, svg
from overlays.view.server import Snapshot, Watcher, parse_listen

from .fakes import FakeKernel

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
SVG_NS = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")


def svg_texts(svg_text: str) -> tuple[ET.Element, list[str]]:
    """The parsed SVG (it must be well-formed XML) and every text it draws."""
    root = ET.fromstring(svg_text)
    assert root.tag == f"{SVG_NS}svg"
    return root, ["".join(t.itertext()) for t in root.iter(f"{SVG_NS}text")]


def svg_ids(root: ET.Element) -> set[str]:
    return {str(g.get("id")) for g in root.iter(f"{SVG_NS}g")}


def check_mermaid(text: str, graph: Graph) -> None:
    """Mermaid's flowchart grammar, as far as we use it: every line is one known statement,
    subgraphs close, every edge joins declared nodes, every label is quoted without a raw quote."""
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    node = re.compile(r'^ *(n\d+)\["([^"]*)"\]$')
    edge = re.compile(r'^ *(n\d+) (---|-->|-\.-)(?:\|"([^"]*)"\|)? (n\d+)$')
    declared: list[str] = []
    depth = 0
    edges = 0
    for line in lines[1:]:
        if m := node.match(line):
            declared.append(m.group(1))
        elif re.match(r'^ *subgraph h\d+\["[^"]*"\]$', line):
            depth += 1
        elif line.strip() == "end":
            depth -= 1
            assert depth >= 0, "end without subgraph"
        elif m := edge.match(line):
            assert m.group(1) in declared and m.group(4) in declared, line
            edges += 1
        elif not re.match(r"^ *(%%.*|classDef \w+ [\w:#,]+|class [n\d,]+ \w+)$", line):
            raise AssertionError(f"not a Mermaid statement we write: {line!r}")
    assert depth == 0, "a subgraph is not closed"
    assert len(declared) == len(set(declared)) == len(graph.nodes)
    assert edges == len(graph.edges)


@needs_dot
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_draws_as_dot_svg_mermaid_and_json(path: Path) -> None:
    topo = load(path)
    graph = plan_graph(topo)
    # DOT: Graphviz itself parses it; the SVG is well-formed and names every sandbox, network and host.
    root, texts = svg_texts(svg(dot.render(graph)))
    for box in topo.sandboxes:
        assert box.spec.name in texts, f"{box.spec.name} is not drawn"
        assert f"box:{box.host}:{box.spec.name}" in svg_ids(root)
    for decl in topo.networks:
        assert decl.spec.name in texts
    assert {f"host:{h}" for h in topo.host_names()} <= svg_ids(root)
    assert {e.id for e in graph.edges} <= svg_ids(root), "every link is drawn, with its model id"
    check_mermaid(mermaid.render(graph), graph)
    # JSON: the model, whole, and back.
    data = json.loads(render(graph, "json"))
    assert data == graph.to_json()
    assert Graph.from_json(data) == graph


def test_the_two_host_lab_shows_its_fabric_addresses_and_published_port() -> None:
    graph = plan_graph(load(Path(__file__).parents[2] / "examples" / "two-host-lab.yaml"))
    assert graph.hosts == ("h1", "h2")
    assert "eth0 10.254.0.11/24" in graph.node("host:h1").lines
    assert graph.node("ports:h2:api").lines == ("0.0.0.0:8080 → 80/tcp",)
    assert graph.node("outside").lines == ("eth0 10.254.0.1",)
    labels = {(e.source, e.target): e.label for e in graph.edges}
    assert labels[("fabric", "host:h2")] == "eth0 10.254.0.12"
    assert labels[("host:h1", "net:h1:local")] == "10.70.0.1", "the host holds the gateway on the bridge"
    assert labels[("ports:h2:api", "box:h2:api")] == "DNAT"


def test_an_overlay_spans_hosts_with_a_leg_and_a_vtep_on_each() -> None:
    graph = plan_graph(load(Path(__file__).parents[2] / "examples" / "overlay-lab.yaml"))
    segment = graph.node("net:mesh")
    assert segment.host is None and "overlay, VNI 4242" in segment.lines
    tunnels = {e.target: e.label for e in graph.edges if e.kind == "overlay"}
    assert tunnels == {"net:h1:mesh": "VXLAN to 10.254.0.11", "net:h2:mesh": "VXLAN to 10.254.0.12",
                       "net:h3:mesh": "VXLAN to 10.254.0.13"}
    assert ("net:h1:mesh", "box:h1:a2") in {(e.source, e.target) for e in graph.edges}


def test_declared_addresses_are_shown_and_the_rest_left_to_up() -> None:
    graph = plan_graph(load(Path(__file__).parents[2] / "examples" / "seed.yaml"))
    labels = {e.target: e.label for e in graph.edges if e.kind == "endpoint"}
    assert labels == {"box:local:a": "eth0 auto", "box:local:b": "eth0 10.12.0.10/24", "box:local:web": "eth0 auto"}


HOSTILE = 'we"b <b>&amp; \\ #35; {x} [y] |z|'
MERMAID_ENTITIES = {"35": "#", "quot": '"', "amp": "&", "lt": "<", "gt": ">"}


@needs_dot
def test_text_that_means_something_to_dot_or_mermaid_is_drawn_as_it_is() -> None:
    graph = Graph(HOSTILE, "plan", ('h"1',), (
        Node("a", "sandbox", HOSTILE, (HOSTILE,), (('k"', HOSTILE),), host='h"1'),
        Node('b"\\', "network", "n"),
    ), (Edge("a", 'b"\\', "endpoint", HOSTILE, (("x", HOSTILE),)),))
    root, texts = svg_texts(svg(dot.render(graph)))
    assert texts.count(HOSTILE) == 4, texts  # the graph's title, the node's title and line, the edge's label
    assert {"a", 'b"\\', 'cluster:h"1'} <= svg_ids(root)
    text = mermaid.render(graph)
    check_mermaid(text, graph)
    labels = re.findall(r'\["([^"]*)"\]', text) + re.findall(r'\|"([^"]*)"\|', text)
    decoded = [re.sub(r"#(35|quot|amp|lt|gt);", lambda m: MERMAID_ENTITIES[m.group(1)], label) for label in labels]
    assert f"<b>{HOSTILE}</b><br/>{HOSTILE}" in decoded and HOSTILE in decoded and 'host h"1' in decoded


def test_a_graph_that_does_not_hold_together_is_refused() -> None:
    a = Node("a", "sandbox", "a")
    with pytest.raises(GraphError, match="node a appears twice"):
        Graph("g", "live", (), (a, a))
    with pytest.raises(GraphError, match="names no node b"):
        Graph("g", "live", (), (a,), (Edge("a", "b", "endpoint"),))
    with pytest.raises(GraphError, match="undeclared host h"):
        Graph("g", "live", (), (Node("x", "host", "x", host="h"),))


def test_published_ranges_are_one_line_each() -> None:
    ports = parse_publish("8000-8999:9000-9999") + parse_publish("127.0.0.1:53:53/udp") + parse_publish("80:80")
    assert port_lines(ports) == ["0.0.0.0:80 → 80/tcp", "0.0.0.0:8000-8999 → 9000-9999/tcp", "127.0.0.1:53 → 53/udp"]


def _net(name: str, subnet: str, driver: str = "bridge", vni: int | None = None) -> Network:
    net = ipaddress.ip_network(subnet)
    return Network(name, driver, net, net.network_address + 1, None, 1450 if vni else 1500, f"ovb-{name}", 0.0,
                   vni=vni)


def test_the_live_picture_shows_remote_sandboxes_from_their_registrations() -> None:
    mesh, front = _net("mesh", "10.80.0.0/24", "overlay", 4242), _net("front", "10.10.0.0/24")
    eps = (Endpoint("a", "mesh", "eth0", "ovv-a", ipaddress.ip_address("10.80.0.2"), 24,
                    ipaddress.ip_address("10.80.0.1"), "02:00:00:00:00:01", 1450, "ready", driver="overlay"),
           Endpoint("a", "front", "eth1", "ovv-a2", ipaddress.ip_address("10.10.0.2"), 24,
                    ipaddress.ip_address("10.10.0.1"), "02:00:00:00:00:02", 1500, "ready"))
    box = Sandbox("a", "ov-x-a", state="ready", endpoints=eps, ports=tuple(parse_publish("8080:80")))
    shared = Shared(
        hosts={"h1": {"underlay": "10.254.0.11", "ifname": "eth0", "mtu": 1500},
               "h2": {"underlay": "10.254.0.12", "ifname": "eth0", "mtu": 1500}},
        endpoints=[{"network": "mesh", "node": "h1", "sandbox": "a", "ip": "10.80.0.2", "mac": "02:00:00:00:00:01",
                    "vtep": "10.254.0.11"},
                   {"network": "mesh", "node": "h2", "sandbox": "b", "ip": "10.80.0.3", "mac": "02:00:00:00:00:03",
                    "vtep": "10.254.0.12"}])
    graph = build("h1", "lab-h1", [front, mesh], [box], shared, instance="abc123")
    assert graph.hosts == ("h1", "h2")
    assert graph.node("box:h2:b").host == "h2"
    assert dict(graph.node("net:h1:mesh").details)["vxlan device"] == "ovx-mesh"
    labels = {(e.source, e.target): e.label for e in graph.edges}
    assert labels[("net:mesh", "net:h1:mesh")] == "VXLAN to 10.254.0.11"
    assert labels[("net:mesh", "net:h2:mesh")] == "VXLAN to 10.254.0.12"
    assert labels[("net:h2:mesh", "box:h2:b")] == "10.80.0.3/24"
    assert labels[("net:h1:mesh", "box:h1:a")] == "eth0 10.80.0.2/24"
    assert labels[("net:h1:front", "box:h1:a")] == "eth1 10.10.0.2/24"
    assert labels[("ports:h1:a", "box:h1:a")] == "DNAT"
    assert "underlay eth0 10.254.0.11" in graph.node("host:h1").lines


def test_listen_is_loopback_unless_an_address_is_named() -> None:
    assert parse_listen("127.0.0.1:8700") == ("127.0.0.1", 8700)
    assert parse_listen("localhost:9000") == ("127.0.0.1", 9000)
    assert parse_listen("[::1]:8700") == ("::1", 8700)
    assert parse_listen("10.1.2.3:8700") == ("10.1.2.3", 8700)  # named: served (the CLI warns)
    for bad, why in [("0.0.0.0:8700", "every address"), ("[::]:8700", "every address"),
                     ("example.org:8700", "not an IP address"), ("127.0.0.1", "expected ADDRESS:PORT"),
                     ("127.0.0.1:0", "out of range"), ("127.0.0.1:http", "not a number")]:
        with pytest.raises(InvalidSpec, match=why):
            parse_listen(bad)


def test_ui_refuses_a_wildcard_listen_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--state-dir", str(tmp_path), "ui", "--listen", "0.0.0.0:8700"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "every address" in err
    assert not (tmp_path / "state.db").exists(), "refused before opening anything"


def test_graph_of_a_file_in_each_format_through_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    seed = str(Path(__file__).parents[2] / "examples" / "seed.yaml")
    assert main(["graph", "-f", seed, "--format", "json"]) == 0
    assert Graph.from_json(json.loads(capsys.readouterr().out)).title.startswith("topology seed")
    assert main(["graph", "-f", seed, "-o", str(tmp_path / "seed.mmd")]) == 0
    assert (tmp_path / "seed.mmd").read_text().startswith("flowchart LR")
    assert main(["graph", "-f", seed, "-o", str(tmp_path / "seed.png")]) == 1
    assert "give --format" in capsys.readouterr().err
    assert main(["graph", "-f", str(tmp_path / "nope.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_graph_imports_neither_pyroute2_nor_the_web_server(tmp_path: Path) -> None:
    code = ("import json, sys\nfrom overlays.cli.main import main\nassert main(['graph', '--format', 'json']) == 0\n"
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n")
    env = dict(os.environ, OVERLAYS_STATE_DIR=str(tmp_path))
    env.pop("OVERLAYS_HOST_NETNS", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["source"] == "live"
    loaded = set(json.loads(done.stderr.splitlines()[-1]))
    for module in ["pyroute2", "aiohttp", "overlays.view.server", "overlays.topology", "overlays.drivers",
                   "overlays.kernel.rtnl", "yaml"]:
        assert module not in loaded, f"graph imported {module}"


def test_a_snapshot_is_sent_only_when_what_the_page_shows_changed() -> None:
    sent: list[Snapshot] = []
    watcher = Watcher(None, sent.append)  # type: ignore[arg-type]  # _send needs no engine
    one = Snapshot(1, "d1", {}, "<svg/>", [], 0.0)
    watcher._send(one)
    watcher._send(Snapshot(2, "d1", {}, "<svg/>", [], 1.0))  # a later revision, the same picture
    watcher._send(Snapshot(3, "d1", {}, "<svg/>", [{"command": "x"}], 2.0))  # an operation more
    watcher._send(Snapshot(4, "d2", {}, "<svg/>", [{"command": "x"}], 3.0))  # another picture
    assert [s.revision for s in sent] == [1, 3, 4]


def test_the_watcher_sends_a_new_picture_when_a_sandbox_is_created(tmp_path: Path) -> None:
    host = "fakehost"
    engine = Engine(host_netns=host, state_dir=tmp_path, store=MemoryStore(), kernel=FakeKernel(host),  # type: ignore[arg-type]
                    check_root=False)
    engine.create_network(NetworkSpec.parse("front", subnet="10.10.0.0/24"))
    sent: queue.Queue[Snapshot] = queue.Queue()
    watcher = Watcher(engine, sent.put)
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        first = sent.get(timeout=10)
        assert first.error is None and "box:fakehost:a" not in {n["id"] for n in first.graph["nodes"]}
        assert first.svg.lstrip().startswith("<?xml") and first.operations == []
        engine.create_sandbox(SandboxSpec.parse("a", [EndpointRequest.parse("front")]))
        second = sent.get(timeout=10)  # pending or already created: on the picture either way
        assert "box:fakehost:a" in {n["id"] for n in second.graph["nodes"]}
        assert second.revision > first.revision and second.digest != first.digest
    finally:
        watcher.stop.set()
        thread.join(timeout=10)
        engine.close()


def test_the_watcher_sends_the_journal_of_recent_operations_as_it_grows(tmp_path: Path) -> None:
    from overlays.view import operations

    host = "fakehost"
    engine = Engine(host_netns=host, state_dir=tmp_path, store=MemoryStore(), kernel=FakeKernel(host),  # type: ignore[arg-type]
                    check_root=False)
    sent: queue.Queue[Snapshot] = queue.Queue()
    watcher = Watcher(engine, sent.put)
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        assert sent.get(timeout=10).operations == []
        operations.append(tmp_path, host, "overlays network create front", ["ip link add ovb-front type bridge"])
        newer = sent.get(timeout=10)  # no store change: the journal's own
        assert [op["command"] for op in newer.operations] == ["overlays network create front"]
        assert newer.operations[0]["lines"] == ["ip link add ovb-front type bridge"]
    finally:
        watcher.stop.set()
        thread.join(timeout=10)
        engine.close()


def test_the_live_picture_shows_both_families_of_a_dual_stack_network() -> None:
    net = replace(_net("ds", "10.11.0.0/24"), subnet6=ipaddress.ip_network("fd00:11::/64"),
                  gateway6=ipaddress.ip_address("fd00:11::1"))
    ep = Endpoint("a", "ds", "eth0", "ovv-a", ipaddress.ip_address("10.11.0.2"), 24, ipaddress.ip_address("10.11.0.1"),
                  "02:00:00:00:00:01", 1500, "ready", ip6=ipaddress.ip_address("fd00:11::2"), prefixlen6=64,
                  gateway6=ipaddress.ip_address("fd00:11::1"))
    graph = build("h1", "lab-h1", [net], [Sandbox("a", "ov-x-a", state="ready", endpoints=(ep,))], Shared({}, []),
                  instance="abc123")
    labels = {(e.source, e.target): e.label for e in graph.edges}
    assert labels[("net:h1:ds", "box:h1:a")] == "eth0 10.11.0.2/24 fd00:11::2/64"
    assert labels[("host:h1", "net:h1:ds")] == "10.11.0.1, fd00:11::1"
    assert "10.11.0.0/24, fd00:11::/64" in graph.node("net:h1:ds").lines
