"""The state a topology's record describes, as a topology again: what a failed ``up`` converges back to.

The record keeps, for every object ``up`` made, the fingerprint of the declaration it
was made from (plan.py: ``network_print``, ``sandbox_print``); those hold every field
of the declaration, so the topology of the record before an ``up`` can be rebuilt
exactly. Rolling back is then the same plan-and-apply as going forward: converge to
that topology.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from overlays.model.ports import PortMapping
from overlays.model.specs import EndpointRequest, NetworkSpec, SandboxSpec
from overlays.topology.plan import EVERYWHERE, NETWORK, SANDBOX, Record
from overlays.topology.spec import NetworkDecl, SandboxDecl, Topology

_PORT = re.compile(r"^(?P<ip>[0-9.]+):(?P<host>\d+)->(?P<ctr>\d+)/(?P<proto>tcp|udp)$")  # str(PortMapping)


def previous(record: Record, now: Topology) -> Topology:
    """The topology ``record`` describes (hosts, outside peer, networks, sandboxes), named as ``now``."""
    networks: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for key in record.of_kind(NETWORK):
        _, hosts = networks.setdefault(key.name, (json.loads(record.objects[key]), []))
        hosts.append(key.host)
    all_hosts = tuple(record.hosts) or ("local",)
    decls = tuple(_network(name, fields, all_hosts if EVERYWHERE in hosts else tuple(hosts))
                  for name, (fields, hosts) in networks.items())
    boxes = tuple(_sandbox(key.name, key.host, json.loads(record.objects[key])) for key in record.of_kind(SANDBOX))
    return Topology(now.name, now.source, tuple(record.hosts), now.fabric, record.outside, decls, boxes)


def _network(name: str, f: dict[str, Any], hosts: tuple[str, ...]) -> NetworkDecl:
    spec = NetworkSpec.parse(name, subnet=_given(f, "subnet"), gateway=_given(f, "gateway"),
                             ip_range=f.get("ip_range"), mtu=f.get("mtu"), internal=bool(f.get("internal")),
                             masquerade=f.get("masquerade", True), driver=f.get("driver", "bridge"), vni=f.get("vni"),
                             parent=f.get("parent"), dns=f.get("dns") or (), ipv6=bool(f.get("ipv6")))
    return NetworkDecl(spec, hosts)


def _given(f: dict[str, Any], field: str) -> list[str]:
    """A network's ``subnet`` or ``gateway`` of each family as the print holds them (IPv4 first)."""
    return [v for v in (f.get(field), f.get(f"{field}6")) if v]


def _sandbox(name: str, host: str, f: dict[str, Any]) -> SandboxDecl:
    requests = []
    for net, declared in f.get("networks", {}).items():
        d = declared if isinstance(declared, dict) else {"ip": declared}
        requests.append(EndpointRequest.parse(net, d.get("ip"), d.get("mac"), aliases=d.get("aliases") or (),
                                              ip6=d.get("ip6")))
    ports = [_port(text) for text in f.get("ports", [])]
    spec = SandboxSpec.parse(name, requests, f.get("hostname"), ports)
    return SandboxDecl(spec, host, tuple(f.get("command") or ()))


def _port(text: str) -> PortMapping:
    m = _PORT.match(text)
    if m is None:
        raise ValueError(f"not a published port as the record writes one: {text!r}")
    host_ip = None if m["ip"] == "0.0.0.0" else ipaddress.IPv4Address(m["ip"])
    return PortMapping(int(m["host"]), int(m["ctr"]), m["proto"], host_ip)
