"""What exists: networks, endpoints and sandboxes as the store records them.

Kept apart from the specs (what a user asks for) so that commands which only
read state (``ps``, ``network ls``) build only these classes: each frozen
dataclass costs about a millisecond and a half to create at import time.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from overlays.model.ports import PortMapping

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Network:
    """A network as recorded in the store."""

    name: str
    driver: str
    subnet: IPNetwork
    gateway: IPAddress
    ip_range: IPNetwork | None
    mtu: int
    bridge: str
    created: float
    internal: bool = False
    masquerade: bool = True
    vni: int | None = None  # overlay networks: the VXLAN network identifier, the same on every host

    @property
    def overlay(self) -> bool:
        return self.driver == "overlay"

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "driver": self.driver,
            "subnet": str(self.subnet),
            "gateway": str(self.gateway),
            "ip_range": str(self.ip_range) if self.ip_range else None,
            "mtu": self.mtu,
            "bridge": self.bridge,
            "created": self.created,
            "internal": self.internal,
            "masquerade": self.masquerade,
            "vni": self.vni,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Network:
        return cls(
            name=r["name"],
            driver=r["driver"],
            subnet=ipaddress.ip_network(r["subnet"]),
            gateway=ipaddress.ip_address(r["gateway"]),
            ip_range=ipaddress.ip_network(r["ip_range"]) if r.get("ip_range") else None,
            mtu=int(r["mtu"]),
            bridge=r["bridge"],
            created=float(r["created"]),
            internal=bool(r.get("internal", False)),  # records written before issue 3 lack these
            masquerade=bool(r.get("masquerade", True)),
            vni=r.get("vni"),
        )


@dataclass(frozen=True)
class Endpoint:
    """A sandbox's attachment to a network, as recorded in the store."""

    sandbox: str
    network: str
    ifname: str
    host_ifname: str
    ip: IPAddress
    prefixlen: int
    gateway: IPAddress
    mac: str
    mtu: int
    state: str = "pending"
    overlay: bool = False  # on a multi-host overlay network: address and registration live in the shared scope

    def to_record(self) -> dict[str, Any]:
        return {
            "overlay": self.overlay,
            "sandbox": self.sandbox,
            "network": self.network,
            "ifname": self.ifname,
            "host_ifname": self.host_ifname,
            "ip": str(self.ip),
            "prefixlen": self.prefixlen,
            "gateway": str(self.gateway),
            "mac": self.mac,
            "mtu": self.mtu,
            "state": self.state,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Endpoint:
        return cls(
            sandbox=r["sandbox"],
            network=r["network"],
            ifname=r["ifname"],
            host_ifname=r["host_ifname"],
            ip=ipaddress.ip_address(r["ip"]),
            prefixlen=int(r["prefixlen"]),
            gateway=ipaddress.ip_address(r["gateway"]),
            mac=r["mac"],
            mtu=int(r["mtu"]),
            state=r.get("state", "ready"),
            overlay=bool(r.get("overlay", False)),
        )


@dataclass(frozen=True)
class Sandbox:
    """A sandbox as recorded in the store (its endpoints are kept apart)."""

    name: str
    netns: str
    hostname: str | None = None
    adopted: bool = False
    pid: int | None = None
    pid_start: int | None = None
    command: tuple[str, ...] = ()
    state: str = "pending"
    created: float = 0.0
    endpoints: tuple[Endpoint, ...] = field(default=())
    ports: tuple[PortMapping, ...] = ()

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "netns": self.netns,
            "hostname": self.hostname,
            "adopted": self.adopted,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "command": list(self.command),
            "state": self.state,
            "created": self.created,
            "ports": [p.to_record() for p in self.ports],
        }

    @classmethod
    def from_record(cls, r: dict[str, Any], endpoints: tuple[Endpoint, ...] = ()) -> Sandbox:
        return cls(
            name=r["name"],
            netns=r["netns"],
            hostname=r.get("hostname"),
            adopted=bool(r.get("adopted")),
            pid=r.get("pid"),
            pid_start=r.get("pid_start"),
            command=tuple(r.get("command") or ()),
            state=r.get("state", "ready"),
            created=float(r.get("created", 0.0)),
            endpoints=endpoints,
            ports=tuple(PortMapping.from_record(p) for p in r.get("ports") or ()),
        )
