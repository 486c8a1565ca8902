"""``overlays-cni``: the process a runtime execs, around the pure ``protocol.handle``.

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


def _open_backend(req: protocol.Request, warn: protocol.Warn) -> protocol.Backend:
    from overlays.cni import plugin  # VERSION and bad input never load it

    return plugin.open_backend(req, warn)


def _warn(line: str) -> None:
    print(f"overlays-cni: {line}", file=sys.stderr, flush=True)


def main() -> int:
    gc.disable()
    for name in ENGINE_VARIABLES:
        os.environ.pop(name, None)
    stdin = b"" if sys.stdin.isatty() else sys.stdin.buffer.read()  # a person at a terminal: no config
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        out, code = protocol.handle(os.environ, stdin, _open_backend, _warn)
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    finally:  # a signal held meanwhile takes effect now, once the runtime has its answer
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return code


def run() -> None:
    """The console script."""
    sys.exit(main())
