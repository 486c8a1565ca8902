"""The server's event loop: one epoll, a handler per file descriptor.

``selectors`` would do, but it builds a key object per registration and per event; the
forwarder registers and drops a socket for every forwarded query, so the plain epoll
with a dict of handlers saves a few microseconds a query. Handlers must take a spurious
wake-up in their stride (a non-blocking read that finds nothing): an fd closed and
reused within one batch of events may see its predecessor's event.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Callable

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
Handler = Callable[[int], None]
Watched = socket.socket | int


def _fd(what: Watched) -> int:
    return what if isinstance(what, int) else what.fileno()


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}

    def register(self, what: Watched, events: int, handler: Handler) -> None:
        fd = _fd(what)
        self._epoll.register(fd, events)
        self._handlers[fd] = handler

    def modify(self, what: Watched, events: int, handler: Handler) -> None:
        fd = _fd(what)
        self._epoll.modify(fd, events)
        self._handlers[fd] = handler

    def unregister(self, what: Watched) -> None:
        """Stop watching (before the socket is closed); not watched is fine."""
        fd = _fd(what)
        if fd < 0 or self._handlers.pop(fd, None) is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)

    def run_once(self, timeout: float, on_error: Callable[[], None]) -> int:
        """Wait up to ``timeout`` seconds, then call the handler of every ready fd; returns how many were."""
        ready = self._epoll.poll(timeout)
        for fd, events in ready:
            handler = self._handlers.get(fd)
            if handler is None:
                continue
            try:
                handler(events)
            except Exception:  # one bad event must not take the host's DNS down
                on_error()
        return len(ready)

    def close(self) -> None:
        self._handlers.clear()
        self._epoll.close()
