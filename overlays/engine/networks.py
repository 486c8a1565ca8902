"""Network operations: create, inspect, remove, prune. What differs between drivers is the driver's."""

from __future__ import annotations

from collections.abc import Callable

from overlays.engine import hostagent, records, views
from overlays.engine.context import Context, NodeTxn
from overlays.engine.netdrivers import driver_for, driver_named, mark_ready
from overlays.errors import Conflict, OverlaysError
from overlays.model.specs import NetworkSpec
from overlays.model.state import Network
from overlays.undo import Undo


def create(ctx: Context, spec: NetworkSpec) -> Network:
    """Record the network (pending; its subnet checked against all others), build it, mark it ready."""
    driver = driver_named(spec.driver)
    with ctx.open_host() as host:
        facts = driver.facts(ctx, host, spec)
        network = ctx.transact(lambda txn: driver.record(txn, ctx, spec, facts))
        undo = Undo()
        undo.push(f"forget network {spec.name}", _forget, ctx, network)
        try:
            driver.setup(ctx, host, network, undo)
            return ctx.transact(lambda txn: mark_ready(driver, txn, network))
        except BaseException:
            undo.rollback()
            raise


def _forget(ctx: Context, network: Network) -> None:
    ctx.transact(lambda txn: driver_for(network).forget(txn, ctx, network))


list_all = views.networks


def inspect(ctx: Context, name: str) -> tuple[Network, list[str]]:
    """The network and the sandboxes attached to it (on every host, for a network that spans them)."""

    def read(txn: NodeTxn) -> tuple[Network, list[str]]:
        network = records.get_network(txn, name)
        return network, driver_for(network).users(txn, ctx, network)

    return ctx.transact(read)


def _local_users(txn: NodeTxn, name: str) -> list[str]:
    return sorted(e.sandbox for e in records.all_endpoints(txn) if e.network == name)


def remove(ctx: Context, name: str, force: bool = False) -> None:
    """Remove a network; with sandboxes attached only with ``force`` (this host's are disconnected)."""
    from overlays.engine import endpoints  # endpoints imports us for get_network

    def read(txn: NodeTxn) -> tuple[Network, list[str], list[str]]:
        network = records.get_network(txn, name)
        return network, driver_for(network).users(txn, ctx, network), _local_users(txn, name)

    network, everywhere, here = ctx.transact(read)
    driver = driver_for(network)
    if everywhere and not force:
        raise Conflict(f"network {name} has {len(everywhere)} sandbox(es) attached ({', '.join(everywhere)});"
                       " disconnect them or use --force")
    driver.check_removable(ctx, network, everywhere)
    failures: list[str] = []
    for user in here:
        failures += _try(lambda user=user: endpoints.disconnect(ctx, name, user))  # type: ignore[misc]
    with ctx.open_host() as host:
        failures += _try(lambda: driver.teardown(ctx, host, network))
    on_demand = hostagent.started(ctx) is not None

    def forget(txn: NodeTxn) -> bool:
        driver.forget(txn, ctx, network)
        return on_demand and records.host_idle(txn)  # the host's last network and no sandbox: its agent goes

    hostagent.stop_if_idle(ctx, ctx.transact(forget))
    if failures:
        raise OverlaysError(f"network {name} removed, but cleanup reported: " + "; ".join(failures))


def prune(ctx: Context) -> list[str]:
    """Remove every network that has no sandbox attached; return their names."""
    removed = []
    for network in list_all(ctx):
        if not inspect(ctx, network.name)[1]:
            remove(ctx, network.name)
            removed.append(network.name)
    return removed


def _try(fn: Callable[[], object]) -> list[str]:
    try:
        fn()
    except OverlaysError as e:
        return [str(e)]
    return []
