"""Data plane: iperf3 throughput and ping RTT between sandboxes, overlays against the same path built by hand.

Four paths, each built once with overlays (a Lab in namespaces made by this run, never the root namespace)
and once by hand with ``ip`` and ``nft`` in namespaces of this run's prefix, with the best settings
(offloads on, bridge netfilter off, correct MTU):

1. same bridge: two sandboxes on one network / a bridge and two veths (also shown against a bare veth pair);
2. across two networks: overlays isolates networks, so a sandbox on one reaches a sandbox on the other only
   through a published port on the host's address (routed between the two bridges, DNAT, overlays'
   firewall) / two bridges and ip_forward; the RTT is to the other network's gateway (ICMP between
   networks is dropped by the isolation);
3. published port: an iperf3 server in a sandbox published with ``-p 5201:5201``, the client in the outside
   peer / an nft DNAT of our own in our own host namespace; the RTT is to the host's address;
4. overlay: a lab of two simulated hosts, one sandbox each on an overlay network / two namespaces with a
   VXLAN device each (MTU 1450, static FDB and neighbour, offloads on) over a veth underlay.

One iperf3 TCP stream per figure (3 s; 1 s with --quick) and ``ping -i 0.01``; the median of the repetitions.
Target: each path >= 95% of its hand-built equivalent.

    python -m benchmarks dataplane [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import Row, Run, Verdict, median

NAME = "dataplane"
TARGET = 0.95
PORT = 5201


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataplane")
    g.add_argument("--dataplane-seconds", type=int, default=3, help="iperf3 duration per figure (default 3)")
    g.add_argument("--dataplane-reps", type=int, default=3, help="repetitions per path (default 3)")
    g.add_argument("--dataplane-pings", type=int, default=20, help="pings per RTT figure (default 20)")


# -- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class End:
    """Where a measurement runs: a namespace (by path); ``ip`` is the address its peer dials."""

    netns: Path
    ip: str = ""


def _in(ns: Path, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={ns}", *argv]


def throughput(client: End, server: End, dial: str, seconds: int) -> float:
    """Gbit/s of one TCP stream from ``client`` to an iperf3 server in ``server`` reached at ``dial``."""
    srv = subprocess.Popen(_in(server.netns, ["iperf3", "-s", "-1", "-p", str(PORT)]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            proc = subprocess.run(_in(client.netns, ["iperf3", "-c", dial, "-p", str(PORT), "-t", str(seconds),
                                                     "-J", "--connect-timeout", "2000"]),
                                  capture_output=True, text=True, timeout=seconds + 20)
            try:
                doc = json.loads(proc.stdout)
            except ValueError:
                doc = {"error": proc.stderr.strip() or "no output"}
            if "error" not in doc:
                return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
            if time.monotonic() > deadline or srv.poll() is not None:
                raise RuntimeError(f"iperf3 to {dial}: {doc['error']}")
            time.sleep(0.1)  # the server is not listening yet
    finally:
        if srv.poll() is None:
            srv.terminate()
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def rtt(client: End, target: str, count: int) -> float:
    """Average ping RTT in ms."""
    proc = subprocess.run(_in(client.netns, ["ping", "-c", str(count), "-i", "0.01", "-q", "-W", "2", target]),
                          capture_output=True, text=True, timeout=count * 0.5 + 15)
    found = re.search(r"= [\d.]+/([\d.]+)/", proc.stdout)
    if not found:
        raise RuntimeError(f"ping {target}: {proc.stdout.strip()} {proc.stderr.strip()}")
    return float(found.group(1))


@dataclass(frozen=True)
class Path_:
    """One path: client, server, the address the client dials, the address it pings."""

    client: End
    server: End
    dial: str
    ping: str


# -- hand-built paths ---------------------------------------------------------------------------


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=20)


def sysctl(ns: str, key: str, value: str, missing_ok: bool = False) -> None:
    proc = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"], capture_output=True,
                          text=True, timeout=20)
    if proc.returncode and not missing_ok:
        raise RuntimeError(f"sysctl {key} in {ns}: {proc.stderr.strip()}")


def nspath(ns: str) -> Path:
    return Path("/run/netns") / ns


def veth_into(host: str, host_if: str, box: str, cidr: str, gateway: str | None, bridge: str | None) -> None:
    """A veth from ``host`` into ``box`` (eth0 there), with an address and a default route."""
    ip(host, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", box)
    if bridge:
        ip(host, "link", "set", host_if, "master", bridge)
    ip(host, "link", "set", host_if, "up")
    ip(box, "addr", "add", cidr, "dev", "eth0")
    ip(box, "link", "set", "eth0", "up")
    if gateway:
        ip(box, "route", "add", "default", "via", gateway)


def hand_single_host(run: Run, stack: ExitStack) -> dict[str, Path_]:
    """Bare veth pair; one host namespace with two bridges, three sandboxes, an outside peer and an nft DNAT."""
    va, vb = stack.enter_context(run.host("va")), stack.enter_context(run.host("vb"))
    ip(va, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", vb)
    for ns, addr in ((va, "10.96.0.1/24"), (vb, "10.96.0.2/24")):
        ip(ns, "addr", "add", addr, "dev", "eth0")
        ip(ns, "link", "set", "eth0", "up")

    h = stack.enter_context(run.host("hh"))
    sa, sb, sc, out = (stack.enter_context(run.host(x)) for x in ("hsa", "hsb", "hsc", "hout"))
    sysctl(h, "net.ipv4.ip_forward", "1")
    for br, gw in (("br1", "10.91.0.1/24"), ("br2", "10.92.0.1/24")):
        ip(h, "link", "add", br, "type", "bridge")
        ip(h, "addr", "add", gw, "dev", br)
        ip(h, "link", "set", br, "up")
    # Best settings: bridged frames skip the IP firewall hooks (the module may make them default to on).
    for fam in ("iptables", "ip6tables", "arptables"):
        sysctl(h, f"net.bridge.bridge-nf-call-{fam}", "0", missing_ok=True)
    veth_into(h, "ha", sa, "10.91.0.2/24", "10.91.0.1", "br1")
    veth_into(h, "hb", sb, "10.91.0.3/24", "10.91.0.1", "br1")
    veth_into(h, "hc", sc, "10.92.0.2/24", "10.92.0.1", "br2")
    ip(h, "link", "add", "o0", "type", "veth", "peer", "name", "eth0", "netns", out)
    ip(h, "addr", "add", "10.253.0.2/24", "dev", "o0")
    ip(h, "link", "set", "o0", "up")
    ip(out, "addr", "add", "10.253.0.1/24", "dev", "eth0")
    ip(out, "link", "set", "eth0", "up")
    rules = (f"table ip bench_dnat {{\n chain pre {{ type nat hook prerouting priority dstnat; policy accept;\n"
             f'  iifname "o0" tcp dport {PORT} dnat to 10.91.0.3:{PORT}\n }}\n}}\n')
    subprocess.run(["ip", "netns", "exec", h, "nft", "-f", "-"], input=rules, text=True, check=True, timeout=20)
    return {
        "veth": Path_(End(nspath(va)), End(nspath(vb)), "10.96.0.2", "10.96.0.2"),
        "bridge": Path_(End(nspath(sa)), End(nspath(sb)), "10.91.0.3", "10.91.0.3"),
        "routed": Path_(End(nspath(sc)), End(nspath(sb)), "10.91.0.3", "10.91.0.1"),
        "published": Path_(End(nspath(out)), End(nspath(sb)), "10.253.0.2", "10.253.0.2"),
    }


def hand_vxlan(run: Run, stack: ExitStack) -> Path_:
    """Two namespaces on a veth underlay (MTU 1500), a VXLAN device each: MTU 1450, static FDB, offloads on."""
    x1, x2 = stack.enter_context(run.host("vx1")), stack.enter_context(run.host("vx2"))
    ip(x1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", x2)
    ends = ((x1, "192.168.96.1", "02:00:00:00:96:01", "10.97.0.1"), (x2, "192.168.96.2", "02:00:00:00:96:02",
                                                                     "10.97.0.2"))
    for ns, under, mac, addr in ends:
        ip(ns, "addr", "add", f"{under}/24", "dev", "eth0")
        ip(ns, "link", "set", "eth0", "up")
        ip(ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "local", under, "dev", "eth0",
           "nolearning")
        ip(ns, "link", "set", "vx0", "address", mac, "mtu", "1450", "up")
        ip(ns, "addr", "add", f"{addr}/24", "dev", "vx0")
    for (ns, _, _, _), (_, under, mac, addr) in ((ends[0], ends[1]), (ends[1], ends[0])):
        subprocess.run(["bridge", "-n", ns, "fdb", "append", mac, "dev", "vx0", "dst", under, "self", "permanent"],
                       check=True, capture_output=True, timeout=20)
        ip(ns, "neigh", "add", addr, "lladdr", mac, "dev", "vx0", "nud", "permanent")
    return Path_(End(nspath(x1)), End(nspath(x2)), "10.97.0.2", "10.97.0.2")


# -- overlays paths -----------------------------------------------------------------------------


@contextlib.contextmanager
def lab_of(run: Run, raw: dict[str, Any], host_netns: str | None) -> Iterator[Any]:
    from overlays.topology import Lab, resolve

    state = run.scratch(raw["name"])
    if host_netns:
        run.add_engine(state, host_netns)
    for h in raw.get("hosts", []):
        run.add_engine(state, f"ovl-{raw['name']}-{h}")
    lab = Lab(resolve(raw, "bench"), host_netns=host_netns, state_dir=state)
    try:
        lab.up()
        yield lab
    finally:
        try:
            lab.down()
        finally:
            lab.close()
            for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
                if ns.startswith(f"ovl-{raw['name']}-"):  # the lab's own namespaces, should down have left any
                    subprocess.run(["ip", "netns", "del", ns], check=False)


def overlays_single_host(run: Run, stack: ExitStack) -> dict[str, Path_]:
    from overlays.topology.spec import LOCAL_HOST

    host = stack.enter_context(run.host("oh"))
    raw = {"name": run.name("dp"), "outside": {},
           "networks": {"n1": {"subnet": "10.91.0.0/24"}, "n2": {"subnet": "10.92.0.0/24"}},
           "sandboxes": {"a": {"networks": ["n1"]}, "b": {"networks": ["n1"], "ports": [f"{PORT}:{PORT}"]},
                         "c": {"networks": ["n2"]}}}
    lab = stack.enter_context(lab_of(run, raw, host))
    eng = lab.engine(LOCAL_HOST)
    box = {n: End(eng.netns_path(n), str(eng.sandbox(n).endpoints[0].ip)) for n in ("a", "b", "c")}
    outside = End(nspath(lab.outside_netns()))
    addr = lab.host_address(LOCAL_HOST)
    gw1 = str(eng.network("n1")[0].gateway)
    return {
        "bridge": Path_(box["a"], box["b"], box["b"].ip, box["b"].ip),
        "routed": Path_(box["c"], box["b"], addr, gw1),
        "published": Path_(outside, box["b"], addr, addr),
    }


def overlays_two_hosts(run: Run, stack: ExitStack) -> Path_:
    raw = {"name": run.name("dv"), "hosts": ["h1", "h2"],
           "networks": {"mesh": {"driver": "overlay", "subnet": "10.97.0.0/24"}},
           "sandboxes": {"x1": {"host": "h1", "networks": ["mesh"]}, "x2": {"host": "h2", "networks": ["mesh"]}}}
    lab = stack.enter_context(lab_of(run, raw, None))  # up returns once the overlay has converged
    ends = {n: End(lab.engine(h).netns_path(n), str(lab.engine(h).sandbox(n).endpoints[0].ip))
            for n, h in (("x1", "h1"), ("x2", "h2"))}
    return Path_(ends["x1"], ends["x2"], ends["x2"].ip, ends["x2"].ip)


# -- the benchmark ------------------------------------------------------------------------------

LABELS = {
    "bridge": "same bridge",
    "routed": "across two networks",
    "published": "published port",
    "overlay": "overlay, two hosts",
}


def measure(paths: dict[str, Path_], seconds: int, pings: int, reps: int, log: Callable[[str], None],
            ) -> dict[str, dict[str, list[float]]]:
    got: dict[str, dict[str, list[float]]] = {k: {"gbps": [], "rtt": []} for k in paths}
    for rep in range(reps):
        for key, p in paths.items():
            got[key]["gbps"].append(throughput(p.client, p.server, p.dial, seconds))
            got[key]["rtt"].append(rtt(p.client, p.ping, pings))
            log(f"  rep {rep + 1}/{reps} {key}: {got[key]['gbps'][-1]:.1f} Gbit/s, {got[key]['rtt'][-1]:.3f} ms")
    return got


def run(run: Run, args: argparse.Namespace, log: Any) -> tuple[list[Row], list[Verdict]]:
    seconds = 1 if args.quick else args.dataplane_seconds
    pings = 5 if args.quick else args.dataplane_pings
    reps = 1 if args.quick else args.dataplane_reps
    # Measured pairwise (hand, then overlays, for each path) so both see the same machine load.
    paths: dict[str, Path_] = {}
    with ExitStack() as stack:
        hand = hand_single_host(run, stack)
        ours = overlays_single_host(run, stack)
        paths["hand veth"] = hand["veth"]
        for k in ("bridge", "routed", "published"):
            paths[f"hand {k}"], paths[f"overlays {k}"] = hand[k], ours[k]
        got = measure(paths, seconds, pings, reps, log)
    with ExitStack() as stack:
        two = {"hand overlay": hand_vxlan(run, stack), "overlays overlay": overlays_two_hosts(run, stack)}
        got |= measure(two, seconds, pings, reps, log)

    med = {k: {m: median(v[m]) for m in v} for k, v in got.items()}
    n = reps
    rows: list[Row] = []
    verdicts: list[Verdict] = []
    rows.append(Row(NAME, "hand veth", n, "TCP 1 stream, bare veth pair", med["hand veth"]["gbps"], "Gbit/s"))
    rows.append(Row(NAME, "hand veth", n, "ping RTT avg", med["hand veth"]["rtt"], "ms"))
    for key, label in LABELS.items():
        ov, hb = med[f"overlays {key}"], med[f"hand {key}"]
        hand_name = {"overlay": "hand VXLAN 1450"}.get(key, f"hand {key}")
        row = Row(NAME, f"overlays {key}", n, f"TCP 1 stream, {label}", ov["gbps"], "Gbit/s").with_baseline(
            hb["gbps"], hand_name)
        row.target = f">= {TARGET:.2f}x hand-built"
        row.met = None if row.ratio is None else row.ratio >= TARGET
        rows.append(row)
        rows.append(Row(NAME, f"overlays {key}", n, f"ping RTT avg, {label}", ov["rtt"], "ms").with_baseline(
            hb["rtt"], hand_name))
        if key == "bridge":
            rows.append(Row(NAME, "overlays bridge", n, "TCP 1 stream, vs bare veth", ov["gbps"], "Gbit/s"
                            ).with_baseline(med["hand veth"]["gbps"], "hand veth"))
            rows.append(Row(NAME, "hand bridge", n, "TCP 1 stream, vs bare veth", hb["gbps"], "Gbit/s"
                            ).with_baseline(med["hand veth"]["gbps"], "hand veth"))
        verdicts.append(Verdict(f"{label}: throughput >= {TARGET:.0%} of hand-built", row.met,
                                f"{ov['gbps']:.1f} vs {hb['gbps']:.1f} Gbit/s ({row.ratio or 0:.2f}x)"))
    notes = {
        "overlays routed": "overlays isolates networks: the client on n2 reaches the server on n1 through the"
                           " published port on the host address (DNAT + routing); hand-built routes directly."
                           " RTT: ping to n1's gateway",
        "overlays published": "RTT: outside peer to the host address",
        "overlays overlay": "overlays: sandbox veth + bridge + VXLAN per host, underlay through the lab's fabric"
                            " switch; hand-built: VXLAN devices directly on a veth underlay",
    }
    for r in rows:
        r.note = notes.get(r.subject, "")
    return rows, verdicts


def main() -> int:
    """``python -m benchmarks.dataplane`` is ``python -m benchmarks dataplane``: the same table and JSON."""
    from benchmarks.__main__ import main as run_benchmarks

    return run_benchmarks([NAME, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
