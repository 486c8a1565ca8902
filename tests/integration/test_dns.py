"""The DNS server in namespaces: a host, sandboxes made here, an upstream dnsmasq in a peer namespace.

The server runs in a thread of the test process, against a host namespace of the test;
queries are sent from sockets made inside the sandbox namespaces (to 127.0.0.11, where
the server listens in each of them), or by real resolvers (``getent``) started through
the mount-namespace helper and through ``ip netns exec``.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from overlays.dns import DnsServer, Registration
from overlays.errors import Conflict, InvalidSpec, NotFound
from overlays.kernel import dnsctl, mountns, netns, sockets
from overlays.kernel.dnsctl import Record

from .conftest import sh, unique

PEER_IP = "10.250.0.2"
HOST_IP = "10.250.0.1"
QUIET_IP = "10.250.0.3"  # on the peer, with nothing listening on port 53: refuses at once
DNSMASQ = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=",
           "--user=root", "--cache-size=0"]
BIG = ",".join(c * 200 for c in "abcd")  # one TXT record of four 200-byte strings: too big for plain UDP


def start(netns_name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    """A daemon in a namespace, waited for until it listens on 53 there."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns_name, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    for _ in range(200):
        if ":53 " in sh(netns_name, "ss", "-Hlun").stdout:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"{argv[0]} exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    if proc.stderr:
        proc.stderr.close()
    raise AssertionError(f"{argv[0]} did not start listening in {netns_name}")


def ask(netns_name: str, name: str, qtype: str = "A", tcp: bool = False, server: str = "127.0.0.11",
        timeout: float = 5) -> DNSRecord:
    """One query from inside a namespace, as its resolver would send it."""
    query = DNSRecord.question(name, qtype)
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    sock = netns.run_in(netns.path_of(netns_name), lambda: socket.socket(socket.AF_INET, kind))
    with sock:
        sock.settimeout(timeout)
        sock.connect((server, 53))
        data = bytes(query.pack())
        if tcp:
            sock.sendall(len(data).to_bytes(2, "big") + data)
            raw = b""
            while len(raw) < 2 or len(raw) < 2 + int.from_bytes(raw[:2], "big"):
                chunk = sock.recv(65537)
                assert chunk, "connection closed before the answer"
                raw += chunk
            answer = raw[2:]
        else:
            sock.send(data)
            answer = sock.recv(65535)
    reply = DNSRecord.parse(answer)
    assert reply.header.id == query.header.id
    return reply


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA, QTYPE.PTR)]


@dataclass
class Lab:
    host: str
    state_dir: Path
    make_netns: Callable[[str], str]
    servers: list[tuple[DnsServer, threading.Thread]] = field(default_factory=list)
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    etc_dirs: list[str] = field(default_factory=list)

    @property
    def control(self) -> Path:
        return dnsctl.socket_path(self.state_dir, self.host)

    def serve(self, registrations: list[Registration] | None = None, forward_timeout: float = 2.0,
              sweep_every: float = 5.0) -> DnsServer:
        server = DnsServer(self.control, self.host, registrations or [], forward_timeout=forward_timeout,
                           sweep_every=sweep_every)
        thread = threading.Thread(target=server.run, name="dns-test", daemon=True)
        thread.start()
        self.servers.append((server, thread))
        return server

    def stop(self, server: DnsServer) -> None:
        for pair in list(self.servers):
            if pair[0] is server:
                server.stop()
                pair[1].join(timeout=10)
                server.close()
                self.servers.remove(pair)

    def sandbox(self, label: str) -> str:
        name = self.make_netns(label)
        self.etc_dirs.append(name)  # the server links its resolv.conf there while it serves it
        return name

    def etc(self, netns_name: str, filename: str, text: str) -> Path:
        self.etc_dirs.append(netns_name)
        return mountns.write_etc_file(netns_name, filename, text)

    def daemon(self, netns_name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = start(netns_name, argv)
        self.daemons.append(proc)
        return proc

    def close(self) -> None:
        for server, _ in list(self.servers):
            self.stop(server)
        for proc in self.daemons:
            proc.kill()  # our own child, by its pid
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
        for name in self.etc_dirs:
            mountns.remove_etc_dir(name)


@pytest.fixture
def lab(host: str, state_dir: Path, make_netns: Callable[[str], str]) -> Iterator[Lab]:
    """A host with a peer namespace (the outside world) holding an upstream dnsmasq, its resolv.conf naming it."""
    lab = Lab(host, state_dir, make_netns)
    try:
        peer = make_netns("p")
        up, down = unique("u"), unique("d")
        subprocess.run(["ip", "-n", host, "link", "add", up, "type", "veth", "peer", "name", down, "netns", peer],
                       check=True)
        subprocess.run(["ip", "-n", host, "addr", "add", f"{HOST_IP}/24", "dev", up], check=True)
        subprocess.run(["ip", "-n", peer, "addr", "add", f"{PEER_IP}/24", "dev", down], check=True)
        subprocess.run(["ip", "-n", peer, "addr", "add", f"{QUIET_IP}/24", "dev", down], check=True)
        for ns, dev in ((host, up), (peer, down)):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        lab.daemon(peer, [*DNSMASQ, f"--listen-address={PEER_IP}", "--bind-interfaces",
                          "--local=/#/", "--address=/outside.test/192.0.2.7",
                          "--ptr-record=7.2.0.192.in-addr.arpa,outside.test",
                          f"--txt-record=big.test,{BIG}"])
        lab.etc(host, "resolv.conf", f"nameserver {PEER_IP}\n")
        yield lab
    finally:
        lab.close()


def front_and_back(lab: Lab) -> tuple[str, str, str]:
    """Three sandboxes: ``a`` on front and back, ``b`` on front only, ``c`` on back only."""
    a, b, c = lab.sandbox("a"), lab.sandbox("b"), lab.sandbox("c")
    lab.serve([
        Registration("a", str(netns.path_of(a)), (Record("front", "a", ("10.1.0.2",), ("web",)),
                                                  Record("back", "a", ("10.2.0.2",), ("api",)))),
        Registration("b", str(netns.path_of(b)), (Record("front", "b", ("10.1.0.3",), ("web", "b-host")),)),
        Registration("c", str(netns.path_of(c)), (Record("back", "c", ("10.2.0.3",), ("db",)),)),
    ])
    return a, b, c


def test_names_and_aliases_resolve_from_sandboxes_that_share_a_network_only(lab: Lab) -> None:
    a, b, c = front_and_back(lab)
    assert addresses(ask(b, "web")) == ["10.1.0.2", "10.1.0.3"]  # one alias, two sandboxes: both
    assert addresses(ask(b, "b-host")) == ["10.1.0.3"]
    assert addresses(ask(a, "db")) == ["10.2.0.3"]
    assert addresses(ask(a, "c.back")) == ["10.2.0.3"]
    assert addresses(ask(c, "api")) == ["10.2.0.2"]
    for asker, name in ((b, "db"), (b, "c"), (b, "api"), (c, "web"), (c, "b")):
        reply = ask(asker, name)  # not on its networks: forwarded, and the upstream knows no such name
        assert reply.header.rcode == RCODE.NXDOMAIN and reply.rr == [], f"{name} answered to {asker}"
    assert addresses(ask(a, "web", tcp=True)) == ["10.1.0.2", "10.1.0.3"]


def test_ptr_answers_name_dot_network_on_shared_networks_only(lab: Lab) -> None:
    a, b, c = front_and_back(lab)
    assert addresses(ask(b, "2.0.1.10.in-addr.arpa", "PTR")) == ["a.front."]
    assert addresses(ask(c, "2.0.2.10.in-addr.arpa", "PTR")) == ["a.back."]
    assert ask(b, "3.0.2.10.in-addr.arpa", "PTR").header.rcode == RCODE.NXDOMAIN  # c's, not b's business
    assert addresses(ask(a, "7.2.0.192.in-addr.arpa", "PTR")) == ["outside.test."]  # forwarded


def test_outside_names_are_forwarded_to_the_hosts_upstream_over_udp_and_tcp(lab: Lab) -> None:
    a, _, _ = front_and_back(lab)
    assert addresses(ask(a, "outside.test")) == ["192.0.2.7"]
    assert addresses(ask(a, "www.outside.test", tcp=True)) == ["192.0.2.7"]
    truncated = ask(a, "big.test", "TXT")
    assert truncated.header.tc == 1  # dnsmasq's own truncation, passed through unchanged
    whole = ask(a, "big.test", "TXT", tcp=True)
    assert whole.header.tc == 0 and BIG.split(",")[0] in str(whole.rr[0].rdata)


def test_getent_resolves_through_the_mount_namespace_helper_and_ip_netns_exec(lab: Lab) -> None:
    a, b, _ = front_and_back(lab)
    before = Path("/etc/resolv.conf").read_bytes()
    link = mountns.etc_dir(a)
    assert link.is_symlink() and (link / "resolv.conf").read_text().count("nameserver 127.0.0.11") == 1
    proc = mountns.spawn(netns.path_of(a), ["getent", "hosts", "db", "outside.test"], mountns.etc_binds(a),
                         stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert out.decode().split() == ["10.2.0.3", "db", "192.0.2.7", "outside.test"]
    assert sh(a, "getent", "hosts", "web").stdout.split() == ["10.1.0.2", "web", "10.1.0.3", "web"]
    assert sh(a, "getent", "hosts", "10.2.0.3").stdout.split() == ["10.2.0.3", "c.back"]
    assert Path("/etc/resolv.conf").read_bytes() == before
    assert "/etc/resolv.conf" not in Path("/proc/self/mountinfo").read_text()  # nothing leaked into our mounts
    lab.servers[0][0].submit(lambda: lab.servers[0][0].unregister("b")).result(5)
    assert not mountns.etc_dir(b).exists()  # not served any more: its processes see the host's resolv.conf
    assert sh(b, "getent", "hosts", "web", check=False).returncode != 0


def test_internal_networks_do_not_forward(lab: Lab) -> None:
    inner, mixed = lab.sandbox("i"), lab.sandbox("m")
    server = lab.serve([
        Registration("i", str(netns.path_of(inner)), (Record("sealed", "i", ("10.9.0.2",), internal=True),)),
        Registration("m", str(netns.path_of(mixed)), (Record("sealed", "m", ("10.9.0.3",), internal=True),
                                                      Record("open", "m", ("10.8.0.3",)))),
    ])
    reply = ask(inner, "outside.test")
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.rr == []
    assert addresses(ask(inner, "m")) == ["10.9.0.3"]  # its own network's names still resolve
    assert server.status()["forwarded"] == 0
    assert addresses(ask(mixed, "outside.test")) == ["192.0.2.7"]  # one network with a way out: forwards


def test_a_dns_server_on_the_hosts_port_53_breaks_nothing_and_a_loopback_stub_is_used(lab: Lab) -> None:
    # A dnsmasq on 0.0.0.0:53 of the host namespace, forwarding to the peer: the host's "stub resolver".
    lab.daemon(lab.host, [*DNSMASQ, f"--server={PEER_IP}", "--address=/host-only.test/192.0.2.99"])
    lab.etc(lab.host, "resolv.conf", "nameserver 127.0.0.1\n")
    a, _, _ = front_and_back(lab)
    assert addresses(ask(a, "web")) == ["10.1.0.2", "10.1.0.3"]
    assert addresses(ask(a, "host-only.test")) == ["192.0.2.99"]  # through the host's loopback stub
    assert addresses(ask(a, "outside.test")) == ["192.0.2.7"]
    assert addresses(ask(lab.host, "host-only.test", server=HOST_IP)) == ["192.0.2.99"]  # it still serves


def test_names_appear_when_register_returns_and_vanish_when_unregister_returns(lab: Lab) -> None:
    lab.serve()
    a, b = lab.sandbox("a"), lab.sandbox("b")
    with dnsctl.Client(lab.control) as client:
        client.register("b", netns.path_of(b), [Record("front", "b", ("10.1.0.3",))])
        client.register("a", netns.path_of(a), [Record("front", "a", ("10.1.0.2",), ("web",))])
        assert addresses(ask(b, "web")) == ["10.1.0.2"]
        client.register("a", netns.path_of(a), [Record("back", "a", ("10.2.0.2",), ("web",))])  # moved networks
        assert ask(b, "web").header.rcode == RCODE.NXDOMAIN
        assert addresses(ask(a, "web")) == ["10.2.0.2"]  # same namespace: same sockets, new scope
        client.register("r", None, [Record("front", "r", ("10.1.0.40",), ("web",))])  # another host's sandbox
        assert addresses(ask(b, "web")) == ["10.1.0.40"]
        client.unregister("a")
        client.unregister("a")
        with pytest.raises(ConnectionRefusedError):  # nothing listens in a's namespace any more
            ask(a, "web")
        status = client.status()
        assert status["registered"] == ["b", "r"] and status["local"] == ["b"]


def test_sockets_handed_over_by_the_caller_are_served(lab: Lab) -> None:
    lab.serve()
    a = lab.sandbox("a")
    udp, tcp = sockets.listening_pair(netns.path_of(a), "127.0.0.11")
    with dnsctl.Client(lab.control) as client, udp, tcp:
        client.register("a", netns.path_of(a), [Record("front", "a", ("10.1.0.2",))], sockets=(udp, tcp))
    assert addresses(ask(a, "a")) == ["10.1.0.2"]  # our copies are closed: the server's serve
    assert addresses(ask(a, "a", tcp=True)) == ["10.1.0.2"]


def test_a_restarted_server_serves_the_sandboxes_it_is_given(lab: Lab) -> None:
    _, b, _ = front_and_back(lab)
    lab.stop(lab.servers[0][0])
    with pytest.raises(ConnectionRefusedError):
        ask(b, "web")
    gone = "ot-dns-no-such-ns"
    lab.serve([Registration("b", str(netns.path_of(b)), (Record("front", "b", ("10.1.0.3",), ("web",)),)),
               Registration("x", str(netns.path_of(gone)), (Record("front", "x", ("10.1.0.9",)),))])
    assert addresses(ask(b, "web")) == ["10.1.0.3"]  # x's namespace is gone: skipped, the rest served


def test_bad_requests_change_nothing(lab: Lab) -> None:
    server = lab.serve()
    a = lab.sandbox("a")
    with dnsctl.Client(lab.control) as client:
        client.register("a", netns.path_of(a), [Record("front", "a", ("10.1.0.2",))])
        with pytest.raises(NotFound, match=r"sandbox z: network namespace .* does not exist"):
            client.register("z", "/run/netns/ot-dns-no-such-ns", [])
        with pytest.raises(InvalidSpec, match="DNS record a on front"):
            client.register("a", netns.path_of(a), [Record("front", "a", ("10.1.0.999",))])
        with pytest.raises(InvalidSpec, match="unknown DNS control operation"):
            client.call({"op": "explode"})
        assert addresses(ask(a, "a")) == ["10.1.0.2"]
        assert server.status()["registered"] == ["a"]
    with pytest.raises(Conflict, match="already runs"):
        DnsServer(lab.control, lab.host)


def test_a_failing_upstream_is_skipped_and_a_slow_one_blocks_no_one(lab: Lab) -> None:
    a, s, d = lab.sandbox("a"), lab.sandbox("s"), lab.sandbox("d")
    lab.serve([
        Registration("a", str(netns.path_of(a)), (Record("two", "a", ("10.6.0.2",), upstreams=(QUIET_IP, PEER_IP)),)),
        Registration("s", str(netns.path_of(s)), (Record("slow", "s", ("10.7.0.2",), upstreams=("10.250.0.77",)),)),
        Registration("d", str(netns.path_of(d)), (Record("dead", "d", ("10.5.0.2",), upstreams=(QUIET_IP,)),)),
    ], forward_timeout=3.0)
    assert addresses(ask(a, "outside.test")) == ["192.0.2.7"]  # the first refused: the second answered
    assert ask(d, "outside.test").header.rcode == RCODE.SERVFAIL  # every upstream refused
    # 10.250.0.77 answers nothing (no one has it): the query waits there while others are answered.
    pending = netns.run_in(netns.path_of(s), lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with pending:
        pending.connect(("127.0.0.11", 53))
        pending.send(bytes(DNSRecord.question("outside.test").pack()))
        assert addresses(ask(s, "s")) == ["10.7.0.2"]
        assert addresses(ask(a, "outside.test")) == ["192.0.2.7"]
        pending.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            pending.recv(512)
            pytest.fail("the slow query was answered before its upstream timed out")
        pending.settimeout(10)
        assert DNSRecord.parse(pending.recv(512)).header.rcode == RCODE.SERVFAIL  # after the timeout


def poll(what: str, ok: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for a change the server makes on its own schedule (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def test_a_namespace_deleted_without_unregister_is_let_go(lab: Lab) -> None:
    server = lab.serve(sweep_every=0.1)
    kept = lab.sandbox("k")
    doomed = unique("x")
    subprocess.run(["ip", "netns", "add", doomed], check=True)
    try:
        with dnsctl.Client(lab.control) as client:
            client.register("k", netns.path_of(kept), [Record("n", "k", ("10.1.0.2",))])
            client.register("x", netns.path_of(doomed), [Record("n", "x", ("10.1.0.3",))])
            assert client.status()["local"] == ["k", "x"]
    finally:
        subprocess.run(["ip", "netns", "del", doomed], check=True)
    # Our sockets hold the namespace alive: the server must notice its name is gone and close them.
    poll("the deleted namespace let go", lambda: server.submit(server.status).result(5)["local"] == ["k"])
    assert addresses(ask(kept, "k")) == ["10.1.0.2"]
    assert ask(kept, "x").header.rcode == RCODE.NXDOMAIN


def test_work_from_another_thread_runs_on_the_servers_thread(lab: Lab) -> None:
    server = lab.serve()
    a = lab.sandbox("a")
    server.submit(lambda: server.register("a", str(netns.path_of(a)), [Record("n", "a", ("10.1.0.2",))])).result(5)
    assert addresses(ask(a, "a")) == ["10.1.0.2"]
    failed = server.submit(lambda: server.register("z", "/run/netns/ot-dns-no-such-ns", []))
    with pytest.raises(NotFound):
        failed.result(5)


def test_the_hosts_resolv_conf_is_read_again_when_it_changes(lab: Lab) -> None:
    lab.etc(lab.host, "resolv.conf", f"nameserver {QUIET_IP}\n")
    a = lab.sandbox("a")
    lab.serve([Registration("a", str(netns.path_of(a)), (Record("n", "a", ("10.1.0.2",)),))])
    assert ask(a, "outside.test").header.rcode == RCODE.SERVFAIL  # that upstream refuses
    lab.etc(lab.host, "resolv.conf", f"nameserver {PEER_IP}\n")
    poll("the new upstream used", lambda: addresses(ask(a, "outside.test")) == ["192.0.2.7"])


def test_calls_that_do_not_wait_are_collected_in_order_and_a_restart_is_survived(lab: Lab) -> None:
    server = lab.serve()
    a, b = lab.sandbox("a"), lab.sandbox("b")
    with dnsctl.Client(lab.control) as client:
        client.register("a", netns.path_of(a), [Record("n", "a", ("10.1.0.2",))], wait=False)
        client.register("z", "/run/netns/ot-dns-no-such-ns", [], wait=False)
        client.register("b", netns.path_of(b), [Record("n", "b", ("10.1.0.3",))], wait=False)
        with pytest.raises(NotFound, match="sandbox z"):
            client.wait()  # all three answered; the one refusal raised
        assert client.status()["local"] == ["a", "b"]
        lab.stop(server)
        lab.serve()  # a new server: the client's connection is stale, and is opened again
        client.register("a", netns.path_of(a), [Record("n", "a", ("10.1.0.2",))])
        assert addresses(ask(a, "a")) == ["10.1.0.2"]
