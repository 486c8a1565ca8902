"""``overlays ui``: the live picture in a browser, pushed as it changes.

Design. One thread, the *watcher*, does all the reading: it builds the picture
(``live_graph``), lays it out with Graphviz, then long-polls the store's
``watch("", revision, timeout)`` and rebuilds after each batch of changes, so a
sandbox appears on the page as soon as its record is committed. It also rebuilds
every couple of seconds without a change, because one thing the page shows is not
in the store: whether a sandbox's process still runs. Graphviz runs only when the
picture's digest changed, and a snapshot that shows nothing new is not sent.

The aiohttp event loop only hands the latest snapshot to the pages: each holds one
Server-Sent Events stream (``/api/events``) and receives the whole snapshot
(picture model, SVG, recent operations) in one event, so the page never reloads
and never asks twice. Snapshots carry the store revision they were built at.

Why aiohttp: one maintained package that is the whole server (streaming responses
for SSE, static files, a runner that starts and stops inside our own event loop,
so signals and shutdown stay ours); starlette needs a separate ASGI server such as
uvicorn, which brings click and h11 along. The page's JavaScript is one small file
shipped in this package (no CDN, no build step); the picture is Graphviz's SVG,
inlined so that each node and edge can be clicked (their SVG ids are the model's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from overlays.errors import InvalidSpec, OverlaysError
from overlays.store.base import Compacted
from overlays.view import operations
from overlays.view.live import live_graph
from overlays.view.render import render

if TYPE_CHECKING:
    from overlays.engine import Engine

STATIC = Path(__file__).parent / "static"
WATCH_TIMEOUT = 0.5  # the longest a stop waits for the watcher
RECHECK = 2.0  # how often the picture is rebuilt with no change in the store (a process may have exited)
KEEPALIVE = 15.0  # an SSE comment this often, so a page that went away is noticed
RETRY_AFTER = 1.0  # after a failed read of the store


@dataclass(frozen=True)
class Snapshot:
    revision: int
    digest: str
    graph: dict[str, Any]
    svg: str
    operations: list[dict[str, Any]]
    built: float
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "digest": self.digest, "graph": self.graph, "svg": self.svg,
                "operations": self.operations, "built": self.built, "error": self.error}

    def same_as(self, other: Snapshot | None) -> bool:
        return other is not None and (self.digest, self.operations, self.error) == (
            other.digest, other.operations, other.error)


# -- listening ----------------------------------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) to a literal address and a port.

    No login guards the page, so what it listens on must be named, not found: a host
    name (which could resolve anywhere) other than ``localhost`` and the wildcard
    addresses (every interface) are refused; a loopback address is the default and
    any other address is served only because ``--listen`` named it.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise InvalidSpec(f"ui: --listen {text!r}: expected ADDRESS:PORT, like 127.0.0.1:8700")
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidSpec(f"ui: --listen {text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise InvalidSpec(f"ui: --listen {text!r}: port {port} is out of range (1-65535)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidSpec(f"ui: --listen {text!r}: {host!r} is not an IP address; name the address to serve on "
                          "(the page has no login)") from None
    if address.is_unspecified:
        raise InvalidSpec(f"ui: --listen {text!r} would serve every address of this host, and the page has no "
                          "login; name the one address to serve on")
    return str(address), port


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


# -- building snapshots (the watcher thread) ----------------------------------------------------------------------


@dataclass
class Watcher:
    """Builds a snapshot now and after every change of the store, until ``stop`` is set."""

    engine: Engine
    publish: Callable[[Snapshot], None]
    stop: threading.Event = field(default_factory=threading.Event)
    _last: Snapshot | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._follow()
            except Exception as e:  # the store went away for a while, dot failed: say so on the page, and retry
                message = str(e) if isinstance(e, OverlaysError) else f"{type(e).__name__}: {e}"
                self._send(Snapshot(0, "", {}, "", [], time.time(), error=message))
                self.stop.wait(RETRY_AFTER)

    def _follow(self) -> None:
        store = self.engine.store
        revision = store.revision()  # read first, then build: a change in between is seen by the watch
        journal = self._journal()
        self._build(revision)
        looked = time.monotonic()
        while not self.stop.is_set():
            try:
                events = store.watch("", revision, WATCH_TIMEOUT)
            except Compacted:
                return  # re-list from a fresh revision
            # The journal is a file, appended once an operation is done: looked at after each watch.
            if events or self._journal() != journal or time.monotonic() - looked >= RECHECK:
                revision = events[-1].revision if events else revision
                journal = self._journal()
                self._build(revision)
                looked = time.monotonic()

    def _journal(self) -> tuple[int, int] | None:
        return operations.stamp(self.engine.state_dir, self.engine.node)

    def _build(self, revision: int) -> None:
        """A snapshot of now; Graphviz lays it out only when the picture changed."""
        graph = live_graph(self.engine)
        ops = [op.to_json() for op in operations.recent(self.engine.state_dir, self.engine.node)]
        digest, last = graph.digest(), self._last
        picture = last.svg if last is not None and last.digest == digest and last.error is None else None
        self._send(Snapshot(revision, digest, graph.to_json(), picture or render(graph, "svg"), ops, time.time()))

    def _send(self, snapshot: Snapshot) -> None:
        if not snapshot.same_as(self._last):
            self._last = snapshot
            self.publish(snapshot)


# -- serving (the event loop) -------------------------------------------------------------------------------------


class Hub:
    """The latest snapshot, and a wake-up for every page waiting for a newer one."""

    def __init__(self) -> None:
        self.latest: Snapshot | None = None
        self.closed = False
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Wake every page's stream so that it ends (the server is stopping)."""
        self.closed = True
        self._changed.set()

    def set(self, snapshot: Snapshot) -> None:
        self.latest = snapshot
        self._changed.set()
        self._changed = asyncio.Event()

    async def newer_than(self, seen: Snapshot | None, timeout: float) -> Snapshot | None:
        """The latest snapshot once it is not ``seen``; ``seen`` again after ``timeout``."""
        if self.latest is not seen:
            return self.latest
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        return self.latest


HUB = web.AppKey("hub", Hub)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def state(request: web.Request) -> web.Response:
    snapshot = request.app[HUB].latest
    if snapshot is None:
        return web.json_response({"error": "starting"}, status=503)
    return web.json_response(snapshot.to_json(), headers={"Cache-Control": "no-store"})


async def svg(request: web.Request) -> web.Response:
    snapshot = request.app[HUB].latest
    if snapshot is None or not snapshot.svg:
        return web.Response(status=503, text="no picture yet")
    return web.Response(text=snapshot.svg, content_type="image/svg+xml", headers={"Cache-Control": "no-store"})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one ``state`` event per new snapshot, a comment between them to keep the line up."""
    hub = request.app[HUB]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    seen: Snapshot | None = None
    with contextlib.suppress(ConnectionResetError):
        while True:
            snapshot = await hub.newer_than(seen, KEEPALIVE)
            if hub.closed:
                break
            if snapshot is None or snapshot is seen:
                await response.write(b": keepalive\n\n")
                continue
            seen = snapshot
            await response.write(b"event: state\ndata: " + json.dumps(snapshot.to_json()).encode() + b"\n\n")
    return response


def make_app(hub: Hub) -> web.Application:
    app = web.Application()
    app[HUB] = hub
    app.router.add_get("/", index)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/graph.svg", svg)
    app.router.add_get("/api/events", events)
    app.router.add_static("/static/", STATIC, show_index=False)
    return app


def serve(engine: Engine, host: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve the page until SIGINT or SIGTERM; the watcher thread stops with it."""
    asyncio.run(_serve(engine, host, port, announce))


async def _serve(engine: Engine, host: str, port: int, announce: Callable[[str], None]) -> None:
    import signal

    loop = asyncio.get_running_loop()
    hub = Hub()

    def publish(snapshot: Snapshot) -> None:  # from the watcher thread
        loop.call_soon_threadsafe(hub.set, snapshot)

    watcher = Watcher(engine, publish)
    thread = threading.Thread(target=watcher.run, name="overlays-ui-watch", daemon=True)
    runner = web.AppRunner(make_app(hub), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            raise OverlaysError(f"ui: cannot listen on {_url(host, port)}: {e.strerror}") from e
        thread.start()
        announce(f"overlays ui: serving {_url(host, port)} (Ctrl-C stops)")
        await stopping.wait()
    finally:
        watcher.stop.set()
        hub.close()
        await runner.cleanup()
        if thread.is_alive():
            await asyncio.to_thread(thread.join, WATCH_TIMEOUT + 5)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
