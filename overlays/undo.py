"""Setup is a transaction, teardown is best-effort.

Each successful setup step pushes the step that reverses it. If a later step
fails, ``rollback`` runs the pushed steps newest first and keeps going past
failures, so one stuck object does not leave the others behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Undo:
    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []

    def push(self, label: str, fn: Callable[..., Any], *args: Any) -> None:
        self._steps.append((label, fn, args))

    def rollback(self) -> list[str]:
        """Run every undo step, newest first; return the failures as messages."""
        failures = []
        while self._steps:
            label, fn, args = self._steps.pop()
            try:
                fn(*args)
            except Exception as e:  # best-effort: report and keep going
                failures.append(f"{label}: {e}")
        return failures

    def forget(self) -> None:
        """The operation succeeded: nothing is to be undone."""
        self._steps.clear()


def best_effort(steps: list[tuple[str, Callable[[], object]]]) -> list[str]:
    """Run every teardown step even if some fail; return the failures as messages."""
    failures = []
    for label, fn in steps:
        try:
            fn()
        except Exception as e:
            failures.append(f"{label}: {e}")
    return failures
