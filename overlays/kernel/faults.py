"""A fault-injection seam: wrap any Kernel so that its n-th changing step fails.

Tests walk n = 1, 2, ... over an operation to prove that a failure at every step
is rolled back completely. Steps are the ``ensure_*``/``create_*``/``adopt_*``
calls, on the kernel and on every handle it opens, and the firewall and sysctl
writes (``nft_apply``, ``nft_delete_table``, ``set_sysctl``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from overlays.errors import KernelError
from overlays.kernel.api import Kernel, Links

CHANGING = ("ensure_", "create_", "adopt_")


class _Counter:
    def __init__(self, fail_at: int | None) -> None:
        self.fail_at = fail_at
        self.steps: list[str] = []

    def step(self, name: str) -> None:
        self.steps.append(name)
        if self.fail_at is not None and len(self.steps) == self.fail_at:
            raise KernelError("injected failure at", f"step {self.fail_at} ({name})", None, "fault injection")


class _FaultyLinks:
    def __init__(self, inner: Links, counter: _Counter) -> None:
        self._inner = inner
        self._counter = counter
        self.netns = inner.netns

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not name.startswith(CHANGING):
            return attr

        def step(*args: Any, **kwargs: Any) -> Any:
            self._counter.step(name)
            return attr(*args, **kwargs)

        return step

    def __enter__(self) -> _FaultyLinks:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


class FaultyKernel:
    """Delegates to ``inner``; the ``fail_at``-th changing step raises KernelError."""

    def __init__(self, inner: Kernel, fail_at: int | None = None) -> None:
        self._inner = inner
        self.counter = _Counter(fail_at)

    @property
    def steps(self) -> list[str]:
        return self.counter.steps

    def open(self, netns: str | None) -> Links:
        return _FaultyLinks(self._inner.open(netns), self.counter)  # type: ignore[return-value]

    def open_path(self, label: str, path: Path) -> Links:
        return _FaultyLinks(self._inner.open_path(label, path), self.counter)  # type: ignore[return-value]

    def create_netns(self, name: str) -> Path:
        self.counter.step("create_netns")
        return self._inner.create_netns(name)

    def adopt_netns(self, name: str, source: Path) -> Path:
        self.counter.step("adopt_netns")
        return self._inner.adopt_netns(name, source)

    def set_sysctl(self, netns: str | None, key: str, value: str, missing_ok: bool = False) -> None:
        self.counter.step("set_sysctl")
        self._inner.set_sysctl(netns, key, value, missing_ok)

    def nft_apply(self, netns: str | None, script: str) -> None:
        self.counter.step("nft_apply")
        self._inner.nft_apply(netns, script)

    def nft_delete_table(self, netns: str | None, family: str, table: str) -> None:
        self.counter.step("nft_delete_table")
        self._inner.nft_delete_table(netns, family, table)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
