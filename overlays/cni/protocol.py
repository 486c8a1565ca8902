"""The CNI protocol, as a pure function: (environment, stdin bytes) -> (stdout bytes, exit code).

What containernetworking/cni's ``pkg/skel`` does for Go plugins, for spec 1.1.0 and
1.0.0 (and configurations of 0.4.0): the ``CNI_*`` variables each verb requires, the
configuration on stdin, the version the configuration speaks, and the answer in
that version's shape. Errors are the spec's JSON on **stdout** (libcni reads them
there) with its well-known codes, and a message that names the problem; the exit
code is then 1. The work itself is a ``Backend`` (``plugin.EnginePlugin``, or a
test's), opened only once the request is known to be valid: VERSION and bad input
never load the engine. The value types are NamedTuples: a frozen dataclass costs
about 0.8 ms to create at import, a NamedTuple a tenth of that, and the plugin is a
process per verb.

    code  meaning (spec)                       code  meaning (ours, 100+)
    1     incompatible CNI version             100   any other overlays error, or a bug
    4     bad or missing CNI_* variables       101   not found (network, namespace)
    6     stdin is not a JSON object           102   conflict (name or address taken)
    7     invalid network configuration        103   address pool exhausted
    11    try again later (store busy)         104   not permitted (needs root)
    50    STATUS: cannot serve ADD now         105   the kernel refused a step
                                               106   asks for what overlays cannot do yet
                                               107   exec'd outside the network's host namespace
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from overlays.errors import (
    Conflict,
    Exhausted,
    InvalidSpec,
    KernelError,
    NotFound,
    NotPermitted,
    OverlaysError,
    StoreError,
)

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

INCOMPATIBLE_VERSION, INVALID_ENVIRONMENT, DECODING_FAILURE, INVALID_CONFIG = 1, 4, 6, 7
UNKNOWN_CONTAINER, TRY_AGAIN, NOT_AVAILABLE = 3, 11, 50
OURS, NOT_FOUND, CONFLICT, EXHAUSTED, NOT_PERMITTED, KERNEL, UNSUPPORTED, WRONG_HOST = range(100, 108)

# The variables each verb needs (spec, section 2); CNI_ARGS and CNI_PATH are optional elsewhere.
REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
PARAMETERS = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}  # the verbs that came with a spec version
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # container ids and network names (spec, section 2)
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
IFNAME_MAX = 15

Json = dict[str, Any]
Warn = Callable[[str], None]


class CniError(Exception):
    """An error the runtime gets as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def as_json(self, version: str) -> Json:
        doc: Json = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return doc


class Request(NamedTuple):
    """One valid invocation: the verb, the attachment's parameters and the configuration."""

    command: str
    version: str
    config: Json
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = MappingProxyType({})
    path: tuple[str, ...] = ()

    @property
    def network(self) -> str:
        return str(self.config["name"])


class Interface(NamedTuple):
    name: str
    mac: str = ""
    sandbox: str = ""  # the CNI_NETNS path for an interface inside the container, "" on the host
    mtu: int = 0


class IPConfig(NamedTuple):
    address: str  # CIDR notation: 10.88.0.5/24
    interface: int  # index into the result's interfaces
    gateway: str | None = None


class Route(NamedTuple):
    dst: str
    gw: str | None = None


class Attachment(NamedTuple):
    """What an ADD made, for the result: interfaces, addresses, routes and DNS."""

    interfaces: tuple[Interface, ...]
    ips: tuple[IPConfig, ...]
    routes: tuple[Route, ...] = ()
    dns: Mapping[str, Any] = MappingProxyType({})


class Backend(Protocol):
    """What carries out the verbs (``plugin.EnginePlugin``)."""

    def add(self, req: Request) -> Attachment: ...
    def delete(self, req: Request) -> None: ...
    def check(self, req: Request) -> None: ...
    def gc(self, req: Request, valid: Sequence[tuple[str, str]]) -> None: ...
    def status(self, req: Request) -> None: ...
    def close(self) -> None: ...


OpenBackend = Callable[[Request, Warn], Backend]


# -- parsing ------------------------------------------------------------------


def version_key(version: str) -> tuple[int, int, int]:
    m = _VERSION_RE.match(version)
    if not m:
        raise CniError(DECODING_FAILURE, f"cniVersion {version!r} is not a version like 1.0.0")
    return int(m[1]), int(m[2]), int(m[3])


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: ``KEY=VALUE`` pairs separated by semicolons (``IgnoreUnknown=1;IP=10.88.0.5``)."""
    pairs: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {item!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def check_ifname(ifname: str) -> str:
    """What a Linux interface name may be (as pkg/utils.ValidateInterfaceName checks)."""
    if len(ifname) > IFNAME_MAX:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is too long ({len(ifname)} > {IFNAME_MAX})")
    if ifname in (".", "..") or any(c in "/:" or c.isspace() for c in ifname):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is not a valid interface name")
    return ifname


def _environment(env: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND is not set (one of {', '.join(COMMANDS)})")
    if command not in REQUIRED:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    missing = [name for name in REQUIRED[command] if not env.get(name)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"{command}: required environment variables missing: {', '.join(missing)}")
    values = {name: env.get(name, "") for name in PARAMETERS}
    cid = values["CNI_CONTAINERID"]
    if cid and not _ID_RE.match(cid):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID {cid!r} is invalid: use letters, digits, '_', '.' "
                       "and '-', starting with a letter or digit")
    if values["CNI_IFNAME"]:
        check_ifname(values["CNI_IFNAME"])
    return command, values


def _config(stdin: bytes) -> Json:
    try:
        doc = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(DECODING_FAILURE, f"network configuration on stdin is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise CniError(DECODING_FAILURE, "network configuration on stdin is not a JSON object")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, "network configuration has no name")
    if not _ID_RE.match(name):
        raise CniError(INVALID_CONFIG, f"network name {name!r} is invalid: use letters, digits, '_', '.' and '-'")
    return doc


def _version(command: str, config: Json) -> str:
    version = config.get("cniVersion")
    if version is None:
        raise CniError(INCOMPATIBLE_VERSION, f"network configuration {config['name']} has no cniVersion; "
                       f"overlays-cni speaks {', '.join(SUPPORTED_VERSIONS)}")
    if not isinstance(version, str):
        raise CniError(DECODING_FAILURE, f"cniVersion {version!r} is not a string")
    version_key(version)
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported; overlays-cni speaks "
                       f"{', '.join(SUPPORTED_VERSIONS)}")
    needed = MIN_VERSION.get(command)
    if needed and version_key(version) < version_key(needed):
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} does not allow {command} (it needs {needed})")
    return version


def parse_request(env: Mapping[str, str], stdin: bytes) -> Request:
    """The environment and stdin checked as the spec says, or a CniError naming what is wrong."""
    command, values = _environment(env)
    if command == "VERSION":
        return Request(command, _asked_version(stdin), {})
    config = _config(stdin)
    version = _version(command, config)
    return Request(
        command=command,
        version=version,
        config=config,
        container_id=values["CNI_CONTAINERID"],
        netns=values["CNI_NETNS"],
        ifname=values["CNI_IFNAME"],
        args=parse_cni_args(values["CNI_ARGS"]),
        path=tuple(p for p in values["CNI_PATH"].split(":") if p),
    )


def _asked_version(stdin: bytes) -> str:
    """VERSION answers in the version it was asked in (any well-formed one), else the latest."""
    try:
        asked = json.loads(stdin).get("cniVersion") if stdin.strip() else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        asked = None
    return asked if isinstance(asked, str) and _VERSION_RE.match(asked) else LATEST


def valid_attachments(config: Json) -> list[tuple[str, str]]:
    """GC's ``cni.dev/valid-attachments`` (also ``cni.dev/attachments``, as libcni once named it)."""
    raw = config.get("cni.dev/valid-attachments", config.get("cni.dev/attachments", []))
    if not isinstance(raw, list):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments is not a list")
    found = []
    for i, item in enumerate(raw):
        cid = item.get("containerID") if isinstance(item, dict) else None
        ifname = item.get("ifname") if isinstance(item, dict) else None
        if not isinstance(cid, str) or not isinstance(ifname, str):
            raise CniError(INVALID_CONFIG, f"cni.dev/valid-attachments[{i}] needs string containerID and ifname")
        found.append((cid, ifname))
    return found


# -- answers -------------------------------------------------------------------


def render_result(version: str, att: Attachment, prev: Json | None = None) -> Json:
    """The ADD result in ``version``'s shape, after what ``prevResult`` (a plugin before us) holds."""
    prev = prev if isinstance(prev, dict) else {}
    interfaces = list(prev.get("interfaces") or [])
    ips = list(prev.get("ips") or [])
    routes = list(prev.get("routes") or [])
    offset = len(interfaces)
    for itf in att.interfaces:
        doc: Json = {"name": itf.name}
        if itf.mac:
            doc["mac"] = itf.mac
        if itf.mtu and version_key(version) >= (1, 1, 0):  # mtu came with 1.1.0
            doc["mtu"] = itf.mtu
        if itf.sandbox:
            doc["sandbox"] = itf.sandbox
        interfaces.append(doc)
    for ip in att.ips:
        entry: Json = {"interface": ip.interface + offset, "address": ip.address}
        if version_key(version) < (1, 0, 0):  # 0.x results say the family; 1.0.0 dropped it
            entry = {"version": "6" if ":" in ip.address else "4", **entry}
        if ip.gateway:
            entry["gateway"] = ip.gateway
        ips.append(entry)
    routes += [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in att.routes]
    result: Json = {"cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes}
    dns = dict(prev.get("dns") or {}) | dict(att.dns)
    result["dns"] = dns
    return result


def code_for(error: OverlaysError) -> int:
    """Our error tree as CNI codes: a runtime retries on 11, the rest say what kind of problem it is."""
    for kind, code in ((InvalidSpec, INVALID_CONFIG), (NotFound, NOT_FOUND), (Exhausted, EXHAUSTED),
                       (Conflict, CONFLICT), (NotPermitted, NOT_PERMITTED), (KernelError, KERNEL),
                       (StoreError, TRY_AGAIN)):
        if isinstance(error, kind):
            return code
    return OURS


def _encode(doc: Json) -> bytes:
    return json.dumps(doc, indent=2).encode() + b"\n"


def _dispatch(backend: Backend, req: Request) -> bytes:
    if req.command == "ADD":
        return _encode(render_result(req.version, backend.add(req), req.config.get("prevResult")))
    if req.command == "DEL":
        backend.delete(req)
    elif req.command == "CHECK":
        backend.check(req)
    elif req.command == "GC":
        backend.gc(req, valid_attachments(req.config))
    else:
        backend.status(req)
    return b""  # DEL, CHECK, GC and STATUS print nothing on success


def handle(env: Mapping[str, str], stdin: bytes, open_backend: OpenBackend,
           warn: Warn = lambda line: None) -> tuple[bytes, int]:
    """One invocation: what to print on stdout and the exit code. ``warn`` gets lines for stderr."""
    version = LATEST
    try:
        req = parse_request(env, stdin)
        version = req.version
        if req.command == "VERSION":
            return _encode({"cniVersion": req.version, "supportedVersions": list(SUPPORTED_VERSIONS)}), 0
        backend = open_backend(req, warn)
        try:
            return _dispatch(backend, req), 0
        finally:
            backend.close()
    except CniError as e:
        return _encode(e.as_json(version)), 1
    except OverlaysError as e:
        return _encode(CniError(code_for(e), str(e)).as_json(version)), 1
    except Exception as e:  # a bug of ours: the runtime still gets the spec's JSON, with what went wrong
        return _encode(CniError(OURS, f"internal error: {type(e).__name__}: {e}").as_json(version)), 1
