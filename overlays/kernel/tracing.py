"""One real probe from a sandbox, and what the firewall of its host did with it (``overlays trace``).

Design note. nftables can trace a packet: once a rule sets ``meta nftrace``, every
chain of every table the packet then crosses in that namespace reports what it did
(each rule that matched, each verdict) to a netlink group that ``nft monitor trace``
prints. So a trace is: a temporary table of our own (never another's) holding one
chain on prerouting at priority -350, before conntrack and every other chain, whose
one rule marks packets of the probe's addresses and protocol; ``nft monitor trace``
started inside the host namespace; the probe sent once the kernel lists the
monitor's socket as subscribed to the trace group (``/proc/PID/net/netlink``: no
sleep and hope); a moment for the last events; then the monitor stopped and the
table deleted, whatever happened. Frames bridged within one network never reach the
IP hooks, so they leave no events: the trace then says so, and the probe's answer is
the verdict.

Probes are the real thing: ``ping`` (with DF, at the size the sandbox's interface
allows) run inside the sandbox, or a TCP connect / UDP datagram from a socket made
inside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from overlays.errors import KernelError
from overlays.kernel import netns, nft

T = TypeVar("T")
NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9
SUBSCRIBE_PATIENCE = 3.0
SETTLE = 0.3  # seconds the last trace events may lag the probe's answer
_EVENT = re.compile(r"^trace id (?P<id>\S+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<rest>.*)$")
_VERDICT = re.compile(r"\(verdict (?P<verdict>[a-z]+)[^)]*\)\s*$")


@dataclass(frozen=True)
class TraceEvent:
    """One line of ``nft monitor trace``: a chain's packet, a rule that matched, or a verdict."""

    trace_id: str
    table: str
    chain: str
    kind: str  # packet, rule, verdict, policy
    text: str  # the rule, or the verdict
    verdict: str | None  # accept, drop, continue, jump, return, ...


@dataclass(frozen=True)
class ProbeResult:
    answered: bool
    what: str  # in words: "answered", "refused (TCP reset)", "no answer", ...


def parse_events(text: str) -> list[TraceEvent]:
    found = []
    for line in text.splitlines():
        m = _EVENT.match(line.strip())
        if not m:
            continue
        kind, _, rest = m["rest"].partition(" ")
        kind = kind.rstrip(":")
        verdict = None
        if kind == "rule":
            v = _VERDICT.search(rest)
            verdict = v["verdict"] if v else None
        elif kind in ("verdict", "policy"):
            verdict = rest.split()[0] if rest.split() else None
        found.append(TraceEvent(m["id"], f"{m['family']} {m['table']}", m["chain"], kind, rest.strip(), verdict))
    return found


def _subscribed(pid: int) -> bool:
    """Whether process ``pid`` holds a netfilter netlink socket that listens to the trace group."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        table = Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]
    except OSError:
        return False
    for row in table:
        cols = row.split()
        if (len(cols) >= 10 and cols[1] == str(NETLINK_NETFILTER) and f"socket:[{cols[9]}]" in inodes
                and int(cols[3], 16) & (1 << (NFNLGRP_NFTRACE - 1))):
            return True
    return False


def _monitor(netns_path: Path | None) -> subprocess.Popen[str]:
    enter = netns.entering(netns_path) if netns_path is not None else None
    try:
        return subprocess.Popen(["nft", "monitor", "trace"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, text=True, preexec_fn=enter)
    except FileNotFoundError as e:
        raise KernelError("trace", "nftables", None, "the nft command is missing (apt install nftables)") from e


def traced(netns_path: Path | None, label: str | None, table: str, match: str,
           probe: Callable[[], T]) -> tuple[T, list[TraceEvent]]:
    """Run ``probe`` with packets matching ``match`` traced in the namespace; its result and the events."""
    setup = (f"add table inet {table}\nadd chain inet {table} trace "
             "{ type filter hook prerouting priority -350; policy accept; }\n"
             f"add rule inet {table} trace {match} meta nftrace set 1\n")
    monitor = _monitor(netns_path)
    try:
        deadline = time.monotonic() + SUBSCRIBE_PATIENCE
        while not _subscribed(monitor.pid):
            if monitor.poll() is not None or time.monotonic() > deadline:
                raise KernelError("trace", "nft monitor trace", label, "the monitor did not start")
            time.sleep(0.005)
        nft.apply(netns_path, setup, label)
        try:
            result = probe()
            time.sleep(SETTLE)
        finally:
            nft.delete_table(netns_path, "inet", table, label)
    finally:
        monitor.terminate()
        try:
            out, _ = monitor.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            monitor.kill()
            out, _ = monitor.communicate()
    return result, parse_events(out or "")


# -- probes ------------------------------------------------------------------------------------------------------------


def ping(netns_path: Path, dst: str, size: int, timeout: float = 1.0) -> ProbeResult:
    """One echo request of ``size`` payload bytes with DF set (``ping -M do``), from inside the namespace."""
    argv = ["ping", "-n", "-c", "1", "-W", str(max(1, round(timeout))), "-M", "do", "-s", str(size), dst]
    done = subprocess.run(argv, capture_output=True, text=True, preexec_fn=netns.entering(netns_path),
                          timeout=timeout + 5)
    text = done.stdout + done.stderr
    if done.returncode == 0:
        return ProbeResult(True, "answered")
    too_long = re.search(r"message too long, mtu=(\d+)", text)
    if too_long:
        return ProbeResult(False, f"refused by the sandbox itself: message too long (route MTU {too_long[1]})")
    unreachable = re.search(r"(Destination \w+ Unreachable)", text)
    return ProbeResult(False, unreachable[1].lower() if unreachable else "no answer")


def _socket_in(netns_path: Path, kind: int, dst: str) -> socket.socket:
    with netns.inside(netns_path):  # a socket keeps the namespace it was made in
        return socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, kind)


def connect_tcp(netns_path: Path, dst: str, port: int, timeout: float = 2.0) -> ProbeResult:
    sock = _socket_in(netns_path, socket.SOCK_STREAM, dst)
    sock.settimeout(timeout)
    try:
        sock.connect((dst, port))
        return ProbeResult(True, "connected")
    except ConnectionRefusedError:
        return ProbeResult(False, "refused (TCP reset: nothing listens there)")
    except TimeoutError:
        return ProbeResult(False, "no answer")
    except OSError as e:
        return ProbeResult(False, _unreachable(e))
    finally:
        sock.close()


def send_udp(netns_path: Path, dst: str, port: int, timeout: float = 1.0) -> ProbeResult:
    sock = _socket_in(netns_path, socket.SOCK_DGRAM, dst)
    sock.settimeout(timeout)
    try:
        sock.connect((dst, port))
        sock.send(b"overlays trace\n")
        with contextlib.suppress(TimeoutError):
            sock.recv(512)
            return ProbeResult(True, "answered")
        return ProbeResult(True, "sent; no error came back (UDP tells no more)")
    except ConnectionRefusedError:
        return ProbeResult(False, "refused (ICMP port unreachable: nothing listens there)")
    except OSError as e:
        return ProbeResult(False, _unreachable(e))
    finally:
        sock.close()


def _unreachable(e: OSError) -> str:
    names = {errno.EHOSTUNREACH: "host unreachable", errno.ENETUNREACH: "network unreachable",
             errno.EMSGSIZE: "message too long"}
    return names.get(e.errno or 0, e.strerror or str(e))
