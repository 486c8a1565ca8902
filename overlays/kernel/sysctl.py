"""Per-namespace sysctls: /proc/sys/net shows the namespace of the thread that opens it."""

from __future__ import annotations

from pathlib import Path

from overlays.errors import KernelError
from overlays.kernel import netns


def _file(key: str) -> Path:
    """Dotted (net.ipv4.ip_forward) or, when a part holds a dot (an interface name), slashed."""
    return Path("/proc/sys") / (key if "/" in key else key.replace(".", "/"))


def write(netns_path: Path | None, key: str, value: str, label: str | None = None, missing_ok: bool = False) -> None:
    """Set ``key`` (dotted, like net.ipv4.ip_forward) inside the namespace at ``netns_path``.

    ``missing_ok``: a key that does not exist (its module is not loaded) is left alone.
    """

    def do() -> None:
        if missing_ok and not _file(key).exists():
            return
        try:
            _file(key).write_text(value)
        except OSError as e:
            raise KernelError("set sysctl", f"{key}={value}", label, e.strerror or str(e)) from e

    netns.run_in(netns_path, do)


def read(netns_path: Path | None, key: str) -> str | None:
    """The value of ``key`` inside the namespace at ``netns_path``; None if it does not exist."""

    def do() -> str | None:
        try:
            return _file(key).read_text().strip()
        except OSError:
            return None

    return netns.run_in(netns_path, do)
