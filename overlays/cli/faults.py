"""``overlays partition | heal | impair | link``: faults on demand.

Without ``-f`` the names are this host's sandboxes (``--host-netns``); with ``-f FILE``
they are the file's sandboxes or, in a lab, its hosts, on whichever host they live.
A fault with ``--for`` ends by itself (the kernel, or a timer process, ends it, whatever
becomes of this command); ``--wait`` stays until it ends, and heals it at once on Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from overlays.cli import render
from overlays.cli.main import Command, Group, Settings, held_signals
from overlays.cli.render import echo
from overlays.errors import InvalidSpec


def _file(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", dest="path", metavar="FILE",
                   help="A topology file: names are its sandboxes (or, in a lab, its hosts) on any of its hosts.")


def _duration(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--for", dest="duration", metavar="DURATION",
                   help=f"End the {what} after DURATION (500ms, 30s, 5m, 1h): it ends then by itself.")
    p.add_argument("--wait", action="store_true", help="Stay until it ends; Ctrl-C ends it at once.")


@contextmanager
def _lab(s: Settings, path: str) -> Iterator[Any]:
    from overlays.topology import Lab, load

    lab = Lab(load(path), host_netns=s.host_netns, state_dir=s.state_dir, store_url=s.store)
    try:
        yield lab
    finally:
        lab.close()


def _expiry(a: argparse.Namespace) -> float | None:
    from overlays.model.faults import expiry

    return expiry(a.duration)


def _ends(expires: float | None) -> str:
    return f" for {expires - time.time():.1f}s" if expires else ""


# -- partition -------------------------------------------------------------------------------------------------------


def _partition_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("groups", metavar="GROUP", nargs="*",
                   help="A comma list of sandboxes (or, with -f and hosts, of hosts); two groups at least.")
    p.add_argument("--oneway", action="store_true", help="Drop only what the first group sends to the others.")
    p.add_argument("--name", metavar="NAME", help="Name the partition (default: one derived from its groups).")
    p.add_argument("--show", action="store_true", help="List the faults in force instead.")
    p.add_argument("--json", dest="as_json", action="store_true", help="With --show: print JSON.")
    _duration(p, "partition")
    _file(p)


def partition(s: Settings, a: argparse.Namespace) -> int:
    """Cut groups of sandboxes off from each other: overlays partition a b,c [--oneway] [--for 30s]."""
    if a.show:
        if a.groups:
            raise InvalidSpec("--show takes no groups")
        return _show(s, a)
    from overlays.model.faults import check_groups, describe_groups, group_cuts

    groups = [[m.strip() for m in g.split(",") if m.strip()] for g in a.groups]
    check_groups(groups)
    expires = _expiry(a)
    shape = describe_groups(groups, a.oneway)
    if a.path:
        from overlays.topology import chaos

        with _lab(s, a.path) as lab, held_signals():
            handle = chaos.partition(lab, groups, a.oneway, a.duration, a.name, origin="cli")
            name = handle.name
    else:
        from overlays.model.faults import PartitionSpec, default_name

        engine = s.engine()
        members = [m for g in groups for m in g]
        spec = PartitionSpec(a.name or default_name(shape), tuple(group_cuts(groups, a.oneway)),
                             tuple(engine.partition_peers(members)), shape, expires)
        with held_signals():
            name = engine.partition(spec).name
    echo(f"partition {name} in force: {shape}{_ends(expires)}")
    return _wait(s, a, expires, lambda: _heal_names(s, a.path, [name]))


def _show(s: Settings, a: argparse.Namespace) -> int:
    if a.path:
        with _lab(s, a.path) as lab:
            by_host = lab.faults()
    else:
        engine = s.engine()
        by_host = {engine.node: engine.faults()}
    rows = _rows(by_host)
    if a.as_json:
        render.emit_json([dict(zip(("kind", "name", "what", "host", "ends", "state"), r, strict=True))
                          for r in rows])
    elif rows:
        echo(render.table(["KIND", "NAME", "WHAT", "HOST", "ENDS", "STATE"], rows))
    else:
        echo("no faults in force")
    return 0


def _rows(by_host: dict[str, Any]) -> list[list[str]]:
    rows = []
    for host, faults in by_host.items():
        for p in faults.partitions.values():
            rows.append(["partition", p.name, p.shape, host, _left(p.expires), p.state])
        for i in faults.impairments.values():
            rows.append(["impair", i.spec.name or "-", f"{i.sandbox} on {i.network}: {i.spec.describe()}", host,
                         _left(i.expires), i.state])
        for link in faults.links.values():
            rows.append(["link down", "-", f"{link.sandbox} on {link.network} ({link.ifname})", host,
                         _left(link.expires), link.state])
    return rows


def _left(expires: float | None) -> str:
    return f"in {max(0.0, expires - time.time()):.1f}s" if expires else "when healed"


def _wait(s: Settings, a: argparse.Namespace, expires: float | None, heal_now: Any) -> int:
    """``--wait``: until the fault ends by itself (or, without --for, until a signal), then heal on a signal."""
    if not a.wait:
        return 0
    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while not stop and (expires is None or time.time() < expires):
            time.sleep(min(0.1, max(0.001, (expires or time.time() + 1) - time.time())))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop:
        with held_signals():
            heal_now()
        echo("healed")
        return 0
    echo("ended")
    return 0


# -- heal ------------------------------------------------------------------------------------------------------------


def _heal_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", metavar="NAME", nargs="*", help="Partitions (or a file's impairments) to heal.")
    p.add_argument("--all", dest="everything", action="store_true",
                   help="Every fault: partitions, impairments, links down.")
    _file(p)


def _heal_names(s: Settings, path: str | None, names: list[str], everything: bool = False) -> list[str]:
    if path:
        from overlays.topology import chaos

        with _lab(s, path) as lab:
            return chaos.heal(lab, names, everything)
    healed: list[str] = s.engine().heal(names, everything)
    return healed


def heal(s: Settings, a: argparse.Namespace) -> None:
    """Heal partitions: those named, else all; --all: every fault (impairments and links down too)."""
    if a.names and a.everything:
        raise InvalidSpec("give names or --all, not both")
    with held_signals():
        healed = _heal_names(s, a.path, a.names, a.everything)
    echo(f"healed: {', '.join(healed)}" if healed else "nothing to heal")


# -- impair ----------------------------------------------------------------------------------------------------------


def _impair_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sandbox", metavar="SANDBOX")
    p.add_argument("--network", metavar="NET", help="Which endpoint (needed if the sandbox has several).")
    p.add_argument("--loss", metavar="PCT", help="Drop PCT percent of packets (nftables).")
    p.add_argument("--duplicate", metavar="PCT", help="Send PCT percent of packets twice (nftables).")
    p.add_argument("--rate", metavar="RATE", help="Limit to RATE (10mbit, 500kbit, 1gbit): tbf, ingress via ifb.")
    p.add_argument("--delay", metavar="MS", help="Delay by MS milliseconds (needs netem in the kernel).")
    p.add_argument("--jitter", metavar="MS", help="Vary the delay by up to MS milliseconds (with --delay).")
    p.add_argument("--direction", choices=["in", "out", "both"], default="both",
                   help="What is impaired: what the sandbox receives, sends, or both (default: both).")
    p.add_argument("--clear", action="store_true", help="Lift the sandbox's impairments instead.")
    _duration(p, "impairment")
    _file(p)


def impair(s: Settings, a: argparse.Namespace) -> int:
    """Impair a sandbox's endpoint: overlays impair a --loss 10 --rate 10mbit [--for 1m]; --clear lifts it."""
    from overlays.model.faults import ImpairSpec

    if a.clear:
        if any(x is not None for x in (a.loss, a.duplicate, a.rate, a.delay, a.jitter, a.duration)):
            raise InvalidSpec("--clear takes no impairment")
        with _engine_of(s, a.path, a.sandbox) as engine, held_signals():
            cleared = engine.clear_impairment(a.sandbox, a.network)
        echo(f"cleared: {', '.join(f'{i.sandbox} on {i.network}' for i in cleared)}")
        return 0
    spec = ImpairSpec.parse(a.sandbox, a.network, loss=a.loss, duplicate=a.duplicate, rate=a.rate, delay=a.delay,
                            jitter=a.jitter, direction=a.direction, expires=_expiry(a))
    with _engine_of(s, a.path, a.sandbox) as engine, held_signals():
        done = engine.impair(spec)
    echo(f"{done.sandbox} on {done.network} ({done.ifname}) impaired: {done.spec.describe()}{_ends(spec.expires)}")

    def clear_now() -> None:
        with _engine_of(s, a.path, a.sandbox) as engine:
            engine.clear_impairment(done.sandbox, done.network)

    return _wait(s, a, spec.expires, clear_now)


@contextmanager
def _engine_of(s: Settings, path: str | None, sandbox: str) -> Iterator[Any]:
    """The engine of the host ``sandbox`` lives on (with a file: any of its hosts)."""
    if not path:
        yield s.engine()
        return
    from overlays.topology.chaos import host_of

    with _lab(s, path) as lab:
        yield lab.engine(host_of(lab, sandbox))


# -- link ------------------------------------------------------------------------------------------------------------


def _link_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sandbox", metavar="SANDBOX")
    p.add_argument("network", metavar="NETWORK", nargs="?", help="Which endpoint (needed if it has several).")
    _file(p)


def _link_down_arguments(p: argparse.ArgumentParser) -> None:
    _link_arguments(p)
    p.add_argument("--for", dest="duration", metavar="DURATION", help="Bring it back up after DURATION.")


def link_down(s: Settings, a: argparse.Namespace) -> None:
    """Take a sandbox's link down; its address, routes and published ports stay for when it comes back up."""
    expires = _expiry(a)
    with _engine_of(s, a.path, a.sandbox) as engine, held_signals():
        ep = engine.link_down(a.sandbox, a.network, expires)
    echo(f"link {ep.ifname} of {a.sandbox} on {ep.network} is down{_ends(expires)}")


def link_up(s: Settings, a: argparse.Namespace) -> None:
    """Bring a sandbox's link back up."""
    with _engine_of(s, a.path, a.sandbox) as engine, held_signals():
        ep = engine.link_up(a.sandbox, a.network)
    echo(f"link {ep.ifname} of {a.sandbox} on {ep.network} is up")


COMMANDS = {
    "partition": Command(partition, _partition_arguments),
    "heal": Command(heal, _heal_arguments),
    "impair": Command(impair, _impair_arguments),
    "link": Group("Take a sandbox's link down and up again (a flap), keeping its addresses and routes.", {
        "down": Command(link_down, _link_down_arguments),
        "up": Command(link_up, _link_arguments),
    }),
}
