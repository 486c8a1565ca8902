"""What ``up`` must do: the difference between a topology and what exists.

The topology's record (in the state store) lists every object ``up`` created,
with a fingerprint of the declaration it was built from. Comparing that record,
the file and the running system (read-only) gives the actions:

    create / remove        an object the file added or dropped
    recreate               a network whose declaration changed
    connect / disconnect   a sandbox's networks changed: only those endpoints move (every disconnect first,
                           so what one frees another may take)
    recreate               a sandbox whose ports, command or hostname changed
    repair                 drift: a kernel object someone removed
    start                  a declared command that is not running
    apply / change         a fault of the file (faults.py), last: it needs its sandboxes

Nothing here changes anything; apply.py carries the actions out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from overlays.engine import Engine, views
from overlays.errors import Conflict, NotFound
from overlays.model.specs import EndpointRequest
from overlays.topology.spec import NetworkDecl, SandboxDecl, Topology

HOST, OUTSIDE, AGENT, NETWORK, SANDBOX, FIREWALL = "host", "outside", "agent", "network", "sandbox", "firewall"
EVERYWHERE = "*"  # the "host" of an overlay network: it spans them all


@dataclass(frozen=True)
class Action:
    verb: str
    kind: str
    host: str
    name: str
    detail: str = ""
    network: str = ""  # for connect / disconnect

    def __str__(self) -> str:
        where = f" on {self.host}" if self.kind in (NETWORK, SANDBOX) else ""
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.verb} {self.kind} {self.name}{where}{extra}"

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


class Key(NamedTuple):
    """One object a topology made: a network or a sandbox, on a host (``*`` for an overlay network)."""

    host: str
    kind: str
    name: str

    def __str__(self) -> str:  # how the record stores it
        return f"{self.host}/{self.kind}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> Key:
        host, kind, name = text.split("/", 2)
        return cls(host, kind, name)


@dataclass
class Record:
    """What a topology created: its objects with the fingerprints of their declarations, hosts, agents."""

    objects: dict[Key, str] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    outside: bool = False
    source: str = ""
    agents: dict[str, list[int]] = field(default_factory=dict)  # host -> [pid, start time]

    def of_kind(self, kind: str) -> list[Key]:
        return sorted(k for k in self.objects if k.kind == kind)

    def to_value(self) -> dict[str, Any]:
        return {"objects": {str(k): v for k, v in self.objects.items()}, "hosts": self.hosts,
                "outside": self.outside, "source": self.source, "agents": self.agents}

    @classmethod
    def from_value(cls, v: dict[str, Any] | None) -> Record:
        v = v or {}
        return cls({Key.parse(k): p for k, p in (v.get("objects") or {}).items()}, list(v.get("hosts", [])),
                   bool(v.get("outside")), v.get("source", ""),
                   {h: list(p) for h, p in (v.get("agents") or {}).items()})


def network_print(decl: NetworkDecl) -> str:
    s = decl.spec
    return json.dumps({"subnet": str(s.subnet) if s.subnet else None, "gateway": str(s.gateway) if s.gateway else None,
                       "ip_range": str(s.ip_range) if s.ip_range else None, "mtu": s.mtu, "internal": s.internal,
                       "masquerade": s.masquerade, "driver": s.driver, "vni": s.vni,
                       **({"parent": s.parent} if s.parent else {}),  # only when set: older prints stay equal
                       **({"dns": [str(d) for d in s.dns]} if s.dns else {}),
                       **_ipv6_print(decl)},
                      sort_keys=True)


def _ipv6_print(decl: NetworkDecl) -> dict[str, Any]:
    """A network's IPv6 fields, only where it has IPv6 (so IPv4-only prints stay as records hold them)."""
    s = decl.spec
    if not s.ipv6:
        return {}
    return {"ipv6": True, "ipv4": s.ipv4, "subnet6": str(s.subnet6) if s.subnet6 else None,
            "gateway6": str(s.gateway6) if s.gateway6 else None}


def sandbox_print(decl: SandboxDecl) -> str:
    s = decl.spec
    return json.dumps({"networks": {r.network: _endpoint_print(r) for r in s.networks},
                       "ports": sorted(str(p) for p in s.ports), "command": list(decl.command),
                       "hostname": s.hostname}, sort_keys=True)


def _endpoint_print(r: EndpointRequest) -> str | dict[str, Any] | None:
    """How an endpoint's declaration prints: its address alone (as records before MACs and aliases), or all
    (with ``ip6`` only when given, so older records print the same)."""
    if r.mac is None and not r.aliases and r.ip6 is None:
        return str(r.ip) if r.ip else None
    return {"ip": str(r.ip) if r.ip else None, "mac": r.mac, "aliases": list(r.aliases),
            **({"ip6": str(r.ip6)} if r.ip6 else {})}


def _connect_detail(declared: str | dict[str, Any] | None) -> str:
    if isinstance(declared, dict):
        return ", ".join(f"{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in declared.items() if v)
    return f"ip {declared}" if declared else ""


def _networks_of(fingerprint: str) -> dict[str, Any]:
    return dict(json.loads(fingerprint)["networks"])


def _same_but_networks(old: str, new: str) -> bool:
    a, b = json.loads(old), json.loads(new)
    a.pop("networks"), b.pop("networks")
    return bool(a == b)


def plan(topo: Topology, record: Record, engine_of: Callable[[str], Engine],
         infra_ok: Callable[[str], bool], agent_ok: Callable[[str], bool] = lambda host: True) -> list[Action]:
    """The actions that make the running system match ``topo``, in the order to apply them."""
    actions: list[Action] = []
    desired_hosts = list(topo.hosts)
    broken = {host for host in desired_hosts if not infra_ok(host)}
    for host in desired_hosts:
        if host in broken:
            actions.append(Action("create" if host not in record.hosts else "repair", HOST, host, host))
    if topo.outside and not infra_ok(OUTSIDE):
        actions.append(Action("create" if not record.outside else "repair", OUTSIDE, "", OUTSIDE))
    if topo.overlays:
        for host in topo.host_names():
            if host in broken or not agent_ok(host):
                actions.append(Action("start", AGENT, host, host))

    desired = _desired(topo)
    gone = [k for k in record.objects if k not in desired]
    # Sandboxes leave before their networks do.
    for k in sorted(gone, key=lambda k: (k.kind != SANDBOX, k)):
        actions.append(Action("remove", k.kind, k.host, k.name))

    recreated_networks: set[tuple[str, str]] = set()
    for decl in topo.networks:
        for host in network_hosts(decl):
            k = Key(host, NETWORK, decl.spec.name)
            old = record.objects.get(k)
            if host in broken and old == desired[k]:
                steps = [Action("repair", NETWORK, host, decl.spec.name, f"host {host} was rebuilt")]
            else:
                steps = _network_actions(decl, host, old, desired[k], engine_of(host))
            if any(a.verb == "recreate" for a in steps):
                recreated_networks.add((host, decl.spec.name))
            actions += steps

    # Sandboxes with static addresses first: one given out dynamically must never take an address the file
    # gives another sandbox (static addresses the store already holds are refused by preflight).
    steps = []
    for box in sorted(topo.sandboxes, key=lambda b: not any(r.ip or r.ip6 for r in b.spec.networks)):
        k = Key(box.host, SANDBOX, box.spec.name)
        if box.host in broken and record.objects.get(k) == desired[k]:
            steps.append(Action("repair", SANDBOX, box.host, box.spec.name, f"host {box.host} was rebuilt"))
            continue
        steps += _sandbox_actions(box, record.objects.get(k), desired[k], engine_of(box.host), recreated_networks)
    actions += _releases_first(steps)

    for host in topo.host_names():  # the firewall is the host's, whoever's networks are in it: repaired whole
        if host not in broken:
            problems = engine_of(host).firewall_problems()
            if problems:
                actions.append(Action("repair", FIREWALL, host, "table", problems[0]))
    actions += _fault_actions(topo, record, engine_of, actions)

    for host in record.agents:
        if not topo.overlays or host not in topo.host_names():
            actions.append(Action("stop", AGENT, host, host))
    if not topo.outside and record.outside:
        actions.append(Action("remove", OUTSIDE, "", OUTSIDE))
    for host in record.hosts:
        if host not in desired_hosts:
            actions.append(Action("remove", HOST, host, host))
    return actions


def _releases_first(steps: list[Action]) -> list[Action]:
    """Every disconnect before any sandbox takes anything: an address (or, through a recreate, a port) one
    sandbox gives up in this edit may be what another one asks for, in whichever order they come. (The
    sandboxes to be recreated are removed before all of it, by Lab.up.)"""
    return [a for a in steps if a.verb == "disconnect"] + [a for a in steps if a.verb != "disconnect"]


def network_hosts(decl: NetworkDecl) -> tuple[str, ...]:
    """Where a network is recorded: each of its hosts, or once for all (an overlay)."""
    return (EVERYWHERE,) if decl.overlay else decl.hosts


def _desired(topo: Topology) -> dict[Key, str]:
    from overlays.topology import faults  # it builds on this module's Action and Key

    found = {Key(h, NETWORK, n.spec.name): network_print(n) for n in topo.networks for h in network_hosts(n)}
    found.update({Key(s.host, SANDBOX, s.spec.name): sandbox_print(s) for s in topo.sandboxes})
    found.update(faults.desired(topo))
    return found


def _fault_actions(topo: Topology, record: Record, engine_of: Callable[[str], Engine],
                   earlier: list[Action]) -> list[Action]:
    from overlays.topology import faults

    return faults.actions(topo, record, engine_of, earlier)


def _network_actions(decl: NetworkDecl, host: str, old: str | None, new: str, engine: Engine) -> list[Action]:
    name = decl.spec.name
    exists = _exists(lambda: engine.network(name))
    if old is None:
        if exists:
            raise Conflict(f"network {name} exists on host {host} and is not part of this topology; "
                           "remove it or rename the network in the file")
        return [Action("create", NETWORK, host, name)]
    if old != new:
        return [Action("recreate", NETWORK, host, name, "its declaration changed")]
    if not exists:
        return [Action("create", NETWORK, host, name, "it was removed")]
    if decl.overlay:
        return []  # its devices live where its sandboxes are: their checks cover them
    problems = engine.network_problems(name)
    return [Action("repair", NETWORK, host, name, problems[0])] if problems else []


def _sandbox_actions(box: SandboxDecl, old: str | None, new: str, engine: Engine,
                     recreated_networks: set[tuple[str, str]]) -> list[Action]:
    name, host = box.spec.name, box.host
    current = _exists(lambda: engine.sandbox(name))
    if old is None:
        if current is not None:
            raise Conflict(f"sandbox {name} exists on host {host} and is not part of this topology; "
                           "remove it or rename the sandbox in the file")
        return [Action("create", SANDBOX, host, name)]
    if current is None:
        # Removed behind our back, or recorded by an up that stopped before making it (see Lab.up).
        return [Action("create", SANDBOX, host, name, "it is missing")]
    if old != new and not _same_but_networks(old, new):
        return [Action("recreate", SANDBOX, host, name, "its ports, command or hostname changed")]
    actions = []
    before, after = _networks_of(old), _networks_of(new)
    for net, ip in before.items():
        if net not in after or after[net] != ip:
            actions.append(Action("disconnect", SANDBOX, host, name, network=net))
    attached = {ep.network for ep in current.endpoints}
    for net, declared in after.items():
        moved = net not in before or before[net] != declared
        lost = (host, net) in recreated_networks or (net not in attached and not moved)
        if moved or lost:
            actions.append(Action("connect", SANDBOX, host, name, _connect_detail(declared), network=net))
    if not actions:
        problems = engine.sandbox_problems(name)
        if problems:
            actions.append(Action("repair", SANDBOX, host, name, problems[0]))
    if box.command and views.status(current) != "running":
        actions.append(Action("start", SANDBOX, host, name, " ".join(box.command)))
    return actions


def _exists(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except NotFound:
        return None
