"""Names users give, and the kernel names overlays derives from them.

Users name networks and sandboxes freely (Docker's rules). Kernel interface names
are at most 15 characters, so we derive them: a fixed prefix that marks the object
as ours, the user's name when it fits, otherwise a cut of it plus a short hash so
two long names never collide. Network namespaces are global to the machine, so
their names also carry the engine instance, which keeps two engines (two state
dirs, two host namespaces) from ever touching each other's sandboxes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
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
OVERLAY_BRIDGE_PREFIX = "ovn-"
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


def _fitted(prefix: str, label: str, salt: str) -> Iterator[str]:
    """``prefix + label`` if it fits, else a cut of the label and a short hash; then other hashes, for ever.

    A name is only a candidate: the engine takes the first one no other object of the
    host holds (the store records who holds which), so two objects never share one.
    """
    room = IFNAME_MAX - len(prefix)
    if len(label) <= room:
        yield prefix + label
    else:
        yield prefix + label[: room - 6] + "-" + short_hash(salt, label, length=5)
    for n in itertools.count(1):
        yield prefix + label[: room - 6] + "-" + short_hash(salt, label, str(n), length=5)


def bridge_names(network: str, instance: str) -> Iterator[str]:
    """Candidate kernel names of a network's bridge on one host, e.g. ``ovb-front``."""
    return _fitted(BRIDGE_PREFIX, network, instance)


def bridge_name(network: str, instance: str) -> str:
    """The first candidate: the name a network's bridge gets unless another network holds it."""
    return next(bridge_names(network, instance))


def overlay_bridge_names(network: str) -> Iterator[str]:
    """Candidate names of an overlay network's bridge, the same on every host, e.g. ``ovn-mesh``: a prefix of
    their own, so they never meet a host's own bridges."""
    return _fitted(OVERLAY_BRIDGE_PREFIX, network, "overlay")


def vxlan_name(bridge: str) -> str:
    """The VXLAN device beside an overlay network's bridge, e.g. ``ovx-mesh``: unique as the bridge's name is."""
    return VXLAN_PREFIX + bridge[len(BRIDGE_PREFIX):]


def veth_names(sandbox: str, network: str, instance: str) -> Iterator[str]:
    """Candidate host-side names of a sandbox's veth on a network, e.g. ``ovv-web-1a2b3c``."""
    yield VETH_PREFIX + sandbox[:4] + "-" + short_hash(instance, sandbox, network, length=6)
    for n in itertools.count(1):
        yield VETH_PREFIX + sandbox[:4] + "-" + short_hash(instance, sandbox, network, str(n), length=6)


def veth_name(sandbox: str, network: str, instance: str) -> str:
    """The first candidate: the name a sandbox's veth gets unless another endpoint of the host holds it."""
    return next(veth_names(sandbox, network, instance))


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
