"""The CNI protocol as a pure function: environment and stdin in, stdout and exit code out (no root)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from overlays.cni import names, protocol
from overlays.cni.protocol import Attachment, CniError, Interface, IPConfig, Request, Route
from overlays.errors import Conflict, Exhausted, NotFound, StoreError

CID = "3f" * 32  # a podman container id: 64 hex digits
NETNS = "/run/netns/cni-1234"


def env(command: str, **extra: str) -> dict[str, str]:
    base = {"CNI_COMMAND": command, "CNI_CONTAINERID": CID, "CNI_NETNS": NETNS, "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}
    return base | extra


def conf(version: str = "1.0.0", **extra: Any) -> bytes:
    return json.dumps({"cniVersion": version, "name": "front", "type": "overlays-cni"} | extra).encode()


ATTACHMENT = Attachment(
    interfaces=(Interface("ovv-cni--1a2b3c"), Interface("eth0", "02:6f:0a:58:00:05", NETNS, 1500)),
    ips=(IPConfig("10.88.0.5/24", interface=1, gateway="10.88.0.1"),),
    routes=(Route("0.0.0.0/0", "10.88.0.1"),),
)


class Recorder:
    """A backend that records the calls it gets (the protocol layer is what is under test here)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail
        self.closed = False

    def _do(self, verb: str, arg: Any = None) -> None:
        self.calls.append((verb, arg))
        if self.fail:
            raise self.fail

    def add(self, req: Request) -> Attachment:
        self._do("ADD", req)
        return ATTACHMENT

    def delete(self, req: Request) -> None:
        self._do("DEL", req)

    def check(self, req: Request) -> None:
        self._do("CHECK", req)

    def gc(self, req: Request, valid: Sequence[tuple[str, str]]) -> None:
        self._do("GC", list(valid))

    def status(self, req: Request) -> None:
        self._do("STATUS", req)

    def close(self) -> None:
        self.closed = True


def run(environment: dict[str, str], stdin: bytes, backend: Recorder | None = None) -> tuple[dict[str, Any], int]:
    backend = backend or Recorder()
    out, code = protocol.handle(environment, stdin, lambda req, warn: backend)
    return (json.loads(out) if out else {}), code


def error_of(environment: dict[str, str], stdin: bytes) -> dict[str, Any]:
    doc, code = run(environment, stdin)
    assert code == 1
    assert set(doc) >= {"cniVersion", "code", "msg"}
    return doc


@pytest.mark.parametrize(("environment", "code", "named"), [
    ({}, 4, "CNI_COMMAND"),
    (env("FROB"), 4, "FROB"),
    ({"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0"}, 4, "CNI_CONTAINERID, CNI_NETNS"),
    (env("DEL", CNI_IFNAME=""), 4, "CNI_IFNAME"),
    (env("ADD", CNI_CONTAINERID="-bad id"), 4, "CNI_CONTAINERID"),
    (env("ADD", CNI_IFNAME="a-very-long-ifname"), 4, "too long"),
    (env("ADD", CNI_IFNAME="eth/0"), 4, "eth/0"),
    (env("ADD", CNI_ARGS="IP=10.0.0.5;junk"), 4, "junk"),
    (env("GC", CNI_PATH=""), 4, "CNI_PATH"),
])
def test_bad_environments_are_code_4_naming_the_variable(environment: dict[str, str], code: int,
                                                          named: str) -> None:
    doc = error_of(environment, conf())
    assert doc["code"] == code
    assert named in doc["msg"]


@pytest.mark.parametrize(("stdin", "code", "named"), [
    (b"{not json", 6, "not JSON"),
    (b"[1, 2]", 6, "not a JSON object"),
    (b"\xff\xfe", 6, "not JSON"),
    (json.dumps({"cniVersion": "1.0.0"}).encode(), 7, "no name"),
    (json.dumps({"cniVersion": "1.0.0", "name": "bad name"}).encode(), 7, "bad name"),
    (json.dumps({"name": "front"}).encode(), 1, "no cniVersion"),
    (conf("0.3.1"), 1, "0.3.1"),
    (conf("2.0.0"), 1, "2.0.0"),
    (conf("one"), 6, "one"),
])
def test_bad_configurations_are_decoding_config_or_version_errors(stdin: bytes, code: int, named: str) -> None:
    doc = error_of(env("ADD"), stdin)
    assert doc["code"] == code
    assert named in doc["msg"]


@pytest.mark.parametrize("verb", ["GC", "STATUS"])
def test_gc_and_status_need_a_1_1_0_configuration(verb: str) -> None:
    doc = error_of(env(verb), conf("1.0.0"))
    assert (doc["code"], doc["cniVersion"]) == (1, "1.1.0")
    assert f"does not allow {verb}" in doc["msg"]


@pytest.mark.parametrize("stdin", [b"", b'{"cniVersion": "1.0.0"}', b"junk"])
def test_version_answers_without_opening_a_backend(stdin: bytes) -> None:
    def no_backend(req: Request, warn: protocol.Warn) -> Recorder:
        raise AssertionError("VERSION opened a backend")

    out, code = protocol.handle({"CNI_COMMAND": "VERSION"}, stdin, no_backend)
    doc = json.loads(out)
    assert code == 0
    assert doc["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]
    assert doc["cniVersion"] == ("1.0.0" if b"1.0.0" in stdin else "1.1.0")


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_add_result_in_1_x_shape(version: str) -> None:
    doc, code = run(env("ADD"), conf(version))
    assert code == 0
    assert doc["cniVersion"] == version
    assert doc["interfaces"][1] == {"name": "eth0", "mac": "02:6f:0a:58:00:05", "sandbox": NETNS,
                                    **({"mtu": 1500} if version == "1.1.0" else {})}
    assert doc["ips"] == [{"interface": 1, "address": "10.88.0.5/24", "gateway": "10.88.0.1"}]
    assert doc["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}]
    assert doc["dns"] == {}


def test_add_result_in_0_4_0_shape_names_the_family_as_podman_4_parses_it() -> None:
    doc, _ = run(env("ADD"), conf("0.4.0"))
    assert doc["ips"] == [{"version": "4", "interface": 1, "address": "10.88.0.5/24", "gateway": "10.88.0.1"}]
    assert all("mtu" not in itf for itf in doc["interfaces"])
    sandboxed = [itf for itf in doc["interfaces"] if itf.get("sandbox")]
    assert all(itf["mac"] for itf in sandboxed)  # podman parses every sandbox interface's MAC


def test_add_after_a_previous_plugin_keeps_its_result_and_shifts_our_indexes() -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo", "sandbox": NETNS}],
            "ips": [{"interface": 0, "address": "127.0.0.1/8"}], "dns": {"nameservers": ["10.0.0.53"]}}
    doc, _ = run(env("ADD"), conf(prevResult=prev))
    assert [i["name"] for i in doc["interfaces"]] == ["lo", "ovv-cni--1a2b3c", "eth0"]
    assert [ip["interface"] for ip in doc["ips"]] == [0, 2]
    assert doc["dns"] == {"nameservers": ["10.0.0.53"]}


def test_del_check_gc_status_print_nothing_on_success() -> None:
    backend = Recorder()
    for verb, version in (("DEL", "1.0.0"), ("CHECK", "1.0.0"), ("GC", "1.1.0"), ("STATUS", "1.1.0")):
        out, code = protocol.handle(env(verb), conf(version), lambda req, warn: backend)
        assert (out, code) == (b"", 0)
    assert [verb for verb, _ in backend.calls] == ["DEL", "CHECK", "GC", "STATUS"]
    assert backend.closed


def test_del_needs_no_netns() -> None:
    out, code = protocol.handle(env("DEL", CNI_NETNS=""), conf(), lambda req, warn: Recorder())
    assert (out, code) == (b"", 0)


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_reads_the_valid_attachments_under_either_key(key: str) -> None:
    backend = Recorder()
    stdin = conf("1.1.0", **{key: [{"containerID": "a1", "ifname": "eth0"}]})
    run({"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}, stdin, backend)
    assert backend.calls == [("GC", [("a1", "eth0")])]


def test_gc_with_malformed_attachments_is_invalid_config() -> None:
    doc = error_of({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, conf("1.1.0", **{"cni.dev/valid-attachments": [{}]}))
    assert doc["code"] == 7
    assert "valid-attachments[0]" in doc["msg"]


@pytest.mark.parametrize(("error", "code"), [
    (NotFound("network front does not exist"), 101),
    (Exhausted("network front has no free address"), 103),
    (Conflict("sandbox x already exists"), 102),
    (StoreError("database is locked"), 11),
    (CniError(106, "static MAC 02:00:00:00:00:01: not yet"), 106),
    (RuntimeError("a bug"), 100),
])
def test_backend_errors_become_codes_with_their_message(error: Exception, code: int) -> None:
    doc, status = run(env("ADD"), conf("0.4.0"), Recorder(fail=error))
    assert (status, doc["code"], doc["cniVersion"]) == (1, code, "0.4.0")
    assert str(error) in doc["msg"]


def test_cni_args_parse_pairs_and_allow_empty_items() -> None:
    assert protocol.parse_cni_args("IgnoreUnknown=1;;IP=10.0.0.5;K8S_POD_NAME=a=b") == {
        "IgnoreUnknown": "1", "IP": "10.0.0.5", "K8S_POD_NAME": "a=b"}


def test_sandbox_names_fit_and_tell_attachments_apart() -> None:
    a, b = names.sandbox_name(CID, "eth0"), names.sandbox_name(CID, "eth1")
    other = names.sandbox_name(CID[:60] + "ffff", "eth0")  # the same 46-character prefix, another id
    assert len(a) == 63
    assert len({a, b, other}) == 3
    assert a.startswith(f"cni-{CID[:46]}-")
    assert names.sandbox_name("short", "eth0").startswith("cni-short-")


def test_an_attachment_is_told_by_its_labels() -> None:
    labels = names.labels(CID, "eth1", "front")
    assert names.attachment_of(labels) == (CID, "eth1", "front")
    assert names.attachment_of({}) is None
    assert names.attachment_of({k: v for k, v in labels.items() if k != names.NETWORK_LABEL}) is None
