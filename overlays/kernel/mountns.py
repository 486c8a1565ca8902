"""A sandbox's processes in a mount namespace of their own, seeing its /etc/netns files over /etc.

iproute2's convention: files under ``/etc/netns/NAME/`` are what processes in namespace
NAME see in place of ``/etc/FILE``; ``ip netns exec NAME`` bind-mounts each of them over
its ``/etc`` counterpart in a private mount namespace. Our sandboxes' resolv.conf is
found there (``/etc/netns/ov-<id>-web/resolv.conf``: nameserver 127.0.0.11; the
directory is a link to one that the host's sandboxes share, ``link_etc_dir``), so a
command run by overlays and one run by ``ip netns exec`` resolve the same way, and the
host's own ``/etc/resolv.conf`` is never written.

The child does it between fork and exec (``entering``): a new mount namespace, every
mount made a *slave* of the host's first (recursively; so nothing it mounts propagates
back, while the host's later mounts still reach it), then one bind mount per file. The
parent checks the files first, so a failure in the child is rare and still stops the
exec (the process never runs with the host's resolv.conf by mistake).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from overlays.errors import KernelError, NotFound
from overlays.kernel import netns

if TYPE_CHECKING:
    import subprocess

ETC = Path("/etc")
ETC_NETNS = ETC / "netns"
CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19

Bind = tuple[str, str]  # (source, target)


def etc_dir(netns_name: str, root: Path = ETC_NETNS) -> Path:
    return root / netns_name


def write_etc_file(netns_name: str, filename: str, text: str, root: Path = ETC_NETNS) -> Path:
    """Write ``/etc/netns/NAME/FILE`` atomically (a reader sees the old file or the new, whole)."""
    return write_file(etc_dir(netns_name, root), filename, text, netns_name)


def write_file(directory: Path, filename: str, text: str, netns_name: str | None = None) -> Path:
    """Write ``directory/filename`` atomically (made with its directory if need be; mode 0644)."""
    if "/" in filename or filename in ("", ".", ".."):
        raise KernelError("write", filename, netns_name, "not a plain file name")
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    path = directory / filename
    tmp = directory / f".{filename}.{os.getpid()}.tmp"
    try:
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise KernelError("write", str(path), netns_name, os.strerror(e.errno or 0)) from e
    return path


def link_etc_dir(netns_name: str, target: Path, root: Path = ETC_NETNS) -> None:
    """Make ``/etc/netns/NAME`` a symbolic link to the directory ``target`` (files shared by many namespaces).

    One file system entry per namespace, where a directory and a file of its own are two
    (creating one costs ~0.2 ms on our machines); ``ip netns exec`` and our mounts follow the link.
    """
    link = etc_dir(netns_name, root)
    try:
        try:
            link.symlink_to(target, target_is_directory=True)
        except FileNotFoundError:  # no /etc/netns yet
            root.mkdir(parents=True, exist_ok=True, mode=0o755)
            link.symlink_to(target, target_is_directory=True)
    except FileExistsError:
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        remove_etc_dir(netns_name, root)  # another target, or a directory of its own: replaced
        link.symlink_to(target, target_is_directory=True)
    except OSError as e:
        raise KernelError("link", str(link), netns_name, os.strerror(e.errno or 0)) from e


def remove_etc_dir(netns_name: str, root: Path = ETC_NETNS) -> None:
    """Remove ``/etc/netns/NAME``: a link (not what it points to), or a directory and its files; missing is fine."""
    directory = etc_dir(netns_name, root)
    try:
        directory.unlink()  # a link, the usual case: one system call
        return
    except FileNotFoundError:
        return
    except (IsADirectoryError, PermissionError):  # a directory (unlink(2) says EISDIR, or EPERM)
        pass
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            entry.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        directory.rmdir()


def etc_binds(netns_name: str, root: Path = ETC_NETNS, etc: Path = ETC) -> list[Bind]:
    """What ``ip netns exec NAME`` bind-mounts: each file of ``/etc/netns/NAME`` over ``/etc/FILE``.

    A file with nothing of that name under ``/etc`` is left out, as ``ip netns exec`` goes
    on without it (a machine without /etc/resolv.conf has no host resolver to hide either).
    """
    return dir_binds(etc_dir(netns_name, root), etc)


def dir_binds(directory: Path, etc: Path = ETC) -> list[Bind]:
    """Each file of ``directory`` over its ``/etc`` counterpart (one that exists)."""
    try:
        names = sorted(e.name for e in directory.iterdir() if e.is_file() and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [(str(directory / n), str(etc / n)) for n in names if os.path.exists(etc / n)]


def check_binds(binds: Sequence[Bind], netns_name: str | None = None) -> None:
    """Both ends of every bind must exist (a bind mount over a dangling symlink fails in the child)."""
    for source, target in binds:
        for path in (source, target):
            if not os.path.exists(path):
                raise NotFound(f"cannot show {source} as {target} to the sandbox's processes: {path} does not exist")


def private_mounts(binds: Sequence[Bind]) -> None:
    """In a child: a mount namespace of its own (a slave of the host's), then the bind mounts."""
    libc = netns.libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    # First, before any mount: nothing done here may propagate back to the host.
    if libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
        raise OSError(ctypes.get_errno(), "make / a slave mount")
    for source, target in binds:
        if libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), f"bind {source} over {target}")


def entering(netns_path: str | Path, binds: Sequence[Bind], hostname: str | None = None) -> Callable[[], None]:
    """What a child runs between fork and exec: join the sandbox, its hostname, its own mounts.

    Everything it calls is bound here, in the parent: importing in a forked child can deadlock.
    """
    libc = netns.libc()
    binds = list(binds)

    def enter() -> None:
        netns.setns(netns_path)
        if hostname and libc.unshare(netns.CLONE_NEWUTS) == 0:
            libc.sethostname(hostname.encode(), len(hostname))
        if binds:  # nothing to show: the host's mounts as they are, no mount namespace to copy
            private_mounts(binds)

    return enter


def spawn(netns_path: str | Path, argv: Sequence[str], binds: Sequence[Bind], hostname: str | None = None,
          stdout: int | IO[bytes] | None = None, stderr: int | IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside the sandbox's namespace with ``binds`` mounted in a mount namespace of its own."""
    import subprocess

    check_binds(binds)
    try:
        return subprocess.Popen(list(argv), preexec_fn=entering(netns_path, binds, hostname),
                                stdout=stdout, stderr=stderr)
    except FileNotFoundError as e:
        raise NotFound(f"command {argv[0]!r} not found") from e
    except subprocess.SubprocessError as e:
        raise KernelError("start in a mount namespace of its own", argv[0], str(netns_path),
                          f"the child could not enter the namespaces or mount its files ({e})") from e
