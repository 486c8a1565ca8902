"""Topology files: parsed strictly into raw data, then resolved into validated objects.

Every error names the file, the path inside it (``sandboxes.web.ports[0]``) and
what is wrong, and is raised before anything is built. The shape is also
published as a JSON Schema (schema.py) so editors can complete and check files.

    name: shop                      # optional, default: the file's stem
    hosts: {h1: {}, h2: {}}         # optional: simulated hosts of a lab
    outside: {}                     # optional: a peer that plays the internet / a client
    networks:
      front: {subnet: 10.10.0.0/24}
      back: {subnet: [10.20.0.0/24, fd00:20::/64]}   # dual-stack (or ipv6: true for a free /64)
    sandboxes:
      web:
        networks: [front]           # or {front: {ip: 10.10.0.5}}, {back: {ip6: fd00:20::5}}
        ports: ["8080:80"]
        command: python3 -m http.server 80
    faults:                         # optional: partitions and impairments (see fault_spec.py)
      split: {partition: [[web], [db]], enabled: true}
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from overlays.errors import InvalidSpec, OverlaysError
from overlays.model.names import clean_name, validate_name
from overlays.model.ports import PortMapping, parse_publish
from overlays.model.specs import DRIVERS, EndpointRequest, NetworkSpec, SandboxSpec, parse_cidr
from overlays.topology.fault_spec import FaultDecl, resolve_faults

DEFAULT_FILE = "overlays.yaml"
DEFAULT_FABRIC = "10.254.0.0/24"
LOCAL_HOST = "local"  # the host when a file declares no hosts: --host-netns or the machine


class TopologyError(InvalidSpec):
    """A topology file is malformed: names the file and the path in it."""


@dataclass(frozen=True)
class NetworkDecl:
    spec: NetworkSpec
    hosts: tuple[str, ...]

    @property
    def overlay(self) -> bool:
        return self.spec.driver == "overlay"


@dataclass(frozen=True)
class SandboxDecl:
    spec: SandboxSpec
    host: str
    command: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    name: str
    source: str
    hosts: tuple[str, ...]  # empty: everything on the local host
    fabric: ipaddress.IPv4Network
    outside: bool
    networks: tuple[NetworkDecl, ...]
    sandboxes: tuple[SandboxDecl, ...]
    faults: tuple[FaultDecl, ...] = ()

    @property
    def lab(self) -> bool:
        return bool(self.hosts)

    @property
    def overlays(self) -> bool:
        """Whether any network spans hosts (then every host runs an agent)."""
        return any(n.overlay for n in self.networks)

    def host_names(self) -> tuple[str, ...]:
        return self.hosts or (LOCAL_HOST,)

    def network(self, name: str) -> NetworkDecl:
        return next(n for n in self.networks if n.spec.name == name)

    def sandbox(self, name: str) -> SandboxDecl | None:
        """The declaration of sandbox ``name`` (names are the file's mapping keys: unique)."""
        return self._sandboxes.get(name)

    @cached_property
    def _sandboxes(self) -> dict[str, SandboxDecl]:  # a lab of 1000: one lookup per action, not a scan
        return {s.spec.name: s for s in self.sandboxes}


def failure(source: str) -> Callable[[str, str], TopologyError]:
    """How errors about ``source`` are made: ``fail(path, message)`` names the file and the path in it."""
    return _Reader(source).fail


class _Reader:
    """Walks raw YAML data, knowing where it is, so every error can say so."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> TopologyError:
        return TopologyError(f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}")

    def mapping(self, value: Any, path: str, allowed: set[str] | None) -> dict[str, Any]:
        """A mapping whose keys are all in ``allowed`` (None: any name)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"key {key!r} is not a string")
            if allowed is not None and key not in allowed:
                listed = ", ".join(sorted(allowed)) or "none"
                raise self.fail(_join(path, key), f"unknown key (allowed: {listed})")
        return value

    def typed(self, value: Any, path: str, kind: type | tuple[type, ...], label: str) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(path, f"expected {label}, got a boolean")
        if not isinstance(value, kind):
            raise self.fail(path, f"expected {label}, got {_kind(value)}")
        return value

    def at(self, path: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a model parser and prefix its error with the file and path."""
        try:
            return fn(*args, **kwargs)
        except OverlaysError as e:
            raise self.fail(path, str(e)) from e


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean"}.get(type(value), type(value).__name__)


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


TOP_KEYS = {"name", "hosts", "fabric", "outside", "networks", "sandboxes", "faults"}
NETWORK_KEYS = {"subnet", "gateway", "ip_range", "mtu", "internal", "masquerade", "hosts", "driver", "vni", "parent",
                "dns", "ipv6"}
SANDBOX_KEYS = {"host", "networks", "ports", "command", "hostname"}
ENDPOINT_KEYS = {"ip", "ip6", "mac", "aliases"}


MAX_FILE_BYTES = 1 << 20  # a topology of thousands of sandboxes is a few hundred KiB


def load(path: str | Path) -> Topology:
    """Read and resolve a topology file."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise TopologyError(f"{source}: no such file (write one, or give -f FILE)") from e
    except IsADirectoryError as e:
        raise TopologyError(f"{source}: is a directory, not a topology file") from e
    except OSError as e:
        raise TopologyError(f"{source}: cannot read: {e.strerror}") from e
    if len(data) > MAX_FILE_BYTES:
        raise TopologyError(f"{source}: {len(data)} bytes is too large for a topology file "
                            f"(at most {MAX_FILE_BYTES >> 20} MiB)")
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise TopologyError(f"{source}: not a text file (byte {e.start} is not UTF-8)") from e
    return resolve(parse_yaml(text, source), source, default_name=Path(path).stem)


def parse_yaml(text: str, source: str) -> Any:
    """YAML into plain data, with every error in one line: ``FILE: not valid YAML at line L, column C: what``.

    Stricter than ``yaml.safe_load`` in one way: a key given twice in a mapping is an
    error (PyYAML lets the later one silently win).
    """
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader())  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(part for part in (e.context, e.problem) if part)
        raise TopologyError(f"{source}: not valid YAML{where}: {what}") from e
    except yaml.YAMLError as e:
        raise TopologyError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from e
    except RecursionError as e:
        raise TopologyError(f"{source}: nested too deeply to be a topology file") from e


_LOADER: Any = None


def _strict_loader() -> Any:
    """A SafeLoader that refuses a mapping key given twice (made once, on first use: yaml loads lazily)."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class StrictLoader(yaml.SafeLoader):
            def construct_mapping(self, node: Any, deep: bool = False) -> Any:
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=deep)
                    if isinstance(key, (str, int, float, bool)) and key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark)
                    if isinstance(key, (str, int, float, bool)):
                        seen.add(key)
                return super().construct_mapping(node, deep)

        _LOADER = StrictLoader
    return _LOADER


def resolve(raw: Any, source: str = "<topology>", default_name: str = "topology") -> Topology:
    """Raw data (as from YAML) into a validated Topology, or a TopologyError."""
    r = _Reader(source)
    top = r.mapping(raw, "", TOP_KEYS)
    name = r.typed(top.get("name"), "name", str, "a string") or clean_name(default_name, "topology")
    r.at("name", validate_name, "topology", name)
    hosts = _hosts(r, top.get("hosts"))
    fabric = r.at("fabric", parse_cidr, "fabric subnet", r.typed(top.get("fabric"), "fabric", str, "a CIDR string")
                  or DEFAULT_FABRIC)
    outside = _outside(r, top.get("outside"))
    networks = _networks(r, r.mapping(top.get("networks"), "networks", None), hosts)
    sandboxes = _sandboxes(r, r.mapping(top.get("sandboxes"), "sandboxes", None), hosts, networks)
    faults = resolve_faults(r, top.get("faults"), hosts, sandboxes)
    topology = Topology(name, source, hosts, fabric, outside, networks, sandboxes, faults)
    from overlays.topology import consistency  # it reads the types defined here

    consistency.check(topology, r.fail)
    return topology


def _hosts(r: _Reader, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, list):
        names = [r.typed(h, _join("hosts", i), str, "a host name") for i, h in enumerate(raw)]
    else:
        hosts = r.mapping(raw, "hosts", None)
        for name, body in hosts.items():
            r.mapping(body, _join("hosts", name), set())  # no per-host options yet
        names = list(hosts)
    for i, name in enumerate(names):
        r.at(_join("hosts", i), validate_name, "host", name)
        if len(name) > 10:
            raise r.fail(_join("hosts", name), "host names are at most 10 characters (they name interfaces)")
    if len(set(names)) != len(names):
        raise r.fail("hosts", "a host is declared twice")
    return tuple(names)


def _outside(r: _Reader, raw: Any) -> bool:
    if raw is None or raw is False:
        return False
    if raw is True:
        return True
    r.mapping(raw, "outside", set())
    return True


def _networks(r: _Reader, raw: dict[str, Any], hosts: tuple[str, ...]) -> tuple[NetworkDecl, ...]:
    decls = []
    for name, body in raw.items():
        path = _join("networks", name)
        net = r.mapping(body, path, NETWORK_KEYS)
        driver = r.typed(net.get("driver"), _join(path, "driver"), str, "a string") or "bridge"
        if driver not in DRIVERS:
            raise r.fail(_join(path, "driver"), f"unknown driver {driver!r} (known: {', '.join(DRIVERS)})")
        if driver == "overlay" and "hosts" in net:
            raise r.fail(_join(path, "hosts"), "an overlay network spans every host: no hosts list")
        spec = r.at(
            path, NetworkSpec.parse, name,
            subnet=_per_family(r, net.get("subnet"), _join(path, "subnet"), "CIDR string"),
            gateway=_per_family(r, net.get("gateway"), _join(path, "gateway"), "IP address string"),
            ip_range=r.typed(net.get("ip_range"), _join(path, "ip_range"), str, "a CIDR string"),
            mtu=r.typed(net.get("mtu"), _join(path, "mtu"), int, "a number"),
            internal=bool(r.typed(net.get("internal"), _join(path, "internal"), bool, "true or false")),
            masquerade=r.typed(net.get("masquerade"), _join(path, "masquerade"), bool, "true or false") is not False,
            driver=driver,
            vni=r.typed(net.get("vni"), _join(path, "vni"), int, "a number"),
            parent=r.typed(net.get("parent"), _join(path, "parent"), str, "an interface name"),
            dns=_strings(r, net.get("dns"), _join(path, "dns"), "IP address string"),
            ipv6=bool(r.typed(net.get("ipv6"), _join(path, "ipv6"), bool, "true or false")),
        )
        decls.append(NetworkDecl(spec, _on_hosts(r, net.get("hosts"), _join(path, "hosts"), hosts)))
    return tuple(decls)


def _per_family(r: _Reader, raw: Any, path: str, label: str) -> str | list[str] | None:
    """``subnet:`` or ``gateway:``: one string, or a list of one per family (``[10.1.0.0/24, fd00:1::/64]``)."""
    if raw is None or isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise r.fail(path, f"expected a {label} or a list of them (one IPv4, one IPv6), got {_kind(raw)}")
    if not raw or len(raw) > 2:
        raise r.fail(path, f"expected one or two values (one IPv4, one IPv6), got {len(raw)}")
    return [r.typed(item, _join(path, i), str, f"a {label}") for i, item in enumerate(raw)]


def _strings(r: _Reader, raw: Any, path: str, label: str) -> list[str]:
    """A list of strings (``dns: [192.0.2.53]``), each checked where it stands."""
    items = r.typed(raw, path, list, f"a list of {label}s") or []
    return [r.typed(item, _join(path, i), str, f"an {label}") for i, item in enumerate(items)]


def _on_hosts(r: _Reader, raw: Any, path: str, hosts: tuple[str, ...]) -> tuple[str, ...]:
    if raw is None:
        return hosts or (LOCAL_HOST,)
    if not hosts:
        raise r.fail(path, "the file declares no hosts")
    chosen = r.typed(raw, path, list, "a list of host names")
    for i, h in enumerate(chosen):
        if h not in hosts:
            raise r.fail(_join(path, i), f"unknown host {h!r} (declared: {', '.join(hosts)})")
    return tuple(chosen)


def _sandboxes(
    r: _Reader, raw: dict[str, Any], hosts: tuple[str, ...], networks: tuple[NetworkDecl, ...]
) -> tuple[SandboxDecl, ...]:
    known = {n.spec.name: n for n in networks}
    decls = []
    for name, body in raw.items():
        path = _join("sandboxes", name)
        box = r.mapping(body, path, SANDBOX_KEYS)
        host = _sandbox_host(r, box.get("host"), _join(path, "host"), hosts)
        requests = _endpoints(r, box.get("networks"), _join(path, "networks"), known, host)
        ports = _ports(r, box.get("ports"), _join(path, "ports"))
        hostname = r.typed(box.get("hostname"), _join(path, "hostname"), str, "a string")
        spec = r.at(path, SandboxSpec.parse, name, requests, hostname, ports)
        if ports and all(known[q.network].spec.internal for q in requests):
            raise r.fail(_join(path, "ports"), "all its networks are internal: nothing can be published")
        decls.append(SandboxDecl(spec, host, _command(r, box.get("command"), _join(path, "command"))))
    return tuple(decls)


def _sandbox_host(r: _Reader, raw: Any, path: str, hosts: tuple[str, ...]) -> str:
    if raw is None:
        if len(hosts) > 1:
            raise r.fail(path, f"missing: this lab has several hosts ({', '.join(hosts)}); say which")
        return hosts[0] if hosts else LOCAL_HOST
    host = r.typed(raw, path, str, "a host name")
    if host not in hosts:
        raise r.fail(path, f"unknown host {host!r}" + (f" (declared: {', '.join(hosts)})" if hosts else
                                                         " (the file declares no hosts)"))
    return str(host)


def _endpoints(
    r: _Reader, raw: Any, path: str, known: dict[str, NetworkDecl], host: str
) -> list[EndpointRequest]:
    if raw is None:
        return []
    items: list[tuple[str, dict[str, Any], str]] = []
    if isinstance(raw, list):
        for i, net in enumerate(raw):
            items.append((r.typed(net, _join(path, i), str, "a network name"), {}, _join(path, i)))
    else:
        for net, body in r.mapping(raw, path, None).items():
            items.append((net, r.mapping(body, _join(path, net), ENDPOINT_KEYS), _join(path, net)))
    requests = []
    for net, opts, where in items:
        if net not in known:
            raise r.fail(where, f"unknown network {net!r}" + (f" (declared: {', '.join(known)})" if known else ""))
        if host not in known[net].hosts:
            raise r.fail(where, f"network {net} does not exist on host {host}")
        ip = r.typed(opts.get("ip"), _join(where, "ip"), str, "an IPv4 address string")
        ip6 = r.typed(opts.get("ip6"), _join(where, "ip6"), str, "an IPv6 address string")
        _check_family(r, ip, 4, _join(where, "ip"))
        _check_family(r, ip6, 6, _join(where, "ip6"))
        mac = r.typed(opts.get("mac"), _join(where, "mac"), str, "a MAC address string")
        aliases = r.typed(opts.get("aliases"), _join(where, "aliases"), list, "a list of names") or []
        names = [r.typed(a, _join(_join(where, "aliases"), i), str, "a name") for i, a in enumerate(aliases)]
        requests.append(r.at(where, EndpointRequest.parse, net, ip, mac, aliases=names, ip6=ip6))
    return requests


def _check_family(r: _Reader, text: str | None, version: int, path: str) -> None:
    """``ip:`` takes the IPv4 address, ``ip6:`` the IPv6 one: say which key the other family goes in."""
    try:
        addr = ipaddress.ip_address(text) if text else None
    except ValueError:
        return  # not an address at all: EndpointRequest.parse says so
    if addr is not None and addr.version != version:
        other = "ip6" if addr.version == 6 else "ip"
        raise r.fail(path, f"{text} is an IPv{addr.version} address: give it as {other}:")


def _ports(r: _Reader, raw: Any, path: str) -> list[PortMapping]:
    if raw is None:
        return []
    mappings: list[PortMapping] = []
    for i, item in enumerate(r.typed(raw, path, list, "a list of port mappings")):
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        text = r.typed(text, _join(path, i), str, 'a port mapping string like "8080:80"')
        mappings.extend(r.at(_join(path, i), parse_publish, text))
    return mappings


def _command(r: _Reader, raw: Any, path: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        try:
            return tuple(shlex.split(raw))
        except ValueError as e:
            raise r.fail(path, f"cannot split command: {e}") from e
    items = r.typed(raw, path, list, "a string or a list of strings")
    return tuple(r.typed(a, _join(path, i), (str, int, float), "a string") and str(a) for i, a in enumerate(items))
