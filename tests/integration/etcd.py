"""Real etcd servers for tests: Debian's ``etcd`` binary (package ``etcd-server``), on loopback only.

``EtcdCluster`` starts one or more members with unique ports and a fresh data dir
each, waits (bounded) until the cluster answers, and at ``stop`` terminates every
member, waits for it, and removes its data dir, also when a test failed. The
cluster is inspected and administered through etcd's own HTTP gateway (health,
status, compaction), independently of the client under test.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
MISSING = "the etcd binary is missing: install Debian's etcd-server package (apt-get install etcd-server)"
START_TIMEOUT = 15.0
# Loopback only, never through a proxy that the environment may name.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
STOP_TIMEOUT = 10.0
STOP_GRACE = 1.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the test process dies, so no member outlives a crash."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(taken: set[int]) -> int:
    """A loopback port nobody listens on now, below the ephemeral range that outgoing
    connections (ours, and etcd's between members) take their source ports from."""
    floor = _ephemeral_floor()
    for _ in range(1000):
        port = random.randrange(10000, max(floor, 10001))
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise AssertionError("no free loopback port for etcd")


class PortTaken(AssertionError):
    """A member could not bind its port (someone took it after we picked it)."""


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    id: int = 0  # etcd's member id, known once it answers

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class EtcdCluster:
    size: int = 1
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="overlays-etcd-")))
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._token = f"overlays-test-{os.getpid()}-{self.root.name}"
        self._pick_ports()

    def _pick_ports(self) -> None:
        taken: set[int] = set()
        self.members = [
            Member(f"m{n}", free_port(taken), free_port(taken), self.root / f"m{n}", self.root / f"m{n}.log")
            for n in range(self.size)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(self.endpoints)

    def start(self, attempts: int = 3) -> None:
        """Start every member and wait until the cluster has a leader; on a port clash, again on new ports."""
        for attempt in range(attempts):
            try:
                self._start()
                return
            except PortTaken:
                self._kill_all()
                shutil.rmtree(self.root, ignore_errors=True)
                self.root.mkdir()
                self._pick_ports()
                if attempt == attempts - 1:
                    raise

    def _start(self) -> None:
        assert ETCD, MISSING
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            client = f"http://{m.endpoint}"
            cmd = [
                ETCD, "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", self._token, "--logger", "zap", "--log-level", "warn",
            ]
            with m.log.open("wb") as log:
                m.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          preexec_fn=_die_with_parent)
        self.wait_ready(START_TIMEOUT)

    def wait_ready(self, timeout: float) -> None:
        """Until every live member reports a leader (bounded), recording member ids."""
        deadline = time.monotonic() + timeout
        pending = [m for m in self.members if m.alive]
        while pending:
            for m in list(pending):
                if not m.alive:
                    tail = m.log_tail()
                    error = PortTaken if "address already in use" in tail else AssertionError
                    raise error(f"etcd {m.name} exited ({m.proc and m.proc.returncode}):\n{tail}")
                status = self.status(m)
                if status and int(status.get("leader", 0)):
                    m.id = int(status["header"]["member_id"])
                    pending.remove(m)
            if pending and time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in pending)
                raise AssertionError(f"etcd not ready within {timeout}s:\n{tails}")
            time.sleep(0.02)

    def status(self, m: Member) -> dict[str, object] | None:
        """The member's own view (``/v3/maintenance/status``), or None if it does not answer."""
        return self._post(m, "/v3/maintenance/status", {})

    def leader(self) -> Member:
        for m in self.members:
            status = self.status(m) if m.alive else None
            if status and int(str(status.get("leader", 0))):
                leader_id = int(str(status["leader"]))
                return next(x for x in self.members if x.id == leader_id)
        raise AssertionError("no member knows a leader")

    def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (what an operator's compaction does)."""
        m = next(x for x in self.members if x.alive)
        assert self._post(m, "/v3/kv/compaction", {"revision": str(revision), "physical": True}) is not None

    def kill(self, m: Member) -> None:
        """SIGKILL one member and wait for it: a crash, not a clean shutdown."""
        assert m.proc is not None
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """Terminate every member, wait for each (SIGKILL if it lingers), remove all data."""
        self._kill_all()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_all(self) -> None:
        for m in self.members:
            if m.alive and m.proc is not None:
                m.proc.terminate()
        # A leader that shuts down tries to hand over leadership first, which waits for
        # followers that are stopping too: past a short grace, kill (the data goes anyway).
        grace = time.monotonic() + STOP_GRACE
        for m in self.members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=max(grace - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=STOP_TIMEOUT)

    def _post(self, m: Member, path: str, body: dict[str, object]) -> dict[str, object] | None:
        request = urllib.request.Request(
            f"http://{m.endpoint}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with _HTTP.open(request, timeout=2) as reply:
                answer: dict[str, object] = json.loads(reply.read())
                return answer
        except (OSError, urllib.error.URLError, ValueError):
            return None


@contextmanager
def etcd_cluster(size: int = 1) -> Iterator[EtcdCluster]:
    """A running cluster of ``size`` members, always stopped and removed afterwards."""
    cluster = EtcdCluster(size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
