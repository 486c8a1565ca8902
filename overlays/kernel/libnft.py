"""libnftables through ctypes: the ``nft`` command's own library, run in-process.

Design note. A context (``struct nft_ctx``) owns one netfilter netlink socket,
which ``nft_ctx_new`` opens at once (checked in the nftables sources, 0.9 to
1.0.x: ``nft_ctx_new`` -> ``nft_ctx_netlink_init`` -> ``nft_mnl_socket_open``).
A socket belongs to the network namespace of the thread that created it, for
its whole life: so a context made by a thread inside namespace N changes N's
ruleset whichever thread later runs a command through it. ``nft.py`` builds on
that; this module only wraps the C API, holding no state but the loaded library.

Three habits of the library shape this wrapper:

* It opens its socket without ``SOCK_CLOEXEC``. Every child we exec would inherit
  it and keep the namespace alive as long as it runs (a daemon started by
  ``overlays run -d`` would pin its host namespace), so we find the new socket
  and mark it close-on-exec ourselves.
* It calls ``exit()`` when that socket cannot be opened (no nfnetlink, too many
  files). We open the same kind of socket first and raise instead.
* Given a buffer of several lines, version 1.0.6 prints the buffer's *first*
  line under an error, wherever it was. Scripts of several lines are therefore
  read from a file (a memfd), as ``nft -f`` does: errors then say
  ``FILE:LINE:COLUMNS: Error: ...`` above the offending line itself.

Contexts are not safe to share between threads, and the library keeps some
state in globals (its interface cache): callers serialize every call (ctypes
releases the GIL while C runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from typing import Any

LIBRARY = "libnftables.so.1"
PACKAGE = "nftables"  # Debian's nft tool, which pulls in libnftables1
NETLINK_NETFILTER = 12
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4

_lib: Any = None


class Unavailable(Exception):
    """libnftables cannot be loaded, or a context cannot be made."""


class Failed(Exception):
    """A command failed; ``errors`` is what nft printed (the same text as the command's stderr)."""

    def __init__(self, errors: str) -> None:
        super().__init__(errors.strip() or "nft failed")
        self.errors = errors


def _signatures(lib: Any) -> None:
    p, s, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for name, restype, argtypes in (
        ("nft_ctx_new", p, [ctypes.c_uint32]),
        ("nft_ctx_free", None, [p]),
        ("nft_ctx_buffer_output", i, [p]),
        ("nft_ctx_buffer_error", i, [p]),
        ("nft_ctx_get_output_buffer", s, [p]),
        ("nft_ctx_get_error_buffer", s, [p]),
        ("nft_ctx_output_set_flags", None, [p, ctypes.c_uint]),
        ("nft_run_cmd_from_buffer", i, [p, s]),
        ("nft_run_cmd_from_filename", i, [p, s]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


def library() -> Any:
    """The loaded library (once per process)."""
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL(LIBRARY, use_errno=True)
            _signatures(lib)
        except (OSError, AttributeError) as e:
            raise Unavailable(f"cannot load {LIBRARY} ({e}); install it with: apt install {PACKAGE}") from e
        _lib = lib
    return _lib


def _sockets() -> dict[int, str]:
    """This process's sockets: descriptor -> ``socket:[INODE]`` (the listing's own descriptor is a directory)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:"):
            found[int(name)] = link
    return found


def _netfilter_sockets(fds: list[int]) -> list[int]:
    """Those of ``fds`` that are netfilter netlink sockets."""
    found = []
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # closed meanwhile
            continue
        try:
            if sock.family == socket.AF_NETLINK and sock.proto == NETLINK_NETFILTER:
                found.append(fd)
        finally:
            sock.detach()
    return found


class Context:
    """One ``nft_ctx``: output and errors captured, its socket in the creating thread's namespace."""

    def __init__(self) -> None:
        lib = library()
        try:  # what nft_ctx_new would exit() the process over
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER).close()
        except OSError as e:
            raise Unavailable(f"cannot open a netfilter netlink socket: {e.strerror or e}") from e
        before = _sockets()
        ptr = lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ptr:
            raise Unavailable("nft_ctx_new failed")
        self._ptr: int | None = ptr
        # Sockets made since ``before`` by this call (made by anything else, they are Python's, and
        # Python makes every descriptor non-inheritable already).
        made = [fd for fd, link in _sockets().items() if before.get(fd) != link]
        self.fds = tuple(_netfilter_sockets(made))
        for fd in self.fds:
            os.set_inheritable(fd, False)
        if lib.nft_ctx_buffer_output(ptr) != 0 or lib.nft_ctx_buffer_error(ptr) != 0:
            self.close()
            raise Unavailable("cannot capture nft's output")

    def _handle(self) -> int:
        if self._ptr is None:
            raise Unavailable("the nft context is closed")
        return self._ptr

    def _result(self, rc: int) -> str:
        lib = library()
        out = (lib.nft_ctx_get_output_buffer(self._ptr) or b"").decode(errors="replace")
        errors = (lib.nft_ctx_get_error_buffer(self._ptr) or b"").decode(errors="replace")
        if rc != 0:
            raise Failed(errors)
        return out

    def run_script(self, script: str) -> str:
        """Apply ``script`` as ``nft -f FILE`` does: one transaction; errors name the script's line."""
        ptr = self._handle()
        if "\n" not in script.rstrip("\n"):  # one line: a buffer shows the right line, and saves ~45 us
            return self._result(library().nft_run_cmd_from_buffer(ptr, script.encode()))
        fd = os.memfd_create("nft-script", os.MFD_CLOEXEC)
        try:
            data = script.encode()
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            rc = library().nft_run_cmd_from_filename(ptr, f"/proc/self/fd/{fd}".encode())
        finally:
            os.close(fd)
        return self._result(rc)

    def run_command(self, command: str, *, json_output: bool = False) -> str:
        """Run one command line (``list table inet t``), its output as nft prints it (JSON if asked)."""
        ptr = self._handle()
        lib = library()
        lib.nft_ctx_output_set_flags(ptr, NFT_CTX_OUTPUT_JSON if json_output else 0)
        try:
            rc = lib.nft_run_cmd_from_buffer(ptr, command.encode())
        finally:
            lib.nft_ctx_output_set_flags(ptr, 0)
        return self._result(rc)

    def close(self) -> None:
        """Free the context and close its socket (the namespace is no longer held)."""
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            library().nft_ctx_free(ptr)

    def forget(self) -> None:
        """In a forked child: close our copy of the socket without touching the library's memory."""
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._ptr = None
