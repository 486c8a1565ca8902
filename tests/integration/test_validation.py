"""Bad input changes nothing, in one line: a corpus of malformed files through the CLI, and what only the
store and the host can tell (a port or address held outside the file, a missing command or parent)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from overlays.cli.main import main

from .conftest import Cli, ip_json, unique

EXAMPLES = Path(__file__).parents[2] / "examples"


def state(host: str, state_dir: Path) -> tuple[object, ...]:
    """What a refused command must leave as it was: the host's links and addresses, our namespaces, the store."""
    from overlays.engine.context import instance_id
    from overlays.store import SqliteStore

    links = sorted((a["ifname"], tuple(i["local"] for i in a.get("addr_info", []))) for a in ip_json(host, "addr"))
    instance = instance_id(state_dir, host)
    spaces = sorted(n for n in os.listdir("/run/netns") if n.startswith(f"ov-{instance}-"))
    db = state_dir / "state.db"
    stored: list[object] = []
    if db.exists():
        store = SqliteStore(db)
        stored = [(e.key, e.value) for e in store.range("") if "ipam-next/" not in e.key and "meta/" not in e.key]
        store.close()
    return links, spaces, stored


def run(host: str, state_dir: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--host-netns", host, "--state-dir", str(state_dir), *args])
    return code, capsys.readouterr().err


def mutations(raw: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The file with one value at a time replaced by a value of another kind (wrong types at every level)."""
    wrong: dict[type, list[Any]] = {
        dict: [["x"], "x", 7, True], list: [{"k": "v"}, 7, True],
        str: [{"k": "v"}, ["x", "y"], True, 10**30], int: [{"k": "v"}, "x" * 300, -1, 10**30],
    }

    def walk(node: Any, path: list[Any]) -> Iterator[list[Any]]:
        yield path
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, [*path, i])

    for path in walk(raw, []):
        if not path:
            continue
        parent = raw
        for part in path[:-1]:
            parent = parent[part]
        for value in wrong.get(type(parent[path[-1]]), []):
            bad = copy.deepcopy(raw)
            target = bad
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
            yield f"{'.'.join(map(str, path))}={value!r:.20}", bad


def corpus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    seed = yaml.safe_load((EXAMPLES / "seed.yaml").read_text())
    seed["name"] = unique("v")
    text = yaml.safe_dump(seed)
    files: list[tuple[str, bytes]] = [
        ("binary", bytes(range(256)) * 4),
        ("empty mapping of garbage", b"{{{{"),
        ("a tab", b"\tnetworks: {}"),
        ("too deep", b"[" * 3000 + b"]" * 3000),
        ("too large", b"# " + b"x" * (1 << 20) + b"\n"),
        ("a key twice", b"networks:\n  n: {}\n  n: {}\n"),
        ("a list at the top", b"- a\n- b\n"),
        ("a huge MTU", yaml.safe_dump({"networks": {"n": {"mtu": 10**30}}}).encode()),
        ("a huge range", yaml.safe_dump({"networks": {"n": {}}, "sandboxes": {
            "s": {"networks": ["n"], "ports": ["1-65535:1-65535"]}}}).encode()),
        ("a long name", yaml.safe_dump({"networks": {"n" * 5000: {}}}).encode()),
    ]
    files += [(f"cut at {n}", text.encode()[:n]) for n in range(7, len(text), max(1, len(text) // 12))]
    files += [(f"mutated {what}", yaml.safe_dump(bad).encode()) for what, bad in mutations(seed)]
    for i, (what, data) in enumerate(files):
        path = tmp_path / f"c{i}.yaml"
        path.write_bytes(data)
        yield what, path


def test_every_malformed_file_is_one_line_and_changes_nothing(host: str, state_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    before = state(host, state_dir)
    accepted = refused = 0
    for what, path in corpus(tmp_path):
        code, err = run(host, state_dir, "plan", "-f", str(path), capsys=capsys)
        if code == 0:  # some mutations are valid files: their plan must then be what up does
            accepted += 1
            continue
        refused += 1
        assert code == 1 and err.count("\n") == 1 and err.startswith("overlays: error: "), (what, code, err)
        assert str(path) in err, (what, err)
        code, err = run(host, state_dir, "up", "-f", str(path), capsys=capsys)
        assert code == 1 and err.count("\n") == 1, (what, err)
        assert state(host, state_dir) == before, f"{what}: up changed something"
    print(f"corpus: {refused} refused, {accepted} valid")
    assert refused > 3 * accepted, (refused, accepted)


def test_what_only_the_store_and_host_know_is_refused_by_plan_and_up_alike(cli: Cli, host: str, state_dir: Path,
                                                                          tmp_path: Path) -> None:
    cli("network", "create", "demo", "--subnet", "10.12.0.0/24", check=True)
    cli("run", "--name", "squatter", "--network", "demo", "--ip", "10.12.0.10", "-p", "9090:80", check=True)
    cli("network", "create", "theirs", "--subnet", "10.13.0.0/24", check=True)

    def refused(name: str, raw: dict[str, Any], message: str) -> None:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": unique("p"), **raw}))
        before = state(host, state_dir)
        for command in ("plan", "up"):
            done = cli(command, "-f", str(path))
            assert done.returncode == 1 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
            assert state(host, state_dir) == before

    refused("overlap", {"networks": {"mine": {"subnet": "10.13.0.128/25"}}},
            "networks.mine.subnet: subnet 10.13.0.128/25 overlaps network theirs (10.13.0.0/24)")
    refused("port", {"networks": {"mine": {"subnet": "10.14.0.0/24"}},
                     "sandboxes": {"web": {"networks": ["mine"], "ports": ["9090:80"]}}},
            "sandboxes.web.ports: port 9090/tcp is already published by sandbox squatter")
    refused("command", {"networks": {"mine": {"subnet": "10.14.0.0/24"}},
                        "sandboxes": {"w": {"networks": ["mine"], "command": "no-such-command-here --now"}}},
            "sandboxes.w.command: command 'no-such-command-here' is not found on the PATH")
    refused("parent", {"networks": {"lan": {"driver": "macvlan", "parent": "nope0", "subnet": "10.15.0.0/24"}}},
            "networks.lan.parent: parent interface nope0 does not exist on host local")
    refused("host address", {"networks": {"mine": {"subnet": "10.14.0.0/24"}},
                             "sandboxes": {"w": {"networks": ["mine"], "ports": ["192.0.2.7:80:80"]}}},
            "sandboxes.w.ports: cannot publish on 192.0.2.7: it is not an address of host local")
    assert json.loads(cli("ps", "--json", check=True).stdout)[0]["name"] == "squatter"


def test_attach_refuses_what_is_not_a_namespace_of_its_own(cli: Cli, host: str, tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("x")
    other = unique("an")
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        cli("attach", "mine", "--netns", f"/run/netns/{other}", check=True)
        cases = [
            (["--netns", str(regular)], f"{regular} is not a network namespace"),
            (["--netns", "/proc/self/ns/uts"], "is a namespace, but not a network namespace"),
            (["--netns", f"/run/netns/{host}"], "is the host's own network namespace"),
            (["--netns", f"/run/netns/{other}"], "is already sandbox mine's network namespace"),
            (["--pid", "999999999"], "process 999999999 does not exist"),
        ]
        for args, message in cases:
            done = cli("attach", "again", *args)
            assert done.returncode == 1 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert [b["name"] for b in json.loads(cli("ps", "--json", check=True).stdout)] == ["mine"]
    finally:
        cli("rm", "mine")
        subprocess.run(["ip", "netns", "del", other], check=False)
