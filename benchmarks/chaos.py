"""Chaos: SIGKILL overlays at random instants, recover, and audit what is left (``make chaos``).

``python -m benchmarks.chaos [--kills N] [--stress N]``

In a host namespace of its own, with the CLI as a user runs it, each trial starts one
command, kills it with SIGKILL after a random delay drawn from that command's own duration
(measured once, unkilled), and recovers as a user would: the next ``up`` for a killed ``up``,
``doctor --fix`` for the rest. Then an audit that does not ask overlays but reads the kernel
itself (``ip -j``, ``nft -j``, /proc) holds it to the records:

* a leak: a namespace of our instance, a link carrying our tag or prefix, a published port
  in our nft maps, or a process carrying our tag, that no record names;
* a stale record: one not ready, or whose namespace, veth or bridge is gone;
* a duplicate: one address on two endpoints of a network (in the records or in the kernel).

After recovery ``doctor`` must find nothing, and the lab must pass ``check`` after ``up``.
The commands killed: ``up`` and ``down`` of a 30-sandbox topology, ``rm -f`` of many
sandboxes, ``connect``, ``network create`` and ``run -d -p``. Only kills that land (the
command still running) count. A second phase runs mixed ``run``/``rm``/``connect``/
``disconnect`` from 8 workers at once: none may end in a traceback or an internal error.
It prints ``N kills, L leaks, D duplicates, S stale records`` and exits 1 unless all are 0.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SANDBOXES = 30
FRONT = "10.61.0.0/24"
BACK = "10.62.0.0/24"


def topology(name: str) -> dict[str, Any]:
    """30 sandboxes on one network (no isolated pairs: check stays quick), three on a second, two serving."""
    boxes: dict[str, Any] = {f"s{i:02d}": {"networks": ["front"]} for i in range(SANDBOXES)}
    for i in range(3):
        boxes[f"s{i:02d}"]["networks"] = ["front", "back"]
    for i, port in ((3, 8080), (4, 8081)):
        boxes[f"s{i:02d}"] |= {"ports": [f"{port}:80"], "command": "python3 -m http.server 80"}
    return {"name": name, "outside": {}, "networks": {"front": {"subnet": FRONT}, "back": {"subnet": BACK}},
            "sandboxes": boxes}


@dataclass
class Tally:
    kills: int = 0
    leaks: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # a recovery step that did not succeed

    def add(self, label: str, audit: Audit) -> None:
        self.leaks += [f"{label}: {x}" for x in audit.leaks]
        self.duplicates += [f"{label}: {x}" for x in audit.duplicates]
        self.stale += [f"{label}: {x}" for x in audit.stale]

    @property
    def clean(self) -> bool:
        return not (self.leaks or self.duplicates or self.stale or self.failures)


@dataclass
class Audit:
    leaks: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


class Machine:
    """The host namespace, its state dir, the CLI on them and the independent view of the kernel."""

    def __init__(self, host: str, state: Path, workdir: Path) -> None:
        self.host, self.state, self.workdir = host, state, workdir
        self.env = dict(os.environ, OVERLAYS_HOST_NETNS=host, OVERLAYS_STATE_DIR=str(state))
        from overlays.engine.context import instance_id

        self.instance = instance_id(state, host)
        self.file = workdir / "chaos.yaml"
        self.file.write_text(json.dumps(topology(host.replace("-", ""))))  # JSON is YAML

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "overlays", *args]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    def ip(self, netns: str, *args: str) -> list[dict[str, Any]]:
        out = subprocess.run(["ip", "-j", "-n", netns, *args], capture_output=True, text=True).stdout
        return json.loads(out) if out.strip() else []

    # -- the audit ------------------------------------------------------------------------------------------

    def audit(self) -> Audit:
        from overlays import Engine

        with contextlib.closing(Engine(host_netns=self.host, state_dir=self.state)) as engine:
            boxes, nets = engine.sandboxes(), engine.networks()
        found = Audit()
        self._namespaces(boxes, found)
        self._links(boxes, nets, found)
        self._ports(boxes, found)
        self._processes(boxes, found)
        self._addresses(boxes, nets, found)
        return found

    def _namespaces(self, boxes: list[Any], found: Audit) -> None:
        named = {b.netns for b in boxes}
        mine = {n for n in os.listdir("/run/netns") if n.startswith(f"ov-{self.instance}-")}
        found.leaks += [f"namespace {n} is named by no record" for n in sorted(mine - named)]
        for b in boxes:
            if b.state != "ready" or any(e.state != "ready" for e in b.endpoints):
                found.stale.append(f"sandbox {b.name} is left {b.state}")
            if b.netns not in mine:
                found.stale.append(f"sandbox {b.name}: its namespace {b.netns} is gone")

    def _links(self, boxes: list[Any], nets: list[Any], found: Audit) -> None:
        named = {n.bridge for n in nets} | {e.host_ifname for b in boxes for e in b.endpoints}
        links = {str(link["ifname"]): link for link in self.ip(self.host, "link", "show")}
        for name, link in sorted(links.items()):
            ours = str(link.get("ifalias", "")).startswith(f"overlays:{self.instance}:") or name.startswith(
                ("ovb-", "ovv-", "ovn-", "ovx-"))
            if ours and name not in named:
                found.leaks.append(f"link {name} ({link.get('ifalias')}) is named by no record")
        for name in sorted(named - set(links)):
            found.stale.append(f"link {name} of a record is gone")

    def _ports(self, boxes: list[Any], found: Audit) -> None:
        table = f"overlays_{self.instance}"
        out = subprocess.run(["ip", "netns", "exec", self.host, "nft", "-j", "list", "table", "inet", table],
                             capture_output=True, text=True).stdout
        kernel: Counter[str] = Counter()
        for item in json.loads(out)["nftables"] if out.strip() else []:
            m = item.get("map", {})
            if m.get("name", "").startswith("publish_"):
                for key, _ in m.get("elem", []):
                    kernel[f"{m['name'].rsplit('_', 1)[1]}/{json.dumps(key)}"] += 1
        recorded = Counter(f"{p.protocol}/{json.dumps(p.host_port if p.host_ip is None else None)}"
                           for b in boxes for p in b.ports if p.host_ip is None)
        found.leaks += [f"published port {k} in the nft table but in no record" for k in kernel - recorded]
        found.stale += [f"published port {k} of a record is not in the nft table" for k in recorded - kernel]

    def _processes(self, boxes: list[Any], found: Audit) -> None:
        from overlays.kernel import process, procs

        recorded = {b.name: b.pid for b in boxes if b.pid and process.alive(b.pid, b.pid_start)}
        for pid, name in sorted(procs.tagged(self.instance).items()):
            if recorded.get(name) != pid:
                found.leaks.append(f"process {pid} tagged for sandbox {name} is not its recorded one")

    def _addresses(self, boxes: list[Any], nets: list[Any], found: Audit) -> None:
        per_net: dict[str, Counter[str]] = {n.name: Counter() for n in nets}
        for b in boxes:
            for e in b.endpoints:
                per_net.setdefault(e.network, Counter())[str(e.ip)] += 1
        subnets = {n.name: ipaddress.ip_network(str(n.subnet)) for n in nets}
        in_kernel: dict[str, Counter[str]] = {n: Counter() for n in subnets}
        for b in boxes:
            for link in self.ip(b.netns, "addr", "show"):
                for a in link.get("addr_info", []):
                    for net, subnet in subnets.items():
                        if a.get("family") == "inet" and ipaddress.ip_address(a["local"]) in subnet:
                            in_kernel[net][a["local"]] += 1
        for label, counts in (("records", per_net), ("kernel", in_kernel)):
            for net, counter in counts.items():
                found.duplicates += [f"{ip} on {n} endpoints of {net} ({label})" for ip, n in counter.items() if n > 1]


# -- trials -----------------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    command: Callable[[int], list[str]]  # trial number -> CLI arguments
    recover: Callable[[Machine, int, Tally], None]
    prepare: Callable[[Machine], None] | None = None  # the state the command starts from (the lab is up)
    duration: float = 0.0  # measured once, unkilled


def _must(m: Machine, tally: Tally, *args: str) -> None:
    done = m.cli(*args)
    if done.returncode != 0:
        tally.failures.append(f"overlays {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")


def _doctor_fix(m: Machine, tally: Tally) -> None:
    m.cli("doctor", "--fix")
    after = m.cli("doctor")
    if after.returncode != 0:
        tally.failures.append(f"doctor after --fix: {after.stdout.strip()}")


def _back_up(m: Machine, tally: Tally) -> None:
    _must(m, tally, "up", "-f", str(m.file))
    _must(m, tally, "check", "-f", str(m.file))


def _lab_down(m: Machine) -> None:
    m.cli("down", "-f", str(m.file))


def _recover_up(m: Machine, trial: int, tally: Tally) -> None:
    _back_up(m, tally)


def _recover_down(m: Machine, trial: int, tally: Tally) -> None:
    _doctor_fix(m, tally)


def _recover_then(undo: Callable[[int], list[str]]) -> Callable[[Machine, int, Tally], None]:
    def recover(m: Machine, trial: int, tally: Tally) -> None:
        _doctor_fix(m, tally)
        m.cli(*undo(trial))  # what the killed command may have made (absent: refused, harmless)

    return recover


def scenarios() -> list[Scenario]:
    many = [f"s{i:02d}" for i in range(10, 25)]
    return [
        Scenario("up", lambda t: ["up", "-f", "{file}"], _recover_up, prepare=_lab_down),
        Scenario("down", lambda t: ["down", "-f", "{file}"], _recover_down),
        Scenario("rm", lambda t: ["rm", "-f", *many], _recover_down),
        Scenario("connect", lambda t: ["connect", "back", f"s{5 + t % 20:02d}"],
                 _recover_then(lambda t: ["disconnect", "back", f"s{5 + t % 20:02d}"])),
        Scenario("network create", lambda t: ["network", "create", f"x{t}", "--subnet", f"10.70.{t % 250}.0/24"],
                 _recover_then(lambda t: ["network", "rm", f"x{t}"])),
        Scenario("run -p", lambda t: ["run", "-d", "--name", f"r{t}", "--network", "front", "-p",
                                      f"{9000 + t}:80", "--", "sleep", "300"],
                 _recover_then(lambda t: ["rm", "-f", f"r{t}"])),
    ]


def _args(m: Machine, s: Scenario, trial: int) -> list[str]:
    return [a.replace("{file}", str(m.file)) for a in s.command(trial)]


def measure(m: Machine, s: Scenario) -> None:
    """How long the command takes when nothing kills it (the lab up before and after)."""
    _back_up(m, Tally())
    if s.prepare:
        s.prepare(m)
    t = time.monotonic()
    m.cli(*_args(m, s, 10_000))
    s.duration = time.monotonic() - t
    s.recover(m, 10_000, Tally())
    _back_up(m, Tally())


def trial(m: Machine, s: Scenario, n: int, rng: random.Random, tally: Tally) -> bool:
    """One kill at a random instant of the command; recover; audit. Whether the kill landed."""
    if s.prepare:
        s.prepare(m)
    proc = m.start(*_args(m, s, n))
    time.sleep(rng.uniform(0.0, s.duration))
    landed = proc.poll() is None
    if landed:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    if "Traceback" in err or "internal error" in err:
        tally.failures.append(f"{s.name} #{n}: {err.strip().splitlines()[-1]}")
    s.recover(m, n, tally)
    tally.add(f"{s.name} #{n}", m.audit())
    if s.name != "up":
        _back_up(m, tally)  # the lab as the file says, for the next trial
    return landed


# -- concurrency ------------------------------------------------------------------------------------------------


def stress(m: Machine, commands: int, workers: int, rng: random.Random) -> list[str]:
    """Mixed commands from several workers at once, on a few names so that they collide; the tracebacks."""
    names = [f"c{i}" for i in range(6)]
    plan = []
    for _ in range(commands):
        name = rng.choice(names)
        plan.append(rng.choice([
            ["run", "-d", "--name", name, "--network", "front", "--", "sleep", "300"],
            ["run", "--name", name, "--network", "none"],
            ["rm", "-f", name],
            ["connect", "back", name],
            ["disconnect", "back", name],
            ["connect", "front", name],
        ]))

    def one(args: list[str]) -> str | None:
        done = m.cli(*args)
        text = done.stderr + done.stdout
        # 1 (125 for run) is a refusal a race may well earn ("already exists"); anything else is a bug.
        bad = "Traceback" in text or "internal error" in text or done.returncode not in (0, 1, 125)
        return f"overlays {' '.join(args)} ({done.returncode}): {text.strip()}" if bad else None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        broken = [r for r in pool.map(one, plan) if r]
    for name in names:
        m.cli("rm", "-f", name)
    return broken


# -- the run ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def machine() -> Iterator[Machine]:
    workdir = Path(tempfile.mkdtemp(prefix="overlays-chaos-"))
    host = f"ch{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", host], check=True)
    subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
    m = Machine(host, workdir / "state", workdir)
    try:
        yield m
    finally:
        m.cli("down", "-f", str(m.file))
        for box in json.loads(m.cli("ps", "--json").stdout or "[]"):
            m.cli("rm", "-f", box["name"])
        for net in json.loads(m.cli("network", "ls", "--json").stdout or "[]"):
            m.cli("network", "rm", "-f", net["name"])
        subprocess.run(["ip", "netns", "del", host], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=100, help="kills that land, at least (default 100)")
    p.add_argument("--stress", type=int, default=800, help="commands of the concurrency phase (default 800)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=None)
    return p.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    tally = Tally()
    started = time.monotonic()
    with machine() as m:
        plan = scenarios()
        for s in plan:
            measure(m, s)
            log(f"chaos: {s.name} takes {s.duration * 1000:.0f} ms unkilled")
        n = 0
        per: Counter[str] = Counter()
        while tally.kills < args.kills:
            s = plan[n % len(plan)]
            if trial(m, s, n, rng, tally):
                tally.kills += 1
                per[s.name] += 1
            n += 1
            if n % 10 == 0:
                log(f"chaos: {n} trials, {tally.kills} kills, {len(tally.leaks)} leaks, "
                    f"{len(tally.duplicates)} duplicates, {len(tally.stale)} stale, {len(tally.failures)} failures")
        broken = stress(m, args.stress, args.workers, rng) if args.stress else []
        tally.add("after the concurrent commands", m.audit())
    for line in tally.leaks + tally.duplicates + tally.stale + tally.failures + broken:
        print(f"  {line}")
    print(f"kills per command: {', '.join(f'{k} {v}' for k, v in per.items())} ({n} trials, seed {seed}, "
          f"{time.monotonic() - started:.0f} s)")
    print(f"{args.stress} concurrent commands from {args.workers} workers: {len(broken)} tracebacks or internal "
          "errors")
    print(f"{tally.kills} kills, {len(tally.leaks)} leaks, {len(tally.duplicates)} duplicates, "
          f"{len(tally.stale)} stale records, {len(tally.failures)} failed recoveries")
    return 0 if tally.clean and not broken else 1


if __name__ == "__main__":
    sys.exit(main())
