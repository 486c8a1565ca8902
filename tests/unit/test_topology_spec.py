"""Topology files: strict parsing with precise error paths, and the published schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from overlays.topology import TopologyError, load, resolve
from overlays.topology.plan import Record, plan
from overlays.topology.schema import topology_schema

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"seed.yaml", "three-tier.yaml", "two-host-lab.yaml", "overlay-lab.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses_and_matches_the_schema(path: Path) -> None:
    topo = load(path)
    assert topo.sandboxes
    jsonschema.validate(yaml.safe_load(path.read_text()), topology_schema())


def test_the_seed_fits_in_about_fifteen_lines() -> None:
    lines = [ln for ln in (Path(__file__).parents[2] / "examples/seed.yaml").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) <= 15


def test_defaults() -> None:
    topo = resolve({"networks": {"n": None}, "sandboxes": {"s": {"networks": ["n"], "command": "sleep 5"}}},
                   default_name="mylab")
    assert topo.name == "mylab" and topo.hosts == () and not topo.outside
    box = topo.sandboxes[0]
    assert box.host == "local" and box.command == ("sleep", "5")
    assert topo.networks[0].spec.subnet is None


BAD: list[tuple[Any, str]] = [
    ({"networkz": {}}, "f.yaml: networkz: unknown key"),
    ({"networks": {"n": {"subnet": 24}}},
     "f.yaml: networks.n.subnet: expected a CIDR string or a list of them (one IPv4, one IPv6), got a number"),
    ({"networks": {"n": {"subnet": "10.0.0.0/33"}}}, "networks.n: network n: subnet '10.0.0.0/33' is not a valid"),
    ({"networks": {"n": {"colour": "red"}}}, "networks.n.colour: unknown key"),
    ({"networks": {"n": {"internal": "yes"}}}, "networks.n.internal: expected true or false"),
    ({"sandboxes": {"s": {"networks": ["nope"]}}}, "sandboxes.s.networks[0]: unknown network 'nope'"),
    ({"networks": {"n": None}, "sandboxes": {"s": {"networks": ["n"], "ports": ["80:99999"]}}},
     "sandboxes.s.ports[0]: publish '80:99999'"),
    ({"networks": {"n": None}, "sandboxes": {"s": {"networks": ["n"], "ports": "8080:80"}}},
     "sandboxes.s.ports: expected a list of port mappings"),
    ({"networks": {"n": None}, "sandboxes": {"s": {"networks": {"n": {"ip": "10.0.0.300"}}}}},
     "sandboxes.s.networks.n: --ip for network n '10.0.0.300' is not a valid IP address"),
    ({"sandboxes": {"s": {"host": "h9"}}}, "sandboxes.s.host: unknown host 'h9' (the file declares no hosts)"),
    ({"hosts": ["h1", "h2"], "sandboxes": {"s": {}}}, "sandboxes.s.host: missing: this lab has several hosts"),
    ({"hosts": ["averyveryverylonghost"]}, "hosts.averyveryverylonghost: host names are at most 10"),
    ({"networks": {"d": {"internal": True}}, "sandboxes": {"s": {"networks": ["d"], "ports": ["80:80"]}}},
     "sandboxes.s.ports: all its networks are internal"),
    ({"sandboxes": {"s": {"command": {"a": 1}}}}, "sandboxes.s.command: expected a string or a list of strings"),
    (["not", "a", "mapping"], "f.yaml: expected a mapping, got a list"),
    ({"name": "bad name!"}, "name: topology name 'bad name!' is invalid"),
]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[m.split(": ")[1] for _, m in BAD])
def test_bad_files_name_the_file_the_path_and_the_problem(raw: Any, message: str) -> None:
    with pytest.raises(TopologyError) as err:
        resolve(raw, "f.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("f.yaml: ")


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="no such file"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("networks: [unclosed\n")
    with pytest.raises(TopologyError, match=r"bad\.yaml: not valid YAML"):
        load(bad)


def test_schema_is_valid_json_schema() -> None:
    schema = topology_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    json.dumps(schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"networkz": {}}, schema)


def test_plan_of_a_new_topology_creates_everything_in_order() -> None:
    topo = resolve({"hosts": ["h1"], "outside": True, "networks": {"n": None},
                    "sandboxes": {"s": {"host": "h1", "networks": ["n"]}}})

    class NoEngine:
        def network(self, name: str) -> None:
            from overlays.errors import NotFound

            raise NotFound(name)

        sandbox = network

    actions = plan(topo, Record(), lambda host: NoEngine(), lambda role: False)  # type: ignore[arg-type,return-value]
    assert [str(a) for a in actions] == [
        "create host h1", "create outside outside", "create network n on h1", "create sandbox s on h1"]
