"""The resident process that serves the verbs thin clients hand it (see ``client``'s design note).

Started by a client's fallback once that client has answered the runtime (``start``),
in the client's network, mount and PID namespaces, with none of the runtime's
descriptors. It binds its abstract socket before anything else, so a second server
started meanwhile finds the name taken and leaves, and clients that come while it
imports the engine wait in the socket's backlog instead of falling back.

One request at a time, each through ``protocol.handle`` exactly as in a one-shot
process, on engines kept open per conflist engine (state dir, store, node, host
namespace): what a one-shot process pays for every verb (the interpreter, the
imports, opening the store) is paid once. Concurrent runtimes queue; the store's
transactions keep a server and one-shot processes (fallbacks, the CLI) consistent.

DEL is answered before the removal is done, and the removal is done before the next
request is taken. Deleting a veth costs the kernel some 15-20 ms, synchronously, and
nothing after a DEL needs it gone sooner: the runtime deletes its namespace next (with
our interface in it), and any later verb (an ADD that wants the address or the port
back) is served after the removal. So DEL first leaves a marker
(``<state dir>/cni-removing/<node>/<sandbox>``), then the answer goes out, then the
sandbox is removed and the marker with it. A server that dies in between leaves the
marker, and the next server (started by the next fallback) finishes what it names.

Never left running without sandboxes: after each DEL and GC, and every IDLE_CHECK
seconds without a request, it looks whether a CNI attachment (a sandbox with the
attachment labels) remains on its engines, and exits when none does; an engine whose
state or host namespace has gone is dropped first. It also exits after IDLE_MAX
without a request (a later call falls back and starts a new one, so a server of an
older install does not linger), and on SIGTERM once the request at hand is answered.
Only root may ask: the peer's credentials are checked on every connection.
"""

from __future__ import annotations

import contextlib
import errno
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from overlays.cni import client, names, protocol
from overlays.errors import NotFound, OverlaysError

if TYPE_CHECKING:
    from overlays.cni.config import PluginConf
    from overlays.cni.plugin import EnginePlugin
    from overlays.engine import Engine

IDLE_CHECK = 0.5  # seconds between looks at whether attachments remain, while no request comes
IDLE_MAX = 600.0  # seconds without a request after which the server leaves anyway
READ_TIMEOUT = 5.0  # seconds a client may take to send its request
MAX_REQUEST = 16 << 20
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

EngineKey = tuple[str | None, str | None, str | None, str | None]


def key_of(conf: PluginConf) -> EngineKey:
    return conf.state_dir, conf.store, conf.node, conf.host_netns


def start(where: bytes, paths: Sequence[str], conf: PluginConf) -> None:
    """Start a server on ``where`` in the background: its own session, cwd /, no descriptor of ours."""
    code = (f"import sys; sys.path[:0] = {list(paths)!r}; from overlays.cni.server import run; "
            f"run({where!r}, {key_of(conf)!r})")
    subprocess.Popen([sys.executable, "-I", "-S", "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, cwd="/", start_new_session=True, close_fds=True)


def bind(where: bytes) -> socket.socket | None:
    """The listening socket, or None if another server holds the name already."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(where)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            return None
        raise
    sock.listen(128)
    return sock


def run(where: bytes, first: EngineKey) -> None:
    """The server's process: serve on ``where`` until no attachment remains (``first``: the engine to watch)."""
    listener = bind(where)
    if listener is not None:
        Server(listener).serve(first)


def _peer_uid(conn: socket.socket) -> int:
    return int(_CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))[1])


def _receive(conn: socket.socket) -> bytes | None:
    chunks, size = [], 0
    while chunk := conn.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REQUEST:
            return None
    return b"".join(chunks)


class Server:
    """Requests from one listening socket, on engines kept open per conflist engine."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.engines: dict[EngineKey, Engine] = {}
        self.removals: list[tuple[Engine, str]] = []  # DELs answered, their sandboxes not yet removed
        self.stopping = False

    def engine_for(self, key: EngineKey) -> Engine:
        if key not in self.engines:
            from overlays.engine import Engine

            state_dir, store, node, host_netns = key
            self.engines[key] = Engine(host_netns=host_netns, state_dir=state_dir, store_url=store, node=node)
        return self.engines[key]

    def open_backend(self, req: protocol.Request, warn: protocol.Warn) -> EnginePlugin:
        from overlays.cni import config, plugin

        conf = config.parse(req)
        return plugin.EnginePlugin(conf, warn, engine=self.engine_for(key_of(conf)), remove_later=self.remove_later)

    def remove_later(self, engine: Engine, sandbox: str) -> bool:
        """DEL: mark the sandbox for removal, to remove it once answered (False: cannot mark, remove it now)."""
        try:
            marker = _removing(engine) / sandbox
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            return False
        self.removals.append((engine, sandbox))
        return True

    def finish_removals(self) -> None:
        """Remove what answered DELs left; a marker stays where removing failed (a later server tries again)."""
        for engine, sandbox in self.removals:
            try:
                engine.remove_sandbox(sandbox, force=True)
            except NotFound:
                pass
            except OverlaysError:
                continue
            with contextlib.suppress(OSError):
                (_removing(engine) / sandbox).unlink()
        self.removals.clear()

    def recover(self, engine: Engine) -> None:
        """Finish the removals a server before us answered and did not do (it died)."""
        with contextlib.suppress(OSError):
            self.removals += [(engine, marker.name) for marker in _removing(engine).iterdir()]
        self.finish_removals()

    def attachments_left(self) -> bool:
        """Whether any engine of ours still holds a CNI attachment (engines whose state went are dropped)."""
        for key, engine in list(self.engines.items()):
            try:
                if _state_exists(engine) and engine.host_exists():
                    if any(names.attachment_of(dict(box.labels)) for box in engine.sandboxes()):
                        return True
                    continue
            except OverlaysError:
                pass
            del self.engines[key]
            with contextlib.suppress(OverlaysError):
                engine.close()
        return False

    def serve(self, first: EngineKey) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        for held in (signal.SIGINT, signal.SIGHUP):  # a runtime's terminal or session going away is not ours
            signal.signal(held, signal.SIG_IGN)
        try:
            with contextlib.suppress(OverlaysError):
                self.recover(self.engine_for(first))
            self._loop()
        finally:
            self.listener.close()  # first: a client that comes now falls back instead of waiting on us
            for engine in self.engines.values():
                with contextlib.suppress(OverlaysError):
                    engine.close()

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        last = time.monotonic()
        while not self.stopping:
            if not poller.poll(IDLE_CHECK * 1000):
                if time.monotonic() - last > IDLE_MAX or not self.attachments_left():
                    return
                continue
            conn, _ = self.listener.accept()
            with conn:
                verb = self.serve_one(conn)
            self.finish_removals()  # answered: now the DEL's removal, before anyone else is served
            last = time.monotonic()
            if verb in ("DEL", "GC") and not self.attachments_left():
                return

    def serve_one(self, conn: socket.socket) -> str | None:
        """Answer one connection; returns its verb (None if it was refused or broken)."""
        try:
            conn.settimeout(READ_TIMEOUT)
            if _peer_uid(conn) != 0:
                return None  # hung up on: only root may ask, as only root can exec the plugin to effect
            request = client.decode_request(_receive(conn) or b"")
            if request is None:
                return None
            env, stdin = request
            lines: list[str] = []
            out, code = protocol.handle(env, stdin, self.open_backend, lines.append)
            err = "".join(f"overlays-cni: {line}\n" for line in lines).encode()
            conn.settimeout(None)
            conn.sendall(client.encode_answer(code, out, err))
            return env.get("CNI_COMMAND")
        except OSError:
            return None  # the client went away: it falls back, or its runtime gave up

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True


def _removing(engine: Engine) -> Path:
    """Where the markers of answered DELs of this engine's node live."""
    return engine.state_dir / "cni-removing" / engine.node


def _state_exists(engine: Engine) -> bool:
    """Whether the engine's SQLite file is still there (a removed state dir leaves us a deleted file open)."""
    path = getattr(engine.store, "path", None)
    return path is None or Path(path).exists()
