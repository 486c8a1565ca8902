"""Links, addresses and routes of one namespace, over one netlink socket.

Two verbs only: ``ensure_*`` (idempotent: an object that exists already is read
back and verified, never blindly recreated) and ``delete_*`` (a missing object is
success). Every failure becomes a KernelError that names the step, the object
and the namespace. This is the only module that imports pyroute2.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from overlays.errors import Conflict, KernelError
from overlays.kernel import netns
from overlays.kernel.rtnl_types import Link

IFF_UP = 1


def _link_from(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind,
        mac=msg.get_attr("IFLA_ADDRESS") or "",
        mtu=msg.get_attr("IFLA_MTU") or 0,
        alias=msg.get_attr("IFLA_IFALIAS"),
        up=bool(msg["flags"] & IFF_UP),
        master=msg.get_attr("IFLA_MASTER"),
    )


class Rtnl:
    """A netlink handle bound to one namespace (``netns=None``: this process's own)."""

    def __init__(self, netns_name: str | None, path: Path | None) -> None:
        self.netns = netns_name
        self.path = path
        sock = netns.netlink_socket(path)
        self._ipr = IPRoute(fileno=sock.detach())

    @classmethod
    def open(cls, netns_name: str | None) -> Rtnl:
        return cls(netns_name, netns.path_of(netns_name) if netns_name else None)

    @classmethod
    def open_path(cls, label: str, path: Path) -> Rtnl:
        return cls(label, path)

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _step(self, operation: str, obj: str) -> Iterator[None]:
        try:
            yield
        except NetlinkError as e:
            raise KernelError(operation, obj, self.netns, os.strerror(e.code) if e.code else str(e)) from e

    # -- reading -----------------------------------------------------------

    def link(self, name: str) -> Link | None:
        try:
            msgs = self._ipr.get_links(ifname=name)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise KernelError("read link", name, self.netns, os.strerror(e.code)) from e
        return _link_from(msgs[0]) if msgs else None

    def links(self) -> list[Link]:
        with self._step("list", "links"):
            return [_link_from(m) for m in self._ipr.get_links()]

    def route_prefixes(self) -> list[ipaddress.IPv4Network]:
        """Every IPv4 destination this namespace routes to (to keep new subnets clear of them)."""
        with self._step("list", "routes"):
            found = []
            for r in self._ipr.get_routes(family=2, table=254):
                dst = r.get_attr("RTA_DST")
                if dst and r["dst_len"] > 0:
                    found.append(ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False))
            for a in self._ipr.get_addr(family=2):
                found.append(ipaddress.IPv4Network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False))
            return found

    def addresses(self) -> list[ipaddress.IPv4Address]:
        """Every IPv4 address of this namespace (a published port's host IP must be one)."""
        with self._step("list", "addresses"):
            return [
                ipaddress.IPv4Address(a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"))
                for a in self._ipr.get_addr(family=2)
            ]

    def has_default_route(self) -> bool:
        with self._step("list", "routes"):
            return any(r["dst_len"] == 0 for r in self._ipr.get_routes(family=2, table=254))

    # -- ensure ------------------------------------------------------------

    def _require_ours(self, link: Link, kind: str, alias: str) -> None:
        if link.kind != kind or link.alias != alias:
            raise Conflict(
                f"link {link.name} in {self.netns or 'the host namespace'} exists and is not ours"
                f" (kind {link.kind}, alias {link.alias!r})"
            )

    def ensure_bridge(self, name: str, alias: str, mtu: int) -> None:
        existing = self.link(name)
        if existing:
            self._require_ours(existing, "bridge", alias)
        else:
            with self._step("create bridge", name):
                self._ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
                # The kernel ignores IFLA_IFALIAS on RTM_NEWLINK: tag (and bring up) in one set.
                self._ipr.link("set", index=self._need(name).index, ifalias=alias, state="up")
        self.ensure_up(name)

    def ensure_veth(
        self, name: str, alias: str, mtu: int, peer: str, peer_netns: Path, peer_mac: str
    ) -> None:
        """A veth pair whose peer is created straight inside ``peer_netns`` (no move, no rename)."""
        existing = self.link(name)
        if existing:
            self._require_ours(existing, "veth", alias)
            return
        fd = os.open(str(peer_netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with self._step("create veth", f"{name} (peer {peer})"):
                self._ipr.link(
                    "add", ifname=name, kind="veth", mtu=mtu,
                    peer={"ifname": peer, "net_ns_fd": fd, "mtu": mtu, "address": peer_mac},
                )
        finally:
            os.close(fd)
        with self._step("tag veth", name):
            self._ipr.link("set", index=self._need(name).index, ifalias=alias)

    def ensure_port(self, name: str, bridge: str) -> None:
        """``name`` is a port of ``bridge`` and up."""
        link, br = self._need(name), self._need(bridge)
        if link.master != br.index or not link.up:
            with self._step("attach to bridge", f"{name} -> {bridge}"):
                self._ipr.link("set", index=link.index, master=br.index, state="up")

    def ensure_up(self, name: str) -> None:
        link = self._need(name)
        if not link.up:
            with self._step("bring up", name):
                self._ipr.link("set", index=link.index, state="up")

    def ensure_address(self, name: str, ip: str, prefixlen: int) -> None:
        link = self._need(name)
        with self._step("read addresses of", name):
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in self._ipr.get_addr(index=link.index)}
        if (ip, prefixlen) in have:
            return
        with self._step("add address", f"{ip}/{prefixlen} on {name}"):
            self._ipr.addr("add", index=link.index, address=ip, prefixlen=prefixlen)

    def ensure_default_route(self, gateway: str) -> None:
        if self.has_default_route():
            return
        with self._step("add default route", f"via {gateway}"):
            self._ipr.route("add", dst="0.0.0.0/0", gateway=gateway)

    # -- delete ------------------------------------------------------------

    def delete_link(self, name: str) -> None:
        link = self.link(name)
        if link is None:
            return
        try:
            self._ipr.link("del", index=link.index)
        except NetlinkError as e:
            if e.code not in (errno.ENODEV, errno.ENOENT):
                raise KernelError("delete link", name, self.netns, os.strerror(e.code)) from e

    def _need(self, name: str) -> Link:
        link = self.link(name)
        if link is None:
            raise KernelError("find link", name, self.netns, "no such device")
        return link
