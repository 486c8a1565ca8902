"""The process a runtime execs, around the pure ``protocol.handle``: one verb done here.

Two ways in: the ``overlays-cni`` console script (``run``: everything in this
process), and the launcher ``overlays cni install`` writes, whose thin client
(``client``) comes here (``fallback``) only when no server of ours answered; once it
has answered the runtime, a fallback starts a server for the calls that follow.

The conflist alone says which engine to open: the ``OVERLAYS_*`` variables a
runtime may happen to carry in its environment are dropped, so the plugin and the
CLI that wrote the conflist always meet in the same state. Signals that would stop
us halfway are held while a verb runs (a runtime's timeout kills with SIGKILL,
which nothing can hold; the engine's pending records cover that). As in the CLI,
the cyclic garbage collector stays off: the process lives for one verb.
"""

from __future__ import annotations

import gc
import os
import signal
import sys

from overlays.cni import protocol

HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
ENGINE_VARIABLES = ("OVERLAYS_HOST_NETNS", "OVERLAYS_STATE_DIR", "OVERLAYS_STORE", "OVERLAYS_NODE")
SERVED_AFTER = ("ADD", "CHECK", "DEL")  # verbs after which a server is worth starting (attachments may remain)


def _open_backend(req: protocol.Request, warn: protocol.Warn) -> protocol.Backend:
    from overlays.cni import plugin  # VERSION and bad input never load it

    return plugin.open_backend(req, warn)


def _warn(line: str) -> None:
    print(f"overlays-cni: {line}", file=sys.stderr, flush=True)


def _read_stdin() -> bytes:
    return b"" if sys.stdin.isatty() else sys.stdin.buffer.read()  # a person at a terminal: no config


def one_verb(stdin: bytes, open_backend: protocol.OpenBackend = _open_backend) -> int:
    """The verb os.environ asks for, answered on stdout; returns the exit code."""
    gc.disable()
    for name in ENGINE_VARIABLES:
        os.environ.pop(name, None)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        out, code = protocol.handle(os.environ, stdin, open_backend, _warn)
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    finally:  # a signal held meanwhile takes effect now, once the runtime has its answer
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return code


def fallback(stdin: bytes, where: bytes, paths: list[str]) -> int:
    """The thin client found no server: do the verb here, then start one (it exits if no attachment remains)."""
    opened = []

    def open_backend(req: protocol.Request, warn: protocol.Warn) -> protocol.Backend:
        from overlays.cni import plugin

        backend = plugin.open_backend(req, warn)
        opened.append(backend.conf)
        return backend

    code = one_verb(stdin, open_backend)
    if code == 0 and opened and os.environ.get("CNI_COMMAND") in SERVED_AFTER:
        from overlays.cni import server  # started with none of our descriptors: the runtime sees us end now

        server.start(where, paths, opened[0])
    return code


def main() -> int:
    return one_verb(_read_stdin())


def run() -> None:
    """The console script."""
    sys.exit(main())
