"""Which processes live where: the namespace they are in, and the tag overlays puts on the ones it starts.

A process overlays starts in a sandbox carries ``OVERLAYS_SANDBOX=<instance>/<sandbox>`` in its
environment, so that one a crash left unrecorded (started, then the recording step never came)
is still known to be ours. Both scans read /proc only; a process that exits meanwhile is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

from overlays.kernel import netns

TAG = "OVERLAYS_SANDBOX"


def tag(instance: str, sandbox: str) -> str:
    """The value of TAG for a sandbox's processes."""
    return f"{instance}/{sandbox}"


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def in_namespace(identity: netns.Identity) -> list[int]:
    """Every process whose network namespace is the one ``identity`` names."""
    found = []
    for pid in _pids():
        try:
            if netns.identity(f"/proc/{pid}/ns/net") == identity:
                found.append(pid)
        except OSError:
            continue
    return found


def tagged(instance: str) -> dict[int, str]:
    """pid -> sandbox, for every running process overlays started for a sandbox of ``instance``."""
    prefix = f"{TAG}={instance}/".encode()
    found = {}
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        for entry in environ.split(b"\0"):
            if entry.startswith(prefix):
                found[pid] = entry[len(prefix):].decode(errors="replace")
                break
    return found


def of_sandbox(instance: str, sandbox: str) -> list[tuple[int, int | None]]:
    """(pid, start time) of every running process overlays started for that sandbox, recorded or not."""
    from overlays.kernel import process

    return [(pid, process.start_time(pid)) for pid, name in tagged(instance).items() if name == sandbox]


def environment(instance: str, sandbox: str) -> dict[str, str]:
    """The environment a process started in the sandbox gets: ours, with its tag."""
    return {**os.environ, TAG: tag(instance, sandbox)}
