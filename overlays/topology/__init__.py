"""Declarative topologies: a file (or code) describes hosts, networks and sandboxes;
``Lab.up`` converges to it, ``Lab.down`` removes exactly what it made."""

from overlays.topology.lab import Lab
from overlays.topology.spec import Topology, TopologyError, load, resolve

__all__ = ["Lab", "Topology", "TopologyError", "load", "resolve"]
