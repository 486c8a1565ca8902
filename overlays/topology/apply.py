"""Carrying a plan out: one handler per (kind, verb), each keeping the topology's record in step.

A handler changes the running system through the engine's public methods (or the
lab's infrastructure and agents), then notes in the record what now exists, so an
``up`` that stops halfway leaves a record the next ``up`` or ``down`` can trust.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from overlays.errors import NotFound
from overlays.model.specs import EndpointRequest
from overlays.topology import agents
from overlays.topology.faults import HANDLERS as FAULT_HANDLERS
from overlays.topology.plan import (
    AGENT,
    FIREWALL,
    HOST,
    NETWORK,
    OUTSIDE,
    SANDBOX,
    Action,
    Key,
    Record,
    network_print,
    sandbox_print,
)

if TYPE_CHECKING:
    from overlays.topology.lab import Lab
    from overlays.topology.spec import SandboxDecl

Handler = Callable[["Lab", Action, Record], None]


def apply(lab: Lab, action: Action, record: Record) -> None:
    handler = HANDLERS.get((action.kind, action.verb))
    if handler is None:
        raise AssertionError(f"no handler for {action.verb} {action.kind}")  # plan and handlers disagree
    handler(lab, action, record)


# -- agents, hosts, the outside peer -----------------------------------------------------------------------------------


def _start_agent(lab: Lab, action: Action, record: Record) -> None:
    agents.start(lab.engine(action.host), action.host, record, lab.state_dir, lab.store_url, lab.agent_ttl)


def _stop_agent(lab: Lab, action: Action, record: Record) -> None:
    agents.stop(lab.engine(action.host), action.host, record)


def _build_infra(lab: Lab, action: Action, record: Record) -> None:
    lab.infra.build(action.name)
    if action.kind == HOST and action.name not in record.hosts:
        record.hosts.append(action.name)
    if action.kind == OUTSIDE:
        record.outside = True


def _remove_infra(lab: Lab, action: Action, record: Record) -> None:
    lab.infra.remove(action.name)
    if action.kind == HOST:
        lab.forget_engine(action.name)
        record.hosts.remove(action.name)
    else:
        record.outside = False


# -- networks ----------------------------------------------------------------------------------------------------------


def _create_network(lab: Lab, action: Action, record: Record) -> None:
    decl = lab.topology.network(action.name)
    lab.engine(action.host).create_network(decl.spec)
    record.objects[Key(action.host, NETWORK, action.name)] = network_print(decl)


def _remove_network(lab: Lab, action: Action, record: Record) -> None:
    _ignore_missing(lambda: lab.engine(action.host).remove_network(action.name, force=True))
    record.objects.pop(Key(action.host, NETWORK, action.name), None)


def _recreate_network(lab: Lab, action: Action, record: Record) -> None:
    _remove_network(lab, action, record)
    _create_network(lab, action, record)


def _repair_network(lab: Lab, action: Action, record: Record) -> None:
    lab.engine(action.host).repair_network(action.name)


# -- sandboxes ---------------------------------------------------------------------------------------------------------


def _note_sandbox(lab: Lab, action: Action, record: Record) -> None:
    decl = lab.topology.sandbox(action.name)
    if decl is not None:
        record.objects[Key(action.host, SANDBOX, action.name)] = sandbox_print(decl)


def _requests(lab: Lab, decl: SandboxDecl) -> list[EndpointRequest]:
    """The declaration's endpoints, each kept off the addresses the file gives other sandboxes statically."""
    return [replace(r, exclude=lab.static_addresses(r.network, decl)) if r.ip is None or r.ip6 is None else r
            for r in decl.spec.networks]


def _create_sandbox(lab: Lab, action: Action, record: Record) -> None:
    decl = lab.topology.sandbox(action.name)
    assert decl is not None  # the plan made this action from the declaration
    engine = lab.engine(action.host)
    engine.create_sandbox(replace(decl.spec, networks=tuple(_requests(lab, decl))))
    if decl.command:
        engine.start(action.name, decl.command)
    _note_sandbox(lab, action, record)


def _remove_sandbox(lab: Lab, action: Action, record: Record) -> None:
    _ignore_missing(lambda: lab.engine(action.host).remove_sandbox(action.name, force=True))
    record.objects.pop(Key(action.host, SANDBOX, action.name), None)


def _recreate_sandbox(lab: Lab, action: Action, record: Record) -> None:
    _remove_sandbox(lab, action, record)
    _create_sandbox(lab, action, record)


def _repair_sandbox(lab: Lab, action: Action, record: Record) -> None:
    lab.engine(action.host).repair_sandbox(action.name)
    _note_sandbox(lab, action, record)


def _connect(lab: Lab, action: Action, record: Record) -> None:
    decl = lab.topology.sandbox(action.name)
    assert decl is not None
    request = next(r for r in _requests(lab, decl) if r.network == action.network)
    engine = lab.engine(action.host)
    _ignore_missing(lambda: engine.disconnect(action.network, action.name))
    engine.connect(request, action.name)
    _note_sandbox(lab, action, record)


def _disconnect(lab: Lab, action: Action, record: Record) -> None:
    _ignore_missing(lambda: lab.engine(action.host).disconnect(action.network, action.name))
    _note_sandbox(lab, action, record)


def _start(lab: Lab, action: Action, record: Record) -> None:
    decl = lab.topology.sandbox(action.name)
    assert decl is not None and decl.command
    lab.engine(action.host).start(action.name, decl.command)
    _note_sandbox(lab, action, record)


def _repair_firewall(lab: Lab, action: Action, record: Record) -> None:
    lab.engine(action.host).repair_firewall()


HANDLERS: dict[tuple[str, str], Handler] = {
    (FIREWALL, "repair"): _repair_firewall,
    (AGENT, "start"): _start_agent,
    (AGENT, "stop"): _stop_agent,
    (HOST, "create"): _build_infra,
    (HOST, "repair"): _build_infra,
    (HOST, "remove"): _remove_infra,
    (OUTSIDE, "create"): _build_infra,
    (OUTSIDE, "repair"): _build_infra,
    (OUTSIDE, "remove"): _remove_infra,
    (NETWORK, "create"): _create_network,
    (NETWORK, "recreate"): _recreate_network,
    (NETWORK, "remove"): _remove_network,
    (NETWORK, "repair"): _repair_network,
    (SANDBOX, "create"): _create_sandbox,
    (SANDBOX, "recreate"): _recreate_sandbox,
    (SANDBOX, "remove"): _remove_sandbox,
    (SANDBOX, "repair"): _repair_sandbox,
    (SANDBOX, "connect"): _connect,
    (SANDBOX, "disconnect"): _disconnect,
    (SANDBOX, "start"): _start,
    **FAULT_HANDLERS,
}


def _ignore_missing(fn: Callable[[], object]) -> None:
    with contextlib.suppress(NotFound):
        fn()
