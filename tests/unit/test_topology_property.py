"""Property: a valid file plans and applies with plan == what up does; a mutated file fails at plan time or
not at all, never while being applied. On the in-memory kernel, with the real engine, planner and store."""

from __future__ import annotations

import copy
import ipaddress
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlays.errors import OverlaysError
from overlays.topology import Lab, TopologyError, resolve

from .fakes import FakeKernel

if os.geteuid() != 0:
    pytest.skip("Lab.plan needs root (it checks it, as every changing command does)", allow_module_level=True)

HOST = "prophost"


@st.composite
def topologies(draw: st.DrawFn) -> dict[str, Any]:
    """Valid files by construction: distinct subnets, unique static addresses and ports per host."""
    lab = draw(st.booleans())
    hosts = ["h1", "h2"] if lab else []
    networks: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 3))):
        net: dict[str, Any] = {"subnet": f"10.{100 + i}.0.0/24"} if draw(st.booleans()) else {}
        if draw(st.booleans()):
            net["internal"] = True
        if lab and draw(st.booleans()):
            net["hosts"] = [draw(st.sampled_from(hosts))]
        networks[f"n{i}"] = net
    sandboxes: dict[str, Any] = {}
    used_ips: set[tuple[str, str]] = set()
    used_ports: set[tuple[str, int]] = set()
    for j in range(draw(st.integers(0, 5))):
        host = draw(st.sampled_from(hosts)) if lab else "local"
        here = [n for n, d in networks.items() if host in d.get("hosts", hosts or ["local"])]
        if not here:
            continue
        chosen = draw(st.lists(st.sampled_from(here), min_size=1, max_size=2, unique=True))
        endpoints: dict[str, Any] = {}
        for n in chosen:
            subnet = networks[n].get("subnet")
            ip = f"{subnet.rsplit('.', 2)[0]}.0.{draw(st.integers(2, 250))}" if subnet and draw(st.booleans()) else None
            if ip is not None and (n, ip) not in used_ips:
                used_ips.add((n, ip))
                endpoints[n] = {"ip": ip}
            else:
                endpoints[n] = {}
        box: dict[str, Any] = {"networks": endpoints}
        if lab:
            box["host"] = host
        port = draw(st.integers(8000, 8003))
        publishable = not all(networks[n].get("internal") for n in chosen)
        if publishable and (host, port) not in used_ports and draw(st.booleans()):
            used_ports.add((host, port))
            box["ports"] = [f"{port}:80"]
        sandboxes[f"s{j}"] = box
    raw: dict[str, Any] = {"name": "prop", "networks": networks, "sandboxes": sandboxes}
    if lab:
        raw["hosts"] = hosts
    return raw


MUTATIONS = ["same ip", "overlap", "same port", "bad type", "unknown key", "bad ip", "drop network"]


def mutate(raw: dict[str, Any], how: str, pick: int) -> dict[str, Any]:
    bad = copy.deepcopy(raw)
    boxes, nets = list(bad["sandboxes"].values()), list(bad["networks"].values())
    if how == "same ip" and len(boxes) > 1:
        for net, ep in boxes[0]["networks"].items():
            other = boxes[1]["networks"]
            if net in other:
                prefix = (bad["networks"][net].get("subnet") or "10.9.0.0/24").rsplit(".", 2)[0]
                other[net]["ip"] = ep.get("ip") or f"{prefix}.0.9"
                ep["ip"] = other[net]["ip"]
    elif how == "overlap" and len(nets) > 1:
        nets[1]["subnet"] = nets[0].get("subnet") or "10.100.0.0/24"
        nets[0]["subnet"] = nets[1]["subnet"]
    elif how == "same port" and len(boxes) > 1:
        boxes[0]["ports"] = boxes[1]["ports"] = ["8080:80"]
    elif how == "bad type" and nets:
        nets[pick % len(nets)]["subnet"] = ["not", "a", "cidr"]
    elif how == "unknown key":
        bad["sandboxes"]["x"] = {"netwroks": []}
    elif how == "bad ip" and boxes:
        box = boxes[pick % len(boxes)]
        for ep in box["networks"].values():
            ep["ip"] = "10.250.250.250"
    elif how == "drop network" and nets:
        del bad["networks"][list(bad["networks"])[pick % len(nets)]]
    return bad


def lab_of(raw: dict[str, Any], state: Path, kernel: FakeKernel) -> Lab:
    return Lab(resolve(raw, "prop.yaml"), host_netns=HOST, state_dir=state, kernel=kernel)  # type: ignore[arg-type]


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(topologies())
def test_a_valid_file_goes_up_as_planned_and_a_second_plan_is_empty(raw: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as state:
        lab = lab_of(raw, Path(state), FakeKernel(HOST))
        try:
            planned = lab.plan()
            assert lab.up() == planned
            assert lab.plan() == []
        finally:
            lab.down()
            lab.close()


@SETTINGS
@given(topologies(), st.sampled_from(MUTATIONS), st.integers(0, 10))
def test_a_mutated_file_fails_at_plan_time_or_not_at_all(raw: dict[str, Any], how: str, pick: int) -> None:
    bad = mutate(raw, how, pick)
    with tempfile.TemporaryDirectory() as state:
        kernel = FakeKernel(HOST)
        try:
            lab = lab_of(bad, Path(state), kernel)
        except TopologyError:
            return  # refused as it was read
        try:
            try:
                lab.plan()
            except OverlaysError:
                return  # refused at plan time: nothing was made
            lab.up()  # a plan that passed must not fail while being applied
        finally:
            lab.down()
            lab.close()


@SETTINGS
@given(topologies(), topologies())
def test_any_edit_of_a_running_file_goes_as_planned(first: dict[str, Any], second: dict[str, Any]) -> None:
    """Up one file, then another in its place: the second plan fails at plan time or is exactly what up does."""
    with tempfile.TemporaryDirectory() as state:
        kernel = FakeKernel(HOST)
        lab = lab_of(first, Path(state), kernel)
        lab.up()
        lab.close()
        edit = lab_of(second, Path(state), kernel)
        try:
            try:
                planned = edit.plan()
            except OverlaysError:
                return
            assert edit.up() == planned
            assert edit.plan() == []
        finally:
            edit.down()
            edit.close()


def test_an_edit_frees_an_address_and_a_port_before_another_sandbox_takes_them() -> None:
    """Found by the property above: s3 leaves n1, whose address .2 s0 now asks for statically, and the port
    s0 published moves to s1. Every release must come before every claim."""
    first = {"name": "prop",
             "networks": {"n0": {"subnet": "10.100.0.0/24"}, "n1": {"subnet": "10.101.0.0/24", "internal": True}},
             "sandboxes": {"s0": {"networks": {"n0": {}}, "ports": ["8000:80"]}, "s1": {"networks": {"n0": {}}},
                           "s2": {"networks": {"n0": {}}}, "s3": {"networks": {"n0": {}, "n1": {}}}}}
    second = {"name": "prop",
              "networks": {"n0": {}, "n1": {"subnet": "10.101.0.0/24", "internal": True}},
              "sandboxes": {"s0": {"networks": {"n1": {"ip": "10.101.0.2"}}},
                            "s1": {"networks": {"n0": {}}, "ports": ["8000:80"]},
                            "s2": {"networks": {"n0": {}}}, "s3": {"networks": {"n0": {}}}}}
    with tempfile.TemporaryDirectory() as state:
        kernel = FakeKernel(HOST)
        lab = lab_of(first, Path(state), kernel)
        lab.up()
        lab.close()
        edit = lab_of(second, Path(state), kernel)
        try:
            planned = [str(a) for a in edit.plan()]
            assert planned.index("disconnect sandbox s3 on local") < planned.index(
                "recreate sandbox s0 on local (its ports, command or hostname changed)")
            assert [str(a) for a in edit.up()] == planned
            assert edit.engine("local").sandbox("s0").endpoints[0].ip == ipaddress.ip_address("10.101.0.2")
            assert edit.plan() == []
        finally:
            edit.down()
            edit.close()
