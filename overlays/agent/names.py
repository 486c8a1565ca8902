"""The agent's side of DNS: what a starting server serves, and the names of other hosts' sandboxes.

The server keeps nothing on disk. When the agent starts it, it hands over the restart
list (``local``): every sandbox of this host with its namespace and its names, read
from the store as the engine would register them (hostdns.records_of), so a restarted
agent serves exactly what was served before, before it answers anyone.

Overlay networks span hosts: a sandbox on another host is announced in the shared
store (an ``EndpointRegistration`` per network, with its aliases and hostname), and
``RemoteNames`` turns those into names-only registrations (no namespace: nobody asks
from there), one per remote sandbox, keyed ``<node>/<sandbox>`` (a ``/`` no sandbox
name holds). The agent's watch of the ``overlay/`` keys feeds it: a full list at start
(and after a compaction), then each batch of events: a registration's event carries the
registration whole, so it is applied as it is (no store read: ten agents re-reading a
network on every `run` elsewhere doubled that `run`'s time with etcd, docs/benchmarks.md);
a network it holds nothing of yet is read. It submits only what changed, to the server's
own thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from overlays.dns import Registration
from overlays.engine import hostdns, records
from overlays.engine.context import Context, NodeTxn
from overlays.kernel.dnsctl import Record
from overlays.model.state import EndpointRegistration, Network, Sandbox
from overlays.store.base import Event

Submit = Callable[[str, tuple[Record, ...] | None], None]  # a key's names now (None: gone)


def local(ctx: Context) -> list[Registration]:
    """Every sandbox of this host whose namespace exists, with its names: the server's restart list."""

    def read(txn: NodeTxn) -> tuple[list[Sandbox], dict[str, Network]]:
        boxes = records.list_sandboxes(txn)
        return boxes, records.networks_named(txn, [e.network for b in boxes for e in b.endpoints], missing_ok=True)

    boxes, nets = ctx.transact(read)
    return [Registration(b.name, str(ctx.kernel.netns_path(b.netns)), tuple(hostdns.records_of(b, nets)))
            for b in boxes if ctx.kernel.netns_exists(b.netns)]


def key_of(node: str, sandbox: str) -> str:
    return f"{node}/{sandbox}"


class RemoteNames:
    """The names of other hosts' sandboxes on overlay networks, kept in line with the store."""

    def __init__(self, ctx: Context, submit: Submit) -> None:
        self.ctx = ctx
        self.submit = submit
        self._by_network: dict[str, list[EndpointRegistration]] = {}
        self._networks: dict[str, Network] = {}
        self._served: dict[str, tuple[Record, ...]] = {}

    def full(self) -> int:
        """Everything from a fresh list (at start, after a compaction); returns how many keys changed."""

        def read(txn: NodeTxn) -> tuple[dict[str, list[EndpointRegistration]], dict[str, Network]]:
            found: dict[str, list[EndpointRegistration]] = {}
            for reg in records.all_registrations(txn.root):
                found.setdefault(reg.network, []).append(reg)
            return found, records.networks_named(txn, sorted(found), missing_ok=True)

        self._by_network, self._networks = self.ctx.transact(read)
        return self._publish()

    def apply(self, events: Iterable[Event]) -> int:
        """A batch of watched events under ``overlay/``; returns how many names changed."""
        unknown: set[str] = set()
        touched: set[str] = set()
        for event in events:
            parts = event.key.split("/")  # overlay/<network>/<node>/<sandbox>
            name = parts[1]
            if len(parts) != 4 or name not in self._networks:
                unknown.add(name)
                continue
            touched.add(key_of(parts[2], parts[3]))
            regs = [r for r in self._by_network.get(name, ()) if (r.node, r.sandbox) != (parts[2], parts[3])]
            if event.kind == "put" and isinstance(event.value, dict):
                regs.append(EndpointRegistration.from_record(event.value, name))
            if regs:
                self._by_network[name] = regs
            else:  # its last registration went: as a read would find it
                self._by_network.pop(name, None)
                self._networks.pop(name, None)
        return self.networks_changed(unknown) if unknown else self._publish(touched)

    def networks_changed(self, names: Iterable[str]) -> int:
        """The registrations of these overlay networks changed: read them again."""
        names = sorted(set(names))

        def read(txn: NodeTxn) -> tuple[dict[str, list[EndpointRegistration]], dict[str, Network]]:
            return ({n: records.registrations(txn.root, n) for n in names},
                    records.networks_named(txn, names, missing_ok=True))

        found, nets = self.ctx.transact(read)
        for name in names:
            if found[name] and name in nets:
                self._by_network[name], self._networks[name] = found[name], nets[name]
            else:
                self._by_network.pop(name, None)
                self._networks.pop(name, None)
        return self._publish()

    def _publish(self, only: set[str] | None = None) -> int:
        """Submit each remote sandbox (of ``only`` these keys, if given) whose names differ from what the server
        has; returns how many. Making a sandbox's records is what costs: only those asked for are made."""
        grouped: dict[str, list[EndpointRegistration]] = {}
        for regs in self._by_network.values():
            for reg in regs:
                key = key_of(reg.node, reg.sandbox)
                if reg.node != self.ctx.node and (only is None or key in only):  # ours: the engine registers them
                    grouped.setdefault(key, []).append(reg)
        wanted = {key: tuple(hostdns.remote_records(sorted(regs, key=lambda r: r.network), self._networks))
                  for key, regs in grouped.items()}
        changed = 0
        for key in sorted(set(self._served if only is None else only & self._served.keys()) - set(wanted)):
            del self._served[key]
            self.submit(key, None)
            changed += 1
        for key, found in sorted(wanted.items()):
            if self._served.get(key) != found:
                self._served[key] = found
                self.submit(key, found)
                changed += 1
        return changed

    def served(self) -> dict[str, tuple[Record, ...]]:
        return dict(self._served)
