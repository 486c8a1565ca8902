"""Forwarding: names that are not ours go to upstream resolvers, without blocking anyone.

Every forwarded query gets a socket of its own, made in the *host* namespace (so the
host's routes, its loopback stub resolver and its firewall apply, as for aardvark-dns,
which runs there) and connected to one upstream. The query's bytes go out unchanged and
the answer's come back unchanged: the asker's ID, EDNS options and DNSSEC bits all pass
through, and nothing is re-encoded. An answer is taken only from that upstream (the
connected socket filters the source) and with the asker's ID; the socket is closed after
one use, so each query has a fresh source port and a late or spoofed answer finds no one.

An upstream that refuses (ICMP port unreachable), cannot be reached or stays silent for
``timeout`` seconds is skipped for the next one; when all have failed the asker gets
SERVFAIL. A query that came over TCP is forwarded over TCP (a truncated UDP answer
makes the asker's resolver retry over TCP, and then it reaches upstream the same way).

All sockets are non-blocking and driven by the server's event loop (one epoll): a slow upstream holds
only its own queries. UDP sockets are made in batches (one namespace entry for many) and
each is used once.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from overlays.dns import answers
from overlays.dns.loop import READ, WRITE, Loop
from overlays.errors import KernelError
from overlays.kernel import sockets

Reply = Callable[[bytes], None]
Log = Callable[[str], None]
BATCH = 32
MAX_PENDING = 4096  # forwarded queries in flight at once; past that, SERVFAIL at once (and no fd exhaustion)
DNS_PORT = 53


@dataclass(eq=False)
class _Query:
    data: bytes
    servers: tuple[str, ...]
    reply: Reply
    tcp: bool
    tried: int = 0
    sock: socket.socket | None = None
    inbuf: bytearray = field(default_factory=bytearray)
    done: bool = False


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class Forwarder:
    def __init__(self, loop: Loop, host_path: Path | None, timeout: float = 2.0,
                 log: Log | None = None) -> None:
        self.loop = loop
        self.host_path = host_path
        self.timeout = timeout
        self.log = log or (lambda line: None)
        self._spare: dict[socket.AddressFamily, list[socket.socket]] = {}
        self._deadlines: list[tuple[float, int, _Query, int]] = []
        self._seq = itertools.count()
        self.pending = 0
        self.stats = {"forwarded": 0, "answered": 0, "servfail": 0, "upstream_failures": 0}

    # -- the way in -----------------------------------------------------------------

    def forward(self, data: bytes, servers: tuple[str, ...], reply: Reply, tcp: bool = False) -> None:
        """Send ``data`` to the first of ``servers`` that answers; ``reply`` gets the answer (or SERVFAIL)."""
        self.stats["forwarded"] += 1
        query = _Query(data, servers, reply, tcp)
        if self.pending >= MAX_PENDING:
            query.done = True  # never counted as pending
            self._fail(query)
            return
        self.pending += 1
        self._try_next(query)

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float) -> None:
        """Give up on attempts whose time is over: the next upstream, or SERVFAIL."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, query, attempt = heapq.heappop(self._deadlines)
            if not query.done and query.tried == attempt:
                self.stats["upstream_failures"] += 1
                self._drop_socket(query)
                self._try_next(query)

    def close(self) -> None:
        for spare in self._spare.values():
            for sock in spare:
                sock.close()
        self._spare.clear()
        for _, _, query, _ in self._deadlines:
            self._drop_socket(query)
        self._deadlines.clear()

    # -- attempts -------------------------------------------------------------------

    def _try_next(self, query: _Query) -> None:
        while query.tried < len(query.servers):
            server = query.servers[query.tried]
            query.tried += 1
            try:
                self._start(query, server)
            except (OSError, KernelError) as e:
                self.stats["upstream_failures"] += 1
                self.log(f"forward to {server}: {e}")
                self._drop_socket(query)
                continue
            deadline = time.monotonic() + self.timeout
            heapq.heappush(self._deadlines, (deadline, next(self._seq), query, query.tried))
            return
        self._fail(query)

    def _start(self, query: _Query, server: str) -> None:
        if query.tcp:
            query.inbuf.clear()
            query.sock = sockets.tcp_client(self.host_path, server, DNS_PORT)
            self.loop.register(query.sock, WRITE, lambda events: self._on_tcp(query, events))
            return
        query.sock = self._fresh(_family(server))
        query.sock.connect((server, DNS_PORT))
        query.sock.send(query.data)
        self.loop.register(query.sock, READ, lambda events: self._on_udp(query))

    def _fresh(self, family: socket.AddressFamily) -> socket.socket:
        spare = self._spare.setdefault(family, [])
        if not spare:
            spare.extend(sockets.udp_sockets(self.host_path, family, BATCH))
        return spare.pop()

    def _on_udp(self, query: _Query) -> None:
        assert query.sock is not None
        try:
            data = query.sock.recv(65535)
        except BlockingIOError:
            return
        except OSError as e:  # ECONNREFUSED: nothing listens there; try the next one now
            self._upstream_failed(query, e)
            return
        if len(data) >= 12 and data[:2] == query.data[:2]:
            self._finish(query, data)

    def _on_tcp(self, query: _Query, events: int) -> None:
        sock = query.sock
        assert sock is not None
        try:
            if events & WRITE:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, errno.errorcode.get(err, str(err)))
                sock.sendall(struct.pack("!H", len(query.data)) + query.data)  # fresh connection: room for it
                self.loop.modify(sock, READ, lambda ev: self._on_tcp(query, ev))
                return
            chunk = sock.recv(65537)
        except BlockingIOError:
            return
        except OSError as e:
            self._upstream_failed(query, e)
            return
        if not chunk:
            self._upstream_failed(query, ConnectionResetError("closed before answering"))
            return
        query.inbuf += chunk
        if len(query.inbuf) >= 2:
            size = struct.unpack("!H", query.inbuf[:2])[0]
            if len(query.inbuf) >= 2 + size:
                self._finish(query, bytes(query.inbuf[2:2 + size]))

    # -- endings --------------------------------------------------------------------

    def _upstream_failed(self, query: _Query, e: OSError) -> None:
        self.stats["upstream_failures"] += 1
        self.log(f"forward to {query.servers[query.tried - 1]}: {e}")
        self._drop_socket(query)
        self._try_next(query)

    def _finish(self, query: _Query, data: bytes) -> None:
        self._drop_socket(query)
        self._done(query)
        self.stats["answered"] += 1
        self._deliver(query, data)

    def _fail(self, query: _Query) -> None:
        if not query.done:
            self._done(query)
        self.stats["servfail"] += 1
        data = answers.servfail(query.data)
        if data is not None:
            self._deliver(query, data)

    def _done(self, query: _Query) -> None:
        query.done = True
        self.pending -= 1

    def _deliver(self, query: _Query, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the asker is gone (sandbox removed, connection closed)
            query.reply(data)

    def _drop_socket(self, query: _Query) -> None:
        if query.sock is not None:
            self.loop.unregister(query.sock)
            query.sock.close()
            query.sock = None
