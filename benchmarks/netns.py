"""Network namespaces for the benchmarks, independent of overlays' own kernel layer.

The baselines must not share code with the subject they judge, so this module
re-does the few namespace steps the harness needs: create a named namespace
without forking (unshare in a short-lived thread, bind-mount it under
/run/netns as ``ip netns`` does), delete it, and run code or child processes
inside one. Namespaces are per thread on Linux: the main thread never leaves
its own, and a child process started from a thread inherits that thread's.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETLINK_ROUTE = 0

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


class NetnsError(OSError):
    """A namespace step failed; the message names the step and the namespace."""


def path_of(name: str) -> Path:
    return NETNS_DIR / name


def _fail(what: str, name: str) -> NetnsError:
    err = ctypes.get_errno()
    return NetnsError(err, f"{what} {name}: {os.strerror(err)}")


def _mount(src: str, dst: str, flags: int) -> int:
    return int(_libc.mount(src.encode(), dst.encode(), None, flags, None))


def _ensure_dir() -> None:
    """/run/netns as a shared mount, so our bind mounts behave like ``ip netns add``'s."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    if _mount("none", str(NETNS_DIR), MS_SHARED | MS_REC) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:
        raise _fail("make shared", str(NETNS_DIR))
    if _mount(str(NETNS_DIR), str(NETNS_DIR), MS_BIND | MS_REC) != 0:
        raise _fail("bind-mount", str(NETNS_DIR))
    if _mount("none", str(NETNS_DIR), MS_SHARED | MS_REC) != 0:
        raise _fail("make shared", str(NETNS_DIR))


def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread (which may switch namespace) and return its result."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # handed back to the caller
            box["error"] = e

    thread = threading.Thread(target=target, name="bench-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def setns(path: str | Path) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    fd = os.open(str(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise _fail("enter", str(path))
    finally:
        os.close(fd)


_dir_ready = False


def create(name: str, with_socket: bool = False) -> tuple[Path, socket.socket | None]:
    """Create the named namespace; with ``with_socket`` also a rtnetlink socket living in it."""
    global _dir_ready
    if not _dir_ready:
        _ensure_dir()
        _dir_ready = True
    path = path_of(name)
    os.close(os.open(str(path), os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def make() -> socket.socket | None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise _fail("unshare for", name)
        if _mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", str(path), MS_BIND) != 0:
            raise _fail("bind-mount", name)
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE) if with_socket else None

    try:
        return path, in_thread(make)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def delete(name: str) -> None:
    """Remove the named namespace (the kernel frees it once nothing holds it); missing is fine."""
    path = path_of(name)
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        raise _fail("unmount", name)
    path.unlink(missing_ok=True)


def names(prefix: str = "") -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))


def netlink_socket(path: str | Path) -> socket.socket:
    """A rtnetlink socket inside the namespace at ``path`` (a socket keeps the netns it was made in)."""

    def make() -> socket.socket:
        setns(path)
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)

    return in_thread(make)


class NsThread:
    """One long-lived thread inside a namespace: calls submitted to it run there.

    Child processes it starts inherit the namespace, so a plugin exec'd from it
    sees that namespace as its host: no ``ip netns exec`` process in between.
    """

    def __init__(self, path: str | Path) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._loop, args=(Path(path), ready), name="bench-nsthread", daemon=True)
        self._thread.start()
        ready.result()

    def _loop(self, path: Path, ready: Future[None]) -> None:
        try:
            setns(path)
        except BaseException as e:
            ready.set_exception(e)
            return
        ready.set_result(None)
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

    def call(self, fn: Callable[[], T]) -> T:
        fut: Future[T] = Future()
        self._jobs.put((fn, fut))
        return fut.result()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)


def write_sysctl(path: str | Path, key: str, value: str) -> None:
    """Set ``net.*`` sysctl ``key`` inside the namespace at ``path`` (net sysctls are per namespace)."""

    def write() -> None:
        setns(path)
        Path("/proc/sys", *key.split(".")).write_text(value)

    in_thread(write)
