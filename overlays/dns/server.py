"""The host's DNS server: one process (one thread) answering inside every sandbox's namespace.

Design note. Like Docker's embedded resolver, and unlike aardvark-dns (which listens on
each network's gateway address in the host namespace), the server listens on
127.0.0.11:53, UDP and TCP, *inside each sandbox's own network namespace*: it makes the
two sockets from its thread entered into that namespace for a few microseconds, and a
socket keeps its namespace for life. So:

- nothing is bound in the host namespace: a dnsmasq, a Pi-hole or systemd-resolved on
  the host's port 53 (or on 0.0.0.0:53) clashes with nothing;
- every kind of network works the same (bridge, internal, overlay, macvlan, or none),
  because the asker's namespace is the socket's;
- port 53 of the sandbox stays its own: the sockets take a port of the kernel's choosing
  and a BPF sk_lookup program steers 127.0.0.11:53 to them (kernel/bpf.py), so a DNS
  server the sandbox runs can bind 0.0.0.0:53 (Docker needs NAT rules for that);
- the socket a query arrives on says which sandbox asks, so answers are scoped to the
  networks of that sandbox without trusting a source address.

Forwarding happens from the host namespace (``forward``), where the host's own
resolv.conf applies and a loopback stub resolver can be reached.

What a sandbox's processes read: one resolv.conf for all the host's sandboxes, in a
directory beside the control socket (``<node>.etc/resolv.conf``: nameserver 127.0.0.11,
the host's search list and options, rewritten when the host's change), which ``overlays
run``/``exec`` mount over /etc/resolv.conf. For ``ip netns exec`` (iproute2's convention)
the server makes ``/etc/netns/<netns>`` a link to that directory when it registers a
sandbox, just *after* answering the register (creating a file system entry costs ~0.2 ms
here, and only another process's start will look), and removes it when it unregisters.
A sandbox the server does not serve keeps the host's resolv.conf.

The engine registers and unregisters sandboxes over ``<state dir>/dns/<node>.sock``
(``overlays.kernel.dnsctl``); a register returns once the sockets are bound and the
names are in the table. On start the server is given the list of sandboxes to serve (it
keeps nothing on disk): whoever restarts it (the agent) reads that list from the store.

One thread, one epoll over every socket (``loop``): a local answer costs a few tens of
microseconds in Python (a cached one a few), far below the network's own latency, and
no lock is ever taken. Nothing blocks: a slow upstream only delays its own queries.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import resource
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlays.dns.forward import Forwarder
from overlays.dns.loop import READ, Loop
from overlays.dns.names import NamesTable
from overlays.dns.serving import HostResolvers, LocalSandbox, QueryService
from overlays.errors import Conflict, InvalidSpec, NotFound, OverlaysError
from overlays.kernel import bpf, dnsctl, mountns, netns, resolvconf, sockets
from overlays.kernel.dnsctl import Record

Log = Callable[[str], None]
MAX_FDS = 2  # a register may carry its UDP and TCP sockets
PROGRAMS_AHEAD = 2  # steering programs made in idle time, for the next registers
SWEEP_EVERY = 5.0  # seconds between checks that every served namespace still has its name


@dataclass(frozen=True)
class Registration:
    """A sandbox to serve: its name, its namespace (None: another host's) and its names."""

    sandbox: str
    netns: str | None
    records: tuple[Record, ...]


class DnsServer:
    """Serve the registered sandboxes until stopped; ``run`` in the thread that owns it."""

    def __init__(self, control: Path, host_netns: str | None = None, registrations: Iterable[Registration] = (),
                 log: Log | None = None, cache: bool = True, forward_timeout: float = 2.0,
                 sweep_every: float = SWEEP_EVERY) -> None:
        self.log = log or (lambda line: None)
        self.sweep_every = sweep_every
        self._jobs: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._buffer = bytearray(dnsctl.MAX_MESSAGE)
        self._controls: set[socket.socket] = set()  # connections of engines and agents
        self.host_netns = host_netns
        host_path = None
        if host_netns is not None:
            host_path = netns.path_of(host_netns)
            if not host_path.exists():
                raise NotFound(f"host namespace {host_netns} does not exist")
        _raise_fd_limit()
        self.loop = Loop()
        self.table = NamesTable()
        self.path = Path(control)
        self.etc = dnsctl.etc_path(self.path)  # what /etc/netns/<netns> links to
        self.resolvers = HostResolvers(host_netns, self.log, self._write_resolv_conf)
        self.forwarder = Forwarder(self.loop, host_path, forward_timeout, self.log)
        self.service = QueryService(self.loop, self.table, self.forwarder, self.resolvers, cache)
        self.boxes: dict[str, LocalSandbox] = {}
        self._said_unsteered = False
        self._later: deque[Callable[[], None]] = deque()  # what can wait until nothing else does (see run)
        self._deferring = False  # a request is being handled: its link can wait
        self._programs: list[bpf.Program] = []  # steering programs made ahead
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.loop.register(self._wake_r, READ, lambda events: self._drain_wake())
        self._stopping = False
        try:
            self._write_resolv_conf(self.resolvers.current)
            self.control = _bind_control(self.path)
        except BaseException:
            self._close_loop()
            raise
        self.loop.register(self.control, READ, lambda events: self._on_control_accept())
        for reg in registrations:
            try:
                self.register(reg.sandbox, reg.netns, reg.records)
            except OverlaysError as e:
                self.log(f"sandbox {reg.sandbox}: not served: {e}")
        self.log(f"serving {len(self.boxes)} sandbox(es) on {resolvconf.DNS_ADDRESS}:53 in their namespaces; "
                 f"control socket {self.path}; upstreams {', '.join(self.resolvers.current.servers) or 'none'} "
                 f"(from {self.resolvers.current.source})")

    # -- what the engine asks -----------------------------------------------------------

    def register(self, sandbox: str, netns_path: str | None, records: Iterable[Record],
                 adopted: tuple[socket.socket, socket.socket] | None = None) -> None:
        """Serve ``sandbox`` inside ``netns_path`` (None: names only) with exactly these names."""
        records = tuple(records)
        if adopted is not None and netns_path is None:
            raise InvalidSpec(f"sandbox {sandbox}: sockets handed over without its namespace")
        old = self.boxes.get(sandbox)
        new: LocalSandbox | None = None
        if netns_path is not None:
            try:
                inode = netns.identity(netns_path)
            except OSError as e:
                raise NotFound(f"sandbox {sandbox}: network namespace {netns_path} does not exist") from e
            if old is not None and old.inode == inode and adopted is None:
                new = old
            else:
                listeners = sockets.Listeners(*adopted) if adopted else self._listeners(netns_path)
                new = LocalSandbox(sandbox, str(netns_path), inode, listeners)
        try:
            self.table.set(sandbox, records)
        except BaseException:
            if new is not None and new is not old:
                new.listeners.close()
            raise
        if new is not old:
            if old is not None:
                self.service.forget(self.boxes.pop(sandbox))
            if new is not None:
                self.boxes[sandbox] = new
                self.service.watch(new)
        if new is not None:
            if self._deferring:  # answer first: nobody waits for this one (see the note)
                self._later.append(lambda: self._link_etc(new))
            else:
                self._link_etc(new)

    def _listeners(self, netns_path: str) -> sockets.Listeners:
        program = self._programs.pop() if self._programs else None
        made = sockets.steered_listeners(netns_path, resolvconf.DNS_ADDRESS, program=program)
        self._later.append(self._make_program)
        refused = sockets.steering_refused()
        if refused and not self._said_unsteered:
            self._said_unsteered = True
            self.log(f"the kernel does not steer 127.0.0.11:53 ({refused}): sockets bound to it instead, "
                     "so a sandbox's own server cannot bind port 53 on all addresses")
        return made

    def unregister(self, sandbox: str) -> None:
        self.table.drop(sandbox)
        box = self.boxes.pop(sandbox, None)
        if box is not None:
            self.service.forget(box)
            with contextlib.suppress(OSError):
                mountns.remove_etc_dir(Path(box.netns).name)

    # -- what the sandboxes' processes read -----------------------------------------------

    def _write_resolv_conf(self, upstreams: resolvconf.Upstreams) -> None:
        try:
            mountns.write_file(self.etc, "resolv.conf", resolvconf.sandbox_resolv_conf(upstreams))
        except OverlaysError as e:
            self.log(f"the sandboxes' resolv.conf: {e}")

    def _make_program(self) -> None:
        """Idle work: one steering program ahead, up to PROGRAMS_AHEAD (a register then only attaches it)."""
        if len(self._programs) < PROGRAMS_AHEAD and not self._stopping:
            program = sockets.prepare_steering(resolvconf.DNS_ADDRESS)
            if program is not None:
                self._programs.append(program)

    def _link_etc(self, box: LocalSandbox) -> None:
        """``/etc/netns/<netns>`` -> our shared directory (only for a namespace under /run/netns: one of ours)."""
        path = Path(box.netns)
        if path.parent != netns.NETNS_DIR or self.boxes.get(box.name) is not box:
            return  # not ours, or no longer served (unregistered before this idle work came)
        try:
            mountns.link_etc_dir(path.name, self.etc)
        except OverlaysError as e:
            self.log(f"sandbox {box.name}: its resolv.conf: {e}")

    def status(self) -> dict[str, Any]:
        return {"registered": self.table.sandboxes(), "local": sorted(self.boxes), **self.table.counts(),
                "upstreams": list(self.resolvers.current.servers), "upstreams_from": self.resolvers.current.source,
                **self.service.stats, **self.forwarder.stats, "pending": self.forwarder.pending}

    # -- the loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, tick: Callable[[], None] | None = None) -> None:
        """Serve until ``stop`` is set or ``stop()`` is called (from any thread); ``tick`` runs once a second."""
        idle_check = time.monotonic() + 1.0
        sweep_at = time.monotonic() + self.sweep_every
        while not self._stopping and not (stop is not None and stop.is_set()):
            deadline = self.forwarder.next_deadline()
            timeout = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            if self.loop.run_once(0.0 if self._later else timeout, self._log_error) == 0 and self._later:
                self._idle_work()
            now = time.monotonic()
            self.forwarder.expire(now)
            if now >= idle_check:
                idle_check = now + 1.0
                self.service.close_idle(now)
                if tick is not None:
                    tick()
            if now >= sweep_at:
                sweep_at = now + self.sweep_every
                self.sweep()

    def sweep(self) -> list[str]:
        """Stop serving sandboxes whose namespace lost its name (removed without an unregister).

        Our sockets hold a reference to their namespace: while they exist the kernel
        cannot free it, nor the veths in it. The engine unregisters before it deletes a
        namespace; this only catches a caller that died in between.
        """
        gone = []
        for name, box in list(self.boxes.items()):
            try:
                alive = netns.identity(box.netns) == box.inode
            except OSError:
                alive = False
            if not alive:
                gone.append(name)
                self.unregister(name)
        if gone:
            self.log(f"namespace gone, no longer served: {', '.join(gone)}")
        return gone

    def _idle_work(self) -> None:
        """One piece of the work that waits until no query or request does (a link, a program ahead)."""
        try:
            self._later.popleft()()
        except Exception:
            self._log_error()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the server's thread (the table and sockets are that thread's alone)."""
        future: Future[Any] = Future()
        self._jobs.append((fn, future))
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"j")
        return future

    def _log_error(self) -> None:
        self.log("error: " + traceback.format_exc().strip().replace("\n", " | "))

    def stop(self) -> None:
        """Ask ``run`` to return (thread-safe)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Close every socket, the control socket and its file."""
        while self._jobs:
            self._jobs.popleft()[1].cancel()
        self._stopping = True
        while self._later:  # the links of sandboxes registered last: made now (no more programs ahead)
            self._idle_work()
        for program in self._programs:
            program.close()
        self._programs.clear()
        for name in list(self.boxes):
            self.service.forget(self.boxes.pop(name))
        self.forwarder.close()
        for conn in list(self._controls):
            self._drop_control(conn)
        self.loop.unregister(self.control)
        self.control.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._close_loop()

    def _close_loop(self) -> None:
        self.loop.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        while self._jobs:
            fn, future = self._jobs.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as e:
                    future.set_exception(e)

    # -- the control socket -------------------------------------------------------------

    def _on_control_accept(self) -> None:
        try:
            conn, _ = self.control.accept()
        except OSError:
            return
        conn.setblocking(False)
        self._controls.add(conn)
        self.loop.register(conn, READ, lambda events: self._on_control(conn))

    def _on_control(self, conn: socket.socket) -> None:
        try:
            data, fds = self._receive(conn)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            self._drop_control(conn)
            return
        self._deferring = True
        try:
            reply = self._handle(data, fds)
        finally:
            self._deferring = False
        try:
            conn.send(json.dumps(reply, separators=(",", ":")).encode())
        except OSError:  # a client that does not read its answers: drop it
            self._drop_control(conn)

    def _drop_control(self, conn: socket.socket) -> None:
        self._controls.discard(conn)
        self.loop.unregister(conn)
        conn.close()

    def _receive(self, conn: socket.socket) -> tuple[bytes, list[int]]:
        """One request and the descriptors that came with it (into a buffer kept for it)."""
        size, ancillary, _, _ = conn.recvmsg_into([self._buffer], socket.CMSG_SPACE(MAX_FDS * 4))
        fds = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        return bytes(self._buffer[:size]), list(fds)

    def _handle(self, data: bytes, fds: list[int]) -> dict[str, Any]:
        adopted = None
        try:
            adopted = _adopt(fds)
            request = json.loads(data)
            if not isinstance(request, dict):
                raise InvalidSpec("a DNS control request is a JSON object")
            op = request.get("op")
            if op == "register":
                sandbox, netns_path = _sandbox_of(request), request.get("netns")
                raw = request.get("records", [])
                if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
                    raise InvalidSpec(f"sandbox {sandbox}: records must be a list of objects")
                self.register(sandbox, netns_path, [Record.from_wire(r) for r in raw], adopted)
                adopted = None
                return {"ok": True}
            if op == "unregister":
                self.unregister(_sandbox_of(request))
                return {"ok": True, "served_here": len(self.boxes)}
            if op == "status":
                return {"ok": True, **self.status()}
            raise InvalidSpec(f"unknown DNS control operation {op!r}")
        except OverlaysError as e:
            return {"ok": False, "kind": type(e).__name__, "error": str(e)}
        except (ValueError, TypeError) as e:
            return {"ok": False, "kind": "InvalidSpec", "error": f"bad DNS control request: {e}"}
        finally:
            for sock in adopted or ():
                sock.close()


def _sandbox_of(request: dict[str, Any]) -> str:
    sandbox = request.get("sandbox")
    if not isinstance(sandbox, str) or not sandbox:
        raise InvalidSpec("a DNS control request needs a sandbox name")
    netns_path = request.get("netns")
    if netns_path is not None and not isinstance(netns_path, str):
        raise InvalidSpec(f"sandbox {sandbox}: netns must be a path or null")
    return sandbox


def _adopt(fds: list[int]) -> tuple[socket.socket, socket.socket] | None:
    """Sockets handed over with a register: a UDP one and a listening TCP one, in that order."""
    if not fds:
        return None
    socks = [socket.socket(fileno=fd) for fd in fds]
    kinds = [s.type for s in socks]
    if kinds != [socket.SOCK_DGRAM, socket.SOCK_STREAM]:
        for s in socks:
            s.close()
        raise InvalidSpec("a register hands over two sockets: UDP, then a listening TCP one")
    for s in socks:
        s.setblocking(False)
    return socks[0], socks[1]


def _bind_control(path: Path) -> socket.socket:
    """The control socket; refused if another server answers on it, a stale file is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(str(path).encode()) > 107:
        raise InvalidSpec(f"DNS control socket path {path} is longer than a unix socket takes (107 bytes)")
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # left by a server that died
        else:
            raise Conflict(f"a DNS server already runs for this state dir (it answers on {path})")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(64)
    except OSError as e:
        sock.close()
        raise Conflict(f"DNS control socket {path}: {os.strerror(e.errno or 0)}") from e
    return sock


def _raise_fd_limit() -> None:
    """Two sockets per sandbox: a thousand sandboxes pass the usual soft limit of 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
