"""The engine's side of the host's DNS server: register a sandbox's names, and forget them.

One server per host (``overlays.dns``, run by the agent) answers inside every sandbox's
namespace. The engine tells it about a sandbox over a unix socket under the state dir
(``dns/<node>.sock``: several hosts may share one state dir), synchronously:
``register`` returns once the server has bound the sandbox's sockets (UDP and TCP on
127.0.0.11:53 inside its namespace) and put its names in the table, so a name resolves
as soon as ``run`` returns and is gone once ``rm`` returns. A register replaces
everything the server held for that sandbox (a connect or a disconnect sends the full
new list); both calls are idempotent, so a retry is safe.

Wire format: one JSON object per SOCK_SEQPACKET message, answered by one JSON object,
``{"ok": true, ...}`` or ``{"ok": false, "kind": "InvalidSpec", "error": "..."}``.
A register may carry the two listening sockets as SCM_RIGHTS descriptors instead of
asking the server to bind them (``sockets=``): the server then only adopts them.

This module lives in the kernel layer, below the engine, so the engine can call it
without importing the server (which is at the agent layer and imports dnslib).
"""

from __future__ import annotations

import array
import json
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from overlays import errors
from overlays.errors import KernelError, NotFound, OverlaysError

SOCKET_DIR = "dns"
SOCKET_PATH_MAX = 107  # what sockaddr_un takes, less its NUL
SHORT_DIR = Path("/run/overlays")  # where a socket goes whose path under the state dir would be too long
TIMEOUT = 5.0  # seconds a call waits for the server: binding takes microseconds, this is for a stuck server
MAX_MESSAGE = 1 << 20
MAX_UNWAITED = 32  # calls made with wait=False whose answers may be owed at once


class Record(NamedTuple):
    """A sandbox's names on one network: its name, its aliases (hostname included) and addresses there.

    ``internal``, ``upstreams`` and ``subnet`` describe the network (``--internal``: no
    forwarding; ``--dns``: forward there instead of to the host's resolvers; ``subnet``: its (one per
    family, comma-separated)
    addresses are ours alone, so a reverse query for one nobody holds is answered NXDOMAIN
    instead of forwarded; "" for a network that shares its segment, such as macvlan's); every
    record of a network carries the same values. Remote sandboxes (overlay networks, other
    hosts) are registered the same way with no namespace: names only.
    """

    network: str
    name: str
    addresses: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    internal: bool = False
    upstreams: tuple[str, ...] = ()
    subnet: str = ""

    def to_wire(self) -> dict[str, Any]:
        wire = {"network": self.network, "name": self.name, "addresses": list(self.addresses),
                "aliases": list(self.aliases), "internal": self.internal, "upstreams": list(self.upstreams)}
        if self.subnet:
            wire["subnet"] = self.subnet
        return wire

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Record:
        def names(key: str) -> tuple[str, ...]:
            value = raw.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise errors.InvalidSpec(f"DNS record {raw.get('name')!r}: {key} must be a list of strings")
            return tuple(value)

        network, name, subnet = raw.get("network"), raw.get("name"), raw.get("subnet", "")
        if not isinstance(network, str) or not isinstance(name, str) or not network or not name:
            raise errors.InvalidSpec(f"DNS record {raw!r}: needs a network and a name")
        if not isinstance(subnet, str):
            raise errors.InvalidSpec(f"DNS record {name!r}: subnet must be a string")
        return cls(network, name, names("addresses"), names("aliases"), bool(raw.get("internal", False)),
                   names("upstreams"), subnet)


def etc_path(control: Path) -> Path:
    """The directory of the files a server's sandboxes see over /etc (resolv.conf), beside its socket."""
    return control.with_name(control.stem + ".etc")


def socket_path(state_dir: Path, node: str) -> Path:
    """Where the DNS server of host ``node`` listens: under the state dir, else (too long) under /run."""
    path = Path(state_dir) / SOCKET_DIR / f"{node}.sock"
    if len(str(path).encode()) <= SOCKET_PATH_MAX:
        return path
    from overlays.model.names import short_hash

    return SHORT_DIR / f"dns-{short_hash(str(Path(state_dir).resolve()), node, length=16)}.sock"


def _raise_remote(reply: dict[str, Any]) -> None:
    kind = getattr(errors, str(reply.get("kind")), OverlaysError)
    if not (isinstance(kind, type) and issubclass(kind, OverlaysError)) or kind is KernelError:
        kind = OverlaysError  # KernelError's message is already whole: keep it as the text of a plain error
    raise kind(str(reply.get("error", "the DNS server refused the request")))


class Client:
    """A connection to the host's DNS server, opened on first use and reopened once if it broke.

    A call waits for the server's answer; with ``wait=False`` it returns once sent, and
    ``wait()`` later collects the answers (in order) and raises the first refusal (every
    MAX_UNWAITED such calls, a call collects those owed before it returns). The
    engine can so overlap the server's work (binding, and on an idle machine waking up)
    with its own, and still return only once the names are served.
    """

    def __init__(self, path: Path, timeout: float = TIMEOUT) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._pending = 0
        self._buffer = bytearray(MAX_MESSAGE)  # read into: a fresh 1 MiB bytes per call costs ~20 us

    def register(self, sandbox: str, netns_path: str | Path | None, records: Iterable[Record],
                 sockets: Sequence[socket.socket] = (), wait: bool = True) -> None:
        """The sandbox's names are these (replacing what it had), answered inside ``netns_path``.

        ``netns_path`` None: names only, no sockets (a sandbox of another host).
        ``sockets``: a UDP and a listening TCP socket already bound inside the sandbox.
        """
        request = {"op": "register", "sandbox": sandbox, "netns": None if netns_path is None else str(netns_path),
                   "records": [r.to_wire() for r in records]}
        self._request(request, [s.fileno() for s in sockets], wait)

    def unregister(self, sandbox: str, wait: bool = True) -> dict[str, Any]:
        """The sandbox's names and sockets are gone (nothing to do if it had none).

        The answer says how many sandboxes of this host the server still serves (``served_here``).
        """
        return self._request({"op": "unregister", "sandbox": sandbox}, (), wait)

    def status(self) -> dict[str, Any]:
        return self.call({"op": "status"})

    def running(self) -> bool:
        """Whether a server answers on the socket (connects if need be; sends nothing)."""
        try:
            self._connected()
        except NotFound:
            return False
        return True

    def call(self, request: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        """Send ``request`` and return the server's answer (after those of earlier unwaited calls)."""
        return self._request(request, fds, True)

    def wait(self) -> dict[str, Any]:
        """Collect the answers of the calls made with ``wait=False``; raise the first refusal.

        Returns the last answer ({} if none was owed).
        """
        return self._collect()

    def _request(self, request: dict[str, Any], fds: Sequence[int], wait: bool) -> dict[str, Any]:
        data = json.dumps(request, separators=(",", ":")).encode()
        self._send(data, fds)
        self._pending += 1
        # Answers nobody waits for are collected now and then: unread, they would fill the socket's
        # buffer, and the server drops a client that does not read (it never blocks on one).
        return self._collect() if wait or self._pending >= MAX_UNWAITED else {}

    def _send(self, data: bytes, fds: Sequence[int]) -> None:
        for attempt in (1, 2):
            sock = self._connected()
            try:
                if fds:
                    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                else:
                    sock.send(data)
                return
            except (BrokenPipeError, ConnectionResetError) as e:
                lost = self._pending
                self.close()
                if attempt == 2 or lost:  # answers we were owed are gone with the connection
                    raise KernelError("ask the DNS server", str(self.path), None, str(e)) from e
            except TimeoutError as e:
                self.close()
                raise KernelError("ask the DNS server", str(self.path), None,
                                  f"could not send within {self.timeout:g} s") from e

    def _collect(self) -> dict[str, Any]:
        last: dict[str, Any] = {}
        first_refusal: dict[str, Any] | None = None
        while self._pending:
            sock = self._connected()
            try:
                size = sock.recv_into(self._buffer)
            except TimeoutError as e:
                self.close()
                raise KernelError("ask the DNS server", str(self.path), None,
                                  f"no answer within {self.timeout:g} s") from e
            except OSError as e:
                self.close()
                raise KernelError("ask the DNS server", str(self.path), None, str(e)) from e
            if size == 0:
                self.close()
                raise KernelError("ask the DNS server", str(self.path), None, "it closed the connection")
            self._pending -= 1
            last = json.loads(bytes(self._buffer[:size]))
            if not last.get("ok") and first_refusal is None:
                first_refusal = last
        if first_refusal is not None:
            _raise_remote(first_refusal)
        return last

    def _connected(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise NotFound(f"the DNS server of this host is not running (nothing listens on {self.path})") from e
        self._sock = sock
        return sock

    def close(self) -> None:
        self._pending = 0
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register(path: Path, sandbox: str, netns_path: str | Path | None, records: Iterable[Record]) -> None:
    """One-shot ``Client.register``: connect, register, close."""
    with Client(path) as client:
        client.register(sandbox, netns_path, records)


def unregister(path: Path, sandbox: str) -> None:
    """One-shot ``Client.unregister``."""
    with Client(path) as client:
        client.unregister(sandbox)
