"""Processes inside sandboxes: start, identify, stop.

A PID alone can be reused after its process exits, so we record the process's
start time (field 22 of /proc/PID/stat) beside it and only ever signal a PID
whose start time still matches: ``overlays rm`` never kills a stranger.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from overlays.errors import InvalidSpec, NotFound
from overlays.kernel import netns

_libc = ctypes.CDLL(None, use_errno=True)


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` in clock ticks, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parens: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    return pid is not None and started is not None and start_time(pid) == started


def _enter(netns_path: Path, hostname: str | None) -> None:
    """Runs in the child between fork and exec: join the sandbox, set its hostname."""
    netns.setns(netns_path)
    if hostname and _libc.unshare(netns.CLONE_NEWUTS) == 0:
        _libc.sethostname(hostname.encode(), len(hostname))


def spawn(
    netns_path: Path,
    argv: Sequence[str],
    hostname: str | None = None,
    log: Path | None = None,
    detach: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside the namespace; detached ones get their own session and a log file."""
    out = open(log, "ab") if log else None  # noqa: SIM115 (closed below, the child keeps its copy)
    try:
        return subprocess.Popen(
            list(argv),
            preexec_fn=lambda: _enter(netns_path, hostname),
            stdin=subprocess.DEVNULL if detach else None,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=detach,
        )
    except FileNotFoundError as e:
        raise NotFound(f"command {argv[0]!r} not found") from e
    except PermissionError as e:
        raise InvalidSpec(f"command {argv[0]!r} is not executable") from e
    finally:
        if out:
            out.close()


def stop(pid: int, started: int | None, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only if the PID is still our process."""
    if not alive(pid, started):
        return
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(pid, started):
            return
        time.sleep(0.01)
    _signal(pid, signal.SIGKILL)
    for _ in range(200):
        _reap(pid)
        if not alive(pid, started):
            return
        time.sleep(0.005)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child (the Python API starts them)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
