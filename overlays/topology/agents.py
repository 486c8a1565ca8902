"""A lab's agents: one ``overlays agent`` daemon per host of a topology with overlay networks.

Each runs where ``up`` runs (it reaches the store from here) and works on its host
through --host-netns; the topology's record keeps its pid and start time, so a later
``up`` restarts a dead one and ``down`` stops exactly it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from overlays.engine import Engine
from overlays.errors import OverlaysError
from overlays.kernel import process
from overlays.topology.plan import Record

REGISTER_PATIENCE = 15.0  # seconds an agent may take to register its host


def alive(record: Record, host: str) -> bool:
    found = record.agents.get(host)
    return found is not None and process.alive(found[0], found[1])


def start(engine: Engine, host: str, record: Record, state_dir: Path, store_url: str, ttl: float) -> None:
    """An agent daemon for ``host``; returns once it has registered the host."""
    if host in record.agents:
        stop(engine, host, record)
    argv = [sys.executable, "-m", "overlays", "--state-dir", str(state_dir), "--store", store_url,
            "--node", engine.node, *(["--host-netns", engine.host_netns] if engine.host_netns else []),
            "agent", "--ttl", str(ttl)]
    log = engine.log_dir() / "agent.log"
    pid = process.spawn_detached(Path("/proc/self/ns/net"), argv, None, log)
    record.agents[host] = [pid, process.start_time(pid) or 0]
    deadline = time.monotonic() + REGISTER_PATIENCE
    while engine.registered() is None:
        if not process.alive(pid, record.agents[host][1]) or time.monotonic() > deadline:
            tail = log.read_text()[-400:] if log.exists() else ""
            raise OverlaysError(f"the agent of host {host} did not register: {tail.strip()}")
        time.sleep(0.02)


def stop(engine: Engine, host: str, record: Record) -> None:
    """Stop the host's agent; its endpoints are gone already, so drop the host at once, not at lease expiry."""
    found = record.agents.pop(host, None)
    if found:
        process.stop(found[0], found[1])
    engine.unregister()
