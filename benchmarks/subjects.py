"""The things that attach sandboxes to one bridge network, each driven the way its users drive it.

Every subject gets a host namespace of its own and does the same job per
sandbox: a network namespace, a veth pair with one end on the network's bridge
and the other as eth0 inside, an address, a default route via the gateway, and
loopback up; teardown leaves nothing. ``prepare`` (untimed) builds the network.

- ``overlays``: the Python API, ``create_sandbox`` / ``remove_sandbox``.
- ``raw``: careful netlink from Python (pyroute2): one socket per namespace,
  made inside it without a fork; the veth's peer created straight into the sandbox
  with its index, MAC, master and "up" in the one request; ``addrgenmode none`` on
  eth0 before it comes up; IPv6 quieted in the host namespace; teardown
  by deleting the namespace. The floor the issue's "within 2x" is measured against.
- ``packed``: ``raw``'s messages packed by hand (struct, a plain socket, no library): the
  kernel's own cost, which shows how much of ``raw`` is pyroute2's per-request overhead.
- ``ip``: one ``ip`` process per step, the same steps (and the same quiet host).
- ``overlays-dual`` and ``packed-dual`` (``attach --ipv6``): the same on a dual-stack network, each
  sandbox also given an IPv6 address (no DAD) and an IPv6 default route, the bridge the IPv6 gateway;
  links still make no link-local addresses. ``packed-dual`` is the kernel's own cost of that;
  ``packed-dual-nomld`` the same with MLD reports not bridged between ports (an nft rule of its own)
  and ``packed-dual-querier`` with the bridge as MLD querier: two remedies for the reports' flood.
- ``cni``: the reference plugins ``bridge`` + ``host-local`` and ``loopback``, exec'd as
  containerd does (CNI_* environment, config on stdin), from a thread inside the host
  namespace so the plugin's "host" is ours and no ``ip netns exec`` process sits between.
- ``netavark``: podman's backend, ``netavark --config DIR setup|teardown NETNS`` with the
  network JSON on stdin, exec'd the same way; its iptables rules land in our host namespace.

With one published port per sandbox (``attach_ports``): sandbox i publishes host port
PORT_BASE + i to its port 80, TCP, on every host address.

- ``overlays+port``: the same ``create_sandbox`` with one ``PortMapping``.
- ``cni+portmap``: the chain bridge + host-local, then ``portmap`` with the bridge's result as
  ``prevResult`` and ``runtimeConfig.portMappings``, as libcni runs a conflist (DEL in reverse).
- ``netavark+port``: the same call with ``port_mappings`` in its options.

Each checks, untimed, that a connection from the host to the gateway address and the
published port reaches a listener in the first and the last sandbox.

Design note: the baselines import nothing from overlays, so a slow path there cannot
make its own yardstick slow too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from benchmarks import netns

CNI_PATH = Path("/usr/lib/cni")
NETAVARK = Path("/usr/lib/podman/netavark")
NETWORK = "bench"
PORT_BASE = 30000      # the host port sandbox i publishes: PORT_BASE + i
CONTAINER_PORT = 80
SUBNET6 = "fd00:77::/64"  # the IPv6 pool of the dual-stack subjects
Done = subprocess.CompletedProcess[bytes]


class Subject(Protocol):
    name: str
    bridge: str

    def prepare(self) -> None: ...
    def attach(self, i: int) -> None: ...
    def detach(self, i: int) -> None: ...
    def sandbox_netns(self, i: int) -> str: ...
    def verify_sandbox(self, i: int) -> bool: ...
    def close(self) -> None: ...


class Base:
    """What every subject shares: its host namespace, sandbox names and addresses."""

    name = "base"
    bridge = "bbr0"
    execs_tools = False  # a process per step: its peak RSS is probed separately
    subnet6: ipaddress.IPv6Network | None = None  # dual-stack subjects: the network's IPv6 pool

    def __init__(self, host: str, subnet: str, workdir: Path) -> None:
        self.host = host
        self.host_path = netns.path_of(host)
        self.subnet = ipaddress.IPv4Network(subnet)
        self.gateway = str(self.subnet.network_address + 1)
        self.workdir = workdir
        self.made: set[int] = set()

    def sandbox_netns(self, i: int) -> str:
        return f"{self.host}-s{i}"

    def address(self, i: int) -> str:
        return str(self.subnet.network_address + 2 + i)

    @property
    def gateway6(self) -> str:
        assert self.subnet6 is not None
        return str(self.subnet6.network_address + 1)

    def address6(self, i: int) -> str:
        assert self.subnet6 is not None
        return str(self.subnet6.network_address + 2 + i)

    def mac(self, i: int) -> str:
        return "02:62:" + ":".join(f"{b:02x}" for b in (i + 2).to_bytes(4, "big"))

    def verify_sandbox(self, i: int) -> bool:
        """Untimed, after the attach loop: anything beyond the wiring the subject promises (here none)."""
        return True

    # While probing, each tool runs under /usr/bin/time: its peak RSS is then its own. (Exec'd straight
    # from this process, a child's ru_maxrss starts at our RSS: exec carries the old mm's high-water mark.)
    rss_probe = False
    tool_rss_kib = 0

    def run_tool(self, argv: list[str], stdin: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
        """Run a tool process; raises with its output if it fails."""
        probe = self.workdir / "rss-probe"
        if self.rss_probe:
            argv = ["/usr/bin/time", "-f", "%M", "-o", str(probe), *argv]
        done = self._spawn(argv, stdin, env)
        if done.returncode != 0:
            what = f"{' '.join(argv)} {(env or {}).get('CNI_COMMAND', '')}".strip()
            raise RuntimeError(f"{what} failed: {(done.stdout + done.stderr).decode(errors='replace').strip()[:500]}")
        if self.rss_probe:
            self.tool_rss_kib = max(self.tool_rss_kib, int(probe.read_text().split()[-1]))
        return done.stdout

    def _spawn(self, argv: list[str], stdin: bytes | None, env: dict[str, str] | None) -> Done:
        return subprocess.run(argv, input=stdin, env=env, capture_output=True)

    def quiet_ipv6(self) -> None:
        for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
            netns.write_sysctl(self.host_path, key, "1")

    def close(self) -> None:
        for i in sorted(self.made):
            netns.delete(self.sandbox_netns(i))
        self.made.clear()


# -- overlays -----------------------------------------------------------------


class OverlaysSubject(Base):
    name = "overlays"
    dns = True  # names served by the host's agent, which the first sandbox starts

    def __init__(self, host: str, subnet: str, workdir: Path) -> None:
        super().__init__(host, subnet, workdir)
        from overlays import Engine

        self.engine = Engine(host_netns=host, state_dir=workdir / "state", dns=self.dns)
        self.bridge = ""

    def prepare(self) -> None:
        from overlays import NetworkSpec

        self.bridge = self.engine.create_network(NetworkSpec.parse(NETWORK, subnet=str(self.subnet))).bridge

    def attach(self, i: int) -> None:
        from overlays import EndpointRequest, SandboxSpec

        self.engine.create_sandbox(SandboxSpec.parse(f"s{i}", [EndpointRequest.parse(NETWORK)]))
        self.made.add(i)  # a failed create rolls itself back

    def detach(self, i: int) -> None:
        # Like the baselines: the namespace goes now, the kernel frees the veth later (waited for once, after all).
        self.engine.remove_sandbox(f"s{i}", wait=False)
        self.made.discard(i)

    def sandbox_netns(self, i: int) -> str:
        return self.engine.sandbox(f"s{i}").netns

    def close(self) -> None:
        from overlays import OverlaysError

        # After a failure or an interrupt: delete the namespaces outright (fast, and the state dir is
        # scratch); the host namespace takes the host-side veths with it.
        for i in sorted(self.made):
            with contextlib.suppress(OverlaysError, OSError):
                netns.delete(self.sandbox_netns(i))
        self.made.clear()
        self._stop_agent()
        self.engine.close()

    def _stop_agent(self) -> None:
        """The agent the first sandbox started: stopped now, not when it notices its host is gone."""
        from overlays.engine import hostagent
        from overlays.kernel import process

        left = hostagent.started(self.engine.ctx)
        if left is not None:
            process.stop(left.pid, left.start)
            hostagent.forget_record(self.engine.ctx, left)


class OverlaysDualSubject(OverlaysSubject):
    """The same engine on a dual-stack network: what IPv6 adds to an attach, in the same run."""

    name = "overlays-dual"
    subnet6 = ipaddress.IPv6Network(SUBNET6)

    def prepare(self) -> None:
        from overlays import NetworkSpec

        spec = NetworkSpec.parse(NETWORK, subnet=[str(self.subnet), str(self.subnet6)])
        self.bridge = self.engine.create_network(spec).bridge


class OverlaysNoDnsSubject(OverlaysSubject):
    """The same engine with names turned off (Engine(dns=False)): what the DNS part costs, in the same run."""

    name = "overlays-nodns"
    dns = False


# -- careful raw netlink ------------------------------------------------------

# IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE = IN6_ADDR_GEN_MODE_NONE } }
NO_ADDRGEN = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}


class RawSubject(Base):
    name = "raw"
    EXPECTED_ETH0_INDEX = 2  # a fresh namespace holds lo (1) only; we ask for this index outright

    def __init__(self, host: str, subnet: str, workdir: Path) -> None:
        super().__init__(host, subnet, workdir)
        from pyroute2 import IPRoute

        self._iproute = IPRoute
        self.hostlink = IPRoute(fileno=netns.netlink_socket(self.host_path).detach())
        self.bridge_index = 0

    def prepare(self) -> None:
        self.quiet_ipv6()
        h = self.hostlink
        h.link("add", ifname=self.bridge, kind="bridge")
        self.bridge_index = h.link_lookup(ifname=self.bridge)[0]
        h.link("set", index=self.bridge_index, state="up")
        h.addr("add", index=self.bridge_index, address=self.gateway, prefixlen=self.subnet.prefixlen)

    def attach(self, i: int) -> None:
        path, sock = netns.create(self.sandbox_netns(i), with_socket=True)
        self.made.add(i)
        inside = self._iproute(fileno=sock.detach())  # type: ignore[union-attr]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                peer = {"ifname": "eth0", "net_ns_fd": fd, "address": self.mac(i), "index": self.EXPECTED_ETH0_INDEX}
                self.hostlink.link("add", ifname=f"bv{i}", kind="veth", master=self.bridge_index, state="up",
                                   peer=peer)
            finally:
                os.close(fd)
            eth0 = self.EXPECTED_ETH0_INDEX
            inside.link("set", index=1, state="up")
            # addrgenmode none in a set of its own, before up: set with up, the link still makes a
            # link-local address, and its DAD, RS and MLD multicasts reach every port of the bridge.
            inside.link("set", index=eth0, IFLA_AF_SPEC=NO_ADDRGEN)
            inside.link("set", index=eth0, state="up")
            inside.addr("add", index=eth0, address=self.address(i), prefixlen=self.subnet.prefixlen)
            inside.route("add", dst="0.0.0.0/0", gateway=self.gateway)
        finally:
            inside.close()  # an open socket would keep the namespace alive past its deletion

    def detach(self, i: int) -> None:
        netns.delete(self.sandbox_netns(i))  # the kernel removes both veth ends with it
        self.made.discard(i)

    def close(self) -> None:
        super().close()
        self.hostlink.close()


# -- hand-packed netlink: the kernel's cost without a library's ------------------

NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTM_NEWLINK, RTM_SETLINK, RTM_NEWADDR, RTM_NEWROUTE, NLMSG_ERROR = 16, 19, 20, 24, 2
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_NET_NS_FD = 1, 3, 10, 18, 26, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER, IFLA_INET6_ADDR_GEN_MODE = 1, 2, 1, 8
IFA_ADDRESS, IFA_LOCAL, RTA_GATEWAY, IFA_F_NODAD = 1, 2, 5, 0x02
AF_INET, AF_INET6, IFF_UP = 2, 10, 1


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _ifinfo(index: int = 0, up: bool = False) -> bytes:
    return struct.pack("=BxHiII", 0, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)


class Netlink:
    """The smallest synchronous rtnetlink client: one request, one ack, errors as OSError."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seq = 0

    def request(self, kind: int, flags: int, body: bytes) -> None:
        self.seq += 1
        header = struct.pack("=LHHLL", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0)
        self.sock.sendto(header + body, (0, 0))
        reply = self.sock.recv(65536)
        _, rtype, _, _, _ = struct.unpack_from("=LHHLL", reply)
        if rtype == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", reply, 16)
            if code:
                raise OSError(-code, f"netlink request {kind}: {os.strerror(-code)}")

    def close(self) -> None:
        self.sock.close()


class PackedSubject(RawSubject):
    """``raw``'s steps, with each message packed by hand: what the kernel costs on its own."""

    name = "packed"

    def __init__(self, host: str, subnet: str, workdir: Path) -> None:
        Base.__init__(self, host, subnet, workdir)  # not RawSubject's: no pyroute2 here
        self.hostnl = Netlink(netns.netlink_socket(self.host_path))
        self.bridge_index = 0

    def prepare(self) -> None:
        self.quiet_ipv6()
        for args in (["link", "add", self.bridge, "type", "bridge"],
                     ["addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge],
                     ["link", "set", self.bridge, "up"]):
            self.run_tool(["ip", "-n", self.host, *args])
        self.bridge_index = self._index_of(self.bridge)

    def _index_of(self, name: str) -> int:
        out = subprocess.run(["ip", "-j", "-n", self.host, "link", "show", name], capture_output=True, text=True)
        return int(json.loads(out.stdout)[0]["ifindex"])

    def attach(self, i: int) -> None:
        path, sock = netns.create(self.sandbox_netns(i), with_socket=True)
        self.made.add(i)
        self._before_links(path)
        inside = Netlink(sock)  # type: ignore[arg-type]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                peer = (_ifinfo(self.EXPECTED_ETH0_INDEX) + _attr(IFLA_IFNAME, b"eth0\0")
                        + _attr(IFLA_ADDRESS, bytes.fromhex(self.mac(i).replace(":", "")))
                        + _attr(IFLA_NET_NS_FD, struct.pack("=I", fd)))
                info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
                body = (_ifinfo(up=True) + _attr(IFLA_IFNAME, f"bv{i}".encode() + b"\0")
                        + _attr(IFLA_MASTER, struct.pack("=I", self.bridge_index)) + _attr(IFLA_LINKINFO, info))
                self.hostnl.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)
            finally:
                os.close(fd)
            eth0 = self.EXPECTED_ETH0_INDEX
            inside.request(RTM_SETLINK, 0, _ifinfo(1, up=True))
            no_addrgen = _attr(AF_INET6, _attr(IFLA_INET6_ADDR_GEN_MODE, b"\x01"))
            inside.request(RTM_SETLINK, 0, _ifinfo(eth0) + _attr(IFLA_AF_SPEC, no_addrgen))  # before up: see raw
            inside.request(RTM_SETLINK, 0, _ifinfo(eth0, up=True))
            ip = socket.inet_aton(self.address(i))
            ifa = struct.pack("=BBBBI", AF_INET, self.subnet.prefixlen, 0, 0, eth0)
            inside.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, ifa + _attr(IFA_LOCAL, ip) + _attr(IFA_ADDRESS, ip))
            if self.subnet6 is not None:
                self._add_address6(inside, eth0, i)
            self._add_default_route(inside, AF_INET, socket.inet_aton(self.gateway))
            if self.subnet6 is not None:
                self._add_default_route(inside, AF_INET6, socket.inet_pton(socket.AF_INET6, self.gateway6))
        finally:
            inside.close()

    def _before_links(self, path: Path) -> None:
        """A step in the new namespace before its links exist (none here)."""

    def _add_address6(self, inside: Netlink, index: int, i: int) -> None:
        """As overlays adds one: IFA_ADDRESS alone, without duplicate address detection."""
        assert self.subnet6 is not None
        ifa = struct.pack("=BBBBI", AF_INET6, self.subnet6.prefixlen, IFA_F_NODAD, 0, index)
        ip = _attr(IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, self.address6(i)))
        inside.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, ifa + ip)

    def _add_default_route(self, inside: Netlink, family: int, gateway: bytes) -> None:
        rtm = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 254, 4, 0, 1, 0)  # main table, static, unicast
        inside.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, rtm + _attr(RTA_GATEWAY, gateway))

    def close(self) -> None:
        Base.close(self)
        self.hostnl.close()


class PackedDualSubject(PackedSubject):
    """``packed`` on a dual-stack bridge: the kernel's own cost of the IPv6 address and route as well.

    The host namespace stays quiet for new links (its veths are bridge ports) but the bridge itself
    has IPv6, without a link-local address, and holds the IPv6 gateway, as overlays' bridge does.
    """

    name = "packed-dual"
    subnet6 = ipaddress.IPv6Network(SUBNET6)

    def prepare(self) -> None:
        netns.write_sysctl(self.host_path, "net.ipv6.conf.default.disable_ipv6", "1")
        br, gateway6 = self.bridge, f"{self.gateway6}/{ipaddress.IPv6Network(SUBNET6).prefixlen}"
        for args in (["link", "add", br, "type", "bridge"], ["link", "set", br, "addrgenmode", "none"],
                     ["netns", "exec", self.host, "sysctl", "-qw", f"net.ipv6.conf.{br}.disable_ipv6=0"],
                     ["addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", br],
                     ["addr", "add", gateway6, "dev", br, "nodad"],
                     ["link", "set", br, "up"]):
            self.run_tool(["ip", *args] if args[0] == "netns" else ["ip", "-n", self.host, *args])
        self.bridge_index = self._index_of(br)


class PackedDualQuerierSubject(PackedDualSubject):
    """``packed-dual`` with the bridge as MLD querier (link-local fe80::1, 1 s response interval).

    Once a querier exists, a snooping bridge sends MLDv1 reports to its router ports only, not to
    every port (measured: MLDv2 reports are still flooded), so each sandbox speaks MLDv1
    (``force_mld_version`` 1, set in its namespace before eth0 exists); the sandboxes answer the
    querier's queries, which keeps their groups known to the bridge.
    """

    name = "packed-dual-querier"

    def prepare(self) -> None:
        super().prepare()
        for args in (["link", "set", self.bridge, "type", "bridge", "mcast_query_response_interval", "100"],
                     ["link", "set", self.bridge, "type", "bridge", "mcast_querier", "1"],
                     ["addr", "add", "fe80::1/64", "dev", self.bridge, "nodad"]):
            self.run_tool(["ip", "-n", self.host, *args])
        time.sleep(1.2)  # a querier counts as present one response interval after it starts

    def _before_links(self, path: Path) -> None:
        netns.write_sysctl(path, "net.ipv6.conf.default.force_mld_version", "1")


class PackedDualNoMldSubject(PackedDualSubject):
    """``packed-dual`` with MLD reports not bridged between ports (an nft bridge-family rule of our own).

    A bridge without a querier floods every report to every port, and no one on it routes
    multicast, so a report is of use to nobody but the bridge's snooping, which still sees it.
    """

    name = "packed-dual-nomld"
    RULES = ("table bridge v6b_nomld {\n chain forward { type filter hook forward priority filter; policy accept;\n"
             "  icmpv6 type { mld-listener-report, mld2-listener-report } drop\n }\n}\n")

    def prepare(self) -> None:
        super().prepare()
        self.run_tool(["ip", "netns", "exec", self.host, "nft", "-f", "-"], stdin=self.RULES.encode())


# -- one `ip` process per step ------------------------------------------------


class IpSubject(Base):
    name = "ip"
    execs_tools = True

    def ip(self, *args: str) -> None:
        self.run_tool(["ip", *args])

    def prepare(self) -> None:
        self.quiet_ipv6()
        h = ("-n", self.host)
        self.ip(*h, "link", "add", self.bridge, "type", "bridge")
        self.ip(*h, "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        self.ip(*h, "link", "set", self.bridge, "up")

    def attach(self, i: int) -> None:
        ns, veth, h = self.sandbox_netns(i), f"iv{i}", ("-n", self.host)
        addr = f"{self.address(i)}/{self.subnet.prefixlen}"
        self.ip("netns", "add", ns)
        self.made.add(i)
        self.ip(*h, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "address", self.mac(i), "netns", ns)
        self.ip(*h, "link", "set", veth, "master", self.bridge, "up")
        self.ip("-n", ns, "link", "set", "lo", "up")
        self.ip("-n", ns, "link", "set", "eth0", "addrgenmode", "none")  # before up: see raw
        self.ip("-n", ns, "link", "set", "eth0", "up")
        self.ip("-n", ns, "addr", "add", addr, "dev", "eth0")
        self.ip("-n", ns, "route", "add", "default", "via", self.gateway)

    def detach(self, i: int) -> None:
        self.ip("netns", "del", self.sandbox_netns(i))
        self.made.discard(i)


# -- exec'd plugins: CNI and netavark -------------------------------------------


class ExecSubject(Base):
    """Plugins exec'd from a thread that lives in the host namespace (children inherit it)."""

    execs_tools = True

    def __init__(self, host: str, subnet: str, workdir: Path) -> None:
        super().__init__(host, subnet, workdir)
        self.thread = netns.NsThread(self.host_path)

    def _spawn(self, argv: list[str], stdin: bytes | None, env: dict[str, str] | None) -> Done:
        return self.thread.call(lambda: subprocess.run(argv, input=stdin, env=env, capture_output=True))

    def close(self) -> None:
        super().close()
        self.thread.close()


class CniSubject(ExecSubject):
    name = "cni"
    bridge = "cni0"

    def prepare(self) -> None:
        self.bridge_conf = json.dumps({
            "cniVersion": "1.0.0", "name": NETWORK, "type": "bridge", "bridge": self.bridge,
            "isGateway": True, "ipMasq": False,  # overlays has no masquerade yet: compare like with like
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(self.subnet), "gateway": self.gateway}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(self.workdir / "host-local"),
            },
        }).encode()
        self.loopback_conf = json.dumps({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}).encode()

    def _plugin(self, plugin: str, command: str, i: int, ifname: str, conf: bytes) -> bytes:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"bench{i:08d}",
            "CNI_NETNS": str(netns.path_of(self.sandbox_netns(i))),
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(CNI_PATH),
        }
        return self.run_tool([str(CNI_PATH / plugin)], conf, env)

    def attach(self, i: int) -> None:
        netns.create(self.sandbox_netns(i))  # the runtime makes the namespace, the plugins fill it
        self.made.add(i)
        self._plugin("loopback", "ADD", i, "lo", self.loopback_conf)
        self._plugin("bridge", "ADD", i, "eth0", self.bridge_conf)

    def detach(self, i: int) -> None:
        self._plugin("bridge", "DEL", i, "eth0", self.bridge_conf)
        self._plugin("loopback", "DEL", i, "lo", self.loopback_conf)
        netns.delete(self.sandbox_netns(i))
        self.made.discard(i)


class NetavarkSubject(ExecSubject):
    name = "netavark"
    bridge = "nvbr0"

    def prepare(self) -> None:
        self.config = self.workdir / "netavark"
        self.config.mkdir(parents=True, exist_ok=True)
        # Netavark 1.4 has firewall drivers iptables and firewalld only; iptables acts on the
        # namespace it runs in, ours. The harness checks that the root firewall is unchanged.
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "NETAVARK_FW": "iptables"}
        self.info = {
            "name": NETWORK, "id": "b" * 64, "driver": "bridge", "network_interface": self.bridge,
            "subnets": [{"subnet": str(self.subnet), "gateway": self.gateway}],
            "ipv6_enabled": False, "internal": False, "dns_enabled": False,
            "ipam_options": {"driver": "host-local"},
        }

    def _options(self, i: int) -> bytes:
        return json.dumps(self._options_doc(i)).encode()

    def _options_doc(self, i: int) -> dict[str, Any]:
        return {
            "container_id": f"{i:064x}",
            "container_name": f"s{i}",
            "networks": {
                NETWORK: {"interface_name": "eth0", "static_ips": [self.address(i)], "static_mac": self.mac(i)},
            },
            "network_info": {NETWORK: self.info},
        }

    def _run(self, command: str, i: int) -> None:
        path = str(netns.path_of(self.sandbox_netns(i)))
        self.run_tool([str(NETAVARK), "--config", str(self.config), command, path], self._options(i), self.env)

    def attach(self, i: int) -> None:
        netns.create(self.sandbox_netns(i))  # podman makes the namespace, netavark fills it
        self.made.add(i)
        self._run("setup", i)

    def detach(self, i: int) -> None:
        self._run("teardown", i)
        netns.delete(self.sandbox_netns(i))
        self.made.discard(i)


# -- the same, each sandbox publishing one port ------------------------------------


class OnePort(Base):
    """Sandbox i publishes PORT_BASE + i/tcp to its port 80; the check connects through it."""

    def host_port(self, i: int) -> int:
        return PORT_BASE + i

    def verify_sandbox(self, i: int) -> bool:
        """A connection from the host to the gateway address and the published port reaches sandbox i."""
        sandbox = netns.path_of(self.sandbox_netns(i))

        def listen() -> socket.socket:
            netns.setns(sandbox)
            return socket.create_server(("0.0.0.0", CONTAINER_PORT))

        def connect() -> None:
            netns.setns(self.host_path)
            socket.create_connection((self.gateway, self.host_port(i)), timeout=3).close()

        listener = netns.in_thread(listen)
        try:
            listener.settimeout(3)
            netns.in_thread(connect)
            listener.accept()[0].close()  # it arrived here, not at some other listener
            return True
        except OSError:
            return False
        finally:
            listener.close()


class OverlaysPortSubject(OnePort, OverlaysSubject):
    name = "overlays+port"

    def attach(self, i: int) -> None:
        from overlays import EndpointRequest, PortMapping, SandboxSpec

        port = PortMapping(host_port=self.host_port(i), container_port=CONTAINER_PORT)
        self.engine.create_sandbox(SandboxSpec.parse(f"s{i}", [EndpointRequest.parse(NETWORK)], ports=[port]))
        self.made.add(i)


class CniPortmapSubject(OnePort, CniSubject):
    name = "cni+portmap"

    def prepare(self) -> None:
        super().prepare()
        self.results: dict[int, Any] = {}  # the chain's result per sandbox: libcni caches it for DEL

    def _portmap_conf(self, i: int) -> bytes:
        return json.dumps({
            "cniVersion": "1.0.0", "name": NETWORK, "type": "portmap", "capabilities": {"portMappings": True},
            "runtimeConfig": {"portMappings": [
                {"hostPort": self.host_port(i), "containerPort": CONTAINER_PORT, "protocol": "tcp"}]},
            "prevResult": self.results[i],
        }).encode()

    def attach(self, i: int) -> None:
        netns.create(self.sandbox_netns(i))
        self.made.add(i)
        self._plugin("loopback", "ADD", i, "lo", self.loopback_conf)
        self.results[i] = json.loads(self._plugin("bridge", "ADD", i, "eth0", self.bridge_conf))
        self._plugin("portmap", "ADD", i, "eth0", self._portmap_conf(i))

    def detach(self, i: int) -> None:
        self._plugin("portmap", "DEL", i, "eth0", self._portmap_conf(i))
        self.results.pop(i)
        super().detach(i)


class NetavarkPortSubject(OnePort, NetavarkSubject):
    name = "netavark+port"

    def _options_doc(self, i: int) -> dict[str, Any]:
        mapping = {"host_ip": "", "container_port": CONTAINER_PORT, "host_port": self.host_port(i), "range": 1,
                   "protocol": "tcp"}
        return super()._options_doc(i) | {"port_mappings": [mapping]}


SUBJECTS: dict[str, type[Base]] = {
    s.name: s for s in (OverlaysSubject, OverlaysNoDnsSubject, OverlaysDualSubject, RawSubject, PackedSubject,
                        PackedDualSubject, PackedDualQuerierSubject, PackedDualNoMldSubject, IpSubject,
                        CniSubject, NetavarkSubject,
                        OverlaysPortSubject, CniPortmapSubject, NetavarkPortSubject)
}


def available(name: str) -> str | None:
    """None if the subject can run here, else why not."""
    needs = {"cni": [CNI_PATH / "bridge"], "cni+portmap": [CNI_PATH / "bridge", CNI_PATH / "portmap"],
             "netavark": [NETAVARK], "netavark+port": [NETAVARK]}
    for path in needs.get(name, []):
        if not path.exists():
            return f"{path} missing (run scripts/install-bench-deps)"
    return None
