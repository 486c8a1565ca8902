"""Two small BPF programs, written out as instructions: DNS steering (sk_lookup) and an MLD report filter (tc).

Design note (DNS). Docker's resolver and ours answer on 127.0.0.11:53 inside each sandbox's
namespace. A socket bound there would own port 53 of that namespace: a DNS server that
the sandbox runs itself (dnsmasq, CoreDNS, anything binding 0.0.0.0:53) would fail with
"address in use", for UDP without SO_REUSEADDR on both sides and for TCP always. Docker
avoids it with NAT rules in every container (iptables DNAT to a random port, so conntrack
then tracks all of the container's traffic); we avoid it with an ``sk_lookup`` program
(Linux 5.9), attached to the sandbox's namespace: when the kernel looks up the socket
for a UDP datagram or a TCP SYN to 127.0.0.11:53, the program hands it ours (bound to
127.0.0.11 on a port of the kernel's choosing), and every other lookup goes on as usual
at the cost of a few instructions. Nothing holds port 53, nothing else is tracked.

The program (25 instructions, written out below) reads the lookup's local port and
address, picks the UDP or the TCP socket from a two-slot SOCKMAP by the protocol, and
assigns it. One program and map per sandbox (the map is the program's constant, and an
sk_lookup program cannot tell namespaces apart): ~0.3 ms of the server's time, two
thirds of it (``prepare``: the map, the program's load) spent ahead, in idle time. The
program lives as long as the link's file descriptor, which the server holds with the
sockets; the namespace going detaches it.

TCP answers leave from 127.0.0.11:53 by themselves (an accepted connection has the
SYN's addresses); a UDP answer would leave from our port, which a connected resolver
(glibc's) drops, so the server sends UDP answers through a raw socket with the source
port set to 53 (``udp_reply``).

Design note (MLD). Each static IPv6 address makes its sandbox join the address's
solicited-node group and send two MLDv2 reports (to ff02::16, MAC 33:33:00:00:00:16). A
bridge without an MLD querier floods every report to every port: the i-th sandbox's
reports reach i others, a million frames for 1000 sandboxes, which made a dual-stack
attach ~1.5x the cost of an IPv4 one (docs/benchmarks.md). No one on a sandbox bridge
routes multicast, and without a querier the bridge floods all multicast whatever it
learns from reports, so dropping them where they enter the bridge changes nothing else.
The kernel here has no tc ``gact`` action (``u32 ... action drop``) and its loadable
modules are out of reach; a ``cls_bpf`` filter in direct-action mode is built in. So
``mld_filter`` loads (once per process) a 12-instruction SCHED_CLS program that answers
TC_ACT_SHOT for a frame to 33:33:00:00:00:16 and TC_ACT_OK for everything else, and
tc.py hangs it on the ingress of each host-side veth of a dual-stack endpoint; the filter
holds the program, the veth's deletion removes both.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct
from pathlib import Path

from overlays.errors import KernelError

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}.get(platform.machine())
_ATTR_SIZE = 128
BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, BPF_PROG_LOAD, BPF_LINK_CREATE = 0, 2, 5, 28
BPF_MAP_TYPE_SOCKMAP = 15
BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_SK_LOOKUP = 3, 30
BPF_SK_LOOKUP = 36
BPF_PSEUDO_MAP_FD = 1
SK_PASS = 1
FN_MAP_LOOKUP_ELEM, FN_SK_RELEASE, FN_SK_ASSIGN = 1, 86, 124
# struct bpf_sk_lookup (linux/bpf.h): the offsets the program reads
CTX_PROTOCOL, CTX_LOCAL_IP4, CTX_LOCAL_PORT = 12, 40, 60
R0, R1, R2, R3, R4, R6, R7, R10 = 0, 1, 2, 3, 4, 6, 7, 10
# struct __sk_buff (linux/bpf.h): where a tc program finds the frame
SKB_DATA, SKB_DATA_END = 76, 80
TC_ACT_OK, TC_ACT_SHOT = 0, 2
MLDV2_ROUTERS_MAC = (0x00003333, 0x1600)  # 33:33:00:00 and 00:16, as little-endian loads read them
UDP_SLOT, TCP_SLOT = 0, 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def available() -> bool:
    return _NR_BPF is not None


def _bpf(cmd: int, attr: bytes, what: str, netns: str | None, obj: str = "for the DNS server's sockets") -> int:
    buf = ctypes.create_string_buffer(attr, _ATTR_SIZE)
    ret = int(_libc.syscall(_NR_BPF, cmd, buf, _ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise KernelError(what, obj, netns, os.strerror(err), errno=err)
    return ret


def _load(prog_type: int, code: bytes, name: bytes, attach_type: int, what: str, where: str | None, obj: str) -> int:
    insns, license_ = ctypes.create_string_buffer(code, len(code)), ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQIIQII16sII", prog_type, len(code) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license_), 0, 0, 0, 0, 0, name, 0, attach_type)
    return _bpf(BPF_PROG_LOAD, attr, what, where, obj)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def _program(map_fd: int, address: str, port: int) -> bytes:
    """if local port == ``port`` and local ip == ``address``: assign map[tcp ? 1 : 0]; always pass."""
    ip = struct.unpack("<I", socket.inet_aton(address))[0]  # the context holds it in network order
    ip = ip - (1 << 32) if ip >= 1 << 31 else ip  # an immediate is signed
    insns = [
        _insn(0xBF, R6, R1),  # r6 = ctx
        _insn(0x61, R2, R6, CTX_LOCAL_PORT),  # r2 = ctx->local_port
        _insn(0x55, R2, 0, 20, port),  # if r2 != port: goto out
        _insn(0x61, R2, R6, CTX_LOCAL_IP4),  # r2 = ctx->local_ip4
        _insn(0x55, R2, 0, 18, ip),  # if r2 != address: goto out
        _insn(0x61, R2, R6, CTX_PROTOCOL),  # r2 = ctx->protocol
        _insn(0xB7, R3, 0, 0, UDP_SLOT),  # r3 = udp slot
        _insn(0x55, R2, 0, 1, socket.IPPROTO_TCP),  # if r2 != tcp: skip one
        _insn(0xB7, R3, 0, 0, TCP_SLOT),  # r3 = tcp slot
        _insn(0x63, R10, R3, -4),  # *(u32 *)(fp - 4) = r3: the key
        _insn(0x18, R1, BPF_PSEUDO_MAP_FD, 0, map_fd), _insn(0),  # r1 = the map (a two-slot load)
        _insn(0xBF, R2, R10),  # r2 = fp
        _insn(0x07, R2, 0, 0, -4),  # r2 -= 4: &key
        _insn(0x85, 0, 0, 0, FN_MAP_LOOKUP_ELEM),  # r0 = the socket (a reference), or NULL
        _insn(0x15, R0, 0, 7, 0),  # if r0 == NULL: goto out
        _insn(0xBF, R7, R0),  # r7 = sk
        _insn(0xBF, R1, R6),
        _insn(0xBF, R2, R7),
        _insn(0xB7, R3, 0, 0, 0),
        _insn(0x85, 0, 0, 0, FN_SK_ASSIGN),  # bpf_sk_assign(ctx, sk, 0)
        _insn(0xBF, R1, R7),
        _insn(0x85, 0, 0, 0, FN_SK_RELEASE),  # bpf_sk_release(sk)
        _insn(0xB7, R0, 0, 0, SK_PASS),  # out: r0 = SK_PASS (a lookup we do not take goes on as usual)
        _insn(0x95),  # exit
    ]
    return b"".join(insns)


class Program:
    """A loaded program and its (empty) SOCKMAP, not yet attached: made ahead, in idle time (``prepare``)."""

    def __init__(self, map_fd: int, prog_fd: int) -> None:
        self.map_fd, self.prog_fd = map_fd, prog_fd

    def close(self) -> None:
        for fd in (self.map_fd, self.prog_fd):
            if fd >= 0:
                os.close(fd)
        self.map_fd = self.prog_fd = -1


def _unsupported(where: str) -> KernelError:
    return KernelError("steer 127.0.0.11:53", "to the DNS server", where,
                       f"no bpf(2) system call number known for {platform.machine()}")


def prepare(address: str, port: int) -> Program:
    """A SOCKMAP and the program that reads it (two thirds of an attach's cost), for ``steer``."""
    if _NR_BPF is None:
        raise _unsupported("any namespace")
    where = "the host's DNS server"
    map_fd = _bpf(BPF_MAP_CREATE, struct.pack("<IIIII", BPF_MAP_TYPE_SOCKMAP, 4, 8, 2, 0), "create a SOCKMAP", where)
    try:
        code = _program(map_fd, address, port)
        return Program(map_fd, _load(BPF_PROG_TYPE_SK_LOOKUP, code, b"overlays_dns", BPF_SK_LOOKUP,
                                     "load the sk_lookup program", where, "for the DNS server's sockets"))
    except BaseException:
        os.close(map_fd)
        raise


def steer(netns_path: str | Path, address: str, port: int, udp: socket.socket, tcp: socket.socket,
          program: Program | None = None) -> int:
    """Attach a program (``program``, else one made now) to the namespace at ``netns_path``, steering to
    ``udp`` and ``tcp``; returns the link's fd (close it to detach). ``program`` is used up either way."""
    where = str(netns_path)
    if _NR_BPF is None:
        raise _unsupported(where)
    program = program or prepare(address, port)
    try:
        for slot, sock in ((UDP_SLOT, udp), (TCP_SLOT, tcp)):
            key, value = ctypes.c_uint32(slot), ctypes.c_uint64(sock.fileno())
            _bpf(BPF_MAP_UPDATE_ELEM, struct.pack("<IIQQQ", program.map_fd, 0, ctypes.addressof(key),
                                                  ctypes.addressof(value), 0), "put a socket in the SOCKMAP", where)
        ns_fd = os.open(str(netns_path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return _bpf(BPF_LINK_CREATE, struct.pack("<IIII", program.prog_fd, ns_fd, BPF_SK_LOOKUP, 0),
                        "attach the sk_lookup program", where)
        finally:
            os.close(ns_fd)
    except OSError as e:
        raise KernelError("steer 127.0.0.11:53", "to the DNS server", where, os.strerror(e.errno or errno.EIO)) from e
    finally:
        program.close()  # the link holds the program, the program its map, the map our sockets


def _mld_program() -> bytes:
    """TC_ACT_SHOT for a frame to 33:33:00:00:00:16 (an MLDv2 report), TC_ACT_OK for any other."""
    mac_high, mac_low = MLDV2_ROUTERS_MAC
    return b"".join([
        _insn(0xB7, R0, 0, 0, TC_ACT_OK),  # r0 = OK
        _insn(0x61, R2, R1, SKB_DATA),  # r2 = skb->data (the Ethernet header)
        _insn(0x61, R3, R1, SKB_DATA_END),  # r3 = skb->data_end
        _insn(0xBF, R4, R2),
        _insn(0x07, R4, 0, 0, 6),  # r4 = data + 6: the destination MAC's end
        _insn(0x2D, R4, R3, 5),  # if r4 > data_end: goto out (a runt)
        _insn(0x61, R4, R2, 0),  # r4 = first four bytes of the destination MAC
        _insn(0x55, R4, 0, 3, mac_high),  # if not 33:33:00:00: goto out
        _insn(0x69, R4, R2, 4),  # r4 = its last two bytes
        _insn(0x55, R4, 0, 1, mac_low),  # if not 00:16: goto out
        _insn(0xB7, R0, 0, 0, TC_ACT_SHOT),  # r0 = drop
        _insn(0x95),  # out: exit
    ])


_mld_fd: int | None = None


def mld_filter(netns: str | None) -> int:
    """The fd of the MLD report filter (see the design note), loaded once per process; ``netns`` for errors."""
    global _mld_fd
    if _NR_BPF is None:
        raise KernelError("load", "the MLD report filter", netns,
                          f"no bpf(2) system call number known for {platform.machine()}")
    if _mld_fd is None:
        _mld_fd = _load(BPF_PROG_TYPE_SCHED_CLS, _mld_program(), b"overlays_mld", 0, "load", netns,
                        "the MLD report filter")
    return _mld_fd


def udp_reply(raw: socket.socket, source: str, source_port: int, peer: tuple[str, int], data: bytes) -> None:
    """Send ``data`` to ``peer`` from ``source:source_port`` through a raw (IPPROTO_RAW) socket.

    The kernel fills in the IP header's length, identification and checksum; a UDP
    checksum of zero means none, which IPv4 allows (the datagram never leaves loopback).
    """
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, socket.IPPROTO_UDP, 0, socket.inet_aton(source),
                         socket.inet_aton(peer[0]))
    raw.sendto(header + struct.pack("!HHHH", source_port, peer[1], 8 + len(data), 0) + data, (peer[0], 0))
