"""ADD, DEL, CHECK, GC and STATUS through the public Engine API.

A container's attachment ``(CNI_CONTAINERID, CNI_IFNAME)`` on the conflist's network
is one sandbox, named by ``names.sandbox_name`` and labelled with the attachment,
that *adopts* the runtime's namespace. ADD is one ``Engine.adopt`` call: the sandbox,
its endpoint (the interface CNI_IFNAME, a static address and MAC, DNS aliases) and
its published ports in one transaction, rolled back whole on failure. So ``overlays
ps``, ``inspect`` and ``network rm`` (refused while in use) see it like any other
sandbox, and removing it takes our interfaces and our bind mount away but never the
runtime's namespace, which is not ours to delete.

DEL is idempotent: an attachment already gone, or a namespace the runtime already
deleted, is success. In the server, DEL hands the removal to ``remove_later``: the
runtime gets its answer first, and the server removes the sandbox before it takes
the next request (see ``server``). DEL and GC take only sandboxes whose labels name this attachment
(GC: this network), and GC keeps going past failures, reporting them all. CHECK asks
the engine what the kernel lacks against the record (``Engine.check``), then
compares the namespace and the runtime's ``prevResult``.

The result says what the network gives: gateways and default routes only where
the engine gives the sandbox one (``Engine.default_gateway``: a bridge or macvlan
network, not an overlay, which is east-west only), and a host-side interface only
where the endpoint has one (a macvlan endpoint does not).

The host. Like every CNI plugin, ours works on the network namespace it is exec'd
in: the conflist names the engine's host namespace (none: the machine's own), and
ADD and CHECK refuse to run anywhere else (compared by namespace inode), because
the runtime expects the container's network in *its* namespace. DEL and GC act
wherever they run: the engine reaches its host by name, and cleaning up is never
wrong.

A dual-stack network gives an attachment an address of each family (``IP=`` and the
``ips`` capability take one of each), with a gateway and a default route per family
(``0.0.0.0/0``, ``::/0``) where it routes out. What the engine cannot do yet
(``_unsupported``) is refused with code 106 before anything changes: two addresses of
one family on one attachment, ports published on IPv6 host addresses, SCTP ports.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from overlays.cni import config, names
from overlays.cni.protocol import (
    INVALID_ENVIRONMENT,
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
    from overlays.model.ports import PortMapping
    from overlays.model.specs import EndpointRequest
    from overlays.model.state import Endpoint, IPAddress, Network, Sandbox

ENGINE_PROTOCOLS = ("tcp", "udp")  # what the engine publishes (model.ports.PROTOCOLS)
# The server's DEL: takes (engine, sandbox) to remove once the runtime has its answer; False: remove it now.
RemoveLater = Callable[["Engine", str], bool]


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


def _unsupported(conf: config.PluginConf) -> list[str]:
    """What this ADD asks for that the engine cannot do yet, so it is refused (code 106) before any change."""
    problems = []
    for version in (4, 6):
        asked = [ip for ip in conf.ips if ip.version == version]
        if len(asked) > 1:
            problems.append(f"static addresses {', '.join(map(str, asked))}: one IPv{version} address per "
                            "attachment")
    for port in conf.ports:
        if port.protocol not in ENGINE_PROTOCOLS:
            problems.append(f"published port {port}: overlays publishes {' and '.join(ENGINE_PROTOCOLS)} only")
        if port.host_ip in ("::1", "0:0:0:0:0:0:0:1"):
            problems.append(f"published port {port}: the kernel cannot forward connections to [::1] (IPv6 has no "
                            "route_localnet); leave hostIP out, or use one of the host's IPv6 addresses")
    return problems


def endpoint_request(conf: config.PluginConf, ifname: str) -> EndpointRequest:
    """The attachment's endpoint: the interface the runtime names, a static address and MAC, DNS aliases."""
    from overlays.errors import InvalidSpec
    from overlays.model.specs import EndpointRequest, check_aliases, check_ifname

    try:
        check_ifname("CNI_IFNAME", ifname)
    except InvalidSpec as e:
        raise CniError(INVALID_ENVIRONMENT, str(e)) from None
    return EndpointRequest(conf.network, _static(conf, 4), conf.mac, ifname, check_aliases(conf.network, conf.aliases),
                           ip6=_static(conf, 6))


def _static(conf: config.PluginConf, version: int) -> IPAddress | None:
    """The static address the runtime asks for in one family (``IP=`` or the ``ips`` capability), if any."""
    return next((ip for ip in conf.ips if ip.version == version), None)


def port_mappings(conf: config.PluginConf) -> list[PortMapping]:
    """``portMappings`` as the engine publishes them (``hostIP`` 0.0.0.0 or none: every address of the host)."""
    import ipaddress

    from overlays.model.ports import PortMapping

    found = []
    for p in conf.ports:
        host_ip = ipaddress.ip_address(p.host_ip) if p.host_ip else None
        found.append(PortMapping(p.host_port, p.container_port, p.protocol,
                                 None if host_ip is None or host_ip.is_unspecified else host_ip))
    return found


DEFAULT_ROUTES = {4: "0.0.0.0/0", 6: "::/0"}


def attachment_of(req: Request, ep: Endpoint, routes_out: bool) -> Attachment:
    """The result of an ADD: the host-side interface (if any), the container's, an address of each family the
    network serves and, where the network routes out, a gateway and a default route for each."""
    inside = Interface(ep.ifname, ep.mac, req.netns, ep.mtu)
    interfaces = (Interface(ep.host_ifname), inside) if ep.host_ifname else (inside,)
    gateways = [str(gw) if routes_out and gw is not None else None for _, _, gw in ep.addresses]
    return Attachment(
        interfaces=interfaces,
        ips=tuple(IPConfig(f"{ip}/{prefixlen}", interface=len(interfaces) - 1, gateway=via)
                  for (ip, prefixlen, _), via in zip(ep.addresses, gateways, strict=True)),
        routes=tuple(Route(DEFAULT_ROUTES[ip.version], via)
                     for (ip, _, _), via in zip(ep.addresses, gateways, strict=True) if via),
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
                 host_check: bool = True, same_netns: Callable[[Path, Path], bool] | None = None,
                 remove_later: RemoveLater | None = None) -> None:
        self.conf = conf
        self.warn = warn
        self._engine = engine
        self._owned = engine is None  # an engine given is its giver's to close (the server keeps its own)
        self.host_check = host_check
        self.same_netns = same_netns or same_namespace
        self.remove_later = remove_later

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = open_engine(self.conf)
        return self._engine

    def close(self) -> None:
        if self._engine is not None and self._owned:
            self._engine.close()

    def _require_host(self) -> None:
        problem = host_problem(self.conf.host_netns) if self.host_check else None
        if problem:
            raise CniError(WRONG_HOST, problem)

    def _ours(self, box: Sandbox, req: Request) -> bool:
        """Whether the sandbox is this request's attachment (by its labels)."""
        return names.attachment_of(dict(box.labels)) == (req.container_id, req.ifname, self.conf.network)

    def add(self, req: Request) -> Attachment:
        self._require_host()
        refused = _unsupported(self.conf)
        if refused:
            raise CniError(UNSUPPORTED, "; ".join(refused))
        name = names.sandbox_name(req.container_id, req.ifname)
        try:
            box = self.engine.adopt(name, netns_path=req.netns, networks=[endpoint_request(self.conf, req.ifname)],
                                    ports=port_mappings(self.conf),
                                    labels=names.labels(req.container_id, req.ifname, self.conf.network),
                                    shared=True)  # a container has an attachment (a sandbox) per network
        except Conflict as e:
            if self._exists(name):
                raise Conflict(f"container {req.container_id} already has {req.ifname} attached ({e}); "
                               "DEL it first") from e
            raise
        (ep,) = box.endpoints
        # The attachment's one network routes out or not, for both families alike (the engine says per sandbox).
        return attachment_of(req, ep, self.engine.default_gateway(name) is not None)

    def _exists(self, name: str) -> bool:
        with contextlib.suppress(NotFound):
            self.engine.sandbox(name)
            return True
        return False

    def delete(self, req: Request) -> None:
        name = names.sandbox_name(req.container_id, req.ifname)
        try:
            if not self._ours(self.engine.sandbox(name), req):
                return  # another attachment's sandbox (or one made by hand) under this name: not ours to take
            if self.remove_later is None or not self.remove_later(self.engine, name):
                self.engine.remove_sandbox(name, force=True)
        except NotFound:
            return  # DEL again, or never added: nothing of ours is left, which is what DEL asks

    def check(self, req: Request) -> None:
        self._require_host()
        box = self._attached(req)
        ep = box.endpoint(self.conf.network)
        where = f"container {req.container_id} {req.ifname} on network {self.conf.network}"
        if ep is None or not self._ours(box, req):
            raise CniError(UNKNOWN_CONTAINER, f"{where}: not attached (sandbox {box.name} is another attachment)")
        if box.state != "ready" or ep.state != "ready":
            raise CniError(OURS, f"{where}: half made (sandbox {box.state}, endpoint {ep.state}); DEL and ADD again")
        self._check_netns(where, box, req.netns)
        problems = self.engine.check(box.name)
        if problems:
            raise CniError(OURS, f"{where}: " + "; ".join(problems))
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
        keep = set(valid)
        failures = []
        for box in self.engine.sandboxes():
            found = names.attachment_of(dict(box.labels))
            if found is None or found[2] != self.conf.network or found[:2] in keep:
                continue
            try:
                self.engine.remove_sandbox(box.name, force=True)
            except NotFound:
                continue  # a DEL took it meanwhile
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
    held = {f"{ip}/{prefixlen}" for ip, prefixlen, _ in ep.addresses}
    if addresses and not held <= addresses:
        said = ", ".join(sorted(map(str, addresses)))
        raise CniError(OURS, f"{where}: address is {', '.join(sorted(held))}, prevResult says {said}")


def open_backend(req: Request, warn: Warn) -> EnginePlugin:
    """What ``protocol.handle`` calls once the request is valid."""
    return EnginePlugin(config.parse(req), warn)
