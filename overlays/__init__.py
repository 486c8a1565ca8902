"""overlays: container networks from real Linux parts, one command or one call each.

    from overlays import Engine, NetworkSpec, SandboxSpec, EndpointRequest
"""

from overlays.engine import Engine
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
from overlays.model import Endpoint, EndpointRequest, Network, NetworkSpec, PortMapping, Sandbox, SandboxSpec

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
