"""Plain data read from the kernel (no pyroute2 import)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    mac: str
    mtu: int
    alias: str | None
    up: bool
    master: int | None


@dataclass(frozen=True)
class Underlay:
    """The interface (and its primary IPv4 address) that carries a host's VXLAN traffic."""

    ifname: str
    ip: str
    mtu: int


@dataclass(frozen=True)
class Hop:
    """Where a namespace sends a packet (``ip route get``): out of ``dev``, via ``gateway`` if any."""

    dev: str
    gateway: str | None
    src: str | None
    kind: str  # unicast, local, unreachable, ...
