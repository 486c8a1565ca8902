"""Network namespaces: create, delete, adopt, and enter, without forking.

A namespace is named by a file under /run/netns (a bind mount of an nsfs inode),
the convention ``ip netns`` uses, so users can inspect ours with ``ip netns``.

Namespaces are per thread on Linux. To work inside one (make a socket, write a
sysctl, create a namespace), the calling thread enters it and always returns to
where it was (``inside``): about 15 us, against about 0.3-0.8 ms to start and join
a helper thread for the same job, and no fork (``pyroute2.netns`` forks each
call). Nothing else runs on this thread meanwhile; other threads never move.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from overlays.errors import KernelError, NotFound

if TYPE_CHECKING:
    import socket

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETLINK_ROUTE = 0

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def libc() -> ctypes.CDLL:
    """The C library, for the few calls the standard library lacks (setns, unshare, mount)."""
    return _libc


def path_of(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path_of(name).exists()


Identity = tuple[int, int]


def identity(path: str | Path) -> Identity:
    """Which namespace ``path`` names: its nsfs device and inode (two paths name one namespace iff equal)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _check(ret: int, what: str, obj: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise KernelError(what, obj, None, os.strerror(err))


def _mount(src: str, dst: str, flags: int) -> int:
    return int(_libc.mount(src.encode(), dst.encode(), None, flags, None))


_netns_dir_ready = False


def _ensure_netns_dir() -> None:
    """Make /run/netns a shared mount point, as ``ip netns`` does, so mounts propagate (once a process)."""
    global _netns_dir_ready
    if _netns_dir_ready and NETNS_DIR.is_dir():
        return
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    if _mount("none", str(NETNS_DIR), MS_SHARED | MS_REC) != 0:
        if ctypes.get_errno() != errno.EINVAL:
            _check(-1, "make shared", str(NETNS_DIR))
        _check(_mount(str(NETNS_DIR), str(NETNS_DIR), MS_BIND | MS_REC), "bind-mount", str(NETNS_DIR))
        _check(_mount("none", str(NETNS_DIR), MS_SHARED | MS_REC), "make shared", str(NETNS_DIR))
    _netns_dir_ready = True


def setns(path: str | Path, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace at ``path``."""
    fd = os.open(str(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, nstype), "enter namespace", str(path))
    finally:
        os.close(fd)


@contextmanager
def inside(path: str | Path | None) -> Iterator[None]:
    """The calling thread inside the namespace at ``path`` (None: stay), back where it was afterwards."""
    if path is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:  # entering inside the try: an interrupt just after setns still leads home
            setns(path)
            yield
        finally:
            _return_home(home)
    finally:
        os.close(home)


def _return_home(home: int) -> None:
    if _libc.setns(home, CLONE_NEWNET) != 0:
        # Every later kernel step of this thread would land in the wrong namespace: stop here.
        err = ctypes.get_errno()
        raise SystemExit(f"overlays: cannot return to its own network namespace: {os.strerror(err)}")


def run_in(path: str | Path | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside the namespace at ``path`` (None: this process's own)."""
    with inside(path):
        return fn()


def create(name: str) -> Path:
    """Create the named namespace; an existing one of that name is an error."""
    _ensure_netns_dir()
    path = path_of(name)
    try:
        os.close(os.open(str(path), os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError as e:
        raise KernelError("create netns", name, None, "it exists already") from e

    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare", name)
            _check(_mount("/proc/thread-self/ns/net", str(path), MS_BIND), "bind-mount netns", name)
        finally:
            _return_home(home)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(home)
    return path


def adopt(name: str, source: str | Path) -> Path:
    """Give the namespace at ``source`` (say /proc/PID/ns/net) the name ``name``."""
    _ensure_netns_dir()
    src = Path(source)
    if not src.exists():
        raise NotFound(f"network namespace {source} does not exist")
    path = path_of(name)
    try:
        os.close(os.open(str(path), os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError as e:
        raise KernelError("adopt netns", name, None, "a namespace of that name exists already") from e
    if _mount(str(src), str(path), MS_BIND) != 0:
        err = ctypes.get_errno()
        path.unlink(missing_ok=True)
        raise KernelError("adopt netns", str(source), None, os.strerror(err))
    return path


def delete(name: str) -> None:
    """Remove the named namespace; a missing one is success."""
    path = path_of(name)
    if not path.exists():
        return
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(-1, "unmount netns", name)
    path.unlink(missing_ok=True)


def netlink_socket(path: str | Path | None) -> socket.socket:
    """A rtnetlink socket that lives in the namespace at ``path`` (sockets keep their netns)."""
    import socket  # ~5 ms: commands that only read state never open one

    return run_in(path, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))


def scratch_socket() -> socket.socket:
    """A rtnetlink socket in a new namespace of its own: nothing names it, and it goes with the socket."""
    import socket

    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare", "a scratch namespace")
            return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        finally:
            _return_home(home)
    finally:
        os.close(home)
