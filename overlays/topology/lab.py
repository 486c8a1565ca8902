"""A topology brought to life: ``up`` converges, ``down`` removes exactly what ``up`` made.

A Lab holds one engine per host: for a file without ``hosts:`` that is the
engine of ``--host-netns``/``--state-dir``; for a lab, each simulated host is a
namespace of its own with an engine of its own, all sharing one store (each host
under its own node name, ``<lab>.<host>``), as machines share etcd.
The topology's record lives in the main state store, updated after every
action, so an interrupted ``up`` leaves a record that ``down`` can trust.

    with Lab.from_file("examples/three-tier.yaml", host_netns="ci-host") as lab:
        assert lab.exec("web", ["curl", "-s", "db:5432"]) == 0
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from overlays.drivers import fabric
from overlays.engine import DEFAULT_STATE_DIR, Engine, overlay, repair
from overlays.engine import endpoints as endpoint_ops
from overlays.errors import NotFound, OverlaysError
from overlays.kernel import process
from overlays.kernel.api import Kernel
from overlays.model.specs import Sandbox
from overlays.topology import check as checks
from overlays.topology.plan import (
    AGENT,
    EVERYWHERE,
    HOST,
    NETWORK,
    OUTSIDE,
    SANDBOX,
    Action,
    Record,
    key,
    network_print,
    plan,
    sandbox_print,
)
from overlays.topology.spec import LOCAL_HOST, Topology, load

Progress = Callable[[Action], None]


class Lab:
    def __init__(self, topology: Topology, host_netns: str | None = None, state_dir: str | Path | None = None,
                 *, kernel: Kernel | None = None, store_url: str | None = None, agent_ttl: float = 10.0) -> None:
        self.topology = topology
        self.agent_ttl = agent_ttl
        self.local_netns = host_netns
        self.state_dir = Path(state_dir) if state_dir else DEFAULT_STATE_DIR
        # All hosts of a lab share one store (each under its own node name), as real hosts share etcd.
        self.store_url = store_url or str(self.state_dir / "state.db")
        self.main = Engine(host_netns=host_netns, state_dir=self.state_dir, kernel=kernel, store_url=self.store_url)
        self.kernel = self.main.ctx.kernel
        self._engines: dict[str, Engine] = {}

    @classmethod
    def from_file(cls, path: str | Path, host_netns: str | None = None, state_dir: str | Path | None = None,
                  *, kernel: Kernel | None = None, store_url: str | None = None) -> Lab:
        return cls(load(path), host_netns, state_dir, kernel=kernel, store_url=store_url)

    # -- context manager: up on enter, always down on exit -------------------------

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.down()
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.down()
        finally:
            self.close()

    def close(self) -> None:
        for eng in self._engines.values():
            eng.close()
        self._engines.clear()
        self.main.close()

    # -- hosts --------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.topology.name

    def node_of(self, host: str) -> str:
        """A lab host's name in the shared store: lab and host, so two labs never mix."""
        return f"{self.name}.{host}"

    def host_netns(self, host: str) -> str | None:
        """The namespace that plays ``host``."""
        return self.local_netns if host == LOCAL_HOST else fabric.netns_of(self.name, host)

    def engine(self, host: str) -> Engine:
        if host == EVERYWHERE:  # an overlay network is made (once) through any one host
            host = self.topology.host_names()[0]
        if host == LOCAL_HOST:
            return self.main
        if host not in self._engines:
            self._engines[host] = Engine(host_netns=fabric.netns_of(self.name, host), state_dir=self.state_dir,
                                         kernel=self.kernel, store_url=self.store_url, node=self.node_of(host))
        return self._engines[host]

    def _wire(self, role: str) -> fabric.Wire:
        topo = self.topology
        prefix = topo.fabric.prefixlen
        if role == OUTSIDE and not topo.lab:
            return fabric.Wire(self.local_netns, "ovo-" + _short(self.name), fabric.netns_of(self.name, OUTSIDE),
                               fabric.UNDERLAY_IFNAME, fabric.outside_address(topo.fabric), prefix,
                               a_ip=fabric.host_address(topo.fabric, 0))
        if role == OUTSIDE:
            return fabric.Wire(fabric.netns_of(self.name, "fabric"), "outside", fabric.netns_of(self.name, OUTSIDE),
                               fabric.UNDERLAY_IFNAME, fabric.outside_address(topo.fabric), prefix)
        index = topo.hosts.index(role)
        return fabric.Wire(fabric.netns_of(self.name, "fabric"), f"h-{role}", fabric.netns_of(self.name, role),
                           fabric.UNDERLAY_IFNAME, fabric.host_address(topo.fabric, index), prefix)

    def host_address(self, host: str) -> str:
        """The address by which the outside peer reaches ``host``."""
        return str(fabric.host_address(self.topology.fabric, self.topology.hosts.index(host) if self.topology.lab
                                       else 0))

    def outside_netns(self) -> str | None:
        return fabric.netns_of(self.name, OUTSIDE) if self.topology.outside else None

    def _infra_ok(self, role: str) -> bool:
        return fabric.wire_is_up(self.kernel, self._wire(role))

    def _build(self, role: str) -> None:
        topo = self.topology
        route = str(fabric.outside_address(topo.fabric)) if topo.outside else None
        if role == OUTSIDE:
            if topo.lab:
                fabric.ensure_switch(self.kernel, self.name)
            fabric.ensure_namespace(self.kernel, fabric.netns_of(self.name, OUTSIDE))
            fabric.ensure_wire(self.kernel, self.name, self._wire(OUTSIDE), "fabric0" if topo.lab else None, None)
            if not topo.lab and self.local_netns is not None:
                # The host (a namespace) routes out through the outside peer, unless it has a route already.
                with self.kernel.open(self.local_netns) as host:
                    host.ensure_default_route(route or "")
            return
        fabric.ensure_switch(self.kernel, self.name)
        fabric.ensure_namespace(self.kernel, fabric.netns_of(self.name, role))
        fabric.ensure_wire(self.kernel, self.name, self._wire(role), fabric.FABRIC_BRIDGE, route)

    # -- record ---------------------------------------------------------------------

    def _record_key(self) -> str:
        return f"topologies/{self.name}"

    def record(self) -> Record:
        return Record.from_value(self.main.ctx.transact(lambda txn: txn.get(self._record_key())))

    def _save(self, record: Record) -> None:
        value = record.to_value()
        self.main.ctx.transact(lambda txn: txn.put(self._record_key(), value))

    # -- plan / up / down -----------------------------------------------------------

    def plan(self) -> list[Action]:
        self.main.ctx.require_root()
        return plan(self.topology, self.record(), self.engine, self._infra_ok, self._agent_ok)

    # -- agents ---------------------------------------------------------------------

    def _agent_ok(self, host: str) -> bool:
        found = self.record().agents.get(host)
        return found is not None and process.alive(found[0], found[1])

    def _start_agent(self, host: str, record: Record) -> None:
        """An ``overlays agent`` daemon for ``host``; returns once it has registered."""
        if host in record.agents:
            self._stop_agent(host, record)
        eng = self.engine(host)
        argv = [sys.executable, "-m", "overlays", "--state-dir", str(self.state_dir), "--store", self.store_url,
                "--node", eng.ctx.node, *(["--host-netns", eng.ctx.host_netns] if eng.ctx.host_netns else []),
                "agent", "--ttl", str(self.agent_ttl)]
        log = eng.ctx.log_dir() / "agent.log"
        # The agent runs where we run (it reaches the store from here) and works on its host through --host-netns.
        pid = process.spawn_detached(Path("/proc/self/ns/net"), argv, None, log)
        record.agents[host] = [pid, process.start_time(pid) or 0]
        deadline = time.monotonic() + 15
        while eng.ctx.store.get(overlay.host_key(eng.ctx.node)) is None:
            if not process.alive(pid, record.agents[host][1]) or time.monotonic() > deadline:
                tail = log.read_text()[-400:] if log.exists() else ""
                raise OverlaysError(f"the agent of host {host} did not register: {tail.strip()}")
            time.sleep(0.02)

    def _stop_agent(self, host: str, record: Record) -> None:
        found = record.agents.pop(host, None)
        if found:
            process.stop(found[0], found[1])
        eng = self.engine(host)
        entry = eng.ctx.store.get(overlay.host_key(eng.ctx.node))
        if entry is not None:  # its endpoints are gone already: drop the host at once, not at lease expiry
            eng.ctx.store.revoke_lease(int(entry.value["lease"]))

    def up(self, progress: Progress | None = None) -> list[Action]:
        """Converge to the topology; returns the actions taken (none when nothing changed)."""
        actions = self.plan()
        record = self.record()
        record.source = self.topology.source
        made = set(self._record_new_sandboxes(actions, record))
        for action in actions:
            if progress:
                progress(action)
            self._apply(action, record)
            if action not in made:
                self._save(record)
        self._save(record)
        if actions and self.topology.overlays:
            self.wait_converged()
        return actions

    def _record_new_sandboxes(self, actions: list[Action], record: Record) -> list[Action]:
        """Record the sandboxes about to be created, in one save, before any is made; return their actions.

        A record naming a sandbox that is not there (the up stopped first) only makes the
        next up create it; a sandbox made but not recorded would look foreign to that up.
        Saving after each of N creates rewrote the whole record N times: O(N^2).
        """
        made = [a for a in actions if a.kind == SANDBOX and a.verb == "create"]
        for action in made:
            decl = self.topology.sandbox(action.name)
            assert decl is not None  # the plan made this action from the declaration
            record.objects[key(action.host, SANDBOX, action.name)] = sandbox_print(decl)
        if made:
            self._save(record)
        return made

    def wait_converged(self, timeout: float = 15.0) -> None:
        """Block until every host's agent has programmed what the store says (the overlay is usable)."""
        deadline = time.monotonic() + timeout
        for host in self.topology.host_names():
            eng = self.engine(host)
            with eng.ctx.open_host() as links:
                while not overlay.converged(eng.ctx, links):
                    if time.monotonic() > deadline:
                        raise OverlaysError(f"host {host}: overlay entries did not converge within {timeout:.0f} s;"
                                            " is its agent running? (overlays agent)")
                    time.sleep(0.02)

    def _apply(self, action: Action, record: Record) -> None:
        if action.kind == AGENT:
            (self._start_agent if action.verb == "start" else self._stop_agent)(action.host, record)
        elif action.kind in (HOST, OUTSIDE):
            self._apply_infra(action, record)
        elif action.kind == NETWORK:
            self._apply_network(action, record)
        else:
            self._apply_sandbox(action, record)

    def _apply_infra(self, action: Action, record: Record) -> None:
        if action.verb == "remove":
            self._remove_infra(action.name)
            if action.kind == HOST:
                record.hosts.remove(action.name)
            else:
                record.outside = False
            return
        self._build(action.name)
        if action.kind == HOST and action.name not in record.hosts:
            record.hosts.append(action.name)
        if action.kind == OUTSIDE:
            record.outside = True

    def _remove_infra(self, role: str) -> None:
        wire = self._wire(role)
        if role == OUTSIDE and not self.topology.lab and self.kernel.netns_exists(wire.b_netns):
            with self.kernel.open(wire.a_netns) as host:
                host.delete_link(wire.a_if)
        self.kernel.delete_netns(wire.b_netns)
        if role != OUTSIDE:
            eng = self._engines.pop(role, None)
            if eng:
                eng.close()

    def _apply_network(self, action: Action, record: Record) -> None:
        eng, k = self.engine(action.host), key(action.host, NETWORK, action.name)
        decl = self.topology.network(action.name) if action.verb != "remove" else None
        if action.verb in ("remove", "recreate"):
            _ignore_missing(lambda: eng.remove_network(action.name, force=True))
            record.objects.pop(k, None)
        if action.verb == "repair":
            repair.repair_network(eng.ctx, action.name)
        if decl and action.verb in ("create", "recreate"):
            eng.create_network(decl.spec)
            record.objects[k] = network_print(decl)

    def _apply_sandbox(self, action: Action, record: Record) -> None:
        eng, k = self.engine(action.host), key(action.host, SANDBOX, action.name)
        decl = self.topology.sandbox(action.name)
        verb = action.verb
        if verb in ("remove", "recreate"):
            _ignore_missing(lambda: eng.remove_sandbox(action.name, force=True))
            record.objects.pop(k, None)
        if verb == "repair":
            repair.repair_sandbox(eng.ctx, action.name)
        if verb == "disconnect":
            _ignore_missing(lambda: eng.disconnect(action.network, action.name))
        if verb == "connect" and decl:
            request = next(r for r in decl.spec.networks if r.network == action.network)
            _ignore_missing(lambda: eng.disconnect(action.network, action.name))
            endpoint_ops.connect(eng.ctx, action.network, action.name, request.ip)
        if decl and verb in ("create", "recreate"):
            eng.create_sandbox(decl.spec)
        if decl and decl.command and verb in ("create", "recreate", "start"):
            eng.start(action.name, decl.command)
        if decl and verb != "remove":
            record.objects[k] = sandbox_print(decl)

    def down(self, progress: Progress | None = None) -> list[Action]:
        """Remove everything the topology's record says ``up`` made, and nothing else."""
        record = self.record()
        sandboxes = [o for o in sorted(record.objects) if o.split("/", 2)[1] == SANDBOX]
        failures = self._remove_sandboxes_in_batches(record)
        actions = [Action("remove", SANDBOX, *o.split("/", 2)[::2]) for o in sandboxes]
        if progress:
            for action in actions:
                progress(action)
        rest = [Action("remove", NETWORK, host, name)
                for host, k, name in (o.split("/", 2) for o in sorted(record.objects)) if k == NETWORK]
        rest += [Action("remove", SANDBOX, host, name)  # any the batches could not remove
                 for host, k, name in (o.split("/", 2) for o in sorted(record.objects)) if k == SANDBOX]
        rest += [Action("stop", AGENT, h, h) for h in record.agents]
        if record.outside:
            rest.append(Action("remove", OUTSIDE, "", OUTSIDE))
        rest += [Action("remove", HOST, h, h) for h in record.hosts]
        for action in rest:
            if progress:
                progress(action)
            try:
                self._apply(action, record)
            except OverlaysError as e:
                failures.append(f"{action}: {e}")
            self._save(record)
        if self.topology.lab or record.hosts:
            self.kernel.delete_netns(fabric.netns_of(self.name, "fabric"))
        self.main.ctx.transact(lambda txn: txn.delete(self._record_key()))
        if failures:
            raise OverlaysError("down finished with errors: " + "; ".join(failures))
        return actions + [a for a in rest if not (a.kind == SANDBOX and a in actions)]

    def _remove_sandboxes_in_batches(self, record: Record) -> list[str]:
        """Sandboxes first, a host at a time in one batch (one wait for all veths); the record follows."""
        failures: list[str] = []
        by_host: dict[str, list[str]] = {}
        for o in record.objects:
            host, kind, name = o.split("/", 2)
            if kind == SANDBOX:
                by_host.setdefault(host, []).append(name)
        for host in record.hosts:  # a lab host is the lab's own: whatever runs on it goes with it
            found = self._clear_host(host)
            failures += found
            if not found:
                for name in by_host.get(host, []):
                    record.objects.pop(key(host, SANDBOX, name), None)
        owned_here = by_host.get(LOCAL_HOST, [])
        if owned_here:
            existing = {box.name for box in self.main.sandboxes()}
            found = self._remove_batch(self.main, [n for n in owned_here if n in existing], LOCAL_HOST)
            failures += found
            if not found:
                for name in owned_here:
                    record.objects.pop(key(LOCAL_HOST, SANDBOX, name), None)
        self._save(record)
        return failures

    def _clear_host(self, host: str) -> list[str]:
        """Every sandbox on a lab host (the host is the lab's own), in one batch."""
        if not self.kernel.netns_exists(fabric.netns_of(self.name, host)):
            return []
        eng = self.engine(host)
        return self._remove_batch(eng, [box.name for box in eng.sandboxes()], host)

    def _remove_batch(self, eng: Engine, names: list[str], host: str) -> list[str]:
        try:
            eng.remove_sandboxes(names, force=True)
        except OverlaysError as e:
            return [f"remove sandboxes on {host}: {e}"]
        return []

    # -- using a lab -----------------------------------------------------------------

    def sandbox(self, name: str) -> Sandbox:
        return self.engine(self._host_of(name)).sandbox(name)

    def exec(self, name: str, argv: Sequence[str]) -> int:
        return self.engine(self._host_of(name)).execute(name, argv)

    def _host_of(self, name: str) -> str:
        decl = self.topology.sandbox(name)
        if decl is None:
            raise NotFound(f"sandbox {name} is not in topology {self.name}")
        return decl.host

    def check(self) -> checks.Report:
        return checks.run(self)


def _short(name: str) -> str:
    from overlays.model.names import short_hash

    return name[:4] + short_hash(name, length=6)


def _ignore_missing(fn: Callable[[], object]) -> None:
    with contextlib.suppress(NotFound):
        fn()

