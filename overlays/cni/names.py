"""The sandbox that holds one CNI attachment, named from (container id, ifname) alone.

An attachment is identified by ``(CNI_CONTAINERID, CNI_IFNAME)`` (spec, section 3).
DEL and GC must find its sandbox without reading every sandbox, so the name is a
pure function of that pair. A podman container id is 64 hex digits and a sandbox
name at most 63 characters, so the name keeps the id's first 46 characters (what
``overlays ps`` shows, enough to recognise the container) and ends with a hash of
the whole pair, which keeps two ids that share a prefix, or two interfaces of one
container, apart.
"""

from __future__ import annotations

from overlays.model.names import NAME_MAX, short_hash

PREFIX = "cni-"
HASH_LENGTH = 12
ID_ROOM = NAME_MAX - len(PREFIX) - 1 - HASH_LENGTH  # 46


def sandbox_name(container_id: str, ifname: str) -> str:
    """``cni-<container id, cut>-<hash of id and ifname>``: at most 63 characters, a valid sandbox name."""
    return f"{PREFIX}{container_id[:ID_ROOM]}-{short_hash(container_id, ifname, length=HASH_LENGTH)}"


def looks_like_attachment(name: str) -> bool:
    """Whether a sandbox name has the shape ``sandbox_name`` gives (GC considers only those)."""
    head, _, tail = name.rpartition("-")
    return (name.startswith(PREFIX) and len(head) > len(PREFIX) and len(tail) == HASH_LENGTH
            and all(c in "0123456789abcdef" for c in tail))
