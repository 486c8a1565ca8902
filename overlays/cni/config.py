"""The plugin's own configuration, from the conflist and the runtime's capability arguments.

Our keys in the plugin object, written by ``overlays cni install`` from the engine
that ran it, so the plugin opens the same state as the CLI:

    {"type": "overlays-cni", "stateDir": "/var/lib/overlays", "store": null, "node": "h1",
     "hostNetns": "h1", "capabilities": {"portMappings": true, "ips": true, "mac": true, "aliases": true}}

The network is the configuration's ``name``. What a runtime asks for per container
arrives as ``runtimeConfig`` (the capabilities declared) or in ``CNI_ARGS`` (``IP=``,
``MAC=``, as podman sends a single static address); ``runtimeConfig`` wins.
Everything is checked here, before the engine is opened: bad input is code 7 (or 4
for CNI_ARGS) with a message naming the key.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, NamedTuple

from overlays.cni.protocol import INVALID_CONFIG, INVALID_ENVIRONMENT, CniError, Request

PLUGIN_TYPE = "overlays-cni"
CAPABILITIES = ("portMappings", "ips", "mac", "aliases")
# CNI_ARGS keys runtimes send that we read or may ignore; others are an error unless IgnoreUnknown is set.
KNOWN_ARGS = {"IgnoreUnknown", "IP", "MAC", "K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID",
              "K8S_POD_UID"}
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
PROTOCOLS = ("tcp", "udp", "sctp")


class Publish(NamedTuple):
    """One ``portMappings`` entry: host port (on ``host_ip``, "" for every address) to container port."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def __str__(self) -> str:
        on = f"{self.host_ip}:" if self.host_ip else ""
        return f"{on}{self.host_port}->{self.container_port}/{self.protocol}"


class PluginConf(NamedTuple):
    """Which engine holds the network, and what this container asks for on it."""

    network: str
    state_dir: str | None = None
    store: str | None = None
    node: str | None = None
    host_netns: str | None = None
    ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    mac: str | None = None
    ports: tuple[Publish, ...] = ()
    aliases: tuple[str, ...] = ()
    dns: dict[str, Any] | None = None


def _optional_str(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CniError(INVALID_CONFIG, f"{key} must be a string, not {value!r}")
    return value


def _ip(where: str, text: object, code: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address, with or without a prefix length (the ``ips`` convention writes 10.88.0.5/24)."""
    if not isinstance(text, str):
        raise CniError(code, f"{where}: {text!r} is not an IP address")
    try:
        return ipaddress.ip_interface(text).ip
    except ValueError:
        raise CniError(code, f"{where}: {text!r} is not an IP address") from None


def _mac(where: str, text: object, code: int) -> str:
    """A unicast MAC outside overlays' own derived block (as the engine takes them), in lower case."""
    from overlays.errors import InvalidSpec
    from overlays.model.specs import parse_mac

    if not isinstance(text, str) or not _MAC_RE.match(text):
        raise CniError(code, f"{where}: {text!r} is not a MAC address like 02:42:ac:11:00:02")
    try:
        return parse_mac(where, text)
    except InvalidSpec as e:
        raise CniError(code, str(e)) from None


def _port(where: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise CniError(INVALID_CONFIG, f"{where}: {value!r} is not a port number (1-65535)")
    return value


def _ports(raw: object) -> tuple[Publish, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CniError(INVALID_CONFIG, "runtimeConfig.portMappings is not a list")
    found = []
    for i, item in enumerate(raw):
        where = f"runtimeConfig.portMappings[{i}]"
        if not isinstance(item, dict):
            raise CniError(INVALID_CONFIG, f"{where} is not an object")
        protocol = str(item.get("protocol") or "tcp").lower()
        if protocol not in PROTOCOLS:
            raise CniError(INVALID_CONFIG, f"{where}.protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        host_ip = item.get("hostIP") or ""
        if host_ip:
            host_ip = str(_ip(f"{where}.hostIP", host_ip, INVALID_CONFIG))
        found.append(Publish(_port(f"{where}.hostPort", item.get("hostPort")),
                             _port(f"{where}.containerPort", item.get("containerPort")), protocol, host_ip))
    return tuple(found)


def _aliases(raw: object, network: str) -> tuple[str, ...]:
    """podman passes ``{network: [names]}``; only this network's names are ours."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise CniError(INVALID_CONFIG, "runtimeConfig.aliases is not an object of network: [names]")
    names = raw.get(network) or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CniError(INVALID_CONFIG, f"runtimeConfig.aliases.{network} is not a list of names")
    return tuple(names)


def _static_ips(runtime: dict[str, Any], args: dict[str, str]) -> tuple[ipaddress.IPv4Address |
                                                                        ipaddress.IPv6Address, ...]:
    raw = runtime.get("ips")
    if raw is not None:
        if not isinstance(raw, list):
            raise CniError(INVALID_CONFIG, "runtimeConfig.ips is not a list")
        return tuple(_ip(f"runtimeConfig.ips[{i}]", v, INVALID_CONFIG) for i, v in enumerate(raw))
    if args.get("IP"):
        return tuple(_ip("CNI_ARGS IP", v, INVALID_ENVIRONMENT) for v in args["IP"].split(","))
    return ()


def _check_args(args: dict[str, str]) -> None:
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown and args.get("IgnoreUnknown", "").lower() not in ("1", "true"):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: unknown keys {', '.join(unknown)} (set IgnoreUnknown=1 "
                       "to pass keys other plugins read)")


def parse(req: Request) -> PluginConf:
    """The plugin configuration of ``req``, checked."""
    doc = req.config
    runtime = doc.get("runtimeConfig") or {}
    if not isinstance(runtime, dict):
        raise CniError(INVALID_CONFIG, "runtimeConfig is not an object")
    args = dict(req.args)
    _check_args(args)
    mac_raw = runtime.get("mac") or args.get("MAC")
    mac_code = INVALID_CONFIG if runtime.get("mac") else INVALID_ENVIRONMENT
    dns = doc.get("dns")
    if dns is not None and not isinstance(dns, dict):
        raise CniError(INVALID_CONFIG, "dns is not an object")
    return PluginConf(
        network=req.network,
        state_dir=_optional_str(doc, "stateDir"),
        store=_optional_str(doc, "store"),
        node=_optional_str(doc, "node"),
        host_netns=_optional_str(doc, "hostNetns"),
        ips=_static_ips(runtime, args),
        mac=_mac("runtimeConfig.mac" if runtime.get("mac") else "CNI_ARGS MAC", mac_raw, mac_code) if mac_raw
        else None,
        ports=_ports(runtime.get("portMappings")),
        aliases=_aliases(runtime.get("aliases"), req.network),
        dns=dns,
    )
