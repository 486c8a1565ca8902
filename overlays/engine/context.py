"""What every engine operation runs against: one host, one store, one kernel."""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from overlays.errors import NotFound, NotPermitted, StoreError
from overlays.kernel.api import Dns, Kernel, Links
from overlays.model.names import short_hash
from overlays.store.base import Store, Txn, Value, transact

T = TypeVar("T")


class NodeTxn(Txn):
    """A transaction whose keys live under ``nodes/<node>/``: one store can hold many hosts.

    The engine's own records (networks, sandboxes, endpoints, addresses, ports) are
    per host; what several hosts share (overlay networks, their addresses, host and
    endpoint registrations) goes through ``root``, the same transaction unscoped,
    so one commit covers both.
    """

    def __init__(self, root: Txn, prefix: str) -> None:  # a view: no buffers of its own
        self.root = root
        self.prefix = prefix

    def get(self, key: str) -> Value | None:
        return self.root.get(self.prefix + key)

    def peek(self, key: str) -> Value | None:
        return self.root.peek(self.prefix + key)

    def prefetch(self, keys: Sequence[str], root: Sequence[str] = ()) -> None:
        """This host's ``keys`` and the shared ``root`` ones, read in one request (see Txn.prefetch)."""
        self.root.prefetch([*(self.prefix + k for k in keys), *root])

    def range(self, prefix: str) -> dict[str, Value]:
        cut = len(self.prefix)
        return {k[cut:]: v for k, v in self.root.range(self.prefix + prefix).items()}

    def put(self, key: str, value: Value, lease: int | None = None) -> None:
        self.root.put(self.prefix + key, value, lease)

    def create(self, key: str, value: Value, lease: int | None = None) -> bool:
        return self.root.create(self.prefix + key, value, lease)

    def delete(self, key: str) -> None:
        self.root.delete(self.prefix + key)


def instance_id(state_dir: Path, host_netns: str | None) -> str:
    """Short, stable id of an engine (state dir + host namespace), carried by every kernel object."""
    return short_hash(str(state_dir.resolve()), host_netns or "", length=6)


def warn_on_stderr(line: str) -> None:
    print(f"overlays: warning: {line}", file=sys.stderr, flush=True)


@dataclass
class Context:
    store: Store
    kernel: Kernel
    state_dir: Path
    host_netns: str | None
    instance: str
    node: str = "local"
    check_root: bool = True
    # The host's DNS server (see hostdns): on unless turned off; reached through a client made on
    # first use. ``store_url`` is how another process (an agent started on demand, a fault timer) opens the
    # same store ("" : the state dir's own SQLite file; None: a store handed in, which no other process can share).
    dns: bool = True
    store_url: str | None = ""
    warn: Callable[[str], None] = warn_on_stderr
    dns_client: Dns | None = field(default=None, repr=False)

    def transact(self, fn: Callable[[NodeTxn], T]) -> T:
        """Run ``fn`` in a store transaction scoped to this host (retried on conflict)."""
        prefix = f"nodes/{self.node}/"
        return transact(self.store, lambda txn: fn(NodeTxn(txn, prefix)))

    @property
    def host_label(self) -> str:
        return self.host_netns or "the host namespace"

    def require_root(self) -> None:
        if self.check_root and os.geteuid() != 0:
            raise NotPermitted("overlays needs root (CAP_NET_ADMIN) to change networks; run it with sudo")

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """A lock shared by every process of this host (engine commands, the agent) on this state dir.

        Its file descriptor is close-on-exec: a process started while it is held never inherits it.
        """
        path = self.state_dir / "locks" / f"{self.node}.{name}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open lock {path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def host_exists(self) -> bool:
        return self.host_netns is None or self.kernel.netns_exists(self.host_netns)

    def open_host(self) -> Links:
        """A netlink handle on the host namespace; checks that it exists."""
        self.require_root()
        if self.host_netns is not None and not self.kernel.netns_exists(self.host_netns):
            raise NotFound(
                f"host namespace {self.host_netns} does not exist (create it with: ip netns add {self.host_netns})"
            )
        return self.kernel.open(self.host_netns)

    def log_dir(self) -> Path:
        path = self.state_dir / "logs" / self.node
        path.mkdir(parents=True, exist_ok=True)
        return path
