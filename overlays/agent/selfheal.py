"""The agent's firewall self-heal: our nft table made again moments after someone else changed it.

Design note. Nothing is polled. The agent listens to nftables' own change notifications in
the host namespace (``Kernel.nft_changes``, a netlink socket on the NFNLGRP_NFTABLES group):
each committed transaction says which tables it touched and which thread committed it. A
transaction that touched our table (``inet overlays_<instance>``; a ``flush ruleset`` or a
firewalld-style reload deletes it too) and was not committed by overlays (our writes carry the
thread name ``nft.WRITER``) marks the table suspect; so does a lost notification (the kernel
drops them when a large flush overflows the socket).

A suspect table is looked at once the burst is over (nothing more for ``QUIET`` s, or
``LONGEST`` s after it began: a flush is one transaction, a reload two or more): it is
compared with what the records want (``engine.firewall.problems``, as ``doctor`` does) and,
if it differs, made again whole in one transaction (``engine.firewall.repair``, which names
our table only: another table is never read twice or written). Our own writes are therefore
skipped twice over: by their name, and, should a kernel not name the writer, by the compare,
which finds nothing to do after our own repair, so nothing loops.

One race is left to the compare: a repair made while a command is between its nft step and
its store commit (an ``rm`` unpublishes a port, then forgets the sandbox) follows records that
are about to change. So for ``FOLLOW`` s after a repair, a change of the store's revision makes
the agent compare once more; the table then converges to the records as they end up.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

from overlays.drivers import firewall as rules
from overlays.engine import firewall
from overlays.engine.context import Context
from overlays.errors import OverlaysError
from overlays.kernel.api import NftChanges
from overlays.kernel.nft import WRITER
from overlays.kernel.nftwatch import FAMILIES, LOST, Commit

Log = Callable[[str], None]
QUIET = 0.05  # seconds without a further foreign commit that end a burst
LONGEST = 0.25  # seconds after a burst's first commit at which we look anyway
IDLE = 0.5  # seconds between looks at whether the host namespace is still there
FOLLOW = 10.0  # seconds after a repair during which a store change makes us compare again
FOLLOW_LOOK = 0.1  # seconds between looks at the store's revision meanwhile
REOPEN = 1.0  # seconds between attempts to listen when the namespace (or the socket) is not there


class FirewallHealer:
    """Keeps our nft table as the records want it, woken by nftables' notifications (run on a thread)."""

    def __init__(self, ctx: Context, stop: threading.Event, log: Log,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.stop = stop
        self.log = log
        self.clock = clock
        self.table = (FAMILIES[rules.FAMILY], rules.table_name(ctx.instance))
        self.repairs = 0
        self._follow_until = 0.0
        self._revision = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def wake(self) -> None:
        """After ``stop`` is set, from any thread or a signal handler: return from ``run`` now, not in IDLE s."""
        with contextlib.suppress(OSError):  # already woken (the pipe is full), or closed: run has returned
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Once ``run`` has returned (and nobody calls ``wake`` any more): the wake pipe goes."""
        os.close(self._wake_r)
        os.close(self._wake_w)

    def run(self) -> None:
        """Listen, heal, and listen again after a failure, until stopped (errors are logged, never raised)."""
        said = ""  # the last reason we could not listen: said once, not every second
        look_first = False  # a look (or a repair) failed: the next socket looks at once
        while not self.stop.is_set():
            try:
                changes = self.ctx.kernel.nft_changes(self.ctx.host_netns)
            except OverlaysError as e:
                if str(e) != said:
                    said = str(e)
                    self.log(f"firewall self-heal: cannot listen ({e}); trying again every {REOPEN:g} s")
                self.stop.wait(REOPEN)
                continue
            said = ""
            try:
                self.serve(changes, look_first)
                look_first = False
            except (OverlaysError, OSError) as e:
                self.log(f"firewall self-heal: {e}; listening again in {REOPEN:g} s")
                look_first = True
                self.stop.wait(REOPEN)
            finally:
                changes.close()

    def serve(self, changes: NftChanges, look_first: bool = False) -> None:
        """One socket's life: until stopped, or until its namespace is no longer the host's."""
        first: float | None = None  # when the pending burst began
        due: float | None = self.clock() if look_first else None  # when to look at the table
        while not self.stop.is_set():
            if not changes.current():
                return  # it would keep a deleted namespace alive; run() listens in whatever is there now
            now = self.clock()
            got = changes.read(self._timeout(now, due), self._wake_r)
            now = self.clock()
            if got is LOST or any(self.foreign(c) for c in got):
                first = now if first is None else first
                due = min(now + QUIET, first + LONGEST)
            if due is not None and now >= due:
                first = due = None
                self.heal("changed by someone else")
            elif now < self._follow_until and self.ctx.store.revision() != self._revision:
                self.heal("changed while the records changed")

    def _timeout(self, now: float, due: float | None) -> float:
        if due is not None:
            return max(0.0, due - now)
        return FOLLOW_LOOK if now < self._follow_until else IDLE

    def foreign(self, commit: Commit) -> bool:
        """Whether a transaction touched our table and was not committed by overlays."""
        return self.table in commit.tables and commit.process != WRITER

    def heal(self, why: str) -> bool:
        """Compare our table with the records; make it again if it differs. True if it was made again."""
        self._revision = self.ctx.store.revision()  # first: a record changed after it is looked at again
        found = firewall.problems(self.ctx)
        if not found:
            return False
        started = self.clock()
        firewall.repair(self.ctx)
        self.repairs += 1
        self._follow_until = self.clock() + FOLLOW
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        self.log(f"firewall {why}: {found[0]}{more}; our nft table made again from the records "
                 f"in {(self.clock() - started) * 1000:.1f} ms")
        return True
