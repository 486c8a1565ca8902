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
    parent: str | None = None  # macvlan networks: the host interface whose segment sandboxes join
    state: str = "ready"  # "pending" from its record until its kernel objects exist
    dns: tuple[IPAddress, ...] = ()  # where its sandboxes' other names are forwarded (none: the host's resolvers)
    # Dual-stack networks: the IPv6 pool beside the IPv4 one in ``subnet``. An IPv6-only network has its
    # pool in ``subnet`` and none here; an IPv4-only one none at all.
    subnet6: IPNetwork | None = None
    gateway6: IPAddress | None = None

    @property
    def subnets(self) -> tuple[IPNetwork, ...]:
        """Every subnet of the network, IPv4 first."""
        return (self.subnet,) if self.subnet6 is None else (self.subnet, self.subnet6)

    @property
    def pools(self) -> tuple[tuple[IPNetwork, IPAddress], ...]:
        """(subnet, gateway) of each family, IPv4 first."""
        first = ((self.subnet, self.gateway),)
        return first if self.subnet6 is None or self.gateway6 is None else (*first, (self.subnet6, self.gateway6))

    def pool(self, version: int) -> tuple[IPNetwork, IPAddress] | None:
        """(subnet, gateway) of one family (4 or 6), None if the network has none."""
        return next(((s, g) for s, g in self.pools if s.version == version), None)

    def to_record(self) -> dict[str, Any]:
        return {
            **({"dns": [str(s) for s in self.dns]} if self.dns else {}),
            **({"subnet6": str(self.subnet6), "gateway6": str(self.gateway6)} if self.subnet6 else {}),
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
            "parent": self.parent,
            "state": self.state,
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
            parent=r.get("parent"),
            state=r.get("state", "ready"),
            dns=tuple(ipaddress.ip_address(s) for s in r.get("dns") or ()),
            subnet6=ipaddress.ip_network(r["subnet6"]) if r.get("subnet6") else None,
            gateway6=ipaddress.ip_address(r["gateway6"]) if r.get("gateway6") else None,
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
    state: str = "pending"  # "pending" until wired, "ready", "removing" while a disconnect is under way
    driver: str = "bridge"  # its network's driver, so the endpoint can be released without reading the network
    aliases: tuple[str, ...] = ()  # more names it answers to on its network (DNS)
    mac_given: bool = False  # the MAC was asked for (and claimed), not derived from the address
    # On a dual-stack network: its IPv6 address (``ip`` holds the IPv4 one), prefix and gateway.
    ip6: IPAddress | None = None
    prefixlen6: int = 0
    gateway6: IPAddress | None = None

    @property
    def addresses(self) -> tuple[tuple[IPAddress, int, IPAddress], ...]:
        """(address, prefix length, gateway) of each family, IPv4 first."""
        first = ((self.ip, self.prefixlen, self.gateway),)
        if self.ip6 is None or self.gateway6 is None:
            return first
        return (*first, (self.ip6, self.prefixlen6, self.gateway6))

    def address(self, version: int) -> IPAddress | None:
        """Its address of one family (4 or 6), None if it has none."""
        return next((a for a, _, _ in self.addresses if a.version == version), None)

    def to_record(self) -> dict[str, Any]:
        return {
            **({"ip6": str(self.ip6), "prefixlen6": self.prefixlen6, "gateway6": str(self.gateway6)}
               if self.ip6 else {}),
            "aliases": list(self.aliases),
            "mac_given": self.mac_given,
            "driver": self.driver,
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
            driver=r.get("driver") or ("overlay" if r.get("overlay") else "bridge"),  # records before drivers
            aliases=tuple(r.get("aliases") or ()),
            mac_given=bool(r.get("mac_given")),
            ip6=ipaddress.ip_address(r["ip6"]) if r.get("ip6") else None,
            prefixlen6=int(r.get("prefixlen6") or 0),
            gateway6=ipaddress.ip_address(r["gateway6"]) if r.get("gateway6") else None,
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
    labels: tuple[tuple[str, str], ...] = ()  # what its creator notes (a runtime: its container id), sorted

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    def endpoint(self, network: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.network == network), None)

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
            "labels": dict(self.labels),
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
            labels=tuple(sorted((r.get("labels") or {}).items())),
        )


# -- the overlay control plane: what each host announces in the shared store -------------------------------------------


@dataclass(frozen=True)
class HostRegistration:
    """A host's record, written by its agent under a lease it keeps alive: its underlay (the VTEP)."""

    node: str
    underlay: str
    ifname: str
    mtu: int
    lease: int
    since: float

    def to_record(self) -> dict[str, Any]:
        return {"node": self.node, "underlay": self.underlay, "ifname": self.ifname, "mtu": self.mtu,
                "lease": self.lease, "since": self.since}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> HostRegistration:
        return cls(node=r["node"], underlay=r["underlay"], ifname=r.get("ifname", ""), mtu=int(r.get("mtu", 0)),
                   lease=int(r.get("lease", 0)), since=float(r.get("since", 0.0)))


@dataclass(frozen=True)
class EndpointRegistration:
    """An overlay endpoint announced to every host: where its MAC lives, under its host's lease.

    ``aliases`` and ``hostname`` are its DNS names besides the sandbox's (records written
    before names were served lack them).
    """

    network: str
    node: str
    sandbox: str
    ip: str
    mac: str
    vtep: str
    aliases: tuple[str, ...] = ()
    hostname: str | None = None
    ip6: str | None = None  # dual-stack networks: its IPv6 address too

    def to_record(self) -> dict[str, Any]:
        return {"network": self.network, "node": self.node, "sandbox": self.sandbox, "ip": self.ip,
                "mac": self.mac, "vtep": self.vtep, "aliases": list(self.aliases), "hostname": self.hostname,
                **({"ip6": self.ip6} if self.ip6 else {})}

    @classmethod
    def from_record(cls, r: dict[str, Any], network: str = "") -> EndpointRegistration:
        return cls(network=r.get("network", network), node=r["node"], sandbox=r["sandbox"], ip=r["ip"],
                   mac=r["mac"], vtep=r["vtep"], aliases=tuple(r.get("aliases") or ()),
                   hostname=r.get("hostname") or None, ip6=r.get("ip6") or None)
