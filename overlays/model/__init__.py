"""Pure data: specs, validation and naming. No kernel, no store.

The names below are loaded on first use (PEP 562): every command imports
``overlays.model.names``, and that should not build the spec classes a
read-only command never touches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from overlays.exports import lazy

if TYPE_CHECKING:
    from overlays.model.ports import PortMapping, parse_publish
    from overlays.model.specs import EndpointRequest, NetworkSpec, SandboxSpec
    from overlays.model.state import Endpoint, Network, Sandbox

_HOMES = {
    "Endpoint": "overlays.model.state",
    "EndpointRequest": "overlays.model.specs",
    "Network": "overlays.model.state",
    "NetworkSpec": "overlays.model.specs",
    "PortMapping": "overlays.model.ports",
    "Sandbox": "overlays.model.state",
    "SandboxSpec": "overlays.model.specs",
    "parse_publish": "overlays.model.ports",
}

__all__ = [
    "Endpoint",
    "EndpointRequest",
    "Network",
    "NetworkSpec",
    "PortMapping",
    "Sandbox",
    "SandboxSpec",
    "parse_publish",
]

__getattr__ = lazy(__name__, _HOMES)
