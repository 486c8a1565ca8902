"""Fixtures for tests that touch the kernel (root only).

Every test gets its own *host* namespace (never the root one), its own state dir,
and a unique name prefix, so tests can run in parallel and never see each other.
We act through overlays and check through an independent view (``ip -j``).
At the end of the session we check that nothing of ours is left behind.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overlays import Engine
from overlays.engine import hostagent
from overlays.kernel import mountns, netns, process

if os.geteuid() != 0:
    pytest.skip("integration tests need root", allow_module_level=True)

SESSION = f"ot{os.getpid() % 0xFFFF:04x}"
_counter = itertools.count()
_instances: set[str] = set()


def unique(label: str = "") -> str:
    """A name no other test (or parallel run) uses: ot<pid><n><label>, at most 15 chars."""
    return f"{SESSION}{next(_counter):03d}{label}"[:15]


def ip_json(netns_name: str | None, *args: str) -> list[dict[str, object]]:
    """``ip -j`` in a namespace: an independent view of what overlays did."""
    cmd = ["ip", "-j"] + (["-n", netns_name] if netns_name else []) + list(args)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def sh(netns_name: str, *cmd: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """Run a command inside a namespace (by name under /run/netns)."""
    return subprocess.run(["ip", "netns", "exec", netns_name, *cmd], check=check, capture_output=True,
                          text=True, timeout=timeout)


def can_ping(netns_name: str, address: str, count: int = 1) -> bool:
    return sh(netns_name, "ping", "-c", str(count), "-W", "1", "-i", "0.2", address, check=False).returncode == 0


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], str]]:
    """Factory for extra namespaces (host, peers); all are removed after the test."""
    made: list[str] = []

    def make(label: str) -> str:
        name = unique(label)
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        made.append(name)
        return name

    yield make
    for name in reversed(made):
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def host(make_netns: Callable[[str], str]) -> str:
    """A namespace that plays the host for this test."""
    return make_netns("h")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def engine(host: str, state_dir: Path) -> Iterator[Engine]:
    """An engine on this test's host namespace; everything it made is removed afterwards."""
    eng = Engine(host_netns=host, state_dir=state_dir)
    _instances.add(eng.ctx.instance)
    try:
        yield eng
    finally:
        teardown(eng)


def stop_agent(host: str, state_dir: Path) -> None:
    """Stop the agent the engine started for the host (a test of a host without one, or that replays by hand)."""
    eng = Engine(host_netns=host, state_dir=state_dir)
    try:
        agent = hostagent.started(eng.ctx)
        assert agent is not None, "run started the host's agent"
        process.stop(agent.pid, agent.start)
        hostagent.forget_record(eng.ctx, agent)
    finally:
        eng.close()


def teardown(eng: Engine) -> None:
    """Remove what the engine made; the agent it started on demand must be gone with the last of it."""
    for box in eng.sandboxes():
        eng.remove_sandbox(box.name, force=True)
    for net in eng.networks():
        eng.remove_network(net.name, force=True)
    left = hostagent.started(eng.ctx)
    eng.close()
    if left is not None:
        process.stop(left.pid, left.start)
        raise AssertionError(f"the agent of host {eng.node} (pid {left.pid}) still ran after its last sandbox "
                             "and network were removed")


class Cli:
    """Runs the real ``overlays`` command against one host namespace and state dir."""

    def __init__(self, host: str, state_dir: Path) -> None:
        self.env = dict(os.environ, OVERLAYS_HOST_NETNS=host, OVERLAYS_STATE_DIR=str(state_dir))

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "overlays", *args]

    def __call__(self, *args: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"overlays {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done


@pytest.fixture
def cli(host: str, state_dir: Path) -> Iterator[Cli]:
    """The overlays CLI on this test's host; whatever it made is removed afterwards."""
    yield Cli(host, state_dir)
    eng = Engine(host_netns=host, state_dir=state_dir)
    _instances.add(eng.ctx.instance)
    teardown(eng)


def _agents() -> list[str]:
    return subprocess.run(["pgrep", "-f", f"--node ({SESSION}|ovl-{SESSION}|[^ ]*{SESSION}).* agent"],
                          capture_output=True, text=True).stdout.split()


def ours_left() -> list[str]:
    """Namespaces of this session (test-made or engine-made) that still exist."""
    if not netns.NETNS_DIR.exists():
        return []
    return sorted(
        n for n in os.listdir(netns.NETNS_DIR)
        if n.startswith((SESSION, f"ovl-{SESSION}")) or any(n.startswith(f"ov-{i}-") for i in _instances)
    )


@pytest.fixture(scope="session", autouse=True)
def nothing_leaks() -> Iterator[None]:
    """After the whole session: no namespace and no agent of ours may remain."""
    yield
    agents = _agents()
    for _ in range(50):  # an agent whose host namespace went stops by itself within a second or so
        if not agents:
            break
        time.sleep(0.1)
        agents = _agents()
    timers = subprocess.run(["pgrep", "-f", f"overlays.engine.faulttimer .*--node {SESSION}"], capture_output=True,
                            text=True).stdout.split()
    for pid in agents + timers:
        subprocess.run(["kill", "-9", pid], check=False)
    assert not agents, f"agents left running: {agents}"
    assert not timers, f"fault timers left running: {timers}"
    left = ours_left()
    for name in left:
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert not left, f"namespaces left behind: {left}"
    etc = sorted(n for n in (os.listdir(mountns.ETC_NETNS) if mountns.ETC_NETNS.exists() else ())
                 if n.startswith(SESSION) or any(n.startswith(f"ov-{i}-") for i in _instances))
    for name in etc:
        mountns.remove_etc_dir(name)
    assert not etc, f"/etc/netns entries left behind: {etc}"
