"""Read-only views of the store: what ``ps``, ``inspect`` and ``network ls`` show.

Kept apart from the operations so that commands which only read state import
neither the drivers nor the firewall nor pyroute2 (start-up time is part of the
CLI's latency budget).
"""

from __future__ import annotations

from overlays.engine import records
from overlays.engine.context import Context
from overlays.kernel import process
from overlays.model.state import Network, Sandbox


def sandbox(ctx: Context, name: str) -> Sandbox:
    return ctx.transact(lambda txn: records.get_sandbox(txn, name))


def sandboxes(ctx: Context) -> list[Sandbox]:
    return ctx.transact(records.list_sandboxes)


def networks(ctx: Context) -> list[Network]:
    return ctx.transact(records.list_networks)


def status(box: Sandbox) -> str:
    """created, running, exited, adopted, or the record's state while it is not ready."""
    if box.state != "ready":
        return box.state
    if box.pid and process.alive(box.pid, box.pid_start):
        return "running"
    if box.adopted:
        return "adopted"
    return "exited" if box.command else "created"
