"""``overlays agent``: one per host, the control plane's hands on the kernel.

It registers the host (name and underlay address) under a lease it keeps alive,
moves this host's endpoint registrations onto that lease, and then watches the
``overlay/`` keys of the shared store: on every change it re-syncs the affected
networks, so each VXLAN device has exactly one FDB and one neighbour entry per
remote endpoint and one flood entry per remote host. Syncs read before they
write and are idempotent, so events seen twice, a missed event (``Compacted``:
full re-list) or a restart after ``kill -9`` all converge to the same state. A
full sync also runs periodically to heal drift (an entry someone deleted).

When a host dies its lease expires and the store deletes its registrations;
every other agent sees the delete events and removes the entries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from overlays.engine import Engine, records
from overlays.engine.context import NodeTxn
from overlays.engine.netdrivers import overlay
from overlays.errors import NotFound, OverlaysError
from overlays.kernel.api import Links
from overlays.model.names import vxlan_name
from overlays.model.state import HostRegistration
from overlays.store.base import Compacted, LeaseNotFound

Log = Callable[[str], None]


class Agent:
    def __init__(self, engine: Engine, ttl: float = 10.0, resync_every: float = 30.0,
                 log: Log | None = None) -> None:
        self.engine = engine
        self.ctx = engine.ctx
        self.ttl = ttl
        self.resync_every = resync_every
        self.log = log or (lambda line: None)
        self.lease = 0
        self.vtep = ""

    # -- registration -------------------------------------------------------------

    def register(self, host: Links) -> None:
        """A fresh lease; this host's record and all its endpoint registrations move onto it."""
        underlay = host.underlay()
        if underlay is None:
            raise NotFound(f"host {self.ctx.node} has no underlay address (no default route, no IPv4 address)")
        store, node = self.ctx.store, self.ctx.node
        old = self.engine.registered()
        lease = store.grant_lease(self.ttl)
        record = HostRegistration(node, underlay.ip, underlay.ifname, underlay.mtu, lease, time.time())

        def move(txn: NodeTxn) -> int:
            txn.root.put(records.host_key(node), record.to_record(), lease=lease)
            return overlay.reregister(txn, node, underlay.ip, lease)

        moved = self.ctx.transact(move)
        if old is not None and old.lease not in (0, lease):
            store.revoke_lease(old.lease)  # what a dead predecessor left: nothing of ours now
        self.lease, self.vtep = lease, underlay.ip
        self.log(f"registered {node} at {underlay.ip} ({underlay.ifname}), lease {lease}, {moved} endpoint(s)")

    # -- syncing ------------------------------------------------------------------

    def sync(self, host: Links, names: set[str] | None = None) -> None:
        """Program the named networks (None: all of this host's) from the store; idempotent."""
        local = self.ctx.transact(overlay.local_networks)
        for name in sorted(local if names is None else names & set(local)):
            net = local[name]
            if host.link(vxlan_name(net.bridge)) is None:
                continue  # the engine makes the device (and syncs it) when a sandbox joins
            added, removed = overlay.sync_here(self.ctx, host, net, self.vtep)
            if added or removed:
                self.log(f"{name}: +{added} -{removed} entries")

    def full_sync(self, host: Links) -> int:
        """Everything from a fresh list; returns the revision to watch after."""
        revision = self.ctx.store.revision()  # first: a change after it is watched, maybe seen twice
        self.sync(host)
        return revision

    # -- the loop -----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: keep the lease, follow the store, heal drift."""
        store = self.ctx.store
        with self.ctx.open_host() as host:
            self.register(host)
            revision = self.full_sync(host)
            keepalive_at = time.monotonic() + self.ttl / 3
            resync_at = time.monotonic() + self.resync_every
            while not stop.is_set():
                try:
                    events = store.watch(records.REGISTRATIONS_PREFIX, revision, timeout=min(0.5, self.ttl / 3))
                except Compacted:
                    revision = self.full_sync(host)
                    continue
                if events:
                    revision = events[-1].revision
                    self.sync(host, {e.key.split("/")[1] for e in events})
                now = time.monotonic()
                if now >= keepalive_at:
                    keepalive_at = now + self.ttl / 3
                    if not self._keepalive():
                        self.register(host)
                        revision = self.full_sync(host)
                if now >= resync_at:
                    resync_at = now + self.resync_every
                    revision = max(revision, self.full_sync(host))

    def _keepalive(self) -> bool:
        try:
            return self.ctx.store.keepalive(self.lease)
        except (LeaseNotFound, OverlaysError) as e:
            self.log(f"keepalive failed: {e}")
            return False


