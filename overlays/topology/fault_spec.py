"""The ``faults:`` section of a topology file, parsed strictly (every error names the file and the path).

    faults:
      split:                        # a name of your choosing
        partition: [[n1], [n2, n3]] # groups: sandboxes of the file, or in a lab its hosts ("n2,n3" works too)
        oneway: false               # true: only the first group's packets to the others are dropped
        enabled: true               # false: declared, not in force (a later up heals it)
      slow-db:
        impair: db                  # a sandbox of the file
        network: data               # which of its networks (needed if it has several)
        loss: 10                    # percent; also duplicate (percent), rate (10mbit), delay and jitter (ms)
        direction: both             # in, out or both
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from overlays.model.faults import ImpairSpec, check_groups, describe_groups
from overlays.model.names import validate_name

if TYPE_CHECKING:
    from overlays.topology.spec import SandboxDecl, _Reader

PARTITION_KEYS = {"partition", "oneway", "enabled"}
IMPAIR_KEYS = {"impair", "network", "loss", "duplicate", "rate", "delay", "jitter", "direction", "enabled"}


@dataclass(frozen=True)
class FaultDecl:
    """One fault of a file: a partition (groups) or an impairment (of one endpoint)."""

    name: str
    enabled: bool = True
    groups: tuple[tuple[str, ...], ...] = ()
    oneway: bool = False
    impair: ImpairSpec | None = None

    @property
    def kind(self) -> str:
        return "impair" if self.impair else "partition"

    def members(self) -> set[str]:
        return {self.impair.sandbox} if self.impair else {m for g in self.groups for m in g}

    def describe(self) -> str:
        if self.impair:
            where = f" on {self.impair.network}" if self.impair.network else ""
            return f"impair {self.impair.sandbox}{where}: {self.impair.describe()}"
        return f"partition {describe_groups(self.groups, self.oneway)}"

    def fingerprint(self) -> str:
        """The declaration, less ``enabled``: what a record compares to see an edit."""
        if self.impair:
            s = self.impair
            body: dict[str, Any] = {"impair": s.sandbox, "network": s.network, "loss": s.loss,
                                    "duplicate": s.duplicate, "rate": s.rate, "delay": s.delay, "jitter": s.jitter,
                                    "direction": s.direction}
        else:
            body = {"partition": [list(g) for g in self.groups], "oneway": self.oneway}
        return json.dumps(body, sort_keys=True)


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def resolve_faults(r: _Reader, raw: Any, hosts: tuple[str, ...],
                   sandboxes: tuple[SandboxDecl, ...]) -> tuple[FaultDecl, ...]:
    """The ``faults:`` mapping into declarations, members checked against the file's sandboxes and hosts."""
    boxes = {s.spec.name: s for s in sandboxes}
    decls = []
    for name, body in r.mapping(raw, "faults", None).items():
        path = _join("faults", name)
        r.at(path, validate_name, "fault", name)
        fault = r.mapping(body, path, PARTITION_KEYS | IMPAIR_KEYS)
        if ("partition" in fault) == ("impair" in fault):
            raise r.fail(path, "say either partition: [[a], [b, c]] or impair: SANDBOX")
        kind, allowed = ("partition", PARTITION_KEYS) if "partition" in fault else ("impair", IMPAIR_KEYS)
        for key in fault:
            if key not in allowed:
                raise r.fail(_join(path, key), f"not a key of a {kind} fault (allowed: {', '.join(sorted(allowed))})")
        enabled = r.typed(fault.get("enabled"), _join(path, "enabled"), bool, "true or false") is not False
        if kind == "partition":
            decls.append(_partition(r, name, fault, path, enabled, hosts, boxes))
        else:
            decls.append(_impairment(r, name, fault, path, enabled, boxes))
    return tuple(decls)


def _partition(r: _Reader, name: str, fault: dict[str, Any], path: str, enabled: bool, hosts: tuple[str, ...],
               boxes: dict[str, SandboxDecl]) -> FaultDecl:
    where = _join(path, "partition")
    raw_groups = r.typed(fault["partition"], where, list, "a list of groups, like [[a], [b, c]]")
    groups: list[tuple[str, ...]] = []
    for i, raw in enumerate(raw_groups):
        at = _join(where, i)
        if isinstance(raw, str):
            members = [m.strip() for m in raw.split(",")]
        else:
            members = [r.typed(m, _join(at, j), str, "a name") for j, m in
                       enumerate(r.typed(raw, at, list, "a list of names (or a comma list)"))]
        for member in members:
            if member not in boxes and member not in hosts:
                known = "sandbox or host" if hosts else "sandbox"
                raise r.fail(at, f"{member!r} is not a {known} of this file")
        groups.append(tuple(members))
    r.at(where, check_groups, groups)
    kinds = {m in hosts for g in groups for m in g}
    if len(kinds) > 1:
        raise r.fail(where, "give hosts or sandboxes, not both")
    oneway = bool(r.typed(fault.get("oneway"), _join(path, "oneway"), bool, "true or false"))
    return FaultDecl(name, enabled, tuple(groups), oneway)


def _impairment(r: _Reader, name: str, fault: dict[str, Any], path: str, enabled: bool,
                boxes: dict[str, SandboxDecl]) -> FaultDecl:
    sandbox = r.typed(fault["impair"], _join(path, "impair"), str, "a sandbox name")
    if sandbox not in boxes:
        raise r.fail(_join(path, "impair"), f"unknown sandbox {sandbox!r}")
    networks = [q.network for q in boxes[sandbox].spec.networks]
    network = r.typed(fault.get("network"), _join(path, "network"), str, "a network name")
    if network is None and len(networks) != 1:
        raise r.fail(path, f"sandbox {sandbox} is on {len(networks)} networks: say which with network:")
    if network is not None and network not in networks:
        raise r.fail(_join(path, "network"), f"sandbox {sandbox} is not on network {network!r}")
    number = (int, float, str)
    values = {key: r.typed(fault.get(key), _join(path, key), number, "a number") for key in
              ("loss", "duplicate", "delay", "jitter")}
    rate = r.typed(fault.get("rate"), _join(path, "rate"), str, "a rate like 10mbit")
    direction = r.typed(fault.get("direction"), _join(path, "direction"), str, "in, out or both") or "both"
    spec = r.at(path, ImpairSpec.parse, sandbox, network or networks[0], loss=values["loss"],
                duplicate=values["duplicate"], rate=rate, delay=values["delay"], jitter=values["jitter"],
                direction=direction, name=name)
    return FaultDecl(name, enabled, impair=spec)
