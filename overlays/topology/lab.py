"""A topology brought to life: ``up`` converges, ``down`` removes exactly what ``up`` made.

A Lab holds one engine per host: for a file without ``hosts:`` that is the
engine of ``--host-netns``/``--state-dir``; for a lab, each simulated host is a
namespace of its own with an engine of its own, all sharing one store (each host
under its own node name, ``<lab>.<host>``), as machines share etcd.
The topology's record lives in the main state store, updated after every
action, so an interrupted ``up`` leaves a record that ``down`` can trust.
What each action does is apply.py's; the namespaces and wires are infra.py's;
the agents are agents.py's.

    with Lab.from_file("examples/three-tier.yaml", host_netns="ci-host") as lab:
        assert lab.exec("web", ["curl", "-s", "db:5432"]) == 0
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from overlays.drivers import fabric
from overlays.engine import DEFAULT_STATE_DIR, Engine
from overlays.errors import NotFound, OverlaysError
from overlays.kernel.api import Kernel
from overlays.model import nemesis
from overlays.model.faults import Faults, ImpairSpec, expiry
from overlays.model.state import Endpoint, IPAddress, Sandbox
from overlays.topology import agents, chaos, preflight, restore
from overlays.topology import check as checks
from overlays.topology.apply import apply
from overlays.topology.infra import Infra
from overlays.topology.plan import AGENT, EVERYWHERE, HOST, NETWORK, OUTSIDE, SANDBOX, Action, Key, Record, plan
from overlays.topology.plan import sandbox_print as fingerprint
from overlays.topology.spec import LOCAL_HOST, SandboxDecl, Topology, failure, load

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
        self.kernel = self.main.kernel
        self.infra = Infra(topology, self.kernel, host_netns)
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

    def forget_engine(self, host: str) -> None:
        """The host's namespace is gone: its engine with it."""
        eng = self._engines.pop(host, None)
        if eng:
            eng.close()

    def static_addresses(self, network: str, asking: SandboxDecl) -> frozenset[IPAddress]:
        """The addresses the file gives other sandboxes on ``network`` where ``asking`` joins it (its host, or
        every host for an overlay): what a dynamic allocation for ``asking`` must leave free."""
        overlay = self.topology.network(network).overlay
        return frozenset(ip for b in self.topology.sandboxes if b is not asking and (overlay or b.host == asking.host)
                         for r in b.spec.networks if r.network == network
                         for ip in (r.ip, r.ip6) if ip is not None)

    def host_address(self, host: str) -> str:
        """The address by which the outside peer reaches ``host``."""
        return self.infra.host_address(host)

    def outside_netns(self) -> str | None:
        return self.infra.outside_netns()

    # -- record ---------------------------------------------------------------------

    def record(self) -> Record:
        return Record.from_value(self.main.topology_record(self.name))

    def _save(self, record: Record) -> None:
        self.main.save_topology_record(self.name, record.to_value())

    # -- plan / up / down -----------------------------------------------------------

    def plan(self) -> list[Action]:
        """What ``up`` would do; raises first whatever would make it fail (the file against the hosts and store)."""
        self.main.require_root()
        record = self.record()
        preflight.check(self.topology, record, self.engine, self.infra.host_exists, failure(self.topology.source))
        return plan(self.topology, record, self.engine, self.infra.ok, lambda host: agents.alive(record, host))

    def up(self, progress: Progress | None = None) -> list[Action]:
        """Converge to the topology; returns the actions taken (none when nothing changed).

        Everything that can be known is checked first (``plan``). Whatever still fails while
        the plan is applied is rolled back: the hosts converge again to the state before this
        up, as its record describes it. An interruption (Ctrl-C, or a kill) is not rolled back:
        the record says what was made, for the next ``up`` to complete or ``down`` to remove.
        """
        actions = self.plan()
        before = self.record()
        try:
            self._apply_all(actions, progress)
        except Exception as e:
            self._roll_back(before, e)
            raise
        if actions and self.topology.overlays:
            self.wait_converged()
        return actions

    def _apply_all(self, actions: list[Action], progress: Progress | None) -> None:
        """Apply ``actions`` in order, the record saved as they go; a sandbox to be recreated is removed first
        of all, so that what it held (its published ports) is free for any sandbox the plan makes before it."""
        record = self.record()
        record.source = self.topology.source
        made = set(self._record_new_sandboxes(actions, record))
        try:
            for action in actions:
                if action.kind == SANDBOX and action.verb == "recreate":
                    apply(self, Action("remove", SANDBOX, action.host, action.name), record)
            for action in actions:
                if progress:
                    progress(action)
                apply(self, action, record)
                if action not in made:
                    self._save(record)
        finally:
            self._save(record)

    def _roll_back(self, before: Record, failure: Exception) -> None:
        """Converge back to ``before`` (every host's part); if that fails too, say both, keeping the record."""
        back = Lab(restore.previous(before, self.topology), self.local_netns, self.state_dir, kernel=self.kernel,
                   store_url=self.store_url, agent_ttl=self.agent_ttl)
        try:
            record = back.record()
            actions = plan(back.topology, record, back.engine, back.infra.ok,
                           lambda host: agents.alive(record, host))
            back._apply_all(actions, None)
            if self.topology.lab and not back.topology.lab:
                back.infra.remove_switch()  # there were no hosts: no switch either
            if not before.objects and not before.hosts and not before.outside:
                back.main.save_topology_record(self.name, None)  # there was nothing: no record either
        except Exception as e:
            raise OverlaysError(f"{failure}; rolling back failed too: {e} (the record keeps what was made: "
                                "run up again, or down)") from failure
        finally:
            back.close()

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
            record.objects[Key(action.host, SANDBOX, action.name)] = fingerprint(decl)
        if made:
            self._save(record)
        return made

    def wait_converged(self, timeout: float = 15.0) -> None:
        """Block until every host's agent has programmed what the store says (the overlay is usable)."""
        deadline = time.monotonic() + timeout
        for host in self.topology.host_names():
            while not self.engine(host).overlay_converged():
                if time.monotonic() > deadline:
                    raise OverlaysError(f"host {host}: overlay entries did not converge within {timeout:.0f} s;"
                                        " is its agent running? (overlays agent)")
                time.sleep(0.02)

    def down(self, progress: Progress | None = None) -> list[Action]:
        """Remove everything the topology's record says ``up`` made, and nothing else."""
        record = self.record()
        removed = [Action("remove", SANDBOX, k.host, k.name) for k in record.of_kind(SANDBOX)]
        failures = self._heal_faults(record)
        failures += self._remove_sandboxes_in_batches(record)
        if not self.topology.lab:
            failures += self._tidy_faults()
        if progress:
            for action in removed:
                progress(action)
        rest = [Action("remove", NETWORK, k.host, k.name) for k in record.of_kind(NETWORK)]
        rest += [Action("remove", SANDBOX, k.host, k.name) for k in record.of_kind(SANDBOX)]  # left by the batches
        rest += [Action("stop", AGENT, h, h) for h in record.agents]
        if record.outside:
            rest.append(Action("remove", OUTSIDE, "", OUTSIDE))
        rest += [Action("remove", HOST, h, h) for h in record.hosts]
        for action in rest:
            if progress:
                progress(action)
            try:
                apply(self, action, record)
            except OverlaysError as e:
                failures.append(f"{action}: {e}")
            self._save(record)
        if self.topology.lab or record.hosts:
            self.infra.remove_switch()
        self.main.save_topology_record(self.name, None)
        if failures:
            raise OverlaysError("down finished with errors: " + "; ".join(failures))
        return removed + [a for a in rest if not (a.kind == SANDBOX and a in removed)]

    def _heal_faults(self, record: Record) -> list[str]:
        """Before anything goes: every fault on the lab's own hosts; on the local host, the topology's own."""
        from overlays.topology.faults import ORIGIN, forget_faults

        forget_faults(record)
        failures = []
        for host in record.hosts if self.topology.lab else [LOCAL_HOST]:
            if host != LOCAL_HOST and not self.infra.host_exists(host):
                continue
            try:
                if host == LOCAL_HOST:
                    self.engine(host).heal(origin=ORIGIN + self.name)
                else:
                    self.engine(host).heal(everything=True)
            except OverlaysError as e:
                failures.append(f"heal the faults on {host}: {e}")
        return failures

    def _tidy_faults(self) -> list[str]:
        """Faults made by hand on the sandboxes just removed went with their namespaces: their records follow."""
        try:
            self.main.heal_expired()
        except OverlaysError as e:
            return [f"forget the faults of removed sandboxes: {e}"]
        return []

    def _remove_sandboxes_in_batches(self, record: Record) -> list[str]:
        """Sandboxes first, a host at a time in one batch (one wait for all veths); the record follows."""
        failures: list[str] = []
        by_host: dict[str, list[str]] = {}
        for k in record.of_kind(SANDBOX):
            by_host.setdefault(k.host, []).append(k.name)
        for host in record.hosts:  # a lab host is the lab's own: whatever runs on it goes with it
            found = self._clear_host(host)
            failures += found
            if not found:
                for name in by_host.get(host, []):
                    record.objects.pop(Key(host, SANDBOX, name), None)
        owned_here = by_host.get(LOCAL_HOST, [])
        if owned_here:
            existing = {box.name for box in self.main.sandboxes()}
            found = self._remove_batch(self.main, [n for n in owned_here if n in existing], LOCAL_HOST)
            failures += found
            if not found:
                for name in owned_here:
                    record.objects.pop(Key(LOCAL_HOST, SANDBOX, name), None)
        self._save(record)
        return failures

    def _clear_host(self, host: str) -> list[str]:
        """Every sandbox on a lab host (the host is the lab's own), in one batch; also when the host's namespace
        is gone: its sandboxes' namespaces and processes are not (only their veths went with it)."""
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

    def reaches(self, source: str, target: str, count: int = 1) -> bool:
        """Whether sandbox ``source`` pings sandbox ``target`` (on a network they share)."""
        return chaos.reaches(self, source, target, count)

    # -- faults on demand (see chaos.py) ------------------------------------------------

    def partition(self, *groups: Sequence[str], oneway: bool = False, duration: chaos.Duration = None,
                  name: str | None = None) -> chaos.Partitioned:
        """Cut each group off from the others: ``lab.partition(["h1"], ["h2", "h3"])``; returns a handle to heal."""
        return chaos.partition(self, groups, oneway, duration, name)

    @contextmanager
    def partitioned(self, *groups: Sequence[str], oneway: bool = False,
                    name: str | None = None) -> Iterator[chaos.Partitioned]:
        """``with lab.partitioned(["a"], ["b", "c"]): ...``: the partition holds inside the block only."""
        with chaos.partitioned(self, groups, oneway, name) as handle:
            yield handle

    def cut(self, grudge: dict[str, set[str]], duration: chaos.Duration = None,
            name: str | None = None) -> chaos.Partitioned:
        """Jepsen's grudge: each node drops the packets of the nodes it holds one against."""
        return chaos.grudge(self, grudge, duration, name)

    def nodes(self) -> list[str]:
        """What the shapes below partition: the lab's hosts, else its sandboxes."""
        return chaos.nodes(self)

    def partition_halves(self, rng: random.Random | None = None) -> chaos.Partitioned:
        """Two halves of the nodes (random ones, with ``rng``)."""
        return self.partition(*nemesis.halves(self.nodes(), rng))

    def isolate(self, node: str | None = None, rng: random.Random | None = None) -> chaos.Partitioned:
        """One node (random, unless named) cut off from the rest."""
        return self.partition(*nemesis.isolate(self.nodes(), node, rng or random.Random()))

    def partition_majorities_ring(self, rng: random.Random | None = None) -> chaos.Partitioned:
        """Every node sees a majority, no two nodes the same one."""
        return self.cut(nemesis.majorities_ring(self.nodes(), rng or random.Random()))

    def partition_bridge(self) -> chaos.Partitioned:
        """Two halves, and one node in the middle that sees both."""
        return self.cut(nemesis.bridge(self.nodes()))

    def heal(self, *names: str, everything: bool = False) -> list[str]:
        """Heal the partitions named (else all of them); ``everything``: impairments and links too."""
        return chaos.heal(self, names, everything)

    def impair(self, sandbox: str, network: str | None = None, *, loss: float | None = None,
               duplicate: float | None = None, rate: str | None = None, delay: float | None = None,
               jitter: float | None = None, direction: str = "both",
               duration: chaos.Duration = None) -> chaos.Impaired:
        """``lab.impair("a", loss=10, rate="10mbit")``: returns a handle to clear it."""
        spec = ImpairSpec.parse(sandbox, network, loss=loss, duplicate=duplicate, rate=rate, delay=delay,
                                jitter=jitter, direction=direction, expires=expiry(duration), origin="python")
        return chaos.impair(self, spec)

    def link_down(self, sandbox: str, network: str | None = None, duration: chaos.Duration = None) -> Endpoint:
        return self.engine(chaos.host_of(self, sandbox)).link_down(sandbox, network, expiry(duration))

    def link_up(self, sandbox: str, network: str | None = None) -> Endpoint:
        return self.engine(chaos.host_of(self, sandbox)).link_up(sandbox, network)

    def faults(self) -> dict[str, Faults]:
        """Each host's faults in force."""
        return chaos.in_force(self)
