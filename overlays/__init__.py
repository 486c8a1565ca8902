"""overlays: container networks from real Linux parts, one command or one call each.

    from overlays import Engine, NetworkSpec, SandboxSpec, EndpointRequest

The engine and the model classes are loaded on first use (PEP 562), so a command
that needs only part of the package (``overlays ps``) does not pay for the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from overlays.exports import lazy

if TYPE_CHECKING:
    from overlays.engine import Engine
    from overlays.model import Endpoint, EndpointRequest, Network, NetworkSpec, PortMapping, Sandbox, SandboxSpec

_MODEL = ("Endpoint", "EndpointRequest", "Network", "NetworkSpec", "PortMapping", "Sandbox", "SandboxSpec")
_HOMES = {"Engine": "overlays.engine"} | dict.fromkeys(_MODEL, "overlays.model")  # the model says where each lives

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

__getattr__ = lazy(__name__, _HOMES)
