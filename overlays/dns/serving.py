"""Serving queries: each local sandbox's UDP and TCP sockets, the answer cache, the host's resolvers.

The socket a query arrives on names the sandbox that asks (it lives in that sandbox's
namespace and nowhere else), and so the scope of its answer: no source address is
trusted or even looked at. The sockets are steered ones where the kernel allows (port
53 of the sandbox stays free, see kernel/bpf.py): their UDP answers leave through the
sandbox's raw socket, from 127.0.0.11:53.

Answer cache. What to do with a query depends only on its bytes after the ID and on
the asker's scope (and the table), so it is kept, keyed by both: our answer, reused with
the new ID spliced in, or the decision to forward (which saves decoding the question
again). Any change of the names table empties it. Forwarded *answers* are never kept:
their TTLs are the upstream's business.
"""

from __future__ import annotations

import functools
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from overlays.dns import answers
from overlays.dns.forward import Forwarder
from overlays.dns.loop import READ, WRITE, Loop
from overlays.dns.names import NamesTable, Scope
from overlays.kernel import bpf, resolvconf
from overlays.kernel.netns import Identity
from overlays.kernel.sockets import Listeners

CACHE_MAX = 8192
TCP_IDLE = 10.0  # seconds an idle TCP connection from a sandbox stays open (RFC 7766 suggests some seconds)
TCP_MAX = 512  # connections from sandboxes at once; the oldest idle one goes when a new one comes
DNS_PORT = 53
RECV_BATCH = 64  # datagrams read from one socket per wake-up, so one busy sandbox cannot starve the others


@dataclass(eq=False)
class LocalSandbox:
    """A sandbox of this host: its two listening sockets, inside its namespace."""

    name: str
    netns: str
    inode: Identity  # which namespace it was, when its sockets were made
    listeners: Listeners
    conns: set[TcpConn] = field(default_factory=set)

    @property
    def udp(self) -> socket.socket:
        return self.listeners.udp

    @property
    def tcp(self) -> socket.socket:
        return self.listeners.tcp


@dataclass(eq=False)
class TcpConn:
    """A TCP connection from a sandbox: length-prefixed queries in, answers out."""

    sock: socket.socket
    box: LocalSandbox
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    last: float = field(default_factory=time.monotonic)
    writing: bool = False


class HostResolvers:
    """The host's upstream resolvers, re-read when its resolv.conf changes (checked once a second).

    ``changed`` is called with the new ones after each re-read (the sandboxes' resolv.conf follows).
    """

    def __init__(self, host_netns: str | None, log: Callable[[str], None],
                 changed: Callable[[resolvconf.Upstreams], None] | None = None) -> None:
        self.host_netns = host_netns
        self.log = log
        self.changed = changed
        self._checked = 0.0
        self._stamp: tuple[float, ...] = ()
        self.current = resolvconf.host_upstreams(host_netns)

    def _files(self) -> list[Path]:
        files = [resolvconf.ETC / "resolv.conf", resolvconf.SYSTEMD_RESOLVED]
        if self.host_netns:
            files.append(resolvconf.ETC / "netns" / self.host_netns / "resolv.conf")
        return files

    def servers(self) -> tuple[str, ...]:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            stamp = tuple(_mtime(p) for p in self._files())
            if stamp != self._stamp:
                self._stamp = stamp
                self.current = resolvconf.host_upstreams(self.host_netns)
                self.log(f"upstream resolvers: {', '.join(self.current.servers) or 'none'} "
                         f"(from {self.current.source})")
                if self.changed is not None:
                    self.changed(self.current)
        return self.current.servers


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


class QueryService:
    """Answers queries from the local sandboxes' sockets; forwards the rest through ``forwarder``."""

    def __init__(self, loop: Loop, table: NamesTable, forwarder: Forwarder,
                 resolvers: HostResolvers, cache: bool = True) -> None:
        self.loop = loop
        self.table = table
        self.forwarder = forwarder
        self.resolvers = resolvers
        self.use_cache = cache
        self._cache: dict[tuple[Scope, bool, bytes], bytes | answers.Forward] = {}
        self._generation = -1
        self.conns: dict[TcpConn, None] = {}  # in order of last use: the first is the idlest
        self.stats = {"queries": 0, "cached": 0, "tcp_queries": 0}

    # -- sockets of a sandbox ---------------------------------------------------------

    def watch(self, box: LocalSandbox) -> None:
        self.loop.register(box.udp, READ, lambda events: self._on_udp(box))
        self.loop.register(box.tcp, READ, lambda events: self._on_accept(box))

    def forget(self, box: LocalSandbox) -> None:
        for conn in list(box.conns):
            self._close_conn(conn)
        for sock in (box.udp, box.tcp):
            self.loop.unregister(sock)
        box.listeners.close()

    # -- answering --------------------------------------------------------------------

    def respond(self, box: LocalSandbox, data: bytes, tcp: bool, reply: Callable[[bytes], None]) -> None:
        """Answer one query from ``box``: from the cache, from the table, or through the forwarder."""
        self.stats["queries"] += 1
        scope = self.table.scope(box.name)
        if self._generation != self.table.generation:
            self._cache.clear()
            self._generation = self.table.generation
        key = (scope, tcp, data[2:])
        known = self._cache.get(key) if self.use_cache else None
        if known is None:
            result = answers.answer(data, self.table, scope, None if tcp else answers.UDP_MAX)
            if result is None:
                return
            known = result[2:] if isinstance(result, bytes) else result
            if self.use_cache:
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
                self._cache[key] = known
        else:
            self.stats["cached"] += 1
        if isinstance(known, bytes):
            reply(data[:2] + known)
        else:
            self.forwarder.forward(data, known.servers or self.resolvers.servers(), reply, tcp=tcp)

    def _on_udp(self, box: LocalSandbox) -> None:
        sock, raw = box.udp, box.listeners.raw
        for _ in range(RECV_BATCH):
            try:
                data, peer = sock.recvfrom(4096)
            except BlockingIOError:
                return
            except OSError:
                return  # the socket was closed by an unregister in this same round

            def reply(out: bytes, peer: tuple[str, int] = peer) -> None:
                if raw is not None:  # steered: from 127.0.0.11:53, where the asker sent its query
                    bpf.udp_reply(raw, resolvconf.DNS_ADDRESS, DNS_PORT, peer, out)
                else:
                    sock.sendto(out, peer)

            try:
                self.respond(box, data, False, reply)
            except OSError:
                continue  # the asker went away between its query and our answer

    # -- TCP --------------------------------------------------------------------------

    def _on_accept(self, box: LocalSandbox) -> None:
        try:
            sock, _ = box.tcp.accept()
        except OSError:
            return
        sock.setblocking(False)
        if len(self.conns) >= TCP_MAX:
            self._close_conn(next(iter(self.conns)))
        conn = TcpConn(sock, box)
        box.conns.add(conn)
        self.conns[conn] = None
        self.loop.register(sock, READ, lambda events: self._on_conn(conn, events))

    def _on_conn(self, conn: TcpConn, events: int) -> None:
        if events & WRITE:
            self._flush(conn)
        if not events & READ:
            return
        try:
            chunk = conn.sock.recv(65537)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close_conn(conn)
            return
        self._touch(conn)
        conn.inbuf += chunk
        while len(conn.inbuf) >= 2:
            size = struct.unpack("!H", conn.inbuf[:2])[0]
            if len(conn.inbuf) < 2 + size:
                break
            data = bytes(conn.inbuf[2:2 + size])
            del conn.inbuf[:2 + size]
            self.stats["tcp_queries"] += 1
            self.respond(conn.box, data, True, functools.partial(self._send, conn))

    def _send(self, conn: TcpConn, out: bytes) -> None:
        if conn.sock.fileno() < 0:
            return
        conn.outbuf += struct.pack("!H", len(out)) + out
        self._flush(conn)

    def _flush(self, conn: TcpConn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close_conn(conn)
            return
        del conn.outbuf[:sent]
        if conn.writing != bool(conn.outbuf):  # wait for room only while something is left to send
            conn.writing = bool(conn.outbuf)
            self.loop.modify(conn.sock, READ | (WRITE if conn.writing else 0), lambda ev: self._on_conn(conn, ev))

    def _touch(self, conn: TcpConn) -> None:
        conn.last = time.monotonic()
        self.conns.pop(conn, None)
        self.conns[conn] = None

    def close_idle(self, now: float) -> None:
        for conn in list(self.conns):
            if now - conn.last < TCP_IDLE:
                break
            self._close_conn(conn)

    def _close_conn(self, conn: TcpConn) -> None:
        self.conns.pop(conn, None)
        conn.box.conns.discard(conn)
        self.loop.unregister(conn.sock)
        conn.sock.close()
