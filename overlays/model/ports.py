"""Published ports: ``-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]``, parsed once.

A range (``8000-8010:8000-8010``) becomes one mapping per port, so the rest of the
code (store claims, nft map elements) only ever sees single ports. A host IP of
None (or ``0.0.0.0``, ``[::]`` in the input) means every address of the host, of both
families; an IPv6 host IP is written in brackets (``[fd00::1]:8080:80``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from overlays.errors import InvalidSpec

PROTOCOLS = ("tcp", "udp")
PORT_MIN, PORT_MAX = 1, 65535
RANGE_MAX = 1024  # one -p may not expand into more mappings than this


@dataclass(frozen=True, order=True)
class PortMapping:
    """One host port forwarded to one sandbox port."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    def __str__(self) -> str:
        return f"{self.host_text}:{self.host_port}->{self.container_port}/{self.protocol}"

    @property
    def host_text(self) -> str:
        """The host address as ``-p`` writes it: ``0.0.0.0`` for all, an IPv6 one in brackets."""
        if self.host_ip is None:
            return "0.0.0.0"
        return f"[{self.host_ip}]" if self.host_ip.version == 6 else str(self.host_ip)

    @property
    def host_key(self) -> str:
        """The host side as the store keys it: the address, or ``*`` for all of them."""
        return str(self.host_ip) if self.host_ip else "*"

    def to_record(self) -> dict[str, Any]:
        return {
            "host_ip": str(self.host_ip) if self.host_ip else None,
            "host_port": self.host_port,
            "container_port": self.container_port,
            "protocol": self.protocol,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> PortMapping:
        return cls(
            host_port=int(r["host_port"]),
            container_port=int(r["container_port"]),
            protocol=r.get("protocol", "tcp"),
            host_ip=ipaddress.ip_address(r["host_ip"]) if r.get("host_ip") else None,
        )


def _ports(text: str, spec: str, side: str) -> range:
    """``80`` or ``8000-8010`` as a range of valid ports."""
    first, sep, last = text.partition("-")
    try:
        lo = int(first)
        hi = int(last) if sep else lo
    except ValueError as e:
        raise InvalidSpec(f"publish {spec!r}: {side} port {text!r} is not a port or range (like 80, 8000-8010)") from e
    for port in (lo, hi):
        if not PORT_MIN <= port <= PORT_MAX:
            raise InvalidSpec(f"publish {spec!r}: {side} port {port} is out of range ({PORT_MIN}-{PORT_MAX})")
    if hi < lo:
        raise InvalidSpec(f"publish {spec!r}: {side} range {text} ends before it starts")
    return range(lo, hi + 1)


def _host_ip(text: str, spec: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    bracketed = text.startswith("[") and text.endswith("]")
    try:
        addr = ipaddress.ip_address(text[1:-1] if bracketed else text)
    except ValueError as e:
        raise InvalidSpec(f"publish {spec!r}: host IP {text!r} is not a valid IP address") from e
    if addr.version == 6 and not bracketed:
        raise InvalidSpec(f"publish {spec!r}: write an IPv6 host IP in brackets, like [{addr}]:8080:80")
    if addr.version == 6 and addr.is_loopback:
        # No route_localnet for IPv6: the kernel drops a packet from ::1 that a DNAT sends elsewhere.
        raise InvalidSpec(f"publish {spec!r}: the kernel cannot forward connections to [::1] (IPv6 has no "
                          "route_localnet); publish on all addresses, on one of the host's IPv6 addresses, "
                          "or on 127.0.0.1")
    return None if addr.is_unspecified else addr


def parse_publish(spec: str) -> list[PortMapping]:
    """Parse one ``-p`` value into one mapping per port."""
    body, sep, protocol = spec.partition("/")
    protocol = protocol.lower() if sep else "tcp"
    if protocol not in PROTOCOLS:
        raise InvalidSpec(f"publish {spec!r}: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    parts = body.rsplit(":", 2)
    if len(parts) < 2:
        raise InvalidSpec(f"publish {spec!r}: expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]")
    host_ip = _host_ip(parts[0], spec) if len(parts) == 3 else None
    host_ports = _ports(parts[-2], spec, "host")
    container_ports = _ports(parts[-1], spec, "container")
    if len(host_ports) != len(container_ports):
        raise InvalidSpec(
            f"publish {spec!r}: host range has {len(host_ports)} ports but container range has {len(container_ports)}"
        )
    if len(host_ports) > RANGE_MAX:
        raise InvalidSpec(f"publish {spec!r}: a range may span at most {RANGE_MAX} ports")
    return [PortMapping(h, c, protocol, host_ip) for h, c in zip(host_ports, container_ports, strict=True)]


def check_distinct(sandbox: str, mappings: Iterable[PortMapping]) -> tuple[PortMapping, ...]:
    """Refuse two mappings of one request that claim the same host port (all-addresses clashes with any)."""
    given = list(mappings)
    seen: dict[tuple[str, int], set[str]] = {}
    for m in given:
        hosts = seen.setdefault((m.protocol, m.host_port), set())
        if m.host_key in hosts or (hosts and "*" in hosts | {m.host_key}):
            raise InvalidSpec(f"sandbox {sandbox}: host port {m.host_port}/{m.protocol} is published twice")
        hosts.add(m.host_key)
    return tuple(sorted(given, key=lambda m: (m.protocol, m.host_port, m.host_key)))
