"""Sockets made inside a network namespace, for the DNS server.

A socket keeps the namespace it was made in for life, so the server makes each
sandbox's listening pair (UDP and TCP on 127.0.0.11:53) from its own thread entered
into that sandbox's namespace for a few microseconds (``netns.inside``), and its
forwarding sockets inside the host namespace. ``IP_FREEBIND`` lets the bind succeed
before the sandbox's loopback is up; the socket answers as soon as it is.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from overlays.errors import KernelError
from overlays.kernel import netns

IP_FREEBIND = 15
DNS_PORT = 53
BACKLOG = 64


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _where(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def listening_pair(path: str | Path, address: str, port: int = DNS_PORT) -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket bound to ``address:port`` inside the namespace at ``path``."""
    family = _family(address)

    def make() -> tuple[socket.socket, socket.socket]:
        udp = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        tcp = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            for sock in (udp, tcp):
                sock.setsockopt(socket.IPPROTO_IP if family == socket.AF_INET else socket.IPPROTO_IPV6,
                                IP_FREEBIND, 1)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebind at once after a restart
            udp.bind((address, port))
            tcp.bind((address, port))
            tcp.listen(BACKLOG)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        return udp, tcp

    try:
        return netns.run_in(path, make)
    except OSError as e:
        raise KernelError("bind", f"{address}:{port}", _where(path), os.strerror(e.errno or 0)) from e


def udp_sockets(path: str | Path | None, family: socket.AddressFamily, count: int) -> list[socket.socket]:
    """``count`` fresh non-blocking UDP sockets made inside the namespace at ``path`` (one entry for all).

    The forwarder uses each for one query only (connected to the upstream, then closed):
    a fresh source port per query, and a stale or spoofed answer can only reach a socket
    that is already gone. Made in batches, a socket costs a few microseconds.
    """

    def make() -> list[socket.socket]:
        made: list[socket.socket] = []
        try:
            for _ in range(count):
                made.append(socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC))
        except BaseException:
            for sock in made:
                sock.close()
            raise
        return made

    try:
        return netns.run_in(path, make)
    except OSError as e:
        raise KernelError("open forwarding sockets", f"({count})", _where(path), os.strerror(e.errno or 0)) from e


def tcp_client(path: str | Path | None, address: str, port: int = DNS_PORT) -> socket.socket:
    """A non-blocking TCP socket, its connection to ``address:port`` under way, made inside ``path``."""

    def make() -> socket.socket:
        sock = socket.socket(_family(address), socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.connect_ex((address, port))  # EINPROGRESS: the selector says when it is done
        except BaseException:
            sock.close()
            raise
        return sock

    try:
        return netns.run_in(path, make)
    except OSError as e:
        raise KernelError("connect", f"{address}:{port}", _where(path), os.strerror(e.errno or 0)) from e
