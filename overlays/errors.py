"""The exceptions overlays raises, in one tree.

    OverlaysError                 anything overlays reports to a user
      InvalidSpec                 bad input: a name, a CIDR, an address, a flag
      NotFound                    an unknown network, sandbox or process
      Conflict                    exists already, in use, overlaps, taken
        Exhausted                 an address pool with no free address left
      NotPermitted                needs root (CAP_NET_ADMIN)
      KernelError                 the kernel refused a step (keeps the netlink cause)
      StoreError                  the state store failed or stayed busy

Every message names the object and what is wrong, so the CLI can print it as one line.
Lower-layer errors are mapped here with ``raise ... from`` so the cause is kept.
"""

from __future__ import annotations


class OverlaysError(Exception):
    """Base of every error overlays reports to a user."""


class InvalidSpec(OverlaysError):
    """The input is malformed or inconsistent; nothing was changed."""


class NotFound(OverlaysError):
    """The named object does not exist."""


class Conflict(OverlaysError):
    """The request clashes with something that exists."""


class Exhausted(Conflict):
    """An address pool has no free address left."""


class NotPermitted(OverlaysError):
    """The operation needs privileges the process does not have."""


class KernelError(OverlaysError):
    """A kernel step failed: names the operation, the object and the namespace; ``errno`` keeps the kernel's code."""

    def __init__(self, operation: str, obj: str, netns: str | None, cause: str, errno: int | None = None) -> None:
        where = f"in netns {netns}" if netns else "in the host namespace"
        super().__init__(f"{operation} {obj} {where}: {cause}")
        self.operation = operation
        self.obj = obj
        self.netns = netns
        self.cause = cause
        self.errno = errno


class StoreError(OverlaysError):
    """The state store failed."""
