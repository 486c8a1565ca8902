"""Validated, frozen descriptions of what a user asked for (what exists is in ``state``).

Input is parsed here once (raw strings in, typed objects out); the engine and the
drivers only ever see these objects. A network has an IPv4 pool, an IPv6 pool or
both (dual-stack); addresses are ``ipaddress`` objects of either family.

``Network``, ``Endpoint`` and ``Sandbox`` (and the address types) live in ``state``
and are re-exported here, where most of the code imports them from.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from overlays.errors import InvalidSpec
from overlays.model.names import DERIVED_MAC_PREFIX, IFNAME_MAX, validate_name
from overlays.model.ports import PortMapping, check_distinct
from overlays.model.state import Endpoint as Endpoint
from overlays.model.state import IPAddress as IPAddress
from overlays.model.state import IPNetwork as IPNetwork
from overlays.model.state import Network as Network
from overlays.model.state import Sandbox as Sandbox

DRIVERS = ("bridge", "overlay", "macvlan")
VNI_MIN, VNI_MAX = 1, 16777215
MTU_MIN = 576
MTU_MAX = 65535
DEFAULT_MTU = 1500
_IFNAME_RE = re.compile(r"^[^\s/:]+$")  # what the kernel accepts as a name (dev_valid_name), less ':' (aliases)
_T = TypeVar("_T", IPNetwork, IPAddress)
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


# Ranges no network of sandboxes can use: they mean something else to every host (RFC 6890).
SPECIAL_SUBNETS = tuple((ipaddress.IPv4Network(cidr), why) for cidr, why in (
    ("0.0.0.0/8", "'this network' (source-only addresses)"),
    ("127.0.0.0/8", "loopback (every host's own)"),
    ("169.254.0.0/16", "link-local (never routed)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (with the limited broadcast 255.255.255.255)"),
))


SPECIAL_SUBNETS6 = tuple((ipaddress.IPv6Network(cidr), why) for cidr, why in (
    ("::/8", "reserved (the unspecified and loopback addresses, IPv4-mapped ones)"),
    ("fe80::/10", "link-local (never routed)"),
    ("ff00::/8", "multicast"),
))
# The smallest IPv6 subnet a network takes: room for a gateway and sandboxes (a /64 is the usual size).
IPV6_PREFIX_MAX = 120


def parse_cidr(what: str, text: str, version: int | None = 4) -> IPNetwork:
    """Parse a subnet such as ``10.1.0.0/24`` (``version``: the family it must be; None: either); host bits
    must be zero."""
    example = "fd00:1::/64" if version == 6 else "10.1.0.0/24"
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise InvalidSpec(f"{what} {text!r} is not a valid CIDR (like {example})") from e
    if "/" not in text:
        raise InvalidSpec(f"{what} {text!r} has no prefix length (like {example})")
    if version is not None and net.version != version:
        raise InvalidSpec(f"{what} {text!r} is not an IPv{version} subnet (like {example})")
    if net.network_address != ipaddress.ip_address(text.split("/")[0]):
        raise InvalidSpec(f"{what} {text!r} has host bits set; did you mean {net}?")
    if net.version == 6 and net.prefixlen > IPV6_PREFIX_MAX:
        raise InvalidSpec(f"{what} {text!r} is too small (an IPv6 subnet needs /{IPV6_PREFIX_MAX} or larger; "
                          "/64 is usual)")
    specials = SPECIAL_SUBNETS if net.version == 4 else SPECIAL_SUBNETS6
    private = "10.1.0.0/24" if net.version == 4 else "a ULA prefix like fd00:1::/64"
    for special, why in specials:
        if net.overlaps(special):  # type: ignore[arg-type]
            raise InvalidSpec(f"{what} {text!r} overlaps {special}, {why}: choose a private range ({private})")
    return net


def parse_ip(what: str, text: str, version: int | None = 4) -> IPAddress:
    """Parse a single address such as ``10.1.0.5`` (``version``: the family it must be; None: either)."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError as e:
        raise InvalidSpec(f"{what} {text!r} is not a valid IP address") from e
    if version is not None and addr.version != version:
        raise InvalidSpec(f"{what} {text!r} is not an IPv{version} address")
    return addr


def _by_family(what: str, texts: str | Sequence[str] | None, parse: Callable[[str, str, int | None], _T],
               ) -> dict[int, _T]:
    """``--subnet`` or ``--gateway`` given once or twice: at most one of each family."""
    found: dict[int, _T] = {}
    for text in [texts] if isinstance(texts, str) else list(texts or ()):
        value = parse(what, text, None)
        version = value.version  # type: ignore[attr-defined]
        if version in found:
            raise InvalidSpec(f"{what}: two IPv{version} values ({found[version]}, {text}); give one of each family")
        found[version] = value
    return found


def check_mtu(what: str, mtu: int) -> int:
    if not MTU_MIN <= mtu <= MTU_MAX:
        raise InvalidSpec(f"{what}: MTU {mtu} is out of range ({MTU_MIN}-{MTU_MAX})")
    return mtu


@dataclass(frozen=True)
class NetworkSpec:
    """What ``network create`` asks for.

    ``subnet`` is the IPv4 pool (None: a free /24, unless ``ipv4`` is off); ``subnet6`` the IPv6
    one of a network with ``ipv6`` (None: a free /64 of the host's ULA prefix). A network with
    only an IPv6 subnet given is IPv6-only.
    """

    name: str
    subnet: IPNetwork | None = None
    gateway: IPAddress | None = None
    ip_range: IPNetwork | None = None
    mtu: int | None = DEFAULT_MTU  # None: the driver decides (overlay: underlay - 50; macvlan: the parent's)
    driver: str = "bridge"
    internal: bool = False  # no route out, no published ports
    masquerade: bool = True  # False: routed mode, sandbox addresses leave the host as they are
    vni: int | None = None  # overlays: None picks a free one
    parent: str | None = None  # macvlan: the host interface whose segment sandboxes join
    dns: tuple[IPAddress, ...] = ()  # upstream resolvers for names not ours (none: the host's)
    ipv6: bool = False
    subnet6: IPNetwork | None = None
    gateway6: IPAddress | None = None
    ipv4: bool = True

    @classmethod
    def parse(
        cls,
        name: str,
        subnet: str | Sequence[str] | None = None,
        gateway: str | Sequence[str] | None = None,
        ip_range: str | None = None,
        mtu: int | None = None,
        internal: bool = False,
        masquerade: bool = True,
        driver: str = "bridge",
        vni: int | None = None,
        parent: str | None = None,
        dns: Sequence[str] = (),
        ipv6: bool = False,
    ) -> NetworkSpec:
        validate_name("network", name)
        if driver not in DRIVERS:
            raise InvalidSpec(f"network {name}: unknown driver {driver!r} (known: {', '.join(DRIVERS)})")
        if vni is not None and (driver != "overlay" or not VNI_MIN <= vni <= VNI_MAX):
            raise InvalidSpec(f"network {name}: --vni takes {VNI_MIN}-{VNI_MAX}, for --driver overlay only")
        if driver == "overlay" and (internal or not masquerade):
            raise InvalidSpec(f"network {name}: an overlay network has no way out: --internal and "
                              "--no-masquerade do not apply")
        _check_parent(name, driver, parent, internal, masquerade)
        subnets = _by_family(f"network {name}: subnet", subnet, parse_cidr)
        gateways = _by_family(f"network {name}: gateway", gateway, parse_ip)
        ipv4 = 4 in subnets or 6 not in subnets  # only an IPv6 subnet given: an IPv6-only network
        ipv6 = ipv6 or 6 in subnets
        if ipv6 and driver == "macvlan":
            raise InvalidSpec(f"network {name}: IPv6 is not served on macvlan networks yet")
        for version, gw in gateways.items():
            if version not in subnets:
                raise InvalidSpec(f"network {name}: gateway {gw} needs an IPv{version} --subnet")
        rng = parse_cidr(f"network {name}: ip-range", ip_range, None) if ip_range else None
        if rng is not None and rng.version not in subnets:
            raise InvalidSpec(f"network {name}: --ip-range {rng} needs an IPv{rng.version} --subnet")
        if rng is not None and rng.version == 6 and ipv4:
            raise InvalidSpec(f"network {name}: --ip-range applies to the IPv4 pool of a dual-stack network")
        if mtu is not None:
            check_mtu(f"network {name}", mtu)
        elif driver == "bridge":
            mtu = DEFAULT_MTU
        servers = _dns_servers(name, dns, internal)
        spec = cls(name, subnets.get(4), gateways.get(4), rng, mtu, driver, internal=internal, masquerade=masquerade,
                   vni=vni, parent=parent, dns=servers, ipv6=ipv6, subnet6=subnets.get(6), gateway6=gateways.get(6),
                   ipv4=ipv4)
        for net in subnets.values():
            spec.check_subnet(net)
        return spec

    def check_subnet(self, net: IPNetwork) -> None:
        """Check the gateway and ip-range of ``net``'s family against it (a given or chosen subnet)."""
        if net.num_addresses < 4:
            raise InvalidSpec(f"network {self.name}: subnet {net} is too small (need /30 or larger)")
        gateway = self.gateway if net.version == 4 else self.gateway6
        if gateway is not None and (gateway not in net or gateway in (net.network_address, net.broadcast_address)):
            raise InvalidSpec(f"network {self.name}: gateway {gateway} is not a host address of subnet {net}")
        rng = self.ip_range
        if rng is not None and rng.version == net.version and not rng.subnet_of(net):  # type: ignore[arg-type]
            raise InvalidSpec(f"network {self.name}: ip-range {rng} is not inside subnet {net}")


@dataclass(frozen=True)
class EndpointRequest:
    """One network a sandbox should join: optionally a static address, MAC, interface name, DNS aliases."""

    network: str
    ip: IPAddress | None = None  # a static IPv4 address
    mac: str | None = None  # None: derived from the address
    ifname: str | None = None  # None: the sandbox's next free ethN
    aliases: tuple[str, ...] = ()  # more names it answers to on this network (DNS)
    # Addresses a dynamic allocation must not take: others are about to ask for them (a topology's static ones).
    exclude: frozenset[IPAddress] = frozenset()
    ip6: IPAddress | None = None  # a static IPv6 address (dual-stack and IPv6-only networks)

    @classmethod
    def parse(cls, network: str, ip: str | None = None, mac: str | None = None, ifname: str | None = None,
              aliases: Sequence[str] = (), ip6: str | None = None) -> EndpointRequest:
        validate_name("network", network)
        addr = parse_ip(f"--ip for network {network}", ip) if ip else None
        addr6 = parse_ip(f"--ip6 for network {network}", ip6, 6) if ip6 else None
        return cls(network, addr, parse_mac(f"--mac for network {network}", mac) if mac else None,
                   check_ifname(f"interface for network {network}", ifname) if ifname else None,
                   check_aliases(network, aliases), ip6=addr6)

    def static(self, version: int) -> IPAddress | None:
        """The static address asked for in one family, if any."""
        return self.ip if version == 4 else self.ip6


def parse_mac(what: str, text: str) -> str:
    """A unicast MAC address, in lower case; the 02:6f: block is overlays' own (derived from addresses)."""
    mac = text.strip().lower()
    if not _MAC_RE.match(mac):
        raise InvalidSpec(f"{what} {text!r} is not a MAC address (like 02:42:ac:11:00:02)")
    if int(mac[:2], 16) & 1:
        raise InvalidSpec(f"{what} {text!r} is a multicast address: a sandbox needs a unicast one")
    if mac == "00:00:00:00:00:00":
        raise InvalidSpec(f"{what} {text!r} is the null address")
    if mac.startswith(DERIVED_MAC_PREFIX):
        raise InvalidSpec(f"{what} {text!r}: addresses starting {DERIVED_MAC_PREFIX} are overlays' own "
                          "(derived from a sandbox's IP); choose another")
    return mac


def check_ifname(what: str, name: str) -> str:
    """An interface name the kernel takes inside a sandbox (not ``lo``)."""
    if len(name) > IFNAME_MAX or not _IFNAME_RE.match(name) or name in (".", "..", "lo"):
        raise InvalidSpec(f"{what}: {name!r} is not an interface name a sandbox can use")
    return name


def check_aliases(network: str, aliases: Sequence[str]) -> tuple[str, ...]:
    for alias in aliases:
        if not _valid_hostname(alias):
            raise InvalidSpec(f"alias {alias!r} on network {network} is not a valid DNS name")
    return tuple(dict.fromkeys(aliases))


@dataclass(frozen=True)
class SandboxSpec:
    """What ``run`` asks for: a named sandbox, the networks it joins, a hostname, published ports."""

    name: str
    networks: tuple[EndpointRequest, ...] = ()
    hostname: str | None = None
    ports: tuple[PortMapping, ...] = ()

    @classmethod
    def parse(
        cls,
        name: str,
        networks: list[EndpointRequest] | None = None,
        hostname: str | None = None,
        ports: list[PortMapping] | None = None,
    ) -> SandboxSpec:
        validate_name("sandbox", name)
        nets = tuple(networks or ())
        seen = [n.network for n in nets]
        dupes = {n for n in seen if seen.count(n) > 1}
        if dupes:
            raise InvalidSpec(f"sandbox {name}: network {sorted(dupes)[0]} given twice")
        ifnames = [n.ifname for n in nets if n.ifname]
        if len(set(ifnames)) != len(ifnames):
            raise InvalidSpec(f"sandbox {name}: interface {sorted(i for i in ifnames if ifnames.count(i) > 1)[0]} "
                              "given twice")
        if hostname is not None and not _valid_hostname(hostname):
            raise InvalidSpec(f"sandbox {name}: hostname {hostname!r} is invalid")
        published = check_distinct(name, ports or ())
        if published and not nets:
            raise InvalidSpec(f"sandbox {name}: publishing a port needs a network (--network)")
        return cls(name, nets, hostname, published)


def _dns_servers(name: str, servers: Sequence[str], internal: bool) -> tuple[IPAddress, ...]:
    """``--dns``: upstream resolver addresses (IPv4 or IPv6); an internal network forwards nothing."""
    if servers and internal:
        raise InvalidSpec(f"network {name}: --dns does not apply to an internal network (it forwards no name)")
    found: list[IPAddress] = []
    for text in servers:
        try:
            found.append(ipaddress.ip_address(text))
        except ValueError as e:
            raise InvalidSpec(f"network {name}: DNS server {text!r} is not an IP address") from e
    return tuple(dict.fromkeys(found))


def _check_parent(name: str, driver: str, parent: str | None, internal: bool, masquerade: bool) -> None:
    """A macvlan network names its parent interface; no other driver takes one."""
    if driver != "macvlan":
        if parent is not None:
            raise InvalidSpec(f"network {name}: --parent is for --driver macvlan only")
        return
    if not parent:
        raise InvalidSpec(f"network {name}: a macvlan network needs --parent IFACE (the host interface to share)")
    if len(parent) > IFNAME_MAX or not _IFNAME_RE.match(parent):
        raise InvalidSpec(f"network {name}: parent {parent!r} is not an interface name")
    if internal or not masquerade:
        raise InvalidSpec(f"network {name}: a macvlan network puts sandboxes straight on {parent}'s segment: "
                          "--internal and --no-masquerade do not apply")


def _valid_hostname(h: str) -> bool:
    labels = h.split(".")
    return 0 < len(h) <= 253 and all(
        0 < len(lb) <= 63 and lb[0] != "-" and lb[-1] != "-" and all(c.isalnum() or c == "-" for c in lb)
        for lb in labels
    )
