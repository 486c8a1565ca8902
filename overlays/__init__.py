"""overlays: container networks from real Linux parts, one command or one call each.

    from overlays import Engine, NetworkSpec, SandboxSpec, EndpointRequest

The engine and the model classes are loaded on first use (PEP 562), so a command
that needs only part of the package (``overlays ps``) does not pay for the rest.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from overlays.errors import (
    Conflict,
    Exhausted,
    InvalidSpec,
    KernelError,
    NotFound,
    NotPermitted,
    OverlaysError,
    StoreError,
)

if TYPE_CHECKING:
    from overlays.engine import Engine
    from overlays.model import Endpoint, EndpointRequest, Network, NetworkSpec, PortMapping, Sandbox, SandboxSpec

_HOMES = {
    "Endpoint": "overlays.model.state",
    "EndpointRequest": "overlays.model.specs",
    "Engine": "overlays.engine",
    "Network": "overlays.model.state",
    "NetworkSpec": "overlays.model.specs",
    "PortMapping": "overlays.model.ports",
    "Sandbox": "overlays.model.state",
    "SandboxSpec": "overlays.model.specs",
}

__all__ = [
    "Conflict",
    "Endpoint",
    "EndpointRequest",
    "Engine",
    "Exhausted",
    "InvalidSpec",
    "KernelError",
    "Network",
    "NetworkSpec",
    "NotFound",
    "NotPermitted",
    "OverlaysError",
    "PortMapping",
    "Sandbox",
    "SandboxSpec",
    "StoreError",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
