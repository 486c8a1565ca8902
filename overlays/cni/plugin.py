"""ADD, DEL, CHECK, GC and STATUS through the public Engine API.

A container's attachment ``(CNI_CONTAINERID, CNI_IFNAME)`` is one sandbox, named
by ``names.sandbox_name``, that *adopts* the runtime's namespace (``Engine.adopt``
bind-mounts CNI_NETNS under our own name) and is connected to the network the
conflist names. So ``overlays ps``, ``inspect`` and ``network rm`` (refused while in
use) see it like any other sandbox, and removing it takes our veth and our bind
mount away but never the runtime's namespace, which is not ours to delete.

ADD is a transaction: if connecting fails, the adopted sandbox is removed again.
DEL is idempotent: an attachment already gone, or a namespace the runtime already
deleted, is success. GC removes every attachment of this network that the runtime
no longer lists and keeps going past failures, reporting them all.

The host. Like every CNI plugin, ours works on the network namespace it is exec'd
in: the conflist names the engine's host namespace (none: the machine's own), and
ADD and CHECK refuse to run anywhere else (compared by namespace inode), because
the runtime expects the container's network in *its* namespace. DEL and GC act
wherever they run: the engine reaches its host by name, and cleaning up is never
wrong.

What the engine cannot do yet (``_unsupported``) is refused with code 106, except
published ports and aliases (``_not_applied``), which every ``podman run -p`` and
DNS-enabled network sends: ADD then succeeds without them and says so on stderr.
The engine calls that would lift these (proposed, not in the engine yet):

    Engine.adopt(name, netns_path=..., networks=[EndpointRequest(net, ip, ifname=, mac=, aliases=)],
                 ports=[PortMapping...], labels={"cni.containerID": ..., "cni.ifname": ...})
        one transaction for the sandbox, its endpoints and port claims, wired and published,
        rolled back whole on failure (``_attach`` becomes that one call);
    Engine.check(name) -> list[str]
        what the kernel lacks against the record (veth, address, route, port map element),
        for CHECK beyond today's record, namespace and prevResult comparison.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from overlays.cni import config, names
from overlays.cni.protocol import (
    NOT_AVAILABLE,
    OURS,
    UNKNOWN_CONTAINER,
    UNSUPPORTED,
    WRONG_HOST,
    Attachment,
    CniError,
    Interface,
    IPConfig,
    Request,
    Route,
    Warn,
)
from overlays.errors import Conflict, NotFound, OverlaysError

if TYPE_CHECKING:
    from overlays.engine import Engine
    from overlays.model.state import Endpoint, Network, Sandbox

FIRST_IFNAME = "eth0"  # what Engine.connect names a sandbox's first interface


def open_engine(conf: config.PluginConf) -> Engine:
    """The engine the conflist names: the same instance (state dir, host namespace) as the CLI that wrote it."""
    from overlays.engine import Engine

    return Engine(host_netns=conf.host_netns, state_dir=conf.state_dir, store_url=conf.store, node=conf.node)


def host_problem(host_netns: str | None) -> str | None:
    """None if this process runs in the network's host namespace, else what is wrong."""
    from overlays.kernel import netns

    own = "/proc/thread-self/ns/net"
    expected = netns.path_of(host_netns) if host_netns else "/proc/1/ns/net"
    try:
        if netns.identity(own) == netns.identity(expected):
            return None
    except FileNotFoundError:
        return f"host namespace {host_netns} does not exist"
    except PermissionError:
        return f"cannot read {expected}: permission denied (overlays-cni needs root)"
    where = f"host namespace {host_netns}" if host_netns else "the machine's own network namespace"
    return f"overlays-cni runs in another network namespace than {where}, where this network lives; " \
           "run the runtime there (nsenter --net=...)"


def _unsupported(conf: config.PluginConf, req: Request) -> list[str]:
    """What this ADD asks for that the engine cannot do yet, so it is refused (code 106) before any change."""
    problems = []
    if req.ifname != FIRST_IFNAME:
        problems.append(f"CNI_IFNAME {req.ifname}: the engine names a container's interface {FIRST_IFNAME} "
                        "and has no call for another name yet")
    if len(conf.ips) > 1:
        problems.append(f"static addresses {', '.join(map(str, conf.ips))}: one address per attachment")
    problems += [f"static address {ip}: overlays serves IPv4 only for now" for ip in conf.ips if ip.version != 4]
    if conf.mac:
        problems.append(f"static MAC {conf.mac}: the engine has no call for a given MAC yet")
    return problems


def _not_applied(conf: config.PluginConf) -> list[str]:
    """What ADD goes on without (said on stderr): ports and aliases have no engine call for adopted sandboxes yet."""
    lines = []
    if conf.ports:
        lines.append(f"published ports not applied ({', '.join(map(str, conf.ports))}): the engine cannot publish "
                     "ports of an adopted sandbox yet")
    if conf.aliases:
        lines.append(f"aliases not kept ({', '.join(conf.aliases)}): the engine has no DNS records yet")
    return lines


def attachment_of(req: Request, ep: Endpoint) -> Attachment:
    """The result of an ADD: the host veth, the container's interface, its address and default route."""
    # An overlay is east-west only: its bridges hold no address on the hosts, so no default route.
    gateway = None if ep.driver == "overlay" else str(ep.gateway)
    return Attachment(
        interfaces=(Interface(ep.host_ifname), Interface(ep.ifname, ep.mac, req.netns, ep.mtu)),
        ips=(IPConfig(f"{ep.ip}/{ep.prefixlen}", interface=1, gateway=gateway),),
        routes=(Route("0.0.0.0/0", gateway),) if gateway else (),
    )


def same_namespace(a: Path, b: Path) -> bool:
    """Whether two paths name one network namespace (raises FileNotFoundError if one is gone)."""
    from overlays.kernel import netns

    return netns.identity(a) == netns.identity(b)


def capacity(net: Network) -> int:
    """Addresses sandboxes can get: the pool less the subnet's network and broadcast addresses and the gateway."""
    pool = net.ip_range or net.subnet
    reserved = {net.subnet.network_address, net.subnet.broadcast_address, net.gateway}
    return pool.num_addresses - sum(1 for a in reserved if a in pool)


class EnginePlugin:
    """The verbs, on the engine the configuration names (opened on first use)."""

    def __init__(self, conf: config.PluginConf, warn: Warn, engine: Engine | None = None,
                 host_check: bool = True, same_netns: Callable[[Path, Path], bool] | None = None) -> None:
        self.conf = conf
        self.warn = warn
        self._engine = engine
        self.host_check = host_check
        self.same_netns = same_netns or same_namespace

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = open_engine(self.conf)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    def _require_host(self) -> None:
        problem = host_problem(self.conf.host_netns) if self.host_check else None
        if problem:
            raise CniError(WRONG_HOST, problem)

    def add(self, req: Request) -> Attachment:
        self._require_host()
        refused = _unsupported(self.conf, req)
        if refused:
            raise CniError(UNSUPPORTED, "; ".join(refused))
        for line in _not_applied(self.conf):
            self.warn(f"network {self.conf.network}: {line}")
        return attachment_of(req, self._attach(req))

    def _attach(self, req: Request) -> Endpoint:
        """Adopt the runtime's namespace and connect it; undone if connecting fails.

        With the one-call adopt proposed to the engine (the namespace, its endpoint with
        ifname, MAC and aliases, its ports and labels in one transaction), this becomes that call.
        """
        name = names.sandbox_name(req.container_id, req.ifname)
        try:
            self.engine.adopt(name, netns_path=req.netns)
        except Conflict as e:
            raise Conflict(f"container {req.container_id} already has {req.ifname} attached ({e}); "
                           "DEL it first") from e
        try:
            return self.engine.connect(self.conf.network, name, self.conf.ips[0] if self.conf.ips else None)
        except BaseException:
            with contextlib.suppress(OverlaysError):
                self.engine.remove_sandbox(name, force=True)
            raise

    def delete(self, req: Request) -> None:
        try:
            self.engine.remove_sandbox(names.sandbox_name(req.container_id, req.ifname), force=True)
        except NotFound:
            return  # DEL again, or never added: nothing of ours is left, which is what DEL asks

    def check(self, req: Request) -> None:
        self._require_host()
        box = self._attached(req)
        ep = next((e for e in box.endpoints if e.network == self.conf.network), None)
        where = f"container {req.container_id} {req.ifname} on network {self.conf.network}"
        if ep is None:
            raise CniError(UNKNOWN_CONTAINER, f"{where}: not attached (sandbox {box.name} has no endpoint there)")
        if box.state != "ready" or ep.state != "ready":
            raise CniError(OURS, f"{where}: half made (sandbox {box.state}, endpoint {ep.state}); DEL and ADD again")
        self._check_netns(where, box, req.netns)
        _check_prev_result(where, req, ep)

    def _attached(self, req: Request) -> Sandbox:
        name = names.sandbox_name(req.container_id, req.ifname)
        try:
            return self.engine.sandbox(name)
        except NotFound:
            raise CniError(UNKNOWN_CONTAINER, f"container {req.container_id} has no attachment {req.ifname} "
                           f"on network {self.conf.network}") from None

    def _check_netns(self, where: str, box: Sandbox, netns_path: str) -> None:
        try:
            same = self.same_netns(self.engine.netns_path(box.name), Path(netns_path))
        except FileNotFoundError as e:
            raise CniError(OURS, f"{where}: namespace {e.filename} is gone") from None
        if not same:
            raise CniError(OURS, f"{where}: sandbox {box.name} holds another namespace than {netns_path}")

    def gc(self, req: Request, valid: Sequence[tuple[str, str]]) -> None:
        keep = {names.sandbox_name(cid, ifname) for cid, ifname in valid}
        failures = []
        for box in self.engine.sandboxes():
            if box.name in keep or not (box.adopted and names.looks_like_attachment(box.name)):
                continue
            if not any(ep.network == self.conf.network for ep in box.endpoints):
                continue
            try:
                self.engine.remove_sandbox(box.name, force=True)
            except OverlaysError as e:  # keep going: remove as much as can be removed
                failures.append(f"{box.name}: {e}")
        if failures:
            raise CniError(OURS, f"GC of network {self.conf.network}: {len(failures)} stale attachment(s) not "
                           "removed: " + "; ".join(failures))

    def status(self, req: Request) -> None:
        problem = host_problem(self.conf.host_netns) if self.host_check else None
        if problem is None and os.geteuid() != 0:
            problem = "overlays-cni needs root (CAP_NET_ADMIN)"
        if problem:
            raise CniError(NOT_AVAILABLE, problem)
        try:
            net, users = self.engine.network(self.conf.network)
        except OverlaysError as e:
            raise CniError(NOT_AVAILABLE, f"network {self.conf.network}: {e}") from e
        if len(users) >= capacity(net):
            raise CniError(NOT_AVAILABLE, f"network {net.name} has no free address ({len(users)} in use)")


def _check_prev_result(where: str, req: Request, ep: Endpoint) -> None:
    """The interface and address the runtime was given at ADD are still what we hold."""
    prev = req.config.get("prevResult")
    if not isinstance(prev, dict):
        return
    interfaces = prev.get("interfaces") or []
    mine = [i for i, itf in enumerate(interfaces)
            if isinstance(itf, dict) and itf.get("name") == req.ifname and itf.get("sandbox")]
    if mine and str(interfaces[mine[0]].get("mac", "")).lower() != ep.mac:
        raise CniError(OURS, f"{where}: MAC is {ep.mac}, prevResult says {interfaces[mine[0]].get('mac')}")
    addresses = {ip.get("address") for ip in prev.get("ips") or [] if isinstance(ip, dict) and
                 (not mine or ip.get("interface") == mine[0])}
    if addresses and f"{ep.ip}/{ep.prefixlen}" not in addresses:
        said = ", ".join(sorted(map(str, addresses)))
        raise CniError(OURS, f"{where}: address is {ep.ip}/{ep.prefixlen}, prevResult says {said}")


def open_backend(req: Request, warn: Warn) -> EnginePlugin:
    """What ``protocol.handle`` calls once the request is valid."""
    return EnginePlugin(config.parse(req), warn)
