"""Pure data: specs, validation and naming. No kernel, no store."""

from overlays.model.ports import PortMapping, parse_publish
from overlays.model.specs import (
    Endpoint,
    EndpointRequest,
    Network,
    NetworkSpec,
    Sandbox,
    SandboxSpec,
)

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
