"""Faults on demand: partitions, impairments and link flaps, each one operation over store and kernel.

Design note. The store says which faults are in force on this host (records.py:
``faults/...``); the kernel is made to match, namespace by namespace (the renderers
are drivers/faults.py's). An operation, under the host's ``faults`` lock:

1. one transaction reads every fault record of the host, drops those whose time is
   up and those whose sandbox or endpoint is gone, applies the change, and writes the
   records that changed as *pending*;
2. each namespace whose faults differ (or that a killed command left pending) is
   made to match: its table rendered whole, its qdiscs and links set, with an undo
   step that puts back what it had;
3. one more transaction marks the records ready.
So whatever a command killed halfway left behind, the next fault operation on the
host finishes (``heal --all``, ``down`` and the expiry timer among them).

Durations. A fault given one records its end as wall-clock time. Its nft elements
carry the time left as their ``timeout``: the kernel ends them on time by itself. A
qdisc or a link taken down cannot expire so; for those a *timer* is started before
anything changes (``faulttimer``: a detached process that sleeps until the end, then
runs ``heal_expired``), and its pid is recorded with the fault, so that healing
earlier stops it. It outlives the command that set the fault, whatever kills that.
A store another process cannot open (memory) gets no timer: the next operation after
the end heals the fault.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from overlays.drivers import faults as render
from overlays.engine import records
from overlays.engine.context import Context, NodeTxn
from overlays.engine.netdrivers import driver_for, driver_named
from overlays.errors import InvalidSpec, NotFound
from overlays.kernel import process
from overlays.model.faults import (
    HOST_TARGET,
    Faults,
    Impairment,
    ImpairSpec,
    LinkDown,
    Partition,
    PartitionSpec,
    Peer,
    Timer,
    local_drops,
)
from overlays.model.state import Endpoint, Network, Sandbox
from overlays.undo import Undo

LOCK = "faults"
NETEM_MISSING = ("--delay and --jitter need the netem qdisc, which this kernel lacks "
                 "(build it with CONFIG_NET_SCH_NETEM)")


# -- records ---------------------------------------------------------------------------------------------------------


def read(txn: NodeTxn) -> Faults:
    found = Faults()
    for v in txn.range(records.PARTITIONS_PREFIX).values():
        p = Partition.from_record(v)
        found.partitions[p.name] = p
    for v in txn.range(records.IMPAIRMENTS_PREFIX).values():
        i = Impairment.from_record(v)
        found.impairments[(i.sandbox, i.network)] = i
    for v in txn.range(records.LINKS_DOWN_PREFIX).values():
        link = LinkDown.from_record(v)
        found.links[(link.sandbox, link.network)] = link
    return found


def _write(txn: NodeTxn, before: Faults, after: Faults) -> Faults:
    """Write what changed (as pending) and delete what went; returns ``after`` as written."""
    written = Faults()
    for name, p in after.partitions.items():
        old = before.partitions.get(name)
        written.partitions[name] = p if old == p else replace(p, state="pending")
    for k, i in after.impairments.items():
        written.impairments[k] = i if before.impairments.get(k) == i else replace(i, state="pending")
    for k, link in after.links.items():
        written.links[k] = link if before.links.get(k) == link else replace(link, state="pending")
    for name in before.partitions.keys() - written.partitions.keys():
        txn.delete(records.partition_key(name))
    for sandbox, network in before.impairments.keys() - written.impairments.keys():
        txn.delete(records.impairment_key(sandbox, network))
    for sandbox, network in before.links.keys() - written.links.keys():
        txn.delete(records.link_down_key(sandbox, network))
    for name, p in written.partitions.items():
        if before.partitions.get(name) != p:
            txn.put(records.partition_key(name), p.to_record())
    for (sandbox, network), i in written.impairments.items():
        if before.impairments.get((sandbox, network)) != i:
            txn.put(records.impairment_key(sandbox, network), i.to_record())
    for (sandbox, network), link in written.links.items():
        if before.links.get((sandbox, network)) != link:
            txn.put(records.link_down_key(sandbox, network), link.to_record())
    return written


class Boxes:
    """The sandboxes an operation looks at, each read once in its transaction."""

    def __init__(self, txn: NodeTxn) -> None:
        self.txn = txn
        self.found: dict[str, Sandbox | None] = {}

    def get(self, name: str) -> Sandbox | None:
        if name not in self.found:
            try:
                self.found[name] = records.get_sandbox(self.txn, name)
            except NotFound:
                self.found[name] = None
        return self.found[name]

    def need(self, name: str) -> Sandbox:
        box = self.get(name)
        if box is None:
            raise NotFound(f"sandbox {name} does not exist")
        return box


def _still_there(faults: Faults, boxes: Boxes) -> Faults:
    """Without what acts in a sandbox (or on an endpoint) that is gone: its namespace took it along."""
    def has(sandbox: str, network: str | None = None) -> bool:
        box = boxes.get(sandbox)
        return box is not None and (network is None or box.endpoint(network) is not None)

    parts = {}
    for name, p in faults.partitions.items():
        targets = {t: d for t, d in p.targets.items() if t == HOST_TARGET or has(t)}
        if targets:
            parts[name] = p if targets == p.targets else replace(p, targets=targets)
    return Faults(parts, {k: v for k, v in faults.impairments.items() if has(*k)},
                  {k: v for k, v in faults.links.items() if has(*k)})


Mutate = Callable[[Faults, Boxes], None]


@dataclass
class _Seen:
    before: Faults
    after: Faults
    boxes: dict[str, Sandbox]
    networks: dict[str, Network] = field(default_factory=dict)


def _begin(txn: NodeTxn, mutate: Mutate, now: float) -> _Seen:
    before = read(txn)
    boxes = Boxes(txn)
    for target in before.targets() - {HOST_TARGET}:
        boxes.get(target)
    after = _still_there(before.without(before.expired(now)), boxes)
    mutate(after, boxes)
    after = _write(txn, before, after)
    found = {n: b for n, b in boxes.found.items() if b is not None}
    # Bringing a link up may mean its default route: which endpoint carries it depends on all their networks.
    flapped = {ep.network for (s, _) in (*before.links, *after.links) if s in found for ep in found[s].endpoints}
    return _Seen(before, after, found, records.networks_named(txn, sorted(flapped), missing_ok=True))


def _mark_ready(txn: NodeTxn, faults: Faults) -> None:
    for name, p in faults.partitions.items():
        if p.state != "ready" and txn.get(records.partition_key(name)) is not None:
            txn.put(records.partition_key(name), replace(p, state="ready").to_record())
    for (s, n), i in faults.impairments.items():
        if i.state != "ready" and txn.get(records.impairment_key(s, n)) is not None:
            txn.put(records.impairment_key(s, n), replace(i, state="ready").to_record())
    for (s, n), link in faults.links.items():
        if link.state != "ready" and txn.get(records.link_down_key(s, n)) is not None:
            txn.put(records.link_down_key(s, n), replace(link, state="ready").to_record())


def _restore(ctx: Context, before: Faults) -> None:
    ctx.transact(lambda txn: _write(txn, read(txn), before))


# -- one operation ---------------------------------------------------------------------------------------------------


def change(ctx: Context, mutate: Mutate, everywhere: bool = False, remake: set[str] | None = None) -> Faults:
    """Change the faults in force (see the design note); ``everywhere``: also re-make every namespace they
    touch; ``remake``: these (a sandbox whose namespace was made again, say)."""
    now = time.time()
    with ctx.lock(LOCK):
        seen = ctx.transact(lambda txn: _begin(txn, mutate, now))
        undo = Undo()
        undo.push("put the fault records back", _restore, ctx, seen.before)
        try:
            for target in sorted(_touched(seen, everywhere) | ((remake or set()) & seen.after.targets())):
                _make_target(ctx, seen, target, now, undo)
            ctx.transact(lambda txn: _mark_ready(txn, seen.after))
        except BaseException:
            undo.rollback()
            raise
    stop_timers(seen.before.timers() - seen.after.timers())
    return seen.after.ready()


def _wanted(faults: Faults, target: str, now: float) -> tuple[object, ...]:
    links = sorted(k for k in faults.links if k[0] == target)
    return render.table_state(faults, target).live(now), render.shaping(faults, target), links


def _touched(seen: _Seen, everywhere: bool) -> set[str]:
    """The namespaces to make again: those whose faults change, or were left pending, or (``everywhere``) all."""
    now = time.time()
    targets = seen.before.targets() | seen.after.targets()
    if everywhere:
        return targets
    changed = {t for t in targets if _wanted(seen.before, t, now) != _wanted(seen.after, t, now)}
    return changed | seen.before.pending_targets() | seen.before.expired(now).targets()


def _make_target(ctx: Context, seen: _Seen, target: str, now: float, undo: Undo) -> None:
    """One namespace made to match ``seen.after``; undo puts back what ``seen.before`` said."""
    if target == HOST_TARGET:
        _table(ctx, ctx.host_netns, seen, target, now, undo)
        return
    box = seen.boxes.get(target)
    if box is None or not ctx.kernel.netns_exists(box.netns):
        return  # gone: its namespace took its table, qdiscs and links with it
    _table(ctx, box.netns, seen, target, now, undo)
    before, after = render.shaping(seen.before, target), render.shaping(seen.after, target)
    changed = sorted(i for i in before.keys() | after.keys() if before.get(i) != after.get(i) or i in after)
    if changed:
        undo.push(f"shape the interfaces of {target} as before", _shape, ctx, box, changed, before)
        _shape(ctx, box, changed, after)
    keys = sorted(k for k in seen.before.links.keys() | seen.after.links.keys() if k[0] == box.name)
    if keys:
        undo.push(f"links of {target} as before", _links, ctx, box, keys, seen.before, seen.networks)
        _links(ctx, box, keys, seen.after, seen.networks)


def _table(ctx: Context, netns: str | None, seen: _Seen, target: str, now: float, undo: Undo) -> None:
    old = render.render(ctx.instance, render.table_state(seen.before, target), time.time())
    undo.push(f"put back the fault table of {target or ctx.host_label}", ctx.kernel.nft_apply, netns, old)
    ctx.kernel.nft_apply(netns, render.render(ctx.instance, render.table_state(seen.after, target), now))


def _shape(ctx: Context, box: Sandbox, ifnames: list[str], want: dict[str, render.Shaping]) -> None:
    """Each of ``ifnames`` shaped as ``want`` says (not at all if it says nothing), in its own handle."""
    mtus = {ep.ifname: ep.mtu for ep in box.endpoints}
    with ctx.kernel.open_path(box.netns, ctx.kernel.netns_path(box.netns)) as inside:
        for ifname in ifnames:
            if ifname in mtus:  # else that endpoint went, and its interface with it
                render.apply_shaping(inside, ifname, want.get(ifname, render.Shaping()), ctx.instance, mtus[ifname])


def _links(ctx: Context, box: Sandbox, keys: list[tuple[str, str]], faults: Faults,
           networks: dict[str, Network]) -> None:
    """The endpoints ``keys`` down if ``faults`` say so, else up."""
    with ctx.open_host() as host, ctx.kernel.open_path(box.netns, ctx.kernel.netns_path(box.netns)) as inside:
        for sandbox, network in keys:
            ep = box.endpoint(network)
            if ep is None:
                continue
            driver = driver_named(ep.driver)
            if (sandbox, network) in faults.links:
                driver.link_down(ctx, host, inside, ep)
            else:
                driver.link_up(ctx, host, inside, ep, _carries_default_route(box, ep, networks))


def _carries_default_route(box: Sandbox, ep: Endpoint, networks: dict[str, Network]) -> bool:
    """Whether ``ep`` is the endpoint that gives its sandbox the default route (the first that routes out)."""
    for other in sorted(box.endpoints, key=lambda e: (len(e.ifname), e.ifname)):
        net = networks.get(other.network)
        if net is not None and driver_for(net).routes_out(net):
            return other == ep
    return False


# -- timers ----------------------------------------------------------------------------------------------------------


def start_timer(ctx: Context, expires: float) -> Timer | None:
    """A detached process that heals this host's expired faults at ``expires`` (None: no store it could open)."""
    if ctx.store_url is None and not _default_store(ctx):
        return None
    argv = [sys.executable, "-m", "overlays.engine.faulttimer", "--state-dir", str(ctx.state_dir), "--node",
            ctx.node, "--at", repr(expires)]
    argv += ["--store", ctx.store_url] if ctx.store_url else []
    argv += ["--host-netns", ctx.host_netns] if ctx.host_netns else []
    pid = process.spawn_detached(Path("/proc/self/ns/net"), argv, None, ctx.log_dir() / "faults.log")
    return pid, process.start_time(pid) or 0


def _default_store(ctx: Context) -> bool:
    from overlays.store.sqlite import SqliteStore

    return isinstance(ctx.store, SqliteStore) and ctx.store.path == ctx.state_dir / "state.db"


def stop_timers(timers: Iterable[Timer]) -> None:
    for pid, started in timers:
        process.stop(pid, started, grace=1.0)


# -- the operations --------------------------------------------------------------------------------------------------


def partition(ctx: Context, spec: PartitionSpec) -> Partition:
    """Put this host's part of ``spec`` in force (the drops of its own members); replaces one of that name."""
    drops = local_drops(spec, ctx.node)
    if not drops:
        raise InvalidSpec(f"partition {spec.name}: none of its members is on host {ctx.node}")

    def mutate(faults: Faults, boxes: Boxes) -> None:
        for target in drops:
            if target != HOST_TARGET:
                boxes.need(target)
        faults.partitions[spec.name] = Partition(spec.name, spec.shape, spec.cuts, drops, spec.expires, spec.origin)

    # Its namespaces are made again even if the record is the same: putting a fault in force repairs it.
    return change(ctx, mutate, remake=set(drops)).partitions[spec.name]


def heal(ctx: Context, names: Sequence[str] = (), everything: bool = False, origin: str | None = None) -> list[str]:
    """Heal partitions: those named, else all; ``everything``: every fault; ``origin``: those it made. Returns them."""
    healed: list[str] = []

    def mutate(faults: Faults, boxes: Boxes) -> None:
        healed.clear()
        for name in names:
            if name not in faults.partitions and not _named_impairments(faults, name):
                raise NotFound(f"no partition or impairment {name} is in force on host {ctx.node}")
        chosen = [n for n, p in faults.partitions.items()
                  if (n in names if names else origin is None or p.origin == origin)]
        for n in chosen:
            del faults.partitions[n]
        healed.extend(chosen)
        for key in [k for k, i in faults.impairments.items()
                    if everything or i.spec.name in names or (origin is not None and i.spec.origin == origin)]:
            healed.append(faults.impairments.pop(key).spec.name or f"{key[0]}/{key[1]}")
        if everything:
            healed.extend(f"{s}/{n} link" for s, n in faults.links)
            faults.links.clear()

    change(ctx, mutate, everywhere=everything)
    return healed


def _named_impairments(faults: Faults, name: str) -> list[Impairment]:
    return [i for i in faults.impairments.values() if name and i.spec.name == name]


def _endpoint(box: Sandbox, network: str | None) -> Endpoint:
    if network is not None:
        ep = box.endpoint(network)
        if ep is None:
            raise NotFound(f"sandbox {box.name} is not connected to network {network}")
        return ep
    if len(box.endpoints) == 1:
        return box.endpoints[0]
    if not box.endpoints:
        raise InvalidSpec(f"sandbox {box.name} is on no network")
    nets = ", ".join(e.network for e in box.endpoints)
    raise InvalidSpec(f"sandbox {box.name} is on several networks ({nets}): say which with --network")


def impair(ctx: Context, spec: ImpairSpec) -> Impairment:
    """Impair one endpoint (replacing what impaired it before)."""
    if (spec.delay or spec.jitter) and not ctx.kernel.has_qdisc("netem"):
        raise InvalidSpec(f"impair {spec.sandbox}: {NETEM_MISSING}")
    ctx.require_root()
    timer = start_timer(ctx, spec.expires) if spec.expires is not None and (spec.rate or spec.delay) else None
    found: list[Impairment] = []

    def mutate(faults: Faults, boxes: Boxes) -> None:
        ep = _endpoint(boxes.need(spec.sandbox), spec.network)
        found[:] = [Impairment(replace(spec, network=ep.network), ep.network, ep.ifname, timer)]
        faults.impairments[(spec.sandbox, ep.network)] = found[0]

    try:
        after = change(ctx, mutate, remake={spec.sandbox})
    except BaseException:
        stop_timers([timer] if timer else [])
        raise
    return after.impairments[(spec.sandbox, found[0].network)]


def clear(ctx: Context, sandbox: str, network: str | None = None) -> list[Impairment]:
    """Lift the impairments of a sandbox (of its endpoint on ``network`` only, if given)."""
    cleared: list[Impairment] = []

    def mutate(faults: Faults, boxes: Boxes) -> None:
        box = boxes.need(sandbox)
        keys = [k for k in faults.impairments if k[0] == sandbox and (network is None or k[1] == network)]
        if network is not None and box.endpoint(network) is None:
            raise NotFound(f"sandbox {sandbox} is not connected to network {network}")
        if not keys:
            raise NotFound(f"sandbox {sandbox} has no impairment in force" + (f" on {network}" if network else ""))
        cleared[:] = [faults.impairments.pop(k) for k in keys]

    change(ctx, mutate)
    return cleared


def link(ctx: Context, sandbox: str, network: str | None, down: bool, expires: float | None = None) -> Endpoint:
    """Take an endpoint's link down (until ``expires``, if given), or bring it up again."""
    ctx.require_root()
    timer = start_timer(ctx, expires) if down and expires is not None else None
    found: list[Endpoint] = []

    def mutate(faults: Faults, boxes: Boxes) -> None:
        ep = _endpoint(boxes.need(sandbox), network)
        found[:] = [ep]
        if down:
            faults.links[(sandbox, ep.network)] = LinkDown(sandbox, ep.network, ep.ifname, expires, timer)
        elif faults.links.pop((sandbox, ep.network), None) is None:
            raise InvalidSpec(f"the link of sandbox {sandbox} on {ep.network} is not down")

    try:
        change(ctx, mutate, remake={sandbox})
    except BaseException:
        stop_timers([timer] if timer else [])
        raise
    return found[0]


def in_force(ctx: Context) -> Faults:
    """The faults in force, as recorded (those whose time is up, or whose sandbox is gone, left out)."""

    def look(txn: NodeTxn) -> Faults:
        faults = read(txn)
        return _still_there(faults.without(faults.expired(time.time())), Boxes(txn))

    return ctx.transact(look)


def problems(ctx: Context, name: str | None = None) -> list[str]:
    """Read-only: what of the faults in force (of the partition or impairment ``name`` only, if given) the
    kernel lacks: a namespace's table, an interface's qdisc (someone deleted them, say)."""
    def look(txn: NodeTxn) -> tuple[Faults, dict[str, Sandbox]]:
        faults, boxes = read(txn), Boxes(txn)
        faults = _still_there(faults.without(faults.expired(time.time())), boxes)
        return faults, {n: b for n, b in boxes.found.items() if b is not None}

    faults, boxes = ctx.transact(look)
    if name is not None:
        faults = Faults({k: v for k, v in faults.partitions.items() if k == name},
                        {k: v for k, v in faults.impairments.items() if v.spec.name == name})
    found = []
    now = time.time()
    table = render.table_name(ctx.instance)
    for target in sorted(faults.targets()):
        box = boxes.get(target)
        where = ctx.host_netns if target == HOST_TARGET else box.netns if box else None
        label = f"sandbox {target}" if target != HOST_TARGET else f"host {ctx.node}"
        if (target == HOST_TARGET or where) and render.table_state(faults, target).live(now) and \
                ctx.kernel.nft_list_table(where, render.FAMILY, table) is None:
            found.append(f"the fault table of {label} is missing")
        shaped = render.shaping(faults, target)
        if box is not None and shaped:
            with ctx.kernel.open_path(box.netns, ctx.kernel.netns_path(box.netns)) as inside:
                for ifname, want in sorted(shaped.items()):
                    if want.out is not None and not any(q.shape == want.out for q in inside.qdiscs(ifname)):
                        found.append(f"interface {ifname} of {label} is not shaped as its impairment says")
    return found


def remake(ctx: Context, sandboxes: set[str]) -> None:
    """Put the faults of ``sandboxes`` back in their namespaces (after a repair made them again)."""
    if ctx.transact(lambda txn: bool(txn.range(records.FAULTS_PREFIX))):
        change(ctx, lambda faults, boxes: None, remake=sandboxes)


def heal_expired(ctx: Context) -> Faults:
    """Heal what is due (the timer's job; also finishes what a killed command left pending)."""
    return change(ctx, lambda faults, boxes: None)


def peers(ctx: Context, names: Sequence[str]) -> list[Peer]:
    """This host's sandbox ``names`` as partition members: their addresses, and their published ports."""
    boxes = ctx.transact(lambda txn: [records.get_sandbox(txn, n) for n in names])
    host_addresses: list[str] = []
    if any(box.ports for box in boxes):
        with ctx.open_host() as host:
            host_addresses = [str(a) for a in host.addresses() if not a.is_loopback]
    found = []
    for box in boxes:
        published = sorted({f"{m.host_ip or ip} . {m.protocol} . {port}" for m in box.ports
                            if not (m.host_ip and m.host_ip.is_loopback)
                            for ip in ([str(m.host_ip)] if m.host_ip else host_addresses)
                            for port in [m.host_port]})
        found.append(Peer(box.name, "sandbox", ctx.node, tuple(str(e.ip) for e in box.endpoints), tuple(published)))
    return found
