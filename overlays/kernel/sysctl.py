"""Per-namespace sysctls: /proc/sys/net shows the namespace of the thread that opens it."""

from __future__ import annotations

from pathlib import Path

from overlays.errors import KernelError
from overlays.kernel import netns


def _file(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def write(netns_path: Path | None, key: str, value: str, label: str | None = None) -> None:
    """Set ``key`` (dotted, like net.ipv4.ip_forward) inside the namespace at ``netns_path``."""

    def do() -> None:
        try:
            _file(key).write_text(value)
        except OSError as e:
            raise KernelError("set sysctl", f"{key}={value}", label, e.strerror or str(e)) from e

    netns.run_in(netns_path, do)


def read(netns_path: Path | None, key: str) -> str:
    return netns.run_in(netns_path, lambda: _file(key).read_text().strip())
