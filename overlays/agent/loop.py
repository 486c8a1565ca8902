"""``overlays agent``: one per host, the control plane's hands on the kernel, and the host's DNS server.

DNS. The agent runs the host's DNS server (``overlays.dns``) on its main thread, handing
it the restart list first (every sandbox of this host, see names.py), so the engine's
registers and unregisters find it; names of sandboxes on other hosts come from the
overlay registrations below. The engine starts an agent on demand (``on_demand``) when
a sandbox needs one: that agent exits by itself once the host has been empty for a
while or its host namespace is gone, and the engine stops it as soon as the host's last
sandbox and network go (engine.hostagent). An agent a user starts takes over from it.

Overlays. It registers the host (name and underlay address) under a lease it keeps
alive, moves this host's endpoint registrations onto that lease, and then watches the
``overlay/`` keys of the shared store (in a thread of its own): on every change it
re-syncs the affected networks, so each VXLAN device has exactly one FDB and one
neighbour entry per remote endpoint and one flood entry per remote host, and updates the
remote names. A new endpoint is on the clock: a sandbox elsewhere may already be asking
for it (its first ARP, dropped by the VXLAN device until the entry exists, is asked again
only after a second). So a registration put is programmed from the event itself, no
store read, and announced into the bridge (drivers/vxlan.py); the full sync of its
network follows within SYNC_LAG, once for every put meanwhile, and a delete or a network
new to this host is synced at once. While the store holds no overlay network at all, it
only looks for one four times a second, where a watch polls the store 200 times. Syncs read before they
write and are idempotent, so events seen twice, a missed event (``Compacted``: full
re-list) or a restart after ``kill -9`` all converge to the same state. A full sync also
runs periodically to heal drift (an entry someone deleted). A host without an underlay
address (no default route, no IPv4 address) serves DNS only.

Firewall. A thread of its own keeps our nft table as the records want it, woken by
nftables' change notifications, not by polling (selfheal.py): a ``nft flush ruleset``, a
deleted table or element, a firewall daemon's reload is undone within a few tens of ms.
This serves a host without overlay networks too (a single host on the default store).

When a host dies its lease expires and the store deletes its registrations;
every other agent sees the delete events and removes the entries (and the names).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from overlays.agent.names import RemoteNames, local
from overlays.agent.selfheal import FirewallHealer
from overlays.dns import DnsServer
from overlays.engine import Engine, hostagent, records
from overlays.engine.context import NodeTxn
from overlays.engine.netdrivers import overlay
from overlays.errors import OverlaysError
from overlays.kernel import dnsctl, process
from overlays.kernel.api import Links
from overlays.kernel.dnsctl import Record
from overlays.model.names import vxlan_name
from overlays.model.specs import Network
from overlays.model.state import EndpointRegistration, HostRegistration
from overlays.store.base import Compacted, Event, LeaseNotFound

Log = Callable[[str], None]
IDLE_GRACE = 10.0  # seconds an agent started on demand stays with nothing to serve before it exits
WATCH_TIMEOUT = 0.5
# A network whose new endpoints were programmed from their events has its full sync (a read of all its
# registrations, which also removes what they replaced) this much later, once for all that came meanwhile.
# The events did the work; the sync only settles what they replaced, so it may wait: at 0.2 s, ten agents
# syncing after every few runs took CPU the runs needed (etcd, 10 hosts: p99 74 ms; 1 s: 34-47 ms).
SYNC_LAG = 1.0
IDLE_LOOK = 0.25  # seconds between looks for a first overlay network while there is none (a watch polls the store)


class Agent:
    def __init__(self, engine: Engine, ttl: float = 10.0, resync_every: float = 30.0,
                 log: Log | None = None, on_demand: bool = False) -> None:
        self.engine = engine
        self.ctx = engine.ctx
        self.ttl = ttl
        self.resync_every = resync_every
        self.log = log or (lambda line: None)
        self.on_demand = on_demand
        self.lease = 0
        self.vtep = ""
        self.server: DnsServer | None = None
        self.healer: FirewallHealer | None = None
        self._stop = threading.Event()
        self._idle_since: float | None = None
        self._networks: dict[str, Network] = {}  # this host's overlay networks, as of the last sync
        self._due: dict[str, float] = {}  # network -> when its sync is due (its new endpoints are in already)

    # -- registration -------------------------------------------------------------

    def register(self, host: Links) -> bool:
        """A fresh lease; this host's record and all its endpoint registrations move onto it.

        False when the host has no underlay address: no overlay networks here, DNS only.
        """
        underlay = host.underlay()
        if underlay is None:
            return False
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
        return True

    # -- syncing ------------------------------------------------------------------

    def sync(self, host: Links, names: set[str] | None = None) -> None:
        """Program the named networks (None: all of this host's) from the store; idempotent."""
        local_nets = self.ctx.transact(overlay.local_networks)
        if names is None:
            self._networks = local_nets
        else:
            self._networks.update({n: net for n, net in local_nets.items() if n in names})
        for name in sorted(local_nets if names is None else names & set(local_nets)):
            net = local_nets[name]
            if host.link(vxlan_name(net.bridge)) is None:
                continue  # the engine makes the device (and syncs it) when a sandbox joins
            added, removed = overlay.sync_here(self.ctx, host, net, self.vtep, announce=True)
            if added or removed:
                self.log(f"{name}: +{added} -{removed} entries")

    def full_sync(self, host: Links, remote: RemoteNames | None = None) -> int:
        """Everything from a fresh list; returns the revision to watch after."""
        revision = self.ctx.store.revision()  # first: a change after it is watched, maybe seen twice
        self._due.clear()
        self.sync(host)
        if remote is not None:
            remote.full()
        return revision

    # -- the process ----------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to return, from any thread or a signal handler."""
        self._stop.set()
        if self.server is not None:
            self.server.stop()
        healer = self.healer
        if healer is not None:
            healer.wake()

    def run(self, stop: threading.Event | None = None) -> None:
        """Serve DNS and, with an underlay, keep the lease and follow the store, until stopped."""
        if stop is not None:  # a caller's event: it stops us as stop() does
            def relay() -> None:
                stop.wait()
                self.stop()

            threading.Thread(target=relay, name="agent-stop", daemon=True).start()
        if not self.on_demand:
            hostagent.take_over(self.ctx)
        with self.ctx.open_host() as host:
            overlays_here = self.register(host)
        if not overlays_here:
            self.log(f"host {self.ctx.node} has no underlay address: no overlay networks here, DNS only")
        self.server = DnsServer(dnsctl.socket_path(self.ctx.state_dir, self.ctx.node), self.ctx.host_netns,
                                local(self.ctx), log=self.log)
        watcher = None
        healer = self.healer = FirewallHealer(self.ctx, self._stop, self.log)
        healing = threading.Thread(target=healer.run, name="agent-firewall", daemon=True)
        healing.start()
        try:
            if overlays_here:
                remote = RemoteNames(self.ctx, self._submit)
                watcher = threading.Thread(target=self._follow, args=(remote,), name="agent-overlay", daemon=True)
                watcher.start()
            if not self._stop.is_set():
                self.server.run(self._stop, tick=self._tick)
        finally:
            self._stop.set()
            self.server.close()
            if watcher is not None:
                watcher.join(timeout=2 * WATCH_TIMEOUT)
            healing.join(timeout=2 * WATCH_TIMEOUT)
            if not healing.is_alive():  # else it may still read the pipe: the process's exit closes it
                self.healer = None
                healer.close()
            if self.on_demand:
                self._leave()

    def _leave(self) -> None:
        """An agent started on demand goes: its own record; its host's too if nothing is left on the host
        (one that gives way to a user's agent leaves that agent the lease's endpoints to move)."""
        with contextlib.suppress(OverlaysError):
            if self.lease and self.ctx.transact(records.host_idle):
                self.ctx.store.revoke_lease(self.lease)
        me = hostagent.Started(os.getpid(), process.start_time(os.getpid()) or 0)
        hostagent.forget_record(self.ctx, me)

    # -- DNS ------------------------------------------------------------------------

    def _submit(self, key: str, found: tuple[Record, ...] | None) -> None:
        """From the watch thread: a remote sandbox's names, to the server's thread."""
        server = self.server
        if server is None:
            return

        def apply() -> None:
            if found is None:
                server.unregister(key)
            else:
                server.register(key, None, found)

        def done(future: Any) -> None:
            if not future.cancelled() and future.exception() is not None:
                self.log(f"names of {key}: {future.exception()}")

        server.submit(apply).add_done_callback(done)

    def _tick(self) -> None:
        """Once a second on the server's thread: does an agent started on demand still have a reason to run?"""
        if not self.on_demand:
            return
        try:
            if self.ctx.host_netns is not None and not self.ctx.kernel.netns_exists(self.ctx.host_netns):
                self.log(f"host namespace {self.ctx.host_netns} is gone: stopping")
                self.stop()
                return
            if self.server is not None and self.server.boxes:
                self._idle_since = None
                return
            now = time.monotonic()
            if self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= IDLE_GRACE and self.ctx.transact(records.host_idle):
                self.log(f"host {self.ctx.node} has no sandbox and no network left: stopping")
                self.stop()
        except OverlaysError as e:
            self.log(f"idle check: {e}")

    # -- overlays -------------------------------------------------------------------

    def _follow(self, remote: RemoteNames) -> None:
        """The watch thread: keep the lease, follow the store, heal drift (logs and goes on after errors)."""
        while not self._stop.is_set():
            try:
                self._watch(remote)
            except OverlaysError as e:
                self.log(f"overlay loop: {e}; again in 1 s")
                self._stop.wait(1.0)

    def _watch(self, remote: RemoteNames) -> None:
        store = self.ctx.store
        with self.ctx.open_host() as host:
            host.prepare_overlay_writes()  # else the first endpoint to program waits for pyroute2's import
            revision = self.full_sync(host, remote)
            keepalive_at = time.monotonic() + self.ttl / 3
            resync_at = time.monotonic() + self.resync_every
            watching = self._overlay_networks()
            while not self._stop.is_set():
                if not watching:  # nothing to follow: look again in a second instead of polling the store
                    self._stop.wait(IDLE_LOOK)
                    if self._overlay_networks():
                        watching, revision = True, self.full_sync(host, remote)
                    events = []
                else:
                    try:
                        events = store.watch(records.REGISTRATIONS_PREFIX, revision, timeout=self._watch_timeout())
                    except Compacted:
                        revision = self.full_sync(host, remote)
                        continue
                if events:
                    revision = events[-1].revision
                    touched = {e.key.split("/")[1] for e in events}
                    now, urgent = time.monotonic(), self._add_new(host, events)
                    for name in touched:
                        due = now if name in urgent else now + SYNC_LAG
                        self._due[name] = min(self._due.get(name, due), due)
                    remote.apply(events)
                self._sync_due(host)
                now = time.monotonic()
                if now >= keepalive_at:
                    keepalive_at = now + self.ttl / 3
                    if not self._keepalive():
                        self.register(host)
                        revision = self.full_sync(host, remote)
                if now >= resync_at:
                    resync_at = now + self.resync_every
                    revision = max(revision, self.full_sync(host, remote))
                    watching = self._overlay_networks()

    def _add_new(self, host: Links, events: list[Event]) -> set[str]:
        """Each registration put in ``events``, programmed (and announced) from the event itself: a sandbox
        elsewhere may be asking for it already. Returns the networks that need their sync now (a delete, a
        network new to this host, a failure); the others' may wait a moment, to cover several events."""
        urgent = set()
        for event in events:
            name = event.key.split("/")[1]
            net = self._networks.get(name)
            if event.kind != "put" or not isinstance(event.value, dict) or net is None:
                urgent.add(name)
                continue
            found = EndpointRegistration.from_record(event.value)
            if found.vtep == self.vtep:
                continue  # one of this host's own: the bridge reaches it
            if host.link(vxlan_name(net.bridge)) is None:
                urgent.add(name)
                continue
            try:
                overlay.add_here(self.ctx, host, net, self.vtep, found)
            except OverlaysError as e:  # the sync tries again, and says what failed
                self.log(f"{name}: adding {found.ip} at once: {e}")
                urgent.add(name)
        return urgent

    def _watch_timeout(self) -> float:
        """Until the next sync that is due, within the watch's usual bounds."""
        timeout = min(WATCH_TIMEOUT, self.ttl / 3)
        if self._due:
            timeout = min(timeout, max(0.0, min(self._due.values()) - time.monotonic()))
        return timeout

    def _sync_due(self, host: Links) -> None:
        now = time.monotonic()
        due = {name for name, at in self._due.items() if at <= now}
        if due:
            for name in due:
                del self._due[name]
            self.sync(host, due)

    def _overlay_networks(self) -> bool:
        """Whether the store holds any overlay network (the shared root holds no other kind)."""
        return bool(self.ctx.transact(lambda txn: txn.root.range(records.NETWORKS_PREFIX)))

    def _keepalive(self) -> bool:
        try:
            return self.ctx.store.keepalive(self.lease)
        except (LeaseNotFound, OverlaysError) as e:
            self.log(f"keepalive failed: {e}")
            return False

