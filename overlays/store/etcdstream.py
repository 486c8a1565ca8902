"""One long-lived etcd watch per prefix, so that ``EtcdStore.watch`` sees a commit within milliseconds.

Why not a new etcd watch per call. etcd hands a commit to a watcher at once only if
that watcher has caught up ("synced"); one created from a past revision is caught up
by a loop that runs every 100 ms. A caller that watches again after each batch, from
the revision after that batch, nearly always starts in the past (any commit anywhere
moves the store's revision on), so each batch came 65-100 ms after its commit (measured
on this project's machines): the overlay agents then programmed a new endpoint after
the other sandboxes' first ARP for it, and with etcd on 3 hosts the median sandbox was
reached only after ARP's one-second retry (docs/benchmarks.md).

So the store keeps the watch of each prefix open (``Stream``) and keeps what it
delivered, the newest ``KEPT`` events; ``watch(prefix, after)`` returns the kept events
after ``after`` or waits for the next ones. A stream is opened again, from ``after``,
only for a caller that asks for what it no longer keeps, and after it failed (a member
gone, compaction), which the store handles as it did for a single watch.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable
from typing import Any

from overlays.store.base import Event

KEPT = 10_000  # events a stream keeps for callers that resume (the newest; half are dropped when full)


class Ended(Exception):
    """The stream stopped delivering without an error of its own (the client shut it down)."""


class Stream:
    """An open etcd watch from ``after + 1`` on: the events it delivered, and the error that ended it, if any."""

    def __init__(self, client: Any, watch: Any, after: int, decode: Callable[[Any], Event]) -> None:
        self.client = client  # the member it reads from
        self.floor = after  # every event after this revision is in ``events``, or still to come
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self._watch = watch
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._collect(decode))

    async def _collect(self, decode: Callable[[Any], Event]) -> None:
        try:
            async for event in self._watch:
                self.events.append(decode(event))
                if len(self.events) > KEPT:
                    self._drop_oldest()
                self._changed.set()
            self.error = Ended("etcd watch ended")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # kept, and raised to the caller of watch()
            self.error = e
        finally:
            self._changed.set()

    def _drop_oldest(self) -> None:
        """Half of what is kept goes, whole revisions only (a caller never gets part of one)."""
        cut = len(self.events) - KEPT // 2
        while cut < len(self.events) and self.events[cut].revision == self.events[cut - 1].revision:
            cut += 1
        self.floor = self.events[cut - 1].revision
        del self.events[:cut]

    def covers(self, after: int) -> bool:
        """Whether every event after ``after`` is here or still to come."""
        return after >= self.floor

    def after(self, revision: int) -> list[Event]:
        # The client queues all events of one etcd response before the collector yields, so
        # whenever a caller looks, whole revisions have been kept.
        return self.events[bisect.bisect_right(self.events, revision, key=lambda e: e.revision):]

    async def wait(self, timeout: float) -> None:
        """Until the stream delivers something (or fails), for at most ``timeout`` seconds."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def close(self, timeout: float) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):  # a stream that is gone has nothing left to cancel
            await asyncio.wait_for(self._watch.cancel(), timeout)
