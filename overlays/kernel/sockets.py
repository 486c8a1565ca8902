"""Sockets made inside a network namespace, for the DNS server.

A socket keeps the namespace it was made in for life, so the server makes each
sandbox's listeners (UDP and TCP for 127.0.0.11:53) from its own thread entered into
that sandbox's namespace for a few microseconds (``netns.inside``), and its forwarding
sockets inside the host namespace. ``IP_FREEBIND`` lets the bind succeed before the
sandbox's loopback is up; the socket answers as soon as it is.

``steered_listeners`` leaves port 53 of the sandbox free for its own processes: the
sockets take a port of the kernel's choosing, and a BPF sk_lookup program hands them
what arrives for 127.0.0.11:53 (see bpf.py); UDP answers go out through a raw socket
with the right source port. Where the kernel refuses that (no sk_lookup, no BPF), it
falls back to ``listening_pair``: sockets bound to 127.0.0.11:53 itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from overlays.errors import KernelError
from overlays.kernel import bpf, netns

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


@dataclass(eq=False)
class Listeners:
    """What answers for a sandbox: its UDP and TCP sockets; steered ones also a raw socket and the BPF link."""

    udp: socket.socket
    tcp: socket.socket
    raw: socket.socket | None = None  # UDP answers go out through it, from port 53
    link: int | None = None  # the sk_lookup program's link: closing it detaches the program

    @property
    def steered(self) -> bool:
        return self.link is not None

    def close(self) -> None:
        if self.link is not None:
            with contextlib.suppress(OSError):
                os.close(self.link)
            self.link = None
        for sock in (self.udp, self.tcp, self.raw):
            if sock is not None:
                sock.close()


_steering: list[str] = []  # why steering failed here once (then: bound sockets from then on)


def steering_refused() -> str | None:
    """Why the kernel refused to steer (the first time), if it did: the server says so once."""
    return _steering[0] if _steering else None


def steered_listeners(path: str | Path, address: str, port: int = DNS_PORT,
                      program: bpf.Program | None = None) -> Listeners:
    """Listeners for ``address:port`` inside the namespace at ``path`` that leave ``port`` free (see the note);
    ``program``: one ``bpf.prepare`` made ahead (used up either way)."""
    if _steering or not bpf.available() or ":" in address:
        if program is not None:
            program.close()
        return Listeners(*listening_pair(path, address, port))

    def make() -> Listeners:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        raw = None
        try:
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_RAW)
            for sock in (udp, tcp):
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                sock.bind((address, 0))
            tcp.listen(BACKLOG)
        except BaseException:
            for made in (udp, tcp, raw):
                if made is not None:
                    made.close()
            raise
        return Listeners(udp, tcp, raw)

    try:
        made = netns.run_in(path, make)
    except OSError as e:
        if program is not None:
            program.close()
        raise KernelError("bind", f"{address} (any port)", _where(path), os.strerror(e.errno or 0)) from e
    try:
        made.link = bpf.steer(path, address, port, made.udp, made.tcp, program)
    except KernelError as e:
        made.close()
        if e.errno not in _REFUSED:
            raise
        refuse_steering(str(e))
        return Listeners(*listening_pair(path, address, port))
    return made


def refuse_steering(why: str) -> None:
    """This kernel will not steer (said once): bound sockets from now on."""
    if not _steering:
        _steering.append(why)


def prepare_steering(address: str, port: int = DNS_PORT) -> bpf.Program | None:
    """A program for a later ``steered_listeners``, made ahead; None where steering is refused."""
    if _steering or not bpf.available() or ":" in address:
        return None
    try:
        return bpf.prepare(address, port)
    except KernelError as e:
        if e.errno not in _REFUSED:
            raise
        refuse_steering(str(e))
        return None


_REFUSED = {errno.EINVAL, errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EOPNOTSUPP, errno.E2BIG, None}


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
