"""nftables' own change notifications: who committed which transaction, touching which tables.

Design note. Every committed ruleset transaction is announced on the netfilter netlink
socket's multicast group NFNLGRP_NFTABLES: one message per object it added or deleted
(a table, chain, rule, set, element...), each naming its table in attribute 1, then one
NFT_MSG_NEWGEN that ends the transaction and names the thread that committed it
(NFTA_GEN_PROC_PID and NFTA_GEN_PROC_NAME, what ``nft monitor`` prints as "new generation
N by process PID (NAME)"). ``Changes`` is a socket subscribed to that group inside one
namespace; ``read`` turns what arrived into one ``Commit`` per transaction. A socket keeps
its namespace alive, so its owner closes it once the namespace is no longer at its path
(``current``).

Our own writes name themselves: ``nft.apply`` runs each script with its thread named
``nft.WRITER``, so a commit of any overlays process (a command, doctor, the agent) is told
from a user's ``nft`` or a firewall daemon's without a time window or a guess.

Notifications can be lost: a ``flush ruleset`` of a large ruleset is thousands of messages,
and a socket whose buffer fills gets ENOBUFS instead. ``read`` says so (``LOST``): the
reader must then look at the ruleset itself.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from overlays.kernel import netns
from overlays.kernel.nl import Attrs

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
RCVBUF = 4 << 20  # room for a flush of a few thousand rules before the kernel drops what follows
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFTA_TABLE = 1  # the table's name in every object message (NFTA_TABLE_NAME, NFTA_SET_TABLE, ...)
NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME = 2, 3
FAMILIES = {"ip": 2, "ip6": 10, "inet": 1, "arp": 3, "bridge": 7, "netdev": 5}
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence number, port id
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, resource id
_BE32 = struct.Struct("!I")
_RECV_SIZE = 1 << 16

Table = tuple[int, str]  # (NFPROTO family number, name)


@dataclass(frozen=True)
class Commit:
    """One committed transaction: the tables it touched and the thread that committed it (if the kernel says)."""

    tables: frozenset[Table]
    pid: int | None
    process: str | None


LOST = None  # what ``read`` returns when the kernel dropped notifications (ENOBUFS)


class Parser:
    """Messages in, commits out: a transaction's object messages are held until its NEWGEN arrives."""

    def __init__(self) -> None:
        self._open: set[Table] = set()

    def reset(self) -> None:
        self._open = set()

    def feed(self, data: bytes) -> list[Commit]:
        commits = []
        at = 0
        while at + _HEADER.size <= len(data):
            length, kind = _HEADER.unpack_from(data, at)[:2]
            if length < _HEADER.size or at + length > len(data):
                break
            body = at + _HEADER.size
            if kind >> 8 == NFNL_SUBSYS_NFTABLES and body + _NFGEN.size <= at + length:
                family = _NFGEN.unpack_from(data, body)[0]
                attrs = Attrs.parse(data, body + _NFGEN.size, at + length)
                if kind & 0xFF == NFT_MSG_NEWGEN:
                    pid = attrs.blob(NFTA_GEN_PROC_PID)
                    commits.append(Commit(frozenset(self._open), _BE32.unpack(pid)[0] if pid and len(pid) == 4
                                          else None, attrs.text(NFTA_GEN_PROC_NAME)))
                    self._open = set()
                else:
                    table = attrs.text(NFTA_TABLE)
                    if table is not None:
                        self._open.add((family, table))
            at += (length + 3) & ~3
        return commits


class Changes:
    """A netfilter netlink socket inside one namespace, subscribed to nftables' notifications."""

    def __init__(self, netns_path: Path | None) -> None:
        self.path = netns_path
        self.identity, self._sock = netns.run_in(netns_path, _subscribed)
        self._parser = Parser()

    def fileno(self) -> int:
        return self._sock.fileno()

    def current(self) -> bool:
        """Whether the namespace it listens in is still the one at its path (else close it: it holds it alive)."""
        if self.path is None:
            return True
        try:
            return netns.identity(self.path) == self.identity
        except OSError:
            return False

    def read(self, timeout: float, wake: int | None = None) -> list[Commit] | None:
        """The transactions committed since the last read, waiting up to ``timeout`` s for one (or for the
        descriptor ``wake`` to be readable); LOST if the kernel dropped some (look at the ruleset then)."""
        commits: list[Commit] = []
        wait = timeout
        mine = self._sock.fileno()
        watched = [mine] if wake is None else [mine, wake]
        while True:
            if mine not in select.select(watched, [], [], wait)[0]:
                return commits
            wait = 0.0
            try:
                data = self._sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return commits
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self._parser.reset()
                self._drain()
                return LOST
            commits += self._parser.feed(data)

    def _drain(self) -> None:
        """After an overflow: what is queued is the rest of what we lost part of."""
        while True:
            try:
                self._sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise

    def close(self) -> None:
        self._sock.close()


def _subscribed() -> tuple[netns.Identity, socket.socket]:
    """Made on a thread inside the namespace: the socket, and which namespace that is."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:  # without CAP_NET_ADMIN: what rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        return netns.identity("/proc/thread-self/ns/net"), sock
    except BaseException:
        sock.close()
        raise
