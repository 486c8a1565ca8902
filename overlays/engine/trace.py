"""``overlays trace SRC DST``: can sandbox SRC reach DST, and if not, why not, hop by hop.

Design note. Two halves, as in Cilium's ``policy trace`` or OVS's ``ofproto/trace``:

* the *analysis* reads the live state (the store for what things are called, the
  kernel for what they are: SRC's route and neighbour entry, the host ends of the
  veths and their bridge, the VXLAN device's FDB and neighbour entries, the host's
  route, and the elements of our nftables table) and walks the path the way the
  kernel will, in the user's words: networks, sandboxes, published ports. The
  forward chain's decision is read off the same sets its rules look up
  (drivers.firewall: same_bridge, internal, bridges, nat_bridges), so what it says is
  what the rules say for the table as it is now, not as the store thinks it should be.
* one real *probe* from inside SRC (a ping with DF at the size SRC's interface allows,
  or a TCP connect / UDP datagram), traced by nftables (kernel.tracing), and the
  verdict the kernel actually gave: the rule that dropped it, or the answer.

The last line names the cause and its fix. The probe's evidence wins over the
analysis: when they disagree, both are shown.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from overlays.drivers import firewall
from overlays.engine import records, views
from overlays.engine.context import Context
from overlays.errors import InvalidSpec, NotFound
from overlays.kernel.api import Links
from overlays.model.names import vxlan_name
from overlays.model.state import Endpoint, EndpointRegistration, Network, Sandbox

ICMP_HEADERS = {4: 28, 6: 48}  # IPv4 (20) or IPv6 (40) + ICMP (8): ping -s N sends N + these bytes
CAUSE_BY_RULE = {  # the comment of one of our forward rules -> what to say
    "isolation between networks": "isolation",
    "internal: nothing leaves": "internal-src",
    "internal: nothing enters": "internal-dst",
    "masqueraded: reached through published ports only": "masqueraded",
}


@dataclass(frozen=True)
class Port:
    number: int
    protocol: str  # tcp or udp

    @classmethod
    def parse(cls, text: str) -> Port:
        number, _, proto = text.partition("/")
        proto = (proto or "tcp").lower()
        if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("tcp", "udp"):
            raise InvalidSpec(f"trace: --port {text!r}: expected PORT/tcp or PORT/udp, like 80/tcp")
        return cls(int(number), proto)

    def __str__(self) -> str:
        return f"{self.number}/{self.protocol}"


@dataclass
class Target:
    """What DST names: an address, and what overlays knows of it."""

    ip: str
    label: str
    box: Sandbox | None = None
    ep: Endpoint | None = None
    remote: EndpointRegistration | None = None
    published: Port | None = None  # DST was HOST:PORT


@dataclass
class Trace:
    src: str
    target: Target
    port: Port | None
    steps: list[tuple[str, str]] = field(default_factory=list)  # (where, what)
    expected: str | None = None  # the cause the analysis found, if any: "isolation", "internal-src", ...
    causes: dict[str, str] = field(default_factory=dict)  # cause -> one line naming it and its fix
    probe: str | None = None
    firewall: list[str] = field(default_factory=list)  # the traced verdicts of the host's chains
    reachable: bool | None = None
    verdict: str = ""

    def say(self, where: str, what: str) -> None:
        self.steps.append((where, what))

    def blocked(self, cause: str, line: str) -> None:
        """The analysis found ``cause`` (the first found is expected; each keeps its line for the verdict)."""
        self.causes.setdefault(cause, line)
        self.expected = self.expected or cause

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.target.label, "ip": self.target.ip,
                "port": str(self.port) if self.port else None, "steps": [list(s) for s in self.steps],
                "probe": self.probe, "firewall": self.firewall, "reachable": self.reachable, "verdict": self.verdict}


# -- what DST names ----------------------------------------------------------------------------------------------------


def _shared(ctx: Context) -> list[EndpointRegistration]:
    return ctx.transact(lambda txn: records.all_registrations(txn.root))


def resolve(ctx: Context, src: Sandbox, text: str, port: Port | None, version: int | None = None) -> Target:
    """A sandbox name (its address of ``version``, if given), an address, or a published HOST:PORT[/udp]
    (``[IPv6]:PORT`` for an IPv6 host address)."""
    try:
        ip = str(ipaddress.ip_address(text))
    except ValueError:
        ip = ""
    host, sep, port_text = text.rpartition(":")
    if sep and not ip:
        published = Port.parse(port_text if "/" in port_text else f"{port_text}/{port.protocol if port else 'tcp'}")
        address = _address(host, text)
        return Target(address, f"{host}:{published.number}", published=published)
    if not ip:
        return _named(ctx, src, text, version)
    for box in views.sandboxes(ctx):
        for ep in box.endpoints:
            if ip in (str(ep.ip), str(ep.ip6)):
                return Target(ip, f"{box.name} ({ip})", box=box, ep=ep)
    remote = next((r for r in _shared(ctx) if ip in (r.ip, r.ip6)), None)
    return Target(ip, f"{remote.sandbox} on {remote.node} ({ip})" if remote else ip, remote=remote)


def _address(text: str, whole: str) -> str:
    try:
        return str(ipaddress.ip_address(text[1:-1] if text.startswith("[") and text.endswith("]") else text))
    except ValueError:
        raise InvalidSpec(f"trace: {whole!r}: expected HOST_IP:PORT, like 10.99.0.1:8080 or [fd00::1]:8080") from None


def _named(ctx: Context, src: Sandbox, name: str, version: int | None) -> Target:
    try:
        box = views.sandbox(ctx, name)
    except NotFound:
        remote = [r for r in _shared(ctx) if r.sandbox == name and r.node != ctx.node]
        if not remote:
            raise NotFound(f"trace: {name!r} is neither a sandbox (here or on another host) nor an address") from None
        mine = {e.network for e in src.endpoints}
        r = next((r for r in remote if r.network in mine), remote[0])
        ip = _of_version([r.ip, *([r.ip6] if r.ip6 else [])], version, name)
        return Target(ip, f"{name} on {r.node} ({ip})", remote=r)
    if not box.endpoints:
        raise InvalidSpec(f"trace: sandbox {name} is on no network (loopback only): nothing can reach it")
    mine = {e.network for e in src.endpoints}
    ep = next((e for e in box.endpoints if e.network in mine), box.endpoints[0])
    ip = _of_version([str(a) for a, _, _ in ep.addresses], version, name)
    return Target(ip, f"{name} ({ip})", box=box, ep=ep)


def _of_version(addresses: list[str], version: int | None, name: str) -> str:
    """The first address (``version`` None), or the one of that family (refused if there is none)."""
    found = next((a for a in addresses if version is None or ipaddress.ip_address(a).version == version), None)
    if found is None:
        raise InvalidSpec(f"trace: {name} has no IPv{version} address ({', '.join(addresses)})")
    return found


# -- the path, as the kernel will take it ------------------------------------------------------------------------------


class Firewall:
    """The elements of our table's sets, as they are now (empty when there is no table)."""

    def __init__(self, listing: dict[str, Any] | None) -> None:
        self.exists = listing is not None
        self.sets: dict[str, set[str]] = {}
        for item in (listing or {}).get("nftables", []):
            found = item.get("set") or item.get("map")
            if found:
                self.sets[found["name"]] = {_element(e) for e in found.get("elem", [])}

    def has(self, name: str, *parts: str) -> bool:
        return " . ".join(parts) in self.sets.get(name, set())

    def published(self, proto: str, ip: str, port: int) -> str | None:
        """The DNAT target ``ip . port`` of a published port, or None."""
        family = "publish6" if ":" in ip else "publish"
        for name, key in ((f"{family}_{proto}", f"{ip} . {port}"), (f"{family}_any_{proto}", str(port))):
            for element in self.sets.get(name, set()):
                k, _, v = element.partition(" : ")
                if k == key:
                    return v
        return None


def _element(e: Any) -> str:
    """One set or map element of nft's JSON as text: ``a . b`` for a concatenation, ``k : v`` for a map."""
    if isinstance(e, list):  # a map element: [key, value]
        return f"{_element(e[0])} : {_element(e[1])}"
    if isinstance(e, dict):
        if "concat" in e:
            return " . ".join(_element(x) for x in e["concat"])
        if "elem" in e:
            return _element(e["elem"]["val"])
        if "prefix" in e:
            return f"{e['prefix']['addr']}/{e['prefix']['len']}"
    return str(e)


def _network_of_bridge(nets: Iterable[Network], bridge: str) -> Network | None:
    return next((n for n in nets if n.bridge == bridge), None)


def analyse(ctx: Context, src: Sandbox, target: Target, port: Port | None, host: Links, inside: Links,
            fw: Firewall, nets: dict[str, Network]) -> tuple[Trace, int]:
    """The path from ``src`` to ``target``; also the MTU of SRC's interface on it (the probe's size)."""
    t = Trace(src.name, target, port)
    hop = inside.route_to(target.ip)
    if hop is None or hop.kind in ("unreachable", "prohibit", "blackhole"):
        t.blocked("no-route", f"{src.name} has no route to {target.ip}: it is on "
                  f"{', '.join(e.network for e in src.endpoints) or 'no network'}; connect it to one that leads "
                  f"there (`overlays connect NETWORK {src.name}`)")
        t.say(src.name, f"no route to {target.ip}")
        return t, 0
    ep = next((e for e in src.endpoints if e.ifname == hop.dev), None)
    net = nets.get(ep.network) if ep else None
    link = inside.link(hop.dev)
    mtu = link.mtu if link else 0
    where = f"network {net.name}" if net else "not a network of overlays"
    t.say(src.name, f"route to {target.ip} " + (f"via {hop.gateway} " if hop.gateway else "on the link ")
          + f"dev {hop.dev} ({where}, source {hop.src}), MTU {mtu}")
    if net is not None and mtu > net.mtu:
        t.blocked("mtu", f"{src.name}'s {hop.dev} has MTU {mtu} but network {net.name} carries {net.mtu}: larger "
                  f"packets with DF set are dropped without a word; fix: `ip -n {src.netns} link set {hop.dev} "
                  f"mtu {net.mtu}` (or `overlays disconnect {net.name} {src.name}` and connect it again)")
    _neighbour(t, inside, hop.dev, hop.gateway or target.ip)
    if ep is None or net is None:
        return t, mtu
    _port_of(t, host, src.name, ep, net)
    if target.published is not None:
        _published(ctx, t, host, target, net, fw, nets)
    elif hop.gateway is None:
        _same_segment(ctx, t, host, target, net, fw)
    else:
        _routed(ctx, t, host, target, net, fw, nets)
    _destination(t, target, port)
    return t, mtu


def _neighbour(t: Trace, inside: Links, dev: str, ip: str) -> None:
    entry = inside.neighbour_entry(dev, ip)
    if entry is None:
        t.say(t.src, f"no neighbour entry for {ip} yet: ARP will ask for it")
    elif "FAILED" in entry[1] or "INCOMPLETE" in entry[1]:
        t.say(t.src, f"neighbour {ip}: ARP got no answer ({entry[1]})")
        t.blocked("arp", f"{ip} does not answer ARP on {dev}: nothing holds that address on the segment")
    else:
        t.say(t.src, f"neighbour {ip} is {entry[0]} ({entry[1]})")


def _port_of(t: Trace, host: Links, who: str, ep: Endpoint, net: Network) -> bool:
    veth, bridge = host.link(ep.host_ifname), host.link(net.bridge)
    if veth is None or bridge is None or veth.master != bridge.index or not veth.up:
        t.say("host", f"veth {ep.host_ifname} ({who}'s {ep.ifname}) is missing, down or not on bridge {net.bridge}")
        t.blocked("detached", f"{who}'s {ep.ifname} is not wired to network {net.name} ({ep.host_ifname} is missing, "
                  f"down or off {net.bridge}): `overlays up` repairs it, or disconnect and connect it again")
        return False
    t.say("host", f"veth {ep.host_ifname} ({who}'s {ep.ifname}) is a port of bridge {net.bridge}, up")
    return True


def _same_segment(ctx: Context, t: Trace, host: Links, target: Target, net: Network, fw: Firewall) -> None:
    if target.ep is not None and target.box is not None and target.ep.network == net.name:
        if _port_of(t, host, target.box.name, target.ep, net):
            learned = target.ep.mac in host.port_macs(target.ep.host_ifname)
            t.say("host", f"bridge {net.bridge}: {target.ep.mac} " + (
                f"learned behind {target.ep.host_ifname}" if learned else "not learned yet (flooded until it is)"))
        t.say("firewall", f"bridged within network {net.name}: frames between two ports of {net.bridge} skip the "
              "IP hooks (no rule of ours applies)")
    elif target.remote is not None and net.vni is not None:
        _vxlan(ctx, t, host, target.remote, net)
    else:
        t.say("host", f"{target.ip} is not a sandbox of network {net.name}: whatever holds it on the segment answers")


def _vxlan(ctx: Context, t: Trace, host: Links, remote: EndpointRegistration, net: Network) -> None:
    device = vxlan_name(net.bridge)
    link = host.link(device)
    if link is None:
        t.blocked("no-vxlan", f"host {ctx.node} has no VXLAN device {device} for network {net.name}")
        return
    fdb, neighbours = host.fdb(device), host.neighbours(device)
    t.say("host", f"bridge {net.bridge} -> VXLAN {device} (VNI {net.vni}, MTU {link.mtu})")
    if (remote.mac, remote.vtep) in fdb:
        t.say("host", f"{device}: FDB sends {remote.mac} to VTEP {remote.vtep} (host {remote.node})")
    else:
        t.blocked("fdb", f"{device} has no FDB entry for {remote.sandbox}'s MAC {remote.mac} (VTEP {remote.vtep}): "
                  f"the agent of host {ctx.node} has not programmed it; is `overlays agent` running here?")
    ip = t.target.ip if t.target.ip in (remote.ip, remote.ip6) else remote.ip
    if neighbours.get(ip) == remote.mac:
        t.say("host", f"{device}: neighbour {ip} is {remote.mac} (answered here: proxy ARP/NDP)")
    else:
        t.blocked("fdb", f"{device} has no neighbour entry for {ip}: the agent of host {ctx.node} has not "
                  "programmed it; is `overlays agent` running here?")
    under = host.route_to(remote.vtep)
    if under is None:
        t.blocked("underlay", f"host {ctx.node} has no route to VTEP {remote.vtep} (host {remote.node})")
    else:
        t.say("underlay", f"VTEP {remote.vtep} via dev {under.dev}" + (f" via {under.gateway}" if under.gateway
                                                                      else "") + f" (source {under.src})")


def _published(ctx: Context, t: Trace, host: Links, target: Target, net: Network, fw: Firewall,
               nets: dict[str, Network]) -> None:
    port = target.published
    assert port is not None
    to = fw.published(port.protocol, target.ip, port.number)
    if to is None:
        here = [f"{m.host_port}/{m.protocol} -> {b.name}:{m.container_port}"
                for b in views.sandboxes(ctx) for m in b.ports]
        t.say("host", f"prerouting: {_at(target.ip)}:{port} is published by no sandbox (not DNAT'd: the host itself "
              "gets it)")
        t.blocked("not-published", f"nothing publishes {port} on {target.ip}"
                  + (f" (published here: {', '.join(here)})" if here else "")
                  + f": publish it with `overlays run -p {port.number}:PORT"
                  + ("/udp" if port.protocol == "udp" else "") + " ...`")
        return
    ip, _, number = to.partition(" . ")
    owner = next(((b, e) for b in views.sandboxes(ctx) for e in b.endpoints if ip in (str(e.ip), str(e.ip6))), None)
    who = owner[0].name if owner else ip
    t.say("host", f"prerouting: DNAT {_at(target.ip)}:{port} -> {_at(ip)}:{number} (published by {who})")
    if owner is not None:
        target.box, target.ep = owner
    dst_net = nets.get(owner[1].network) if owner else None
    if dst_net is not None:
        rule = "stays in its network" if dst_net.name == net.name else "published ports"
        t.say("firewall", f"forward: {net.name} -> {dst_net.name}: accepted (\"{rule}\")")
        if dst_net.name == net.name:
            t.say("firewall", f"postrouting: masquerade (\"hairpin\"): {target.box.name if target.box else who} "
                  f"sees the request come from {dst_net.gateway}")


def _routed(ctx: Context, t: Trace, host: Links, target: Target, net: Network, fw: Firewall,
            nets: dict[str, Network]) -> None:
    if target.ip in {str(a) for a in host.addresses()}:
        t.say("host", f"{target.ip} is an address of the host: it answers itself (input)")
        return
    hop = host.route_to(target.ip)
    if hop is None:
        t.blocked("host-route", f"the host has no route to {target.ip}")
        return
    other = _network_of_bridge(nets.values(), hop.dev)
    t.say("host", f"route to {target.ip} dev {hop.dev}" + (f" (network {other.name})" if other else
                                                          (f" via {hop.gateway}" if hop.gateway else "")))
    if not fw.exists:
        t.say("firewall", "no table of ours on this host")
        return
    iif, oif = net.bridge, hop.dev
    decision = _forward(fw, iif, oif)
    t.say("firewall", f"forward: {net.name} -> {other.name if other else oif}: " + (
        "accepted" if decision is None else f"dropped (\"{decision}\")"))
    if decision is not None:
        t.blocked(CAUSE_BY_RULE.get(decision, "firewall"), _cause_line(CAUSE_BY_RULE.get(decision, "firewall"), t,
                                                                       net, other, decision))
    elif other is None and _masqueraded(fw, net, target.ip) and not fw.has("bridges", oif):
        t.say("firewall", f"postrouting: masquerade (\"egress\"): the source becomes {hop.dev}'s address")


def _at(ip: str) -> str:
    """An address as it is written before a port: IPv6 in brackets."""
    return f"[{ip}]" if ":" in ip else ip


def _masqueraded(fw: Firewall, net: Network, dst: str) -> bool:
    """Whether ``net``'s subnet of ``dst``'s family is in the table's masquerade set of that family."""
    pool = net.pool(ipaddress.ip_address(dst).version)
    return pool is not None and fw.has("masq_subnets6" if pool[0].version == 6 else "masq_subnets", str(pool[0]))


def _forward(fw: Firewall, iif: str, oif: str) -> str | None:
    """What our forward chain does with a new connection from bridge ``iif`` to ``oif`` (rule comment if dropped)."""
    i, o = iif, oif
    if fw.has("same_bridge", i, o):
        return None
    if fw.has("internal", i):
        return "internal: nothing leaves"
    if fw.has("internal", o):
        return "internal: nothing enters"
    if fw.has("bridges", i) and fw.has("bridges", o):
        return "isolation between networks"
    if fw.has("nat_bridges", o):
        return "masqueraded: reached through published ports only"
    return None


def _cause_line(cause: str, t: Trace, net: Network, other: Network | None, rule: str) -> str:
    dst_net = other.name if other else "the outside"
    if cause == "isolation":
        return (f"{net.name} and {dst_net} are isolated: `overlays connect {dst_net} {t.src}` gives {t.src} a leg "
                "on both")
    if cause == "internal-src":
        return (f"network {net.name} is internal: nothing leaves it (its sandboxes reach each other only); "
                f"connect {t.src} to a network that is not, e.g. `overlays connect {dst_net} {t.src}`")
    if cause == "internal-dst":
        return (f"network {dst_net} is internal: nothing enters it from another network; "
                f"`overlays connect {dst_net} {t.src}` puts {t.src} on it")
    if cause == "masqueraded":
        return f"network {dst_net} is reached from outside through published ports only (`overlays run -p ...`)"
    return f"dropped by our forward rule \"{rule}\""


def _destination(t: Trace, target: Target, port: Port | None) -> None:
    box = target.box
    if box is None:
        return
    status = views.status(box)
    if target.published is not None:
        port = Port(next((m.container_port for m in box.ports if m.host_port == target.published.number
                          and m.protocol == target.published.protocol), target.published.number),
                    target.published.protocol)
    t.say(box.name, f"{status}" + (f", command {' '.join(box.command)}" if box.command else ", runs no command"))
    if port is not None and status in ("exited", "created"):
        why = f"its command ({' '.join(box.command)}) exited" if box.command else "it runs no command"
        t.blocked("stopped", f"{box.name} is stopped ({why}): nothing of its own listens on {port}; start it again: "
                  f"`overlays rm -f {box.name}` and `overlays run -d --name {box.name} ... -- COMMAND`")


# -- one traced probe, and the verdict ---------------------------------------------------------------------------------


def run(ctx: Context, src_name: str, dst: str, port_text: str | None = None, probe: bool = True,
        version: int | None = None) -> Trace:
    """Analyse the path from sandbox ``src_name`` to ``dst`` (a sandbox's address of ``version``, if given),
    then send one traced probe (unless ``probe`` is off)."""
    port = Port.parse(port_text) if port_text else None
    src = views.sandbox(ctx, src_name)
    target = resolve(ctx, src, dst, port, version)
    port = target.published or port
    nets = {n.name: n for n in views.networks(ctx)}
    if not ctx.kernel.netns_exists(src.netns):
        raise NotFound(f"trace: sandbox {src.name}'s namespace {src.netns} is gone: `overlays up` or "
                       f"`overlays rm {src.name}`")
    table = firewall.table_name(ctx.instance)
    with ctx.open_host() as host, ctx.kernel.open_path(src.netns, ctx.kernel.netns_path(src.netns)) as inside:
        fw = Firewall(ctx.kernel.nft_list_table(ctx.host_netns, firewall.FAMILY, table))
        t, mtu = analyse(ctx, src, target, port, host, inside, fw, nets)
    if probe and "no-route" not in t.causes:
        _probe(ctx, t, src, mtu)
    t.verdict = _verdict(t)
    return t


def _probe(ctx: Context, t: Trace, src: Sandbox, mtu: int) -> None:
    from overlays.kernel import tracing  # the probe's modules: only a trace that sends one loads them

    path = ctx.kernel.netns_path(src.netns)
    version = ipaddress.ip_address(t.target.ip).version
    src_ip = next((str(a) for e in src.endpoints for a, _, _ in e.addresses if a.version == version), "")
    port = t.port
    if port is None:
        size = max(mtu - ICMP_HEADERS[version], 56)

        def send() -> tracing.ProbeResult:
            return tracing.ping(path, t.target.ip, size)

        match, what = f"meta l4proto {'icmp' if version == 4 else 'ipv6-icmp'}", f"ping -M do -s {size} {t.target.ip}"
    else:
        def send() -> tracing.ProbeResult:
            call = tracing.connect_tcp if port.protocol == "tcp" else tracing.send_udp
            return call(path, t.target.ip, port.number)

        match, what = f"{port.protocol} dport {port.number}", f"{port.protocol} to {_at(t.target.ip)}:{port.number}"
    ip = "ip" if version == 4 else "ip6"
    match = f"{ip} saddr {src_ip} {ip} daddr {t.target.ip} {match}" if src_ip else f"{ip} daddr {t.target.ip} {match}"
    host_path = ctx.kernel.netns_path(ctx.host_netns) if ctx.host_netns else None
    result, events = tracing.traced(host_path, ctx.host_netns, f"{firewall.table_name(ctx.instance)}_trace", match,
                                    send)
    t.probe = f"{what} from {src.name}: {result.what}"
    t.reachable = result.answered
    first = next((e.trace_id for e in events), None)
    t.firewall = [f"{e.table} {e.chain}: " + (e.text if e.kind == "rule" else f"{e.kind} {e.text}")
                  for e in events if e.trace_id == first and e.kind != "packet" and not e.table.endswith("_trace")]
    drop = next((e for e in events if e.trace_id == first and e.verdict in ("drop", "reject")), None)
    if drop is not None:  # the kernel's word wins over the analysis
        comment = drop.text.split('comment "', 1)[1].split('"', 1)[0] if 'comment "' in drop.text else ""
        cause = CAUSE_BY_RULE.get(comment) if drop.table == f"inet {firewall.table_name(ctx.instance)}" else None
        if cause is None:
            ours = drop.table == f"inet {firewall.table_name(ctx.instance)}"
            cause = "foreign-rule"
            t.causes[cause] = (f"dropped by {drop.table} chain {drop.chain}: {drop.text}"
                               + ("" if ours else " (not a table of ours)"))
        t.causes.setdefault(cause, f"dropped by our rule \"{comment}\"")
        t.expected = cause
    if not result.answered and port is None and t.expected in (None, "mtu"):
        small = tracing.ping(path, t.target.ip, 56)
        t.probe += f"; a small one (ping -s 56): {small.what}"
        if small.answered:
            t.expected = "mtu"
            t.causes.setdefault("mtu", f"packets of {mtu} bytes with DF set from {src.name} are lost on the way "
                                "while small ones pass: an MTU on the path is smaller than its own")


def _verdict(t: Trace) -> str:
    """One line: what the probe found, and (when blocked) the cause and its fix."""
    on = f" on {t.port}" if t.port else ""
    if t.reachable:
        but = f"; the analysis expected otherwise: {t.causes[t.expected]}" if t.expected else ""
        return f"reachable: {t.src} reaches {t.target.label}{on}{but}"
    if t.expected == "mtu":
        return f"large packets blocked: {t.causes['mtu']}"
    if t.expected is not None:
        return f"{'blocked' if t.reachable is False else 'would be blocked'}: {t.causes[t.expected]}"
    if t.reachable is None:
        return "not probed: the analysis found nothing in the way"
    if t.probe and "refused" in t.probe:
        return f"blocked: nothing listens{on} at {t.target.label} (the path is open: the refusal came back)"
    return f"blocked: no answer from {t.target.label}, and nothing overlays made is in the way (see the hops above)"
