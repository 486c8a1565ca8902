"""The timer of a fault with a duration: ``python -m overlays.engine.faulttimer --at TIME ...``.

A detached process the engine starts (engine/faults.py) before it puts a qdisc or a
link-down in force: it sleeps until the fault's end, then heals what is due on its
host, as any fault operation would. It is recorded with the fault, so healing earlier
stops it; it needs nothing from the command that started it, which may be long gone.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="overlays.engine.faulttimer", description=__doc__)
    p.add_argument("--at", type=float, required=True, help="wall-clock time (seconds since the epoch) to heal at")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--store")
    p.add_argument("--host-netns")
    args = p.parse_args(argv)
    # Everything the healing needs is loaded and opened before the wait, so that it starts on time.
    import overlays.engine.faults
    import overlays.kernel.nft
    import overlays.kernel.rtnl  # noqa: F401 (these three: used at the end, loaded now)
    from overlays.engine import Engine
    from overlays.errors import OverlaysError

    try:
        with Engine(host_netns=args.host_netns, state_dir=args.state_dir, store_url=args.store,
                    node=args.node) as engine:
            while (left := args.at - time.time()) > 0:
                time.sleep(left)
            engine.heal_expired()
    except OverlaysError as e:
        print(f"overlays fault timer: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
