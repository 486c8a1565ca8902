"""Names users give, and the kernel names overlays derives from them.

Users name networks and sandboxes freely (Docker's rules). Kernel interface names
are at most 15 characters, so we derive them: a fixed prefix that marks the object
as ours, the user's name when it fits, otherwise a cut of it plus a short hash so
two long names never collide. Network namespaces are global to the machine, so
their names also carry the engine instance, which keeps two engines (two state
dirs, two host namespaces) from ever touching each other's sandboxes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

try:  # CPython's built-in SHA-1, the same digest: hashlib loads OpenSSL first (~12 ms of every command)
    from _sha1 import sha1  # type: ignore[import-not-found]  # no stubs for the C module
except ImportError:  # another Python
    from hashlib import sha1

from overlays.errors import InvalidSpec

if TYPE_CHECKING:
    from overlays.model.state import IPAddress

IFNAME_MAX = 15
NAME_MAX = 63
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

BRIDGE_PREFIX = "ovb-"
VETH_PREFIX = "ovv-"
VXLAN_PREFIX = "ovx-"
NETNS_PREFIX = "ov-"
OWNER_TAG = "overlays"


# Words the command line gives a meaning of their own: ``run --network none`` is "no network", and
# ``host`` is Docker's "the host's own network", which overlays does not offer under that name.
RESERVED = {"network": {"none": "it means no network (run --network none)", "host": "it means the host's own network"}}


def validate_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid network or sandbox name, else raise InvalidSpec."""
    if not name:
        raise InvalidSpec(f"{kind} name is empty")
    why = RESERVED.get(kind, {}).get(name)
    if why:
        raise InvalidSpec(f"{kind} name {name!r} is reserved: {why}")
    if len(name) > NAME_MAX:
        raise InvalidSpec(f"{kind} name {name!r} is too long ({len(name)} > {NAME_MAX} characters)")
    if not _NAME_RE.match(name):
        raise InvalidSpec(
            f"{kind} name {name!r} is invalid: use letters, digits, '_', '.' and '-',"
            " starting with a letter or digit"
        )
    return name


def short_hash(*parts: str, length: int = 6) -> str:
    """A stable hex digest of ``parts``: the same input always gives the same name."""
    digest: str = sha1("\0".join(parts).encode()).hexdigest()
    return digest[:length]


def _fit(prefix: str, label: str, salt: str) -> str:
    room = IFNAME_MAX - len(prefix)
    if len(label) <= room:
        return prefix + label
    return prefix + label[: room - 6] + "-" + short_hash(salt, label, length=5)


def bridge_name(network: str, instance: str) -> str:
    """Kernel name of a network's bridge, e.g. ``ovb-front``."""
    return _fit(BRIDGE_PREFIX, network, instance)


def vxlan_name(network: str, instance: str) -> str:
    """Kernel name of an overlay network's VXLAN device on one host, e.g. ``ovx-front``."""
    return _fit(VXLAN_PREFIX, network, instance)


def veth_name(sandbox: str, network: str, instance: str) -> str:
    """Host-side name of a sandbox's veth on a network, unique per (sandbox, network)."""
    return VETH_PREFIX + sandbox[:4] + "-" + short_hash(instance, sandbox, network, length=6)


def netns_name(sandbox: str, instance: str) -> str:
    """Name under /run/netns of a sandbox's namespace, e.g. ``ov-1a2b3c-web``."""
    return f"{NETNS_PREFIX}{instance}-{sandbox}"


def owner_alias(instance: str, what: str) -> str:
    """The ifalias we put on every link we create: marks it as ours and says why it exists."""
    return f"{OWNER_TAG}:{instance}:{what}"


def is_ours(alias: str | None, instance: str) -> bool:
    """True if a link's alias says this engine instance created it."""
    return bool(alias) and str(alias).startswith(f"{OWNER_TAG}:{instance}:")


def clean_name(text: str, fallback: str) -> str:
    """``text`` made into a valid name (other characters become '-'), e.g. a hostname or a file's stem."""
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in text).strip("-.")[:NAME_MAX]
    return cleaned or fallback


DERIVED_MAC_PREFIX = "02:6f:"


def endpoint_mac(ip: IPAddress) -> str:
    """A locally administered MAC derived from an address: stable across re-use, so ARP caches stay right."""
    return DERIVED_MAC_PREFIX + ":".join(f"{b:02x}" for b in ip.packed[-4:])


def bridge_mac(network: str, node: str) -> str:
    """The MAC of a network's bridge on one host: pinned, so it never follows a port that leaves.

    Derived from the network and the host (an overlay network has a bridge on every host,
    and those must differ), with a first octet of its own so it never equals an
    endpoint's (``endpoint_mac``).
    """
    digest = short_hash("bridge", network, node, length=8)
    return "02:6e:" + ":".join(digest[i : i + 2] for i in range(0, 8, 2))


def sandbox_ifname(index: int) -> str:
    """Interface name inside a sandbox: eth0 for the first network, eth1 for the next..."""
    return f"eth{index}"
