"""A sandbox's names, told to the host's DNS server; the resolv.conf its processes read.

Design note. The server (``overlays.dns``, run by the host's agent, see hostagent) answers
on 127.0.0.11 inside every sandbox's namespace; the engine tells it what each sandbox is
called (``records_of``: its name, its hostname and its aliases on each network, with the
network's forwarding rules) when an operation that changes them returns: create and
adopt, connect, disconnect, repair. A register replaces whatever the server held for the
sandbox, so each call sends the whole list. ``rm`` unregisters *before* it deletes the
namespace: the server's sockets hold the namespace (and its veths) alive until they close.

Cost. A register is sent without waiting (``announce``) as soon as the namespace exists
and the addresses are known, and collected after the operation's last store commit
(``settle``): the server binds the sandbox's sockets, steers 127.0.0.11:53 to them and
links its resolv.conf while the engine wires the veth and commits, so a name resolves
as soon as the operation returns at the price of one message each way. (A name is so
answered a few milliseconds before its sandbox is wired; a create that fails takes it
back.) An unregister is collected before the veths are waited for, since they only go
once the server has let the namespace go.

The DNS part never fails nor undoes an operation: a server that cannot be started or
refuses a request costs a warning (``ctx.warn``) saying that names are not served, and
the sandbox works by address as before. Processes find the server through
``/etc/netns/<netns>/resolv.conf`` (nameserver 127.0.0.11), which the server makes when
it registers the sandbox and removes when it unregisters it (``rm`` removes it too, for a
server gone meanwhile); ``overlays run``/``exec`` mount it over /etc/resolv.conf in a
mount namespace of their own and ``ip netns exec`` shows it by iproute2's convention; the
host's own /etc/resolv.conf is never written. A sandbox no server serves keeps the host's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from overlays.engine import hostagent
from overlays.engine.context import Context
from overlays.errors import KernelError, NotFound, OverlaysError
from overlays.kernel.api import Dns
from overlays.kernel.dnsctl import Record
from overlays.model.state import EndpointRegistration, Network, Sandbox

SHARED_SEGMENT = ("macvlan",)  # drivers whose subnet is the segment's, not ours alone (PTR goes upstream)

Networks = Mapping[str, Network]


def _record(net: Network, name: str, ips: tuple[str, ...], aliases: Iterable[str], hostname: str | None) -> Record:
    """``ips``: one address per family (A and AAAA answers)."""
    extra = (hostname,) if hostname and hostname != name else ()
    return Record(net.name, name, ips, (*aliases, *extra), internal=net.internal,
                  upstreams=tuple(str(s) for s in net.dns),
                  subnet="" if net.driver in SHARED_SEGMENT else ",".join(str(s) for s in net.subnets))


def records_of(box: Sandbox, nets: Networks) -> list[Record]:
    """The sandbox's names on each of its networks (a network that is gone: none there)."""
    return [_record(nets[ep.network], box.name, tuple(str(a) for a, _, _ in ep.addresses), ep.aliases, box.hostname)
            for ep in box.endpoints if ep.network in nets]


def remote_records(found: Iterable[EndpointRegistration], nets: Networks) -> list[Record]:
    """The names another host announced for one of its sandboxes, on each overlay network it is on."""
    return [_record(nets[r.network], r.sandbox, (r.ip, *([r.ip6] if r.ip6 else [])), r.aliases, r.hostname)
            for r in found if r.network in nets]


def control(ctx: Context) -> Dns | None:
    """The host's DNS control client (None: names are off for this engine)."""
    if not ctx.dns:
        return None
    if ctx.dns_client is None:
        ctx.dns_client = ctx.kernel.dns(ctx.state_dir, ctx.node)
    return ctx.dns_client


def _warn(ctx: Context, what: str, e: BaseException) -> None:
    ctx.warn(f"DNS on host {ctx.node}: {what}: {e}")


def prepare(ctx: Context) -> bool:
    """Before an operation that names a sandbox: the host's server runs (started on demand if not).

    False (and a warning) if it cannot: the operation goes on without names.
    """
    client = control(ctx)
    if client is None:
        return False
    try:
        hostagent.ensure_running(ctx, client)
    except (OverlaysError, OSError) as e:
        _warn(ctx, "no server, so sandbox names are not served", e)
        return False
    return True


def announce(ctx: Context, box: Sandbox, nets: Networks, start: bool = True) -> bool:
    """Send the sandbox's names (not waiting: ``settle`` collects the answer); False if not sent.

    A server that went away since ``prepare`` is started again (with ``start``) and asked once more.
    """
    client = control(ctx)
    if client is None:
        return False
    records = records_of(box, nets)
    path = ctx.kernel.netns_path(box.netns)
    for attempt in (1, 2):
        try:
            client.register(box.name, path, records, wait=False)
            return True
        except (NotFound, KernelError) as e:  # nothing listens (any more), or the connection broke
            client.close()
            if not start or attempt == 2:
                if start:
                    _warn(ctx, f"sandbox {box.name}'s names are not served", e)
                return False
            if not prepare(ctx):
                return False
        except (OverlaysError, OSError) as e:
            _warn(ctx, f"sandbox {box.name}'s names are not served", e)
            return False
    return False


def settle(ctx: Context) -> dict[str, Any]:
    """Collect the answers owed by the server (warning about a refusal); the last one, or {}."""
    client = ctx.dns_client
    if client is None:
        return {}
    try:
        return client.wait()
    except (OverlaysError, OSError) as e:
        _warn(ctx, "the server refused", e)
        return {}


def withdraw(ctx: Context, sandbox: str, wait: bool = False) -> None:
    """Unregister the sandbox's names and let its namespace go (only if a server runs: none starts)."""
    client = control(ctx)
    if client is None:
        return
    try:
        if client.running():
            client.unregister(sandbox, wait=False)
    except NotFound:
        return  # the server went away: its sockets, and so our names, with it
    except (OverlaysError, OSError) as e:
        _warn(ctx, f"unregister sandbox {sandbox}", e)
        return
    if wait:
        settle(ctx)


def nothing_left(answer: Mapping[str, Any]) -> bool:
    """Whether an unregister's answer says the server serves no sandbox of this host any more."""
    return answer.get("served_here") == 0


def remove_etc(ctx: Context, netns: str) -> None:
    """Remove ``/etc/netns/<netns>`` (the server does when it unregisters; this is for a server gone meanwhile)."""
    try:
        ctx.kernel.remove_etc(netns)
    except OSError as e:
        _warn(ctx, f"cannot remove /etc/netns/{netns}", e)
