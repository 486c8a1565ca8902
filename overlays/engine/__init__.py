"""The engine: one user operation is one transaction over store and kernel.

``Engine`` is the public face; each method is a short list of named steps kept
in the modules beside this one (networks, sandboxes, endpoints). Those are
imported by the methods that change things: commands that only read (``ps``)
stay fast by importing views only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from overlays.engine import views
from overlays.engine.context import Context, instance_id, warn_on_stderr
from overlays.errors import InvalidSpec, NotPermitted, StoreError
from overlays.model.names import clean_name, validate_name

if TYPE_CHECKING:  # annotations only: the spec classes are built by the commands that take them
    import subprocess

    from overlays.engine.context import NodeTxn
    from overlays.engine.doctor import Finding
    from overlays.engine.trace import Trace
    from overlays.kernel.api import Kernel
    from overlays.model.faults import Faults, Impairment, ImpairSpec, Partition, PartitionSpec, Peer
    from overlays.model.ports import PortMapping
    from overlays.model.specs import Endpoint, EndpointRequest, IPAddress, Network, NetworkSpec, Sandbox, SandboxSpec
    from overlays.model.state import EndpointRegistration, HostRegistration
    from overlays.store.base import Store, Txn

DEFAULT_STATE_DIR = Path("/var/lib/overlays")


def _open_sqlite(state_dir: Path) -> Store:
    from overlays.store.sqlite import SqliteStore

    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except PermissionError as e:
        raise NotPermitted(f"cannot create state dir {state_dir}: permission denied (run as root?)") from e
    except OSError as e:
        raise StoreError(f"cannot create state dir {state_dir}: {e.strerror}") from e
    return SqliteStore(state_dir / "state.db")


def _open_store(url: str | None, state_dir: Path) -> Store:
    """``--store``: an etcd URL, or a SQLite file several hosts share; default: the state dir's own."""
    if not url:
        return _open_sqlite(state_dir)
    from overlays.store import open_store

    scheme, sep, _ = url.partition("://")
    if sep and scheme != "etcd":
        raise InvalidSpec(f"--store {url}: unknown scheme {scheme!r} (give etcd://HOST:PORT[,...] or the path of a "
                          "SQLite file)")
    if not sep:
        if Path(url).is_dir():
            raise InvalidSpec(f"--store {url} is a directory: give the path of a SQLite file (say {url}/state.db)")
        _open_sqlite(Path(url).parent).close()  # creates the folder with clear errors
    return open_store(url)


def default_node(host_netns: str | None) -> str:
    """This host's name in a shared store: the host namespace's, else the machine's."""
    if host_netns:
        return host_netns
    # os.uname(): what socket.gethostname() returns on Linux, without importing socket
    return clean_name(os.uname().nodename, "localhost")


def _linux() -> Kernel:
    from overlays.kernel.linux import LinuxKernel

    return LinuxKernel()


class HostView(NamedTuple):
    """What a host namespace holds, as a plan checks it: its routes, addresses and links."""

    routes: tuple[IPv4Network | IPv6Network, ...]
    addresses: tuple[IPv4Address | IPv6Address, ...]
    links: frozenset[str]


class Engine:
    """Networks and sandboxes of one host (a network namespace), with state in one store.

    Sandboxes get DNS names (their name, hostname and aliases, per network) from the host's
    DNS server, which runs in the host's agent and is started on demand (``dns=False``, or
    OVERLAYS_DNS=0, turns that off); ``warn`` gets the lines that say why names are not
    served when that part fails (default: stderr), for it never fails an operation.

    >>> with Engine(host_netns="lab1", state_dir="/tmp/lab1") as engine:
    ...     engine.create_network(NetworkSpec.parse("front", subnet="10.10.0.0/24"))
    """

    def __init__(
        self,
        host_netns: str | None = None,
        state_dir: str | Path | None = None,
        *,
        store: Store | None = None,
        kernel: Kernel | None = None,
        check_root: bool = True,
        store_url: str | None = None,
        node: str | None = None,
        dns: bool = True,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        state = Path(state_dir or os.environ.get("OVERLAYS_STATE_DIR") or DEFAULT_STATE_DIR)
        node = validate_name("node", node or os.environ.get("OVERLAYS_NODE") or default_node(host_netns))
        url = store_url or os.environ.get("OVERLAYS_STORE") or ""
        self.ctx = Context(
            store=store or _open_store(url, state),
            kernel=kernel or _linux(),
            state_dir=state,
            host_netns=host_netns,
            instance=instance_id(state, host_netns),
            node=node,
            check_root=check_root,
            dns=dns and os.environ.get("OVERLAYS_DNS", "1") != "0",
            store_url=None if store is not None else url,
            warn=warn or warn_on_stderr,
        )

    @property
    def node(self) -> str:
        """This host's name in the store."""
        return self.ctx.node

    @property
    def host_netns(self) -> str | None:
        """The network namespace that plays this engine's host (None: the machine's own)."""
        return self.ctx.host_netns

    @property
    def instance(self) -> str:
        """The id every kernel object of this engine carries (its state dir and host namespace)."""
        return self.ctx.instance

    @property
    def state_dir(self) -> Path:
        """Where this engine keeps its state, logs and journal."""
        return self.ctx.state_dir

    @property
    def kernel(self) -> Kernel:
        """The kernel this engine works on (Linux, or a wrapper or fake given to it)."""
        return self.ctx.kernel

    def host_exists(self) -> bool:
        """Whether the namespace that plays this engine's host is there (the machine's own always is)."""
        return self.ctx.host_exists()

    def require_root(self) -> None:
        """NotPermitted unless this process may change networks (checked before any change)."""
        self.ctx.require_root()

    def namespace_path(self, netns: str) -> Path:
        """Where the network namespace named ``netns`` is mounted."""
        return self.ctx.kernel.netns_path(netns)

    @property
    def store(self) -> Store:
        """The state store, for readers that follow it (``watch``): change it only through the engine."""
        return self.ctx.store

    def close(self) -> None:
        if self.ctx.dns_client is not None:
            self.ctx.dns_client.close()
        self.ctx.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # networks
    def create_network(self, spec: NetworkSpec) -> Network:
        from overlays.engine import networks

        return networks.create(self.ctx, spec)

    def networks(self) -> list[Network]:
        return views.networks(self.ctx)

    def network(self, name: str) -> tuple[Network, list[str]]:
        from overlays.engine import networks

        return networks.inspect(self.ctx, name)

    def remove_network(self, name: str, force: bool = False) -> None:
        from overlays.engine import networks

        networks.remove(self.ctx, name, force)

    def prune_networks(self) -> list[str]:
        from overlays.engine import networks

        return networks.prune(self.ctx)

    # sandboxes
    def create_sandbox(self, spec: SandboxSpec, labels: Mapping[str, str] | None = None) -> Sandbox:
        """A sandbox of its own namespace, on ``spec``'s networks; ``labels`` are noted in its record."""
        from overlays.engine import sandboxes

        return sandboxes.create(self.ctx, spec, labels)

    def adopt(self, name: str, pid: int | None = None, netns_path: str | None = None, *,
              networks: Sequence[EndpointRequest] = (), ports: Sequence[PortMapping] = (),
              labels: Mapping[str, str] | None = None, shared: bool = False) -> Sandbox:
        """Take a process's (``pid``) or a bind-mounted (``netns_path``) namespace as a sandbox, with
        endpoints and published ports as ``create_sandbox``; the namespace is never deleted by us.
        ``shared``: other adopted sandboxes may hold the namespace too (one per runtime attachment)."""
        from overlays.engine import sandboxes

        return sandboxes.adopt(self.ctx, name, pid, netns_path, networks=networks, ports=ports, labels=labels,
                               shared=shared)

    def start(self, name: str, argv: Sequence[str]) -> int:
        """Run ``argv`` in the sandbox in the background; returns its PID."""
        from overlays.engine import sandboxes

        return sandboxes.start(self.ctx, name, argv)

    def start_foreground(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        from overlays.engine import sandboxes

        return sandboxes.start_foreground(self.ctx, name, argv)

    def execute(self, name: str, argv: Sequence[str]) -> int:
        from overlays.engine import sandboxes

        return sandboxes.execute(self.ctx, name, argv)

    def sandboxes(self) -> list[Sandbox]:
        return views.sandboxes(self.ctx)

    def sandbox(self, name: str) -> Sandbox:
        return views.sandbox(self.ctx, name)

    def remove_sandbox(self, name: str, force: bool = False, wait: bool = True) -> None:
        """Remove a sandbox; ``wait=False`` returns before the kernel has freed its veth (and before the DNS
        server has confirmed that its names are gone: a moment later)."""
        from overlays.engine import sandboxes

        sandboxes.remove(self.ctx, name, force, wait)

    def remove_sandboxes(self, names: Sequence[str], force: bool = False) -> None:
        """Remove several sandboxes at once: faster than one by one (one wait for all their veths)."""
        from overlays.engine import sandboxes

        sandboxes.remove_many(self.ctx, names, force)

    def connect(self, network: str | EndpointRequest, sandbox: str, ip: IPAddress | None = None) -> Endpoint:
        """Attach ``sandbox`` to a network: its name (with ``ip``), or a whole EndpointRequest (MAC, interface
        name, aliases)."""
        from overlays.engine import endpoints
        from overlays.model.specs import EndpointRequest

        request = network if isinstance(network, EndpointRequest) else EndpointRequest(network, ip)
        return endpoints.connect(self.ctx, sandbox, request)

    def trace(self, src: str, dst: str, port: str | None = None, probe: bool = True,
              version: int | None = None) -> Trace:
        """Whether sandbox ``src`` reaches ``dst`` (a sandbox, by its address of ``version`` if given; an address;
        a published HOST:PORT), hop by hop, then one traced probe (unless ``probe`` is off): see engine/trace.py."""
        from overlays.engine import trace

        return trace.run(self.ctx, src, dst, port, probe=probe, version=version)

    def check(self, name: str) -> list[str]:
        """Read-only: what the kernel lacks against the sandbox's record ([] when it is whole)."""
        from overlays.engine import repair

        return repair.sandbox_problems(self.ctx, name)

    def default_gateway(self, sandbox: str) -> IPAddress | None:
        """Where the sandbox's default route goes, as its networks give it (None: none does, e.g. an overlay)."""
        from overlays.engine import endpoints

        return endpoints.default_gateway(self.ctx, sandbox)

    def disconnect(self, network: str, sandbox: str) -> None:
        from overlays.engine import endpoints

        endpoints.disconnect(self.ctx, network, sandbox)

    def netns_path(self, sandbox: str) -> Path:
        return self.ctx.kernel.netns_path(self.sandbox(sandbox).netns)

    # drift: what ``overlays up`` and ``plan`` check, and how they repair it
    def network_problems(self, name: str) -> list[str]:
        """Read-only: what is wrong with the network's kernel objects on this host ([] when nothing)."""
        from overlays.engine import repair

        return repair.network_problems(self.ctx, name)

    def sandbox_problems(self, name: str) -> list[str]:
        from overlays.engine import repair

        return repair.sandbox_problems(self.ctx, name)

    def doctor(self, fix: bool = False) -> tuple[list[Finding], list[str]]:
        """Every inconsistency between the store and this host's kernel, one line each with its repair; with
        ``fix``, repaired, and what is left (unrepairable, or failed) returned with the repairs that failed."""
        from overlays.engine import doctor

        found = doctor.examine(self.ctx)
        if not fix or not found:
            return found, []
        self.ctx.require_root()
        failures = doctor.fix(found)
        return doctor.examine(self.ctx), failures

    def firewall_problems(self) -> list[str]:
        """Read-only: how our nft table differs from the records (a flushed table, a deleted element...)."""
        from overlays.engine import firewall

        return firewall.problems(self.ctx)

    def repair_firewall(self) -> None:
        """Our nft table made again from the records, whole, in one nft transaction."""
        from overlays.engine import firewall

        self.ctx.require_root()
        firewall.repair(self.ctx)

    def repair_network(self, name: str) -> None:
        from overlays.engine import repair

        repair.repair_network(self.ctx, name)

    def repair_sandbox(self, name: str) -> None:
        from overlays.engine import repair

        repair.repair_sandbox(self.ctx, name)

    # what a plan checks before it changes anything (read-only)
    def host_facts(self) -> HostView:
        """The host namespace's routed prefixes, addresses and link names (NotFound if it does not exist)."""
        with self.ctx.open_host() as host:
            return HostView((*host.route_prefixes(), *host.route_prefixes(6)), (*host.addresses(), *host.addresses(6)),
                            frozenset(link.name for link in host.links()))

    def taken_addresses(self, network: str) -> dict[str, str]:
        """Address -> who holds it, on one of this host's networks (or a shared one)."""
        from overlays import ipam
        from overlays.engine import records
        from overlays.engine.netdrivers import driver_for

        def read(txn: NodeTxn) -> dict[str, str]:
            return ipam.taken(driver_for(records.get_network(txn, network)).scope(txn), network)

        return self.ctx.transact(read)

    def port_claims(self) -> dict[tuple[str, int], dict[str, str]]:
        """(protocol, port) -> {host address or '*': the sandbox publishing it} on this host."""
        from overlays.engine import ports

        return self.ctx.transact(ports.all_claims)

    def vni_holder(self, vni: int) -> str | None:
        """The overlay network that holds a VNI, if any."""
        from overlays.engine import records

        found = self.ctx.transact(lambda txn: txn.root.get(records.vni_key(vni)))
        return None if found is None else str(found.get("network"))

    # the overlay control plane, as seen from this host
    def registered(self) -> HostRegistration | None:
        """This host's registration in the shared store (made by its agent), if any."""
        from overlays.engine import records

        return self.ctx.transact(lambda txn: records.find_host(txn.root, self.ctx.node))

    def shared_hosts(self) -> list[HostRegistration]:
        """Every host registered in the shared store (by its agent)."""
        from overlays.engine import records

        return self.ctx.transact(lambda txn: records.all_hosts(txn.root))

    def shared_endpoints(self) -> list[EndpointRegistration]:
        """Every overlay endpoint announced in the shared store, on any host."""
        from overlays.engine import records

        return self.ctx.transact(lambda txn: records.all_registrations(txn.root))

    def unregister(self) -> None:
        """Drop this host's registration now, with everything under its lease (its agent is stopped)."""
        found = self.registered()
        if found is not None:
            self.ctx.store.revoke_lease(found.lease)

    def overlay_converged(self) -> bool:
        """Whether every overlay device on this host matches the store (what its agent works towards)."""
        from overlays.engine.netdrivers import overlay

        with self.ctx.open_host() as host:
            return overlay.converged(self.ctx, host)

    # faults on demand (see engine/faults.py)
    def partition(self, spec: PartitionSpec) -> Partition:
        """Put this host's part of a partition in force (its own members' drops)."""
        from overlays.engine import faults

        return faults.partition(self.ctx, spec)

    def partition_peers(self, sandboxes: Sequence[str]) -> list[Peer]:
        """This host's sandboxes as partition members (their addresses and published ports)."""
        from overlays.engine import faults

        return faults.peers(self.ctx, sandboxes)

    def heal(self, names: Sequence[str] = (), everything: bool = False, origin: str | None = None) -> list[str]:
        """Heal the partitions (and impairments) named, else every partition; ``everything``: every fault."""
        from overlays.engine import faults

        return faults.heal(self.ctx, names, everything, origin)

    def impair(self, spec: ImpairSpec) -> Impairment:
        from overlays.engine import faults

        return faults.impair(self.ctx, spec)

    def clear_impairment(self, sandbox: str, network: str | None = None) -> list[Impairment]:
        from overlays.engine import faults

        return faults.clear(self.ctx, sandbox, network)

    def link_down(self, sandbox: str, network: str | None = None, expires: float | None = None) -> Endpoint:
        """Take an endpoint's link down, keeping its address, routes and published ports."""
        from overlays.engine import faults

        return faults.link(self.ctx, sandbox, network, down=True, expires=expires)

    def link_up(self, sandbox: str, network: str | None = None) -> Endpoint:
        from overlays.engine import faults

        return faults.link(self.ctx, sandbox, network, down=False)

    def faults(self) -> Faults:
        """The faults in force on this host."""
        from overlays.engine import faults

        return faults.in_force(self.ctx)

    def fault_problems(self, name: str | None = None) -> list[str]:
        """Read-only: what the kernel lacks of the faults in force (of ``name`` only, if given)."""
        from overlays.engine import faults

        return faults.problems(self.ctx, name)

    def heal_expired(self) -> Faults:
        """Heal what is due, and finish what a killed command left halfway; returns what stays in force."""
        from overlays.engine import faults

        return faults.heal_expired(self.ctx)

    # records that front ends keep beside the engine's own (a topology's)
    def topology_record(self, name: str) -> dict[str, Any] | None:
        from overlays.engine import records

        return self.ctx.transact(lambda txn: txn.get(records.topology_key(name)))

    def save_topology_record(self, name: str, value: dict[str, Any] | None) -> None:
        """Write (or, with None, drop) a topology's record."""
        from overlays.engine import records

        def save(txn: Txn) -> None:
            if value is None:
                txn.delete(records.topology_key(name))
            else:
                txn.put(records.topology_key(name), value)

        self.ctx.transact(save)

    def log_dir(self) -> Path:
        """Where the output of this host's background processes goes."""
        return self.ctx.log_dir()
