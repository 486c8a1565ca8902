"""Processes inside sandboxes: start, identify, stop.

A PID alone can be reused after its process exits, so we record the process's
start time (field 22 of /proc/PID/stat) beside it and only ever signal a PID
whose start time still matches: ``overlays rm`` never kills a stranger.

A process started in a sandbox may be given ``binds``: files shown over their ``/etc``
counterparts in a mount namespace of its own (the sandbox's resolv.conf, see
``mountns``), as ``ip netns exec`` shows ``/etc/netns/NAME/*``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from overlays.errors import InvalidSpec, NotFound

if TYPE_CHECKING:
    import subprocess


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


Bind = tuple[str, str]  # (source, target)


def _entering(netns_path: Path, hostname: str | None, binds: Sequence[Bind]) -> Callable[[], None]:
    """What the child runs between fork and exec: fresh signals, join the sandbox, set its hostname, mount
    its files.

    Everything it needs is imported here, in the parent: importing in a forked child can
    deadlock, and commands that only read state (``ps``) should not load ctypes and netns.
    """
    from overlays.kernel import mountns

    mountns.check_binds(binds)
    enter = mountns.entering(netns_path, binds, hostname)
    fresh = _fresh_signals()

    def child() -> None:
        fresh()
        enter()

    return child


# rt_sigaction(2) by number: glibc's sigaction refuses the two real-time signals it keeps for itself
# (32 and 33), yet a parent may have left them ignored, and exec keeps that.
_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}
_KERNEL_SIGSET_BYTES = 8


def _fresh_signals() -> Callable[[], None]:
    """What makes a child's signals those a new program expects: none blocked, none ignored.

    exec keeps both the mask and ignored dispositions. A command that holds SIGTERM back while it
    works, or ignores SIGINT while it waits for its child (``exec``, a foreground ``run``), would pass
    that on: ``rm`` would wait out its grace and SIGKILL, Ctrl-C would not reach the command, and
    Python's own SIGPIPE/SIGXFSZ ignores would follow a daemon. Everything is prepared here, in the
    parent: the child only makes system calls.
    """
    import ctypes
    import platform

    from overlays.kernel import netns

    libc = netns.libc()
    number = _RT_SIGACTION.get(platform.machine())
    signals = [s for s in range(1, signal.SIGRTMAX + 1) if s not in (signal.SIGKILL, signal.SIGSTOP)]
    default = ctypes.create_string_buffer(64)  # a kernel struct sigaction, all zero: SIG_DFL, nothing masked

    def fresh() -> None:
        # Every disposition to the default: exec would reset the handled ones anyway, not the ignored.
        for sig in signals:
            if number is None:  # an unknown machine: what glibc lets us reach
                libc.signal(sig, None)
            else:
                libc.syscall(number, sig, default, None, _KERNEL_SIGSET_BYTES)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())

    return fresh


def spawn(
    netns_path: Path,
    argv: Sequence[str],
    hostname: str | None = None,
    log: Path | None = None,
    detach: bool = False,
    binds: Sequence[Bind] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside the namespace; detached ones get their own session and a log file."""
    import subprocess  # ~3 ms: only commands that start processes pay for it

    enter = _entering(netns_path, hostname, binds)
    out = open(log, "ab") if log else None  # noqa: SIM115 (closed below, the child keeps its copy)
    try:
        return subprocess.Popen(
            list(argv),
            preexec_fn=enter,
            stdin=subprocess.DEVNULL if detach else None,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=detach,
            env=env,
        )
    except FileNotFoundError as e:
        raise NotFound(f"command {argv[0]!r} not found") from e
    except PermissionError as e:
        raise InvalidSpec(f"command {argv[0]!r} is not executable") from e
    except subprocess.SubprocessError as e:  # the child could not enter the sandbox or mount its files
        raise InvalidSpec(f"command {argv[0]!r} cannot start in the sandbox: {e}") from e
    finally:
        if out:
            out.close()


def spawn_detached(netns_path: Path, argv: Sequence[str], hostname: str | None, log: Path,
                   binds: Sequence[Bind] = (), env: Mapping[str, str] | None = None) -> int:
    """Start ``argv`` as a daemon in the namespace (double fork): it is never our child, so it
    outlives us without a zombie or a wait; an exec failure is reported here, as with Popen."""
    enter = _entering(netns_path, hostname, binds)
    environ = dict(os.environ if env is None else env)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        middle = os.fork()
        if middle == 0:  # pragma: no cover (runs in the child)
            _daemon_child(enter, argv, out, report_w, environ)
        os.close(report_w)
        os.waitpid(middle, 0)
        message = b""
        while chunk := os.read(report_r, 256):
            message += chunk
    finally:
        os.close(report_r)
        os.close(out)
    pid_part, _, error = message.decode().partition("\n")
    if error:
        _raise_spawn_error(argv, int(error))
    return int(pid_part)


def _daemon_child(enter: Callable[[], None], argv: Sequence[str], out: int, report: int,
                  env: dict[str, str]) -> None:
    """First child: new session, fork the daemon, report its PID, exit. Never returns."""
    try:
        os.setsid()
        pid = os.fork()
        if pid:
            os.write(report, f"{pid}\n".encode())
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        enter()
        os.execvpe(argv[0], list(argv), env)
    except OSError as e:
        os.write(report, f"{e.errno}".encode())
    finally:
        os._exit(127)


def _raise_spawn_error(argv: Sequence[str], errno_: int) -> None:
    import errno

    if errno_ == errno.ENOENT:
        raise NotFound(f"command {argv[0]!r} not found")
    if errno_ in (errno.EACCES, errno.ENOEXEC):
        raise InvalidSpec(f"command {argv[0]!r} is not executable")
    raise InvalidSpec(f"command {argv[0]!r} cannot start: {os.strerror(errno_)}")


def stop(pid: int, started: int | None, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only if the PID is still our process."""
    stop_all([(pid, started)], grace)


def stop_all(processes: Sequence[tuple[int, int | None]], grace: float = 3.0) -> None:
    """``stop`` for several processes at once: one grace period for all of them."""
    left = [(pid, started) for pid, started in processes if alive(pid, started)]
    for pid, _ in left:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        left = _still_alive(left)
        if left:
            time.sleep(0.01)
    for pid, _ in left:
        _signal(pid, signal.SIGKILL)
    for _ in range(200):
        left = _still_alive(left)
        if not left:
            return
        time.sleep(0.005)


def _still_alive(processes: list[tuple[int, int | None]]) -> list[tuple[int, int | None]]:
    for pid, _ in processes:
        _reap(pid)
    return [(pid, started) for pid, started in processes if alive(pid, started)]


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child (the Python API starts them)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
