"""``overlays doctor``: the store against the kernel on this host, every inconsistency one line, and its repair.

Design note. Ownership decides everything: an object is ours because a record names it (a
namespace, a veth, a bridge, an address, a port claim), or because it carries our tag (the
``overlays:<instance>:`` alias of a link, the ``ov-<instance>-`` name of a namespace, the
``OVERLAYS_SANDBOX=<instance>/...`` environment of a process we started, our own nft table).
What is neither is never touched, not even read twice: a foreign veth, namespace, nft table or
process survives ``doctor --fix`` as it was.

Findings come in three kinds, each with the repair ``--fix`` applies:

* drift of what the records name (a record left pending by a crash, a namespace, veth, address,
  route, bridge or gateway gone, our nft table or one of its elements changed): made again;
* what carries our tag but no record names (a namespace, a link, a process started by a killed
  command), and claims no record holds (addresses, interface names, MACs, ports): removed;
* what overlays cannot repair, only name: another table's forward hook that drops what our
  bridges forward (iptables' FORWARD policy DROP, as Docker sets it), and an overlay network
  with endpoints here but no agent to program it when none can be started for it (a store handed
  in, names turned off); otherwise a missing agent is started, as the next ``run`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from overlays.drivers.bridge import BRIDGE_NF_SYSCTLS
from overlays.drivers.firewall import table_name
from overlays.engine import firewall, hostagent, hostdns, records, repair
from overlays.engine.context import Context, NodeTxn
from overlays.engine.netdrivers import driver_for, driver_named
from overlays.errors import OverlaysError
from overlays.kernel import procs
from overlays.model.names import NETNS_PREFIX, is_ours
from overlays.model.state import Network, Sandbox

Fix = Callable[[], None]


@dataclass(frozen=True)
class Finding:
    """One inconsistency: what is wrong (naming the object), what ``--fix`` does about it, and how."""

    what: str
    repair: str
    fix: Fix | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, str | bool]:
        return {"problem": self.what, "repair": self.repair, "fixable": self.fix is not None}


@dataclass(frozen=True)
class _State:
    networks: list[Network]
    sandboxes: list[Sandbox]
    claims: dict[str, dict[str, str]]  # kind -> {key: holder}


def examine(ctx: Context) -> list[Finding]:
    """Everything inconsistent on this host, read-only."""
    state = ctx.transact(_read)
    found: list[Finding] = []
    for check in (_networks, _sandboxes, _firewall, _orphans, _stale_claims, _agent, _foreign_drops):
        try:
            found += check(ctx, state)
        except OverlaysError as e:  # one check that cannot look must not hide the others
            found.append(Finding(f"could not check: {e}", "none: look into it by hand"))
    return found


def fix(findings: list[Finding]) -> list[str]:
    """Repair what can be repaired, in order; return the repairs that failed (each one line)."""
    failures = []
    for finding in findings:
        if finding.fix is None:
            continue
        try:
            finding.fix()
        except OverlaysError as e:
            failures.append(f"{finding.what}: {finding.repair} failed: {e}")
    return failures


def _read(txn: NodeTxn) -> _State:
    claims = {kind: {k.split("/", 1)[1]: str(v.get("owner", "?")) for k, v in txn.range(f"{kind}/").items()}
              for kind in ("ifnames",)}
    return _State(records.list_networks(txn), records.list_sandboxes(txn), claims)


# -- what the records name ------------------------------------------------------------------------------------------


def _networks(ctx: Context, state: _State) -> list[Finding]:
    found = []
    for net in state.networks:
        for problem in repair.network_problems(ctx, net.name):
            found.append(Finding(problem, f"make network {net.name} again",
                                 lambda n=net.name: repair.repair_network(ctx, n)))  # type: ignore[misc]
    return found


def _sandboxes(ctx: Context, state: _State) -> list[Finding]:
    found = []
    for box in state.sandboxes:
        problems = repair.sandbox_problems(ctx, box.name)
        if problems:
            found.append(Finding(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                                 f"make sandbox {box.name} again (namespace, endpoints, route)",
                                 lambda n=box.name: repair.repair_sandbox(ctx, n)))  # type: ignore[misc]
    return found


def _firewall(ctx: Context, state: _State) -> list[Finding]:
    problems = firewall.problems(ctx)
    if not problems:
        return []
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return [Finding(problems[0] + more, "make our nft table again from the records, in one transaction",
                    lambda: firewall.repair(ctx))]


# -- what carries our tag, and no record names ----------------------------------------------------------------------


def _orphans(ctx: Context, state: _State) -> list[Finding]:
    found = []
    mine = {box.netns for box in state.sandboxes}
    for name in ctx.kernel.netns_names():
        if name.startswith(f"{NETNS_PREFIX}{ctx.instance}-") and name not in mine:
            found.append(Finding(f"namespace {name} is ours by name but no sandbox names it",
                                 "stop the processes in it, delete it", lambda n=name: _drop_netns(ctx, n)))  # type: ignore[misc]
    found += _orphan_links(ctx, state)
    found += _orphan_processes(ctx, state)
    return found


def _named_links(state: _State) -> set[str]:
    names = {name for n in state.networks for name in driver_for(n).host_links(n)}
    return names | {e.host_ifname for b in state.sandboxes for e in b.endpoints if e.host_ifname}


def _orphan_links(ctx: Context, state: _State) -> list[Finding]:
    if not ctx.host_exists():
        return []
    named, claimed = _named_links(state), set(state.claims.get("ifnames", {}))
    found = []
    with ctx.open_host() as host:
        for link in host.links():
            tagged = is_ours(link.alias, ctx.instance)
            if link.name in named or not (tagged or (link.alias is None and link.name in claimed)):
                continue
            why = "carries our tag" if tagged else "is untagged, with a name we claimed"
            found.append(Finding(f"link {link.name} {why} but no record names it", f"delete link {link.name}",
                                 lambda n=link.name: _delete_link(ctx, n)))  # type: ignore[misc]
    return found


def _orphan_processes(ctx: Context, state: _State) -> list[Finding]:
    recorded = {box.name: box.pid for box in state.sandboxes}
    found = []
    for pid, sandbox in sorted(procs.tagged(ctx.instance).items()):
        if sandbox in recorded and recorded[sandbox] == pid:
            continue
        why = "its sandbox is gone" if sandbox not in recorded else f"sandbox {sandbox} records another"
        found.append(Finding(f"process {pid}, started by us for sandbox {sandbox}, runs unrecorded ({why})",
                             f"stop process {pid}", lambda p=pid: _stop(p)))  # type: ignore[misc]
    return found


def _stale_claims(ctx: Context, state: _State) -> list[Finding]:
    """Addresses, interface names and ports held for endpoints or sandboxes that no longer exist."""
    endpoints = {(e.network, str(e.ip)) for b in state.sandboxes for e in b.endpoints}
    owners = {b.name for b in state.sandboxes} | {f"{ctx.node}/{b.name}" for b in state.sandboxes}
    found = []
    for net in state.networks:
        for ip, owner in _taken(ctx, net).items():
            if owner in owners or (net.name, ip) in endpoints or not _is_sandbox_owner(owner, ctx.node):
                continue
            found.append(Finding(f"address {ip} on network {net.name} is held for {owner}, which has no endpoint",
                                 f"release address {ip}", lambda n=net, a=ip: _release_address(ctx, n, a)))  # type: ignore[misc]
    names = {e.host_ifname for b in state.sandboxes for e in b.endpoints}
    for name, owner in sorted(state.claims.get("ifnames", {}).items()):
        if name not in names:
            found.append(Finding(f"interface name {name} is claimed for {owner}, which has no endpoint",
                                 f"release the name {name}", lambda n=name: _release_ifname(ctx, n)))  # type: ignore[misc]
    return found


def _taken(ctx: Context, net: Network) -> dict[str, str]:
    from overlays import ipam

    return ctx.transact(lambda txn: ipam.taken(driver_for(net).scope(txn), net.name))


def _is_sandbox_owner(owner: str, node: str) -> bool:
    """Whether an address holder is a sandbox of this host (not the gateway, a host interface, another host)."""
    if owner.startswith(("gateway", "host interface")):
        return False
    return "/" not in owner or owner.startswith(f"{node}/")


# -- what only a person can change, and an agent that should run -----------------------------------------------------


def _agent(ctx: Context, state: _State) -> list[Finding]:
    """The host's agent serves names, heals our firewall and programs overlays: one should run while sandboxes do."""
    local = {e.network for b in state.sandboxes for e in b.endpoints if driver_named(e.driver).needs_agent}
    dns = hostdns.control(ctx)
    if dns is not None and state.sandboxes and ctx.store_url is not None and not dns.running():
        lost = "names are not served, our nft table does not heal itself" + (
            f", overlay network(s) {', '.join(sorted(local))} are not programmed" if local else "")
        return [Finding(f"no agent runs for host {ctx.node}, which has sandboxes: {lost}",
                        "start the host's agent, as the next run would", lambda: hostagent.ensure_running(ctx, dns))]
    if not local or ctx.transact(lambda txn: records.find_host(txn.root, ctx.node)) is not None:
        return []
    return [Finding(f"overlay network(s) {', '.join(sorted(local))} have sandboxes here but no agent runs for host "
                    f"{ctx.node}", "none: start one (overlays agent)")]


def _foreign_drops(ctx: Context, state: _State) -> list[Finding]:
    if not any(driver_for(n).in_firewall for n in state.networks):
        return []  # nothing of ours is forwarded by the host
    ours = table_name(ctx.instance)
    found = []
    for family, table, chain in ctx.kernel.nft_forward_drops(ctx.host_netns):
        if table == ours:
            continue
        found.append(Finding(
            f"table {family} {table} chain {chain} has policy drop on the forward hook: it drops what our bridges "
            "forward (egress, published ports, routed networks), whatever our own table accepts",
            "none (not ours): let our bridges through, e.g. `iptables -I FORWARD -i ovb-+ -j ACCEPT; iptables -I "
            "FORWARD -o ovb-+ -j ACCEPT` (or `nft insert rule ...` in that chain), or set its policy to accept"))
    return found + _bridge_nf(ctx) if found else []


def _bridge_nf(ctx: Context) -> list[Finding]:
    """With br_netfilter and bridge-nf-call on, bridged frames meet those drops too (in a namespace we manage
    we turn it off; on the real machine, where others may rely on it, we only say so)."""
    if ctx.host_netns is not None:
        return []
    on = [key for key in BRIDGE_NF_SYSCTLS[:1] if ctx.kernel.sysctl(None, key) == "1"]
    return [Finding(f"{key} is 1: frames bridged inside a network pass the IP hooks too", "none: leave it, or "
                    f"`sysctl -w {key}=0` if nothing else needs it") for key in on]


# -- repairs --------------------------------------------------------------------------------------------------------


def _drop_netns(ctx: Context, name: str) -> None:
    from overlays.kernel import netns

    for pid in procs.in_namespace(netns.identity(ctx.kernel.netns_path(name))):
        _stop(pid)
    ctx.kernel.delete_netns(name)


def _stop(pid: int) -> None:
    from overlays.kernel import process

    process.stop(pid, process.start_time(pid))


def _delete_link(ctx: Context, name: str) -> None:
    with ctx.open_host() as host:
        host.delete_link(name)
    ctx.transact(lambda txn: txn.delete(records.ifname_key(name)))


def _release_address(ctx: Context, net: Network, ip: str) -> None:
    import ipaddress

    from overlays import ipam

    ctx.transact(lambda txn: ipam.release(driver_for(net).scope(txn), net.name, ipaddress.ip_address(ip)))


def _release_ifname(ctx: Context, name: str) -> None:
    ctx.transact(lambda txn: txn.delete(records.ifname_key(name)))


