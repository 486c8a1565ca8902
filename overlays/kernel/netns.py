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

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from overlays.errors import InvalidSpec, KernelError, NotFound, NotPermitted

if TYPE_CHECKING:
    import ctypes
    import socket

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETLINK_ROUTE = 0

T = TypeVar("T")
_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """The C library, for the few calls the standard library lacks (setns, unshare, mount).

    Loaded on first use: ctypes costs ~6 ms to import, and a command that only reads state
    (``overlays ps``) names namespaces without entering one.
    """
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


def path_of(name: str) -> Path:
    return NETNS_DIR / name


_nsfs_dev: int | None = None


def exists(name: str) -> bool:
    """Whether a namespace is mounted under that name: a file left unmounted by a crash (between its making
    and its bind mount) names none, and is replaced by the next ``create``."""
    global _nsfs_dev
    try:
        st = os.stat(path_of(name))
    except OSError:
        return False
    if _nsfs_dev is None:
        _nsfs_dev = os.stat("/proc/self/ns/net").st_dev  # every namespace file lives on the one nsfs
    return st.st_dev == _nsfs_dev


def names() -> list[str]:
    """Every namespace mounted under /run/netns (files a crash left unmounted are not namespaces)."""
    try:
        listed = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in listed if exists(n))


def _claim_file(name: str, what: str) -> Path:
    """The empty file a namespace is bind-mounted on, made if absent; one left unmounted by a crash is reused."""
    path = path_of(name)
    try:
        os.close(os.open(str(path), os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError as e:
        if exists(name):
            raise KernelError(what, name, None, "a namespace of that name exists already") from e
        path.unlink(missing_ok=True)  # ours by name, never mounted: what a crash between two steps left
        return _claim_file(name, what)
    return path


Identity = tuple[int, int]


def identity(path: str | Path) -> Identity:
    """Which namespace ``path`` names: its nsfs device and inode (two paths name one namespace iff equal)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type (linux/nsfs.h)


def network_namespace(path: str | Path) -> Identity:
    """The identity of the network namespace at ``path``; InvalidSpec if ``path`` is not one."""
    import fcntl

    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise NotFound(f"network namespace {path} does not exist") from e
    except PermissionError as e:
        raise NotPermitted(f"cannot open {path}: permission denied") from e
    except OSError as e:
        raise InvalidSpec(f"{path} is not a network namespace ({e.strerror})") from e
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as e:
        raise InvalidSpec(f"{path} is not a network namespace (not a namespace file)") from e
    finally:
        os.close(fd)
    if kind != CLONE_NEWNET:
        raise InvalidSpec(f"{path} is a namespace, but not a network namespace")
    return identity(path)


def _check(ret: int, what: str, obj: str) -> None:
    if ret != 0:
        err = _errno()
        raise KernelError(what, obj, None, os.strerror(err))


def _mount(src: str, dst: str, flags: int) -> int:
    return int(libc().mount(src.encode(), dst.encode(), None, flags, None))


_netns_dir_ready = False


def _ensure_netns_dir() -> None:
    """Make /run/netns a shared mount point, as ``ip netns`` does, so mounts propagate (once a process)."""
    global _netns_dir_ready
    if _netns_dir_ready and NETNS_DIR.is_dir():
        return
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    if _mount("none", str(NETNS_DIR), MS_SHARED | MS_REC) != 0:
        if _errno() != errno.EINVAL:
            _check(-1, "make shared", str(NETNS_DIR))
        _check(_mount(str(NETNS_DIR), str(NETNS_DIR), MS_BIND | MS_REC), "bind-mount", str(NETNS_DIR))
        _check(_mount("none", str(NETNS_DIR), MS_SHARED | MS_REC), "make shared", str(NETNS_DIR))
    _netns_dir_ready = True


def setns(path: str | Path, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace at ``path``."""
    fd = os.open(str(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(libc().setns(fd, nstype), "enter namespace", str(path))
    finally:
        os.close(fd)


def entering(path: str | Path) -> Callable[[], None]:
    """A ``preexec_fn`` that moves the child into the namespace at ``path``.

    The C library is loaded here, in the parent: a child forked from a threaded process that
    imports (ctypes, on first use) can wait forever for an import lock another thread held.
    """
    libc()
    return lambda: setns(path)


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
    if libc().setns(home, CLONE_NEWNET) != 0:
        # Every later kernel step of this thread would land in the wrong namespace: stop here.
        err = _errno()
        raise SystemExit(f"overlays: cannot return to its own network namespace: {os.strerror(err)}")


def run_in(path: str | Path | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside the namespace at ``path`` (None: this process's own)."""
    with inside(path):
        return fn()


def create(name: str) -> Path:
    """Create the named namespace; an existing one of that name is an error."""
    _ensure_netns_dir()
    path = _claim_file(name, "create netns")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _check(libc().unshare(CLONE_NEWNET), "unshare", name)
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
    path = _claim_file(name, "adopt netns")
    if _mount(str(src), str(path), MS_BIND) != 0:
        err = _errno()
        path.unlink(missing_ok=True)
        raise KernelError("adopt netns", str(source), None, os.strerror(err))
    return path


def delete(name: str) -> None:
    """Remove the named namespace; a missing one is success."""
    path = path_of(name)
    if not path.exists():
        return
    if libc().umount2(str(path).encode(), MNT_DETACH) != 0 and _errno() not in (errno.EINVAL, errno.ENOENT):
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
            _check(libc().unshare(CLONE_NEWNET), "unshare", "a scratch namespace")
            return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        finally:
            _return_home(home)
    finally:
        os.close(home)
