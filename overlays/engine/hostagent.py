"""The host's agent on demand: started when a sandbox needs it and none runs, stopped when the host is empty.

Design note. Names resolve without any setup, so someone must start the host's DNS
server, and nobody else will: the engine does, when it creates a sandbox (or connects,
starts or execs one) and no server answers on the host's control socket. What it starts
is the whole ``overlays agent`` (one process per host, not a DNS server alone): the same
process already keeps the host registered for overlay networks and follows the shared
store, and names of sandboxes on other hosts come from there, so one daemon owns all of
the host's background work and a host never runs two that could disagree.

The agent started here is a daemon (double fork, no tie to the command that started it)
in the engine's own network namespace, and it is recorded in ``<state dir>/agents/<node>.json``
with its pid and start time, as topology labs record theirs: only a pid whose start time
still matches is ever signalled. It is stopped again by the engine operation that leaves
the host with no sandbox and no network (``stop_if_idle``), and it exits by itself if it
finds the host empty or its host namespace gone (a command that died before stopping it).
An agent the user started (``overlays agent``, or a lab's) has no such record and is never
stopped by the engine; it takes over from one started on demand (``take_over``).

Starting one costs a Python start and the agent's imports (a few hundred ms), once per
host; the operation waits for its control socket, so the new sandbox's names resolve as
soon as the operation returns. Creates racing on an empty host take a lock first: one starts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from overlays.engine.context import Context
from overlays.errors import OverlaysError
from overlays.kernel import process
from overlays.kernel.api import Dns

READY_PATIENCE = 15.0  # seconds an agent may take to listen (its imports, on a loaded machine)
STOP_PATIENCE = 5.0  # seconds between SIGTERM and SIGKILL
LOCK = "agent"


@dataclass(frozen=True)
class Started:
    """An agent the engine started: which process it is."""

    pid: int
    start: int

    def alive(self) -> bool:
        return process.alive(self.pid, self.start)


def record_path(ctx: Context) -> Path:
    return ctx.state_dir / "agents" / f"{ctx.node}.json"


def started(ctx: Context) -> Started | None:
    """The agent the engine started for this host, if it still runs."""
    try:
        raw = json.loads(record_path(ctx).read_text())
        found = Started(int(raw["pid"]), int(raw["start"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if found.alive() else None


def _write_record(ctx: Context, agent: Started) -> None:
    path = record_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": agent.pid, "start": agent.start, "on_demand": True}))
    tmp.replace(path)


def forget_record(ctx: Context, agent: Started | None = None) -> None:
    """Drop the record (only if it still names ``agent``, when given)."""
    if agent is not None:
        try:
            raw = json.loads(record_path(ctx).read_text())
        except (OSError, ValueError):
            return
        if (raw.get("pid"), raw.get("start")) != (agent.pid, agent.start):
            return
    with contextlib.suppress(FileNotFoundError):
        record_path(ctx).unlink()


def argv(ctx: Context) -> list[str]:
    """How the agent is started: the same interpreter, this engine's host, state dir, store and node."""
    return [sys.executable, "-m", "overlays", "--state-dir", str(ctx.state_dir.resolve()), "--node", ctx.node,
            *(["--store", ctx.store_url] if ctx.store_url else []),
            *(["--host-netns", ctx.host_netns] if ctx.host_netns else []), "agent", "--on-demand"]


def ensure_running(ctx: Context, dns: Dns) -> None:
    """The host's DNS server answers: it did, or an agent started now does. OverlaysError if it cannot."""
    if dns.running():
        return
    if ctx.store_url is None:
        raise OverlaysError(f"no DNS server runs for host {ctx.node}, and this engine's store was handed in "
                            "by its caller, so no agent can share it (start one: overlays agent)")
    with ctx.lock(LOCK):
        if dns.running():  # another command started it while we waited for the lock
            return
        log = ctx.log_dir() / "agent.log"
        pid = process.spawn_detached(Path("/proc/self/ns/net"), argv(ctx), None, log)
        agent = Started(pid, process.start_time(pid) or 0)
        _write_record(ctx, agent)
        deadline = time.monotonic() + READY_PATIENCE
        while not dns.running():
            if not agent.alive():
                forget_record(ctx, agent)
                raise OverlaysError(f"the agent of host {ctx.node} stopped at its start: {_tail(log)}")
            if time.monotonic() > deadline:
                raise OverlaysError(f"the agent of host {ctx.node} (pid {pid}) did not listen within "
                                    f"{READY_PATIENCE:g} s; see {log}")
            time.sleep(0.005)


def stop_if_idle(ctx: Context, idle: bool) -> None:
    """After an operation that may have left the host empty: stop the agent started on demand, if so."""
    if not idle:
        return
    with ctx.lock(LOCK):
        agent = started(ctx)
        if agent is None:
            return
        dns = ctx.dns_client
        if dns is not None:
            with contextlib.suppress(OverlaysError, OSError):
                if dns.status().get("local"):
                    return  # a sandbox registered meanwhile (another command's): the agent stays
            dns.close()  # its server goes now: a later call reconnects (to a new one)
        process.stop(agent.pid, agent.start, grace=STOP_PATIENCE)
        forget_record(ctx, agent)


def take_over(ctx: Context) -> None:
    """A user's agent starts: the one the engine started (if any) gives way to it."""
    with ctx.lock(LOCK):
        agent = started(ctx)
        if agent is not None and agent.pid != os.getpid():
            process.stop(agent.pid, agent.start, grace=STOP_PATIENCE)
        forget_record(ctx)


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1][-300:]
    return f"nothing in {log}"
