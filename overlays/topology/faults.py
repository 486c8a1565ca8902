"""A file's faults in a plan: what ``up`` puts in force, changes or heals, and how (apply's handlers).

Each enabled fault of the file is an object of the topology's record (host ``*``:
a fault spans hosts) with its declaration as fingerprint. So a later ``up`` applies
a fault the file added or enabled, heals one it dropped or disabled (the plan's
``remove``), and makes again one whose declaration changed, whose sandboxes ``up``
is about to make or rewire (their namespaces or addresses change), or that is no
longer in force (healed by hand, say). Faults come last: they need their sandboxes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from overlays.engine import Engine
from overlays.topology import chaos
from overlays.topology.fault_spec import FaultDecl
from overlays.topology.plan import EVERYWHERE, HOST, SANDBOX, Action, Key, Record

if TYPE_CHECKING:
    from overlays.topology.lab import Lab
    from overlays.topology.spec import Topology

FAULT = "fault"
ORIGIN = "topology:"  # + the topology's name: what a fault made by up says of where it came from
_REWIRING = {"create", "recreate", "connect", "disconnect", "repair"}


def desired(topo: Topology) -> dict[Key, str]:
    return {Key(EVERYWHERE, FAULT, d.name): d.fingerprint() for d in topo.faults if d.enabled}


def _hosts(topo: Topology, decl: FaultDecl, receivers_only: bool = False) -> set[str]:
    """The hosts a fault's members live on (``receivers_only``: those that keep its drops: where packets arrive)."""
    members = decl.members()
    if receivers_only and decl.oneway:
        members = {m for g in decl.groups[1:] for m in g}
    found = set()
    for member in members:
        box = topo.sandbox(member)
        found.add(box.host if box is not None else member)
    return found


def _in_force(decl: FaultDecl, engine: Engine) -> bool:
    """Recorded on that host, and its namespaces hold what the record says (read-only)."""
    here = engine.faults()
    if decl.impair:
        recorded = any(i.spec.name == decl.name for i in here.impairments.values())
    else:
        recorded = decl.name in here.partitions
    return recorded and not engine.fault_problems(decl.name)


def actions(topo: Topology, record: Record, engine_of: Callable[[str], Engine], earlier: list[Action]) -> list[Action]:
    """The fault actions of a plan, after ``earlier`` (the plan's other actions, which they may depend on)."""
    rewired = {a.name for a in earlier if a.kind == SANDBOX and a.verb in _REWIRING}
    rebuilt = {a.name for a in earlier if a.kind == HOST}
    found = []
    for decl in topo.faults:
        if not decl.enabled:
            continue
        old = record.objects.get(Key(EVERYWHERE, FAULT, decl.name))
        hosts = _hosts(topo, decl)
        if old is None:
            found.append(Action("apply", FAULT, EVERYWHERE, decl.name, decl.describe()))
        elif old != decl.fingerprint():
            found.append(Action("change", FAULT, EVERYWHERE, decl.name, "its declaration changed"))
        elif decl.members() & rewired or hosts & rebuilt:
            found.append(Action("change", FAULT, EVERYWHERE, decl.name, "its sandboxes change"))
        elif not all(_in_force(decl, engine_of(h)) for h in _hosts(topo, decl, receivers_only=True)):
            found.append(Action("repair", FAULT, EVERYWHERE, decl.name, "it is not in force"))
    return found


def _decl(lab: Lab, name: str) -> FaultDecl:
    return next(d for d in lab.topology.faults if d.name == name)


def _apply(lab: Lab, action: Action, record: Record) -> None:
    decl = _decl(lab, action.name)
    origin = ORIGIN + lab.name
    if decl.impair:
        chaos.impair(lab, replace(decl.impair, origin=origin))
    else:
        chaos.partition(lab, decl.groups, decl.oneway, name=decl.name, origin=origin)
    record.objects[Key(EVERYWHERE, FAULT, decl.name)] = decl.fingerprint()


def _remove(lab: Lab, action: Action, record: Record) -> None:
    chaos.heal(lab, [action.name], missing_ok=True)
    record.objects.pop(Key(EVERYWHERE, FAULT, action.name), None)


def _change(lab: Lab, action: Action, record: Record) -> None:
    _remove(lab, action, record)
    _apply(lab, action, record)


HANDLERS: dict[tuple[str, str], Callable[[Lab, Action, Record], None]] = {
    (FAULT, "apply"): _apply,
    (FAULT, "repair"): _apply,
    (FAULT, "change"): _change,
    (FAULT, "remove"): _remove,
}


def forget_faults(record: Record) -> None:
    """``down`` heals every fault itself: the record's fault objects go first."""
    for key in record.of_kind(FAULT):
        record.objects.pop(key)
