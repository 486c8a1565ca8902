"""Network drivers: bridge, overlay and macvlan behind one interface (see base.py's design note)."""

from __future__ import annotations

from overlays.engine.netdrivers.base import HostFacts, NetworkDriver, mark_ready
from overlays.engine.netdrivers.bridge import BridgeDriver
from overlays.engine.netdrivers.macvlan import MacvlanDriver
from overlays.engine.netdrivers.overlay import OverlayDriver
from overlays.errors import InvalidSpec
from overlays.model.state import Network

DRIVERS: dict[str, NetworkDriver] = {d.name: d for d in (BridgeDriver(), OverlayDriver(), MacvlanDriver())}

__all__ = ["DRIVERS", "HostFacts", "NetworkDriver", "driver_for", "driver_named", "mark_ready"]


def driver_named(name: str) -> NetworkDriver:
    try:
        return DRIVERS[name]
    except KeyError:
        raise InvalidSpec(f"unknown network driver {name!r} (known: {', '.join(DRIVERS)})") from None


def driver_for(network: Network) -> NetworkDriver:
    """The driver of a recorded network."""
    return driver_named(network.driver)
