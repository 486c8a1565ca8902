"""The sandbox that holds one CNI attachment: its name and labels, from (container id, ifname, network).

An attachment is identified by ``(CNI_CONTAINERID, CNI_IFNAME)`` on a network (spec,
section 3). DEL must find its sandbox without reading every sandbox, so the name is
a pure function of that pair. A podman container id is 64 hex digits and a sandbox
name at most 63 characters, so the name keeps the id's first 46 characters (what
``overlays ps`` shows, enough to recognise the container) and ends with a hash of
the whole pair, which keeps two ids that share a prefix, or two interfaces of one
container, apart.

The sandbox also carries the attachment as labels (``Engine.adopt(labels=...)``). DEL
and GC select by them, so a sandbox that merely has a name of this shape (made by
hand), or another network's attachment, is never taken.
"""

from __future__ import annotations

from collections.abc import Mapping

from overlays.model.names import NAME_MAX, short_hash

PREFIX = "cni-"
HASH_LENGTH = 12
ID_ROOM = NAME_MAX - len(PREFIX) - 1 - HASH_LENGTH  # 46
CONTAINER_LABEL, IFNAME_LABEL, NETWORK_LABEL = "cni.containerID", "cni.ifname", "cni.network"


def sandbox_name(container_id: str, ifname: str) -> str:
    """``cni-<container id, cut>-<hash of id and ifname>``: at most 63 characters, a valid sandbox name."""
    return f"{PREFIX}{container_id[:ID_ROOM]}-{short_hash(container_id, ifname, length=HASH_LENGTH)}"


def labels(container_id: str, ifname: str, network: str) -> dict[str, str]:
    """What an attachment's sandbox is labelled with."""
    return {CONTAINER_LABEL: container_id, IFNAME_LABEL: ifname, NETWORK_LABEL: network}


def attachment_of(labelled: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(container id, ifname, network) from a sandbox's labels; None if it is no CNI attachment."""
    cid, ifname, network = (labelled.get(key, "") for key in (CONTAINER_LABEL, IFNAME_LABEL, NETWORK_LABEL))
    return (cid, ifname, network) if cid and ifname and network else None
