"""resolv.conf: the host's upstream resolvers, and the file each sandbox's processes read.

Where a host's upstreams come from. The DNS server forwards from the *host* namespace
(its forwarding sockets are made there), so it uses the resolv.conf a process in that
namespace would read, by iproute2's convention: for a named host namespace NAME,
``/etc/netns/NAME/resolv.conf`` if it exists (what ``ip netns exec NAME`` shows), else
``/etc/resolv.conf``. A loopback nameserver in that file is reachable from where we
forward, so it is kept: a systemd-resolved stub (127.0.0.53) on the real host keeps its
per-link routing and its cache. The one case where it is not reachable is a named host
namespace that inherits the machine's own ``/etc/resolv.conf``: its loopback addresses
belong to the root namespace. There, like Docker, we take systemd-resolved's own
upstream list (``/run/systemd/resolve/resolv.conf``) for 127.0.0.53 and drop the other
loopback entries (a dnsmasq on 127.0.0.1 of the root namespace cannot be reached).

The sandbox's file (``render``) names only 127.0.0.11, the address our server listens
on inside every sandbox's namespace; search domains and options come from the host's,
with ``ndots:0`` so a bare sandbox name is asked as it is before any search suffix (as
Docker writes it), which keeps those queries local instead of sending ``web.corp.example``
upstream first.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

DNS_ADDRESS = "127.0.0.11"
ETC = Path("/etc")
SYSTEMD_RESOLVED = Path("/run/systemd/resolve/resolv.conf")
SYSTEMD_STUBS = ("127.0.0.53", "127.0.0.54")
MAX_SEARCH = 6  # glibc reads at most six search domains


@dataclass(frozen=True)
class ResolvConf:
    """What a resolv.conf says, in order; unknown lines are ignored, as the resolvers do."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Upstreams:
    """The resolvers to forward to from the host namespace, and where they were read."""

    servers: tuple[str, ...]
    source: str  # the file(s) read, and what was done to them: for logs and ``status``
    conf: ResolvConf


def parse(text: str) -> ResolvConf:
    """Parse resolv.conf text; a bad nameserver address is skipped (glibc skips it too)."""
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        key, args = words[0], words[1:]
        if key == "nameserver" and args and _is_address(args[0]):
            servers.append(args[0])
        elif key in ("search", "domain"):
            search = args[:MAX_SEARCH]  # the last search/domain line wins
        elif key == "options":
            options += args
    return ResolvConf(tuple(servers), tuple(search), tuple(options))


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def is_loopback(server: str) -> bool:
    return ipaddress.ip_address(server.split("%", 1)[0]).is_loopback


def _read(path: Path) -> ResolvConf | None:
    try:
        return parse(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None


def host_upstreams(host_netns: str | None, etc: Path = ETC, systemd: Path = SYSTEMD_RESOLVED) -> Upstreams:
    """The upstream resolvers of a host (None: the machine's own namespace); see the module note."""
    if host_netns is not None:
        own = etc / "netns" / host_netns / "resolv.conf"
        conf = _read(own)
        if conf is not None:
            return Upstreams(conf.nameservers, str(own), conf)
    main = etc / "resolv.conf"
    conf = _read(main) or ResolvConf()
    if host_netns is None or not any(is_loopback(s) for s in conf.nameservers):
        return Upstreams(conf.nameservers, str(main), conf)
    servers: list[str] = []
    notes = [f"{main} (a loopback nameserver there is the root namespace's, unreachable from {host_netns})"]
    for server in conf.nameservers:
        if not is_loopback(server):
            servers.append(server)
        elif server in SYSTEMD_STUBS and (resolved := _read(systemd)) is not None:
            servers += [s for s in resolved.nameservers if not is_loopback(s)]
            notes.append(f"{server} replaced by systemd-resolved's upstreams from {systemd}")
    return Upstreams(tuple(dict.fromkeys(servers)), "; ".join(notes), conf)


def render(search: tuple[str, ...] = (), options: tuple[str, ...] = ()) -> str:
    """The resolv.conf of a sandbox: our server only; the host's search list and options, ndots:0."""
    kept = [o for o in options if not o.startswith("ndots:")]
    lines = ["# overlays: this sandbox's names are answered on 127.0.0.11 inside its own namespace;",
             "# other names are forwarded to the host's resolvers.",
             f"nameserver {DNS_ADDRESS}"]
    if search:
        lines.append("search " + " ".join(search[:MAX_SEARCH]))
    lines.append("options " + " ".join(["ndots:0", *kept]))
    return "\n".join(lines) + "\n"


def sandbox_resolv_conf(host: Upstreams) -> str:
    """``render`` with the host's own search domains and options."""
    return render(host.conf.search, host.conf.options)
