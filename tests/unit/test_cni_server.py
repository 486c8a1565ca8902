"""The thin client's wire format, and the resident server's DEL, recovery and lifetime, on a fake kernel."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlays import Engine, NetworkSpec
from overlays.cni import client, names, protocol, server
from overlays.cni.config import parse
from overlays.cni.plugin import EnginePlugin
from overlays.store import MemoryStore

from .fakes import FakeKernel

HOST = "fakehost"


def test_requests_and_answers_round_trip_and_broken_ones_are_refused() -> None:
    env = {b"CNI_COMMAND": b"ADD", b"CNI_ARGS": b"IP=10.1.0.5;MAC=02:42:ac:11:00:02"}
    stdin = b'{"cniVersion": "1.0.0", "name": "front"}'
    wire = client.encode_request(env, stdin)
    assert client.decode_request(wire) == ({"CNI_ARGS": "IP=10.1.0.5;MAC=02:42:ac:11:00:02", "CNI_COMMAND": "ADD"},
                                           stdin)
    assert client.decode_request(wire[:-1]) is None
    assert client.decode_request(client.encode_request({b"PATH": b"/bin"}, b"")) is None, "CNI_* variables only"
    assert client.decode_request(client.encode_request({}, b"")) == ({}, b"")
    answer = client.encode_answer(1, b'{"code": 7}\n', b"overlays-cni: a warning\n")
    assert client.decode_answer(answer) == (1, b'{"code": 7}\n', b"overlays-cni: a warning\n")
    assert client.decode_answer(answer[:8]) is None, "a server that hung up halfway is no answer"


@pytest.fixture
def where() -> bytes:
    return f"\0overlays-cni-test/{os.getpid()}/{threading.get_ident()}".encode()


def test_the_client_gets_the_servers_answer_or_none(where: bytes) -> None:
    assert client.ask(where, client.encode_request({b"CNI_COMMAND": b"VERSION"}, b"{}")) is None, "no server yet"
    listener = server.bind(where)
    assert listener is not None and server.bind(where) is None, "a second server finds the name taken"
    served = server.Server(listener)

    def one() -> None:
        conn, _ = listener.accept()
        with conn:
            served.serve_one(conn)

    thread = threading.Thread(target=one)
    thread.start()
    try:
        answer = client.ask(where, client.encode_request({b"CNI_COMMAND": b"VERSION"}, b'{"cniVersion": "1.0.0"}'))
    finally:
        thread.join(timeout=10)
        listener.close()
    assert answer is not None and answer[0] == 0
    assert json.loads(answer[1])["supportedVersions"] == list(protocol.SUPPORTED_VERSIONS)


class Host:
    """An engine on a fake kernel, and a server that holds it, called as its clients would."""

    def __init__(self, tmp_path: Path) -> None:
        self.kernel = FakeKernel(HOST)
        self.engine = Engine(host_netns=HOST, state_dir=tmp_path, store=MemoryStore(), kernel=self.kernel,  # type: ignore[arg-type]
                             check_root=False)
        self.engine.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
        self.server = server.Server(socket.socket(socket.AF_UNIX))
        self.server.engines[("key",) * 4] = self.engine  # type: ignore[assignment]
        self.tmp = tmp_path

    def call(self, command: str, cid: str, server_side: bool = True) -> tuple[dict[str, Any], int]:
        netns = self.tmp / f"netns-{cid}"
        netns.touch()
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_NETNS": str(netns)}
        stdin = json.dumps({"cniVersion": "1.0.0", "name": "front", "type": "overlays-cni"}).encode()

        def backend(req: protocol.Request, warn: protocol.Warn) -> EnginePlugin:
            later = self.server.remove_later if server_side else None
            return EnginePlugin(parse(req), warn, engine=self.engine, host_check=False, remove_later=later)

        out, code = protocol.handle(env, stdin, backend)
        return (json.loads(out) if out else {}), code

    def boxes(self) -> list[str]:
        return sorted(b.name for b in self.engine.sandboxes())

    def marker(self, cid: str) -> Path:
        return self.tmp / "cni-removing" / self.engine.node / names.sandbox_name(cid, "eth0")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    made = Host(tmp_path)
    yield made
    made.server.listener.close()


def test_del_is_answered_first_and_done_before_the_next_request(host: Host) -> None:
    host.call("ADD", "c1")
    assert host.server.attachments_left()
    assert host.call("DEL", "c1") == ({}, 0)
    # Answered: the removal waits for the server's next step, its marker says what is owed.
    assert host.boxes() == [names.sandbox_name("c1", "eth0")] and host.marker("c1").exists()
    host.server.finish_removals()
    assert host.boxes() == [] and not host.marker("c1").exists()
    assert not host.server.attachments_left()
    assert host.call("DEL", "c1") == ({}, 0)  # again: nothing to owe
    assert not host.marker("c1").exists() and host.server.removals == []


def test_a_new_server_finishes_what_a_dead_one_answered(host: Host) -> None:
    for cid in ("c1", "c2"):
        host.call("ADD", cid)
    host.call("DEL", "c1")  # answered, then the server "died": its removal never ran
    successor = server.Server(socket.socket(socket.AF_UNIX))
    try:
        successor.recover(host.engine)
    finally:
        successor.listener.close()
    assert host.boxes() == [names.sandbox_name("c2", "eth0")] and not host.marker("c1").exists()


def test_an_engine_whose_host_went_counts_no_more(host: Host) -> None:
    host.call("ADD", "c1")
    assert host.server.attachments_left()
    host.kernel.namespaces.pop(HOST)
    assert not host.server.attachments_left() and host.server.engines == {}


def test_a_one_shot_del_removes_at_once(host: Host) -> None:
    host.call("ADD", "c1")
    assert host.call("DEL", "c1", server_side=False) == ({}, 0)
    assert host.boxes() == [] and not host.marker("c1").exists()
