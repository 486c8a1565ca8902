"""Sandboxes: a named network namespace, its endpoints, and optionally a process.

``create`` follows the endpoint protocol for the whole sandbox at once: one store
transaction reads its networks and records the sandbox and all its endpoints as
pending, the kernel is made to match with an undo step per change, and one more
transaction marks it ready. ``remove`` is one transaction, and best-effort: it keeps
going past failures and reports them. The host's DNS server learns a sandbox's names as
the last commit is made, and forgets them before its namespace goes (see hostdns).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from overlays.drivers.firewall import Publish
from overlays.engine import endpoints, firewall, hostagent, hostdns, ports, records, views
from overlays.engine.context import Context, NodeTxn
from overlays.engine.endpoints import Networks
from overlays.engine.netdrivers import driver_named
from overlays.errors import Conflict, InvalidSpec, NotFound, OverlaysError
from overlays.kernel import process, procs
from overlays.model.names import netns_name
from overlays.model.ports import PortMapping
from overlays.model.specs import EndpointRequest, SandboxSpec
from overlays.model.state import Endpoint, Sandbox
from overlays.undo import Undo, best_effort


def _record(ctx: Context, box: Sandbox, spec: SandboxSpec, check: Callable[[NodeTxn], None] | None = None,
            ) -> tuple[list[Endpoint], Networks, list[Publish]]:
    """One transaction: the sandbox (its name must be free), its endpoints (pending) and its port claims."""

    def do(txn: NodeTxn) -> tuple[list[Endpoint], Networks, list[Publish]]:
        wanted = [r.network for r in spec.networks]
        txn.prefetch([records.sandbox_key(box.name), *(records.endpoint_key(box.name, n) for n in wanted),
                      *(records.network_key(n) for n in wanted)], root=[records.network_key(n) for n in wanted])
        if not txn.create(records.sandbox_key(box.name), box.to_record()):
            raise Conflict(f"sandbox {box.name} already exists")
        if check is not None:
            check(txn)
        nets = records.networks_named(txn, [r.network for r in spec.networks])
        names = endpoints.ifnames(box.name, spec.networks)
        eps = [endpoints.allocate(txn, ctx, nets[r.network], box.name, r, name, box.hostname)
               for r, name in zip(spec.networks, names, strict=True)]
        if not box.ports:
            return eps, nets, []
        to = ports.require_targets(box.name, eps, nets, box.ports)
        ports.claim(txn, box.name, box.ports)
        return eps, nets, ports.publishes(box.ports, to)

    return ctx.transact(do)


def _forget(txn: NodeTxn, ctx: Context, box: Sandbox) -> None:
    """Inside a transaction: drop the sandbox, its endpoints, their addresses and its port claims."""
    endpoints.drop_records(txn, ctx, box.endpoints)
    ports.release(txn, box.name, box.ports)
    txn.delete(records.sandbox_key(box.name))


def _mark_ready(ctx: Context, box: Sandbox, eps: list[Endpoint]) -> Sandbox:
    ready = replace(box, state="ready")

    def do(txn: NodeTxn) -> None:
        txn.prefetch([records.sandbox_key(box.name), *(records.endpoint_key(e.sandbox, e.network) for e in eps)])
        if txn.get(records.sandbox_key(box.name)) is None:
            raise NotFound(f"sandbox {box.name} was removed while it was being created")
        txn.put(records.sandbox_key(box.name), ready.to_record())
        endpoints.mark(txn, eps, "ready")

    ctx.transact(do)
    return replace(ready, endpoints=tuple(replace(e, state="ready") for e in eps))


def create(ctx: Context, spec: SandboxSpec, labels: Mapping[str, str] | None = None) -> Sandbox:
    """A new namespace named after the sandbox, with loopback up and one endpoint per network."""
    box = Sandbox(name=spec.name, netns=netns_name(spec.name, ctx.instance), hostname=spec.hostname,
                  created=time.time(), ports=spec.ports, labels=_labels(labels))
    return _build(ctx, box, spec, lambda: ctx.kernel.create_netns(box.netns))


def adopt(ctx: Context, name: str, pid: int | None = None, netns_path: str | None = None, *,
          networks: Sequence[EndpointRequest] = (), ports: Sequence[PortMapping] = (),
          labels: Mapping[str, str] | None = None, shared: bool = False) -> Sandbox:
    """Take an existing process's (or bind-mounted) namespace under our name, with endpoints and ports as ``run``.

    The namespace stays its owner's: removing the sandbox (or a failure halfway) takes our
    interfaces out of it and our name off it, and never deletes it. It may be no other
    sandbox's, nor the host's own; ``shared``: other adopted sandboxes may hold it too (a
    runtime's container with an attachment per network, each a sandbox of its own).
    """
    spec = SandboxSpec.parse(name, list(networks), None, list(ports))
    if (pid is None) == (netns_path is None):
        raise InvalidSpec(f"sandbox {name}: give exactly one of --pid or --netns")
    if pid is not None and process.start_time(pid) is None:
        raise NotFound(f"process {pid} does not exist")
    ctx.require_root()
    source = Path(f"/proc/{pid}/ns/net") if pid is not None else Path(str(netns_path))
    found = ctx.kernel.namespace_of(source)
    host = ctx.kernel.netns_path(ctx.host_netns) if ctx.host_netns else Path("/proc/thread-self/ns/net")
    if found == ctx.kernel.namespace_of(host):
        raise InvalidSpec(f"sandbox {name}: {source} is the host's own network namespace ({ctx.host_label}); "
                          "a sandbox needs one of its own")
    box = Sandbox(name=name, netns=netns_name(name, ctx.instance), adopted=True, pid=pid,
                  pid_start=process.start_time(pid) if pid else None, created=time.time(), ports=spec.ports,
                  labels=_labels(labels))
    return _build(ctx, box, spec, lambda: ctx.kernel.adopt_netns(box.netns, source),
                  check=lambda txn: _not_a_sandbox_s(ctx, txn, name, source, found, shared))


def _not_a_sandbox_s(ctx: Context, txn: NodeTxn, name: str, source: Path, found: object, shared: bool) -> None:
    """Inside the record transaction: the namespace to adopt is no other sandbox's (made, or adopted unless
    ``shared``: a runtime's container with an attachment per network)."""
    for other in records.list_sandboxes(txn):
        if shared and other.adopted:
            continue
        path = ctx.kernel.netns_path(other.netns)
        try:
            theirs = ctx.kernel.namespace_of(path)
        except OverlaysError:
            continue  # its namespace is gone: nothing to share
        if theirs == found:
            raise Conflict(f"sandbox {name}: {source} is already sandbox {other.name}'s network namespace")


def _labels(labels: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((labels or {}).items()))


def _build(ctx: Context, box: Sandbox, spec: SandboxSpec, make_netns: Callable[[], Path],
           check: Callable[[NodeTxn], None] | None = None) -> Sandbox:
    """The endpoint protocol for a whole sandbox: record it pending, make the kernel match, mark it ready."""
    with ctx.open_host() as host:
        named = hostdns.prepare(ctx)  # the host's DNS server runs (started now if none does)
        ports.check_host_ips(host, spec.ports)
        eps, nets, publishes = _record(ctx, box, spec, check)
        undo = Undo()
        undo.push(f"forget sandbox {box.name}", _forget_now, ctx, replace(box, endpoints=tuple(eps)), nets)
        try:
            path = make_netns()
            undo.push(f"release netns {box.netns}", ctx.kernel.delete_netns, box.netns)  # adopted: our name only
            with ctx.kernel.open_path(box.netns, path) as inside:
                inside.ensure_up("lo")
                if named:  # now: the server binds its sockets while we wire the sandbox and commit
                    undo.push(f"unregister the names of {box.name}", _unnamed, ctx, box)
                    named = hostdns.announce(ctx, replace(box, endpoints=tuple(eps)), nets)
                for ep in eps:  # e.g. the veth of an earlier sandbox of this name, not yet freed (rm without a wait)
                    driver_named(ep.driver).clear_leftovers(ctx, host, ep)
                endpoints.wire(ctx, host, inside, path, eps, nets, undo)
            undo.push(f"unpublish the ports of {box.name}", firewall.unpublish, ctx, publishes)
            firewall.publish(ctx, publishes)
            ready = _mark_ready(ctx, box, eps)
        except BaseException:
            undo.rollback()
            raise
    if named:
        hostdns.settle(ctx)  # the names are served: the server bound its sockets while we committed
    return ready


def _unnamed(ctx: Context, box: Sandbox) -> None:
    """Undo step: the server forgets the names (and the resolv.conf link) of a sandbox that is not to be."""
    hostdns.withdraw(ctx, box.name, wait=True)
    hostdns.remove_etc(ctx, box.netns)


def _forget_now(ctx: Context, box: Sandbox, nets: Networks) -> None:
    ctx.transact(lambda txn: _forget(txn, ctx, box))
    endpoints.left(ctx, box.endpoints, nets)


def remove(ctx: Context, name: str, force: bool = False, wait: bool = True) -> None:
    """Stop the process, remove the endpoints and namespace, release the addresses."""
    remove_many(ctx, [name], force, wait)


# Sandboxes one transaction forgets, on a store that limits a commit's operations (each takes about
# five compares and as many deletes, more with several endpoints or ports).
SANDBOX_OPS = 16


def remove_many(ctx: Context, names: Sequence[str], force: bool = False, wait: bool = True) -> None:
    """Remove several sandboxes: in one transaction, or in batches where the store limits a commit (etcd).

    Without ``force``, a running sandbox among them refuses the whole removal before any goes.
    """
    limit = ctx.store.txn_ops
    per_txn = max(1, limit // SANDBOX_OPS) if limit else len(names)
    if len(names) <= per_txn:
        _remove_batch(ctx, names, force, wait)
        return
    if not force:
        def check(txn: NodeTxn) -> None:
            for name in names:
                _not_running(records.get_sandbox(txn, name))

        ctx.transact(check)
    failures = []
    for start in range(0, len(names), per_txn):
        try:
            _remove_batch(ctx, names[start:start + per_txn], force, wait)
        except OverlaysError as e:
            failures.append(str(e))
    if failures:
        raise OverlaysError("; ".join(failures))


def _not_running(box: Sandbox) -> None:
    if box.pid and not box.adopted and process.alive(box.pid, box.pid_start):
        raise Conflict(f"sandbox {box.name} is running (pid {box.pid}); stop it first or use -f")


def _remove_batch(ctx: Context, names: Sequence[str], force: bool = False, wait: bool = True) -> None:
    """Remove several sandboxes in one store transaction: read them, tear down, forget them.

    The records stay until the kernel objects they name are gone, so a crash halfway
    leaves sandboxes that the next ``rm`` (or ``doctor``) finishes removing. Tearing down
    is idempotent, so a transaction redone after a conflict only repeats no-ops.
    Deleting a namespace takes about a millisecond, but the kernel removes its veths
    some tens of milliseconds later; waiting once for a whole batch, instead of once per
    sandbox, is what makes tearing down a large topology fast. ``wait=False`` leaves the
    veths to the kernel altogether (a caller removing many one by one waits once at the end),
    and the DNS server's answer to the next call: its names go a moment after it returns.
    """

    def remove(txn: NodeTxn) -> tuple[list[str], list[Sandbox], Networks, bool]:
        boxes = [records.get_sandbox(txn, name) for name in names]
        for box in boxes:
            if not force:
                _not_running(box)
        nets = records.networks_named(txn, [e.network for b in boxes for e in b.endpoints], missing_ok=True)
        failures: list[str] = []
        for box in boxes:
            failures += [f"sandbox {box.name}: {f}" for f in best_effort(_teardown_steps(ctx, box, nets))]
        # The server has let the namespaces go, so their veths can go too (without ``wait``, both later).
        answer = hostdns.settle(ctx) if wait else {}
        if wait:
            failures += best_effort([("wait for veths", lambda: _wait_veths_gone(ctx, boxes))])
        for box in boxes:
            _forget(txn, ctx, box)
        # The last sandbox the server served here: was it the host's last sandbox and network too?
        idle = hostdns.nothing_left(answer) and hostagent.started(ctx) is not None and records.host_idle(txn)
        return failures, boxes, nets, idle

    failures, boxes, nets, idle = ctx.transact(remove)
    failures += best_effort([("after the last endpoints", lambda: endpoints.left(
        ctx, [e for b in boxes for e in b.endpoints], nets))])
    hostagent.stop_if_idle(ctx, idle)
    if failures:
        raise OverlaysError("removed with errors: " + "; ".join(failures))


def _teardown_steps(ctx: Context, box: Sandbox, nets: Networks) -> list[tuple[str, Callable[[], object]]]:
    steps: list[tuple[str, Callable[[], object]]] = []
    if box.command and not box.adopted:  # the recorded process, and any other it or a killed start left
        steps.append(("stop its processes", lambda: _stop_processes(ctx, box)))
    if box.ports and ctx.host_exists():  # else our table went with the host's namespace
        steps.append(("unpublish ports", lambda: firewall.unpublish(ctx, ports.published(box, nets))))
    if box.adopted:
        steps.append(("remove endpoints", lambda: _remove_adopted_endpoints(ctx, box)))
    steps.append(("unregister its names", lambda: hostdns.withdraw(ctx, box.name)))  # its sockets hold the netns
    steps.append((f"delete netns {box.netns}", lambda: ctx.kernel.delete_netns(box.netns)))
    steps.append((f"remove /etc/netns/{box.netns}", lambda: hostdns.remove_etc(ctx, box.netns)))
    return steps


def _stop_processes(ctx: Context, box: Sandbox) -> None:
    recorded = [(box.pid, box.pid_start)] if box.pid else []
    process.stop_all(recorded)
    process.stop_all(procs.of_sandbox(ctx.instance, box.name))  # its children, or one never recorded


def _remove_adopted_endpoints(ctx: Context, box: Sandbox) -> None:
    """An adopted namespace lives on (it is not ours): take our interfaces out of it."""
    if not box.endpoints or not ctx.host_exists():
        return
    inside_exists = ctx.kernel.netns_exists(box.netns)
    with ctx.open_host() as host:
        inside = ctx.kernel.open_path(box.netns, ctx.kernel.netns_path(box.netns)) if inside_exists else None
        try:
            for ep in box.endpoints:
                driver_named(ep.driver).detach(ctx, host, inside, ep)
        finally:
            if inside is not None:
                inside.close()


def _wait_veths_gone(ctx: Context, boxes: Sequence[Sandbox]) -> None:
    """Our namespaces are deleted: wait for the kernel to drop their veths, then delete any stragglers."""
    names = [ep.host_ifname for box in boxes if not box.adopted for ep in box.endpoints if ep.host_ifname]
    if not names or not ctx.host_exists():
        return  # no veths, or the host is gone and our veths with it
    with ctx.open_host() as host:
        for left in ctx.kernel.wait_links_gone(host, names):
            host.delete_link(left)


get, list_all, status = views.sandbox, views.sandboxes, views.status


def _startable(ctx: Context, name: str, argv: Sequence[str]) -> Sandbox:
    """The sandbox, its command recorded before it starts (no pid yet): a crash between the start and the
    recording leaves a record that says a command may run, so ``rm`` and the next start look for it."""
    if not argv:
        raise InvalidSpec(f"sandbox {name}: no command given")

    def intend(txn: NodeTxn) -> tuple[Sandbox, bool]:
        box = records.get_sandbox(txn, name)
        if box.pid and process.alive(box.pid, box.pid_start):
            raise Conflict(f"sandbox {name} already runs pid {box.pid}")
        txn.put(records.sandbox_key(name), replace(box, pid=None, pid_start=None, command=tuple(argv)).to_record())
        return box, bool(box.command)

    box, ran_before = ctx.transact(intend)
    if ran_before:  # what a killed start left running unrecorded would hold its ports: it goes first
        process.stop_all(procs.of_sandbox(ctx.instance, name))
    return box


def _record_process(ctx: Context, box: Sandbox, pid: int, argv: Sequence[str]) -> None:
    """Record the started process, unless the sandbox went meanwhile (an ``rm -f`` racing this start)
    or another start got there first: then the process goes, never running unrecorded."""
    started = process.start_time(pid)

    def record(txn: NodeTxn) -> str | None:
        raw = txn.get(records.sandbox_key(box.name))
        now = Sandbox.from_record(raw) if raw is not None else None
        if now is None or now.netns != box.netns or now.created != box.created:
            return f"sandbox {box.name} was removed while its command started"
        if now.pid and process.alive(now.pid, now.pid_start):
            return f"sandbox {box.name} already runs pid {now.pid}"
        running = replace(now, pid=pid, pid_start=started, command=tuple(argv))
        txn.put(records.sandbox_key(box.name), running.to_record())
        return None

    refused = ctx.transact(record)
    if refused:
        process.stop(pid, started, grace=1.0)
        raise Conflict(refused)


def _binds(ctx: Context, box: Sandbox) -> list[tuple[str, str]]:
    """What a process in the sandbox sees over /etc: its resolv.conf (the host's server runs, started if need
    be); /etc/netns/<netns> if there is one, else the files the server gives all (it links them there soon)."""
    named = ctx.dns and hostdns.prepare(ctx)
    return ctx.kernel.etc_binds(box.netns, ctx.kernel.dns_etc(ctx.state_dir, ctx.node) if named else None)


def start(ctx: Context, name: str, argv: Sequence[str]) -> int:
    """Start ``argv`` in the background (output to the sandbox's log); recorded so ``rm`` can stop it."""
    box = _startable(ctx, name, argv)
    log = ctx.log_dir() / f"{name}.log"
    pid = process.spawn_detached(ctx.kernel.netns_path(box.netns), argv, box.hostname, log, _binds(ctx, box),
                                 procs.environment(ctx.instance, name))
    _record_process(ctx, box, pid, argv)
    return pid


def start_foreground(ctx: Context, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` in the sandbox attached to our terminal; the caller waits for it."""
    box = _startable(ctx, name, argv)
    proc = process.spawn(ctx.kernel.netns_path(box.netns), argv, box.hostname, binds=_binds(ctx, box),
                         env=procs.environment(ctx.instance, name))
    _record_process(ctx, box, proc.pid, argv)
    return proc


def execute(ctx: Context, name: str, argv: Sequence[str]) -> int:
    """Run ``argv`` inside the sandbox in the foreground; return its exit code."""
    if not argv:
        raise InvalidSpec(f"exec {name}: no command given")
    box = get(ctx, name)
    ctx.require_root()
    return process.spawn(ctx.kernel.netns_path(box.netns), argv, box.hostname, binds=_binds(ctx, box),
                         env=procs.environment(ctx.instance, name)).wait()
