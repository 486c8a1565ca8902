"""What every engine operation runs against: one host, one store, one kernel."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from overlays.errors import NotFound, NotPermitted
from overlays.kernel.api import Kernel, Links
from overlays.model.names import short_hash
from overlays.store.base import Store


def instance_id(state_dir: Path, host_netns: str | None) -> str:
    """Short, stable id of an engine (state dir + host namespace), carried by every kernel object."""
    return short_hash(str(state_dir.resolve()), host_netns or "", length=6)


@dataclass
class Context:
    store: Store
    kernel: Kernel
    state_dir: Path
    host_netns: str | None
    instance: str
    check_root: bool = True

    @property
    def host_label(self) -> str:
        return self.host_netns or "the host namespace"

    def require_root(self) -> None:
        if self.check_root and os.geteuid() != 0:
            raise NotPermitted("overlays needs root (CAP_NET_ADMIN) to change networks; run it with sudo")

    def open_host(self) -> Links:
        """A netlink handle on the host namespace; checks that it exists."""
        self.require_root()
        if self.host_netns is not None and not self.kernel.netns_exists(self.host_netns):
            raise NotFound(
                f"host namespace {self.host_netns} does not exist (create it with: ip netns add {self.host_netns})"
            )
        return self.kernel.open(self.host_netns)

    def log_dir(self) -> Path:
        path = self.state_dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path
