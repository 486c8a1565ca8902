"""The agent's firewall self-heal on a fake kernel: what wakes it, what it skips, how often it repairs.

The notification parser is tested on messages packed as the kernel packs them; the real
socket and the real kernel are in tests/integration/test_selfheal.py.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overlays import Engine
from overlays.agent.selfheal import FirewallHealer
from overlays.drivers import firewall as fw
from overlays.errors import KernelError
from overlays.kernel import nftwatch
from overlays.kernel.nftwatch import Commit
from overlays.kernel.nl import attr, attr_str
from overlays.model.ports import parse_publish
from overlays.model.specs import EndpointRequest, NetworkSpec, SandboxSpec
from overlays.store.memory import MemoryStore

from .fakes import FakeKernel

HOST = "hostns"
WAIT = 2.0  # seconds a test waits for a repair it expects (the healer's own figure is QUIET: 50 ms)


# -- the parser -------------------------------------------------------------------------------------------------------


def message(kind: int, family: int, *attrs: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), (nftwatch.NFNL_SUBSYS_NFTABLES << 8) | kind, 0, 0, 0) + body


def newgen(pid: int, process: str | None) -> bytes:
    named = [attr_str(nftwatch.NFTA_GEN_PROC_NAME, process)] if process is not None else []
    return message(nftwatch.NFT_MSG_NEWGEN, 0, attr(1, struct.pack("!I", 7)),
                   attr(nftwatch.NFTA_GEN_PROC_PID, struct.pack("!I", pid)), *named)


DELTABLE, DELSETELEM = 2, 14


def test_each_transaction_is_one_commit_naming_its_tables_and_its_writer() -> None:
    parser = nftwatch.Parser()
    flush = (message(DELTABLE, 1, attr_str(1, "overlays_abc")) + message(DELTABLE, 2, attr_str(1, "filter"))
             + newgen(4242, "nft"))
    assert parser.feed(flush) == [Commit(frozenset({(1, "overlays_abc"), (2, "filter")}), 4242, "nft")]
    # a transaction split over two reads: held until its NEWGEN comes
    assert parser.feed(message(DELSETELEM, 1, attr_str(1, "overlays_abc"))) == []
    assert parser.feed(newgen(7, None)) == [Commit(frozenset({(1, "overlays_abc")}), 7, None)]
    assert parser.feed(b"\x01\x02") == [], "a torn message is ignored"


# -- the healer -------------------------------------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Engine, FakeKernel]]:
    kernel = FakeKernel(HOST)
    eng = Engine(host_netns=HOST, state_dir=tmp_path, store=MemoryStore(), kernel=kernel,  # type: ignore[arg-type]
                 check_root=False)
    eng.create_network(NetworkSpec.parse("front", subnet="10.1.0.0/24"))
    eng.create_sandbox(SandboxSpec.parse("web", [EndpointRequest.parse("front")], ports=parse_publish("8080:80")))
    yield eng, kernel
    eng.close()


@pytest.fixture
def healer(engine: tuple[Engine, FakeKernel]) -> Iterator[FirewallHealer]:
    eng, _ = engine
    stop = threading.Event()
    found = FirewallHealer(eng.ctx, stop, log=lambda line: None)
    thread = threading.Thread(target=found.run, daemon=True)
    thread.start()
    yield found
    stop.set()
    found.wake()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the healer returns at once when woken"
    found.close()


def until(condition: Callable[[], bool], timeout: float = WAIT) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError("not within the time")
        time.sleep(0.005)
    return time.monotonic() - started


def listening(kernel: FakeKernel) -> None:
    until(lambda: any(not listener.closed for listener in kernel.nft_listeners))


def test_a_table_someone_deleted_is_made_again(engine: tuple[Engine, FakeKernel], healer: FirewallHealer) -> None:
    eng, kernel = engine
    listening(kernel)
    table = fw.table_name(eng.ctx.instance)
    kernel.nft_delete_table(HOST, "inet", table, process="nft")
    until(lambda: table in kernel.nft_tables[HOST])
    assert ("publish_any_tcp", "8080") in kernel.nft_tables[HOST][table]
    time.sleep(0.2)
    assert healer.repairs == 1, "our own repair does not wake us again"


def test_a_burst_is_one_repair(engine: tuple[Engine, FakeKernel], healer: FirewallHealer) -> None:
    eng, kernel = engine
    listening(kernel)
    table = fw.table_name(eng.ctx.instance)
    kernel.nft_delete_table(HOST, "inet", table, process="firewalld")
    for _ in range(50):
        kernel.announce(HOST, [table, "firewalld"], process="firewalld")
    until(lambda: table in kernel.nft_tables.get(HOST, {}))
    time.sleep(0.2)
    assert healer.repairs == 1


@pytest.mark.parametrize("who", ["ours", "foreign table only", "a store change, no repair before"])
def test_what_does_not_concern_us_is_not_looked_at(engine: tuple[Engine, FakeKernel], healer: FirewallHealer,
                                                   monkeypatch: pytest.MonkeyPatch, who: str) -> None:
    eng, kernel = engine
    listening(kernel)
    looks: list[str] = []
    monkeypatch.setattr(healer, "heal", lambda why: looks.append(why) or False)
    table = fw.table_name(eng.ctx.instance)
    if who == "ours":  # a write of overlays (a command's, doctor's, the agent's own) is named WRITER
        kernel.nft_delete_table(HOST, "inet", table)
    elif who == "foreign table only":
        kernel.announce(HOST, ["filter"], process="nft")
    else:  # the store is not polled: only a recent repair makes its changes worth a look
        eng.ctx.transact(lambda txn: txn.put("unrelated", {"changed": True}))
    time.sleep(0.3)
    assert looks == []


def test_lost_notifications_make_it_look(engine: tuple[Engine, FakeKernel], healer: FirewallHealer) -> None:
    eng, kernel = engine
    listening(kernel)
    table = fw.table_name(eng.ctx.instance)
    kernel.nft_tables[HOST].pop(table)  # gone, and the notification of it lost (ENOBUFS)
    kernel.nft_listeners[-1].push(None)
    until(lambda: table in kernel.nft_tables.get(HOST, {}))


def test_after_a_repair_a_change_of_the_records_is_followed(engine: tuple[Engine, FakeKernel],
                                                            healer: FirewallHealer) -> None:
    """A repair made while a command was between its nft step and its commit (an rm that unpublished but has
    not yet forgotten the sandbox) re-adds what is going: the store's next change makes the healer look again."""
    eng, kernel = engine
    listening(kernel)
    table = fw.table_name(eng.ctx.instance)
    kernel.nft_delete_table(HOST, "inet", table, process="nft")
    until(lambda: healer.repairs == 1)
    # what such a repair leaves: an element for a sandbox whose record goes only now (no notification: ours)
    kernel._nft_apply(HOST, f"add element inet {table} publish_any_tcp {{ 9999 : 10.1.0.77 . 80 }}")
    assert ("publish_any_tcp", "9999") in kernel.nft_tables[HOST][table]
    eng.ctx.transact(lambda txn: txn.put("unrelated", {"changed": True}))
    until(lambda: ("publish_any_tcp", "9999") not in kernel.nft_tables[HOST][table])
    assert healer.repairs == 2


def test_a_repair_that_failed_is_tried_again(engine: tuple[Engine, FakeKernel], healer: FirewallHealer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    eng, kernel = engine
    listening(kernel)
    table = fw.table_name(eng.ctx.instance)
    apply, failures = kernel.nft_apply, []

    def fails_once(netns: str | None, script: str) -> None:
        if not failures:
            failures.append(script)
            raise KernelError("apply", "nftables ruleset", netns, "Device or resource busy")
        apply(netns, script)

    monkeypatch.setattr(kernel, "nft_apply", fails_once)
    kernel.nft_delete_table(HOST, "inet", table, process="nft")
    # REOPEN (1 s) later; the table is there an instant before the healer counts its repair
    until(lambda: table in kernel.nft_tables.get(HOST, {}) and healer.repairs > 0, timeout=WAIT + 1.0)
    assert len(failures) == 1 and healer.repairs == 1
