"""The per-host agent: keeps this host registered and its overlay entries in line."""

from overlays.agent.loop import Agent

__all__ = ["Agent"]
