"""CNI plugin mode: ADD and DEL per container, overlays-cni against the reference chains, exec'd as a runtime does.

One worker process holds a host namespace per subject and execs every plugin from
a thread that lives in that host namespace (children inherit it: no ``ip netns
exec`` process in between), with the CNI environment and the request configuration
on stdin, as libcni does; DEL gets the ADD's result as ``prevResult``. The runtime's
part (creating and deleting each container's namespace) is untimed.

- ``overlays-cni``: the installed plugin (the launcher ``overlays cni install`` writes: a thin
  client under ``python -I -S`` handing each verb to a resident server of ours, which the first
  ADD starts and the last DEL ends) on an overlays bridge network;
- ``overlays-cni one-shot``: the same verbs done in the exec'd process itself, as the launcher's
  fallback does them when no server answers (``-I -S``, bytecode cached; no server started);
- ``cni``: the reference chain bridge + host-local (Debian's /usr/lib/cni, ipMasq off:
  overlays masquerades per network, not per container);
- ``overlays-cni+port`` / ``cni+portmap``: the same with one published port per container
  (``runtimeConfig.portMappings``; the reference chain runs portmap after bridge, and
  before it on DEL);
- ``overlays-cni resident``: the verbs through ``protocol.handle`` in the worker itself, from
  the host namespace's thread: the server's share of an ADD or DEL, without exec or socket;
- floors: ``python -c pass`` with the plugin's interpreter, ``python -c "import ..."`` of
  what one ADD imports (read from ``-X importtime``), ``python -I -S`` importing what the
  thin client imports, and a Go plugin's VERSION.

After the DEL phase the benchmark checks that the servers are gone (no attachment left:
the server must not outlive them).

Containers 0..N-1 are added in interleaved order (subject order rotated at each i), then
deleted the same way, so drifts in machine load hit every subject alike; floors are
sampled in the same loop. Targets of the issue: without ports, ADD <= 3x bridge +
host-local; with one published port, ADD <= 0.5x and DEL <= 0.2x the portmap chain.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import netns
from benchmarks.harness import Row, Run, Verdict, WorkerFailed, check, median, ms, now_ns, percentile, run_worker

if TYPE_CHECKING:
    from overlays import Engine

NAME = "cni"
OURS, REFERENCE, OURS_PORT, REFERENCE_PORT = "overlays-cni", "cni", "overlays-cni+port", "cni+portmap"
RESIDENT, ONE_SHOT = "overlays-cni resident", "overlays-cni one-shot"
ORDER = [OURS, REFERENCE, OURS_PORT, REFERENCE_PORT, ONE_SHOT, RESIDENT]
SERVED = (OURS, OURS_PORT)  # the subjects whose verbs a server of ours answers
FLOOR_PY, FLOOR_IMPORTS, FLOOR_GO = "python -c pass", "python: ADD's imports", "Go plugin VERSION"
FLOOR_THIN = "python -I -S: the thin client's imports"
CNI_BIN = Path("/usr/lib/cni")
PORT_BASE, CONTAINER_PORT = 30000, 80
NETWORK = "bench"

ADD_VS_REFERENCE = 3.0        # without ports: ADD <= 3x bridge + host-local
ADD_VS_PORTMAP = 0.5          # with one port: ADD <= 0.5x bridge + host-local + portmap
DEL_VS_PORTMAP = 0.2          # with one port: DEL <= 0.2x


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(NAME)
    g.add_argument("--cni-n", type=int, metavar="N", help="containers per subject (default 100; --quick 10)")


# -- the subjects ------------------------------------------------------------------


class Chain:
    """One subject: its host namespace, a thread inside it, and the plugins it execs per container."""

    name = "chain"
    publishes = False

    def __init__(self, host: str, subnet: str, workdir: Path, env: dict[str, str]) -> None:
        self.host, self.subnet, self.workdir = host, subnet, workdir
        self.thread = netns.NsThread(netns.path_of(host))
        self.env = env
        self.results: dict[int, Any] = {}

    def container(self, i: int) -> str:
        return f"{self.host}-c{i}"

    def exec(self, plugin: Path, command: str, i: int, conf: dict[str, Any]) -> tuple[int, bytes]:
        """One plugin run as libcni does it; returns (ns it took, stdout)."""
        return self.exec_argv([str(plugin)], plugin, command, i, conf)

    def exec_argv(self, argv: list[str], plugin: Path, command: str, i: int, conf: dict[str, Any],
                  ) -> tuple[int, bytes]:
        env = self.env | {"CNI_COMMAND": command, "CNI_CONTAINERID": f"bench{i:08d}", "CNI_IFNAME": "eth0",
                          "CNI_NETNS": str(netns.path_of(self.container(i))), "CNI_PATH": str(plugin.parent)}

        def run() -> tuple[int, subprocess.CompletedProcess[bytes]]:
            t = now_ns()
            done = subprocess.run(argv, input=json.dumps(conf).encode(), env=env, capture_output=True)
            return now_ns() - t, done

        took, done = self.thread.call(run)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name} {plugin.name} {command} failed: {(done.stdout + done.stderr)[:400]!r}")
        return took, done.stdout

    def port(self, i: int) -> list[dict[str, Any]]:
        return [{"hostPort": PORT_BASE + i, "containerPort": CONTAINER_PORT, "protocol": "tcp"}]

    def prepare(self) -> None:
        raise NotImplementedError

    def add(self, i: int) -> int:
        """Add container i to the network; returns the ns the plugin execs took."""
        raise NotImplementedError

    def delete(self, i: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        self.thread.close()


class Reference(Chain):
    """bridge + host-local (+ portmap), each exec'd in turn as libcni runs a conflist."""

    name = REFERENCE

    def prepare(self) -> None:
        self.bridge = {
            "cniVersion": "1.0.0", "name": NETWORK, "type": "bridge", "bridge": "cni0", "isGateway": True,
            "ipMasq": False, "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.workdir / "host-local")},
        }

    def portmap(self, i: int, prev: Any) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": NETWORK, "type": "portmap", "runtimeConfig": {"portMappings":
                self.port(i)}, "prevResult": prev}

    def add(self, i: int) -> int:
        took, out = self.exec(CNI_BIN / "bridge", "ADD", i, self.bridge)
        self.results[i] = json.loads(out)
        if self.publishes:
            more, out = self.exec(CNI_BIN / "portmap", "ADD", i, self.portmap(i, self.results[i]))
            took += more
            self.results[i] = json.loads(out)
        return took

    def delete(self, i: int) -> int:
        prev = self.results.pop(i)
        took = self.exec(CNI_BIN / "portmap", "DEL", i, self.portmap(i, prev))[0] if self.publishes else 0
        return took + self.exec(CNI_BIN / "bridge", "DEL", i, self.bridge | {"prevResult": prev})[0]


class ReferencePortmap(Reference):
    name = REFERENCE_PORT
    publishes = True


class Ours(Chain):
    """overlays-cni, installed as ``overlays cni install`` installs it, on an overlays bridge network."""

    name = OURS

    def prepare(self) -> None:
        from overlays import Engine, NetworkSpec
        from overlays.cni import conflist

        state = self.workdir / "state"
        with Engine(host_netns=self.host, state_dir=state) as engine:
            engine.create_network(NetworkSpec.parse(NETWORK, subnet=self.subnet))
            doc = conflist.build(NETWORK, state_dir=state.resolve(), store=None, node=engine.ctx.node,
                                 host_netns=self.host)
        _, self.plugin = conflist.install(doc, self.workdir / "net.d", self.workdir / "bin", conflist.launcher())
        conflist.compile_package()
        self.conf = {k: v for k, v in doc["plugins"][0].items() if k != "capabilities"}
        self.conf |= {"cniVersion": doc["cniVersion"], "name": NETWORK}
        self.completed = []

    completed: list[int]
    watcher: Engine | None = None

    def request(self, i: int) -> dict[str, Any]:
        return self.conf | ({"runtimeConfig": {"portMappings": self.port(i)}} if self.publishes else {})

    def add(self, i: int) -> int:
        took, out = self.exec(self.plugin, "ADD", i, self.request(i))
        self.results[i] = json.loads(out)
        return took

    def delete(self, i: int) -> int:
        prev = self.results.pop(i)
        start = now_ns()
        took = self.exec(self.plugin, "DEL", i, self.request(i) | {"prevResult": prev})[0]
        if self.name in SERVED:  # answered before the removal is done: also time until its record is gone
            self.thread.call(lambda: self._wait_forgotten(i))
            self.completed.append(now_ns() - start)
        return took

    def _wait_forgotten(self, i: int, timeout: float = 5.0) -> None:
        """Until container i's sandbox record is gone: the store forgets it once its kernel objects are."""
        from overlays import Engine, NotFound
        from overlays.cni import names

        if self.watcher is None:
            self.watcher = Engine(host_netns=self.host, state_dir=self.workdir / "state")
        name = names.sandbox_name(f"bench{i:08d}", "eth0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.watcher.sandbox(name)
            except NotFound:
                return
            time.sleep(0.0005)
        raise RuntimeError(f"sandbox {name} still recorded {timeout} s after DEL")

    def close(self) -> None:
        from overlays import Engine

        if self.watcher is not None:
            self.watcher.close()
        with contextlib.suppress(Exception), Engine(host_netns=self.host, state_dir=self.workdir / "state") as eng:
            for box in eng.sandboxes():  # after a failure: what DEL did not remove
                eng.remove_sandbox(box.name, force=True)
            eng.remove_network(NETWORK, force=True)
        super().close()


class OursPort(Ours):
    name = OURS_PORT
    publishes = True


def one_shot_argv() -> list[str]:
    """The plugin done in the exec'd process, as the launcher's fallback does it (but starting no server)."""
    from overlays.cni import conflist

    code = (f"import sys; sys.path[:0] = {conflist.package_paths()!r}; from overlays.cni.main import main; "
            "sys.exit(main())")
    return [sys.executable, "-I", "-S", "-c", code]


class OneShot(Ours):
    """No server: every verb pays the interpreter, the imports and opening the store."""

    name = ONE_SHOT

    def exec(self, plugin: Path, command: str, i: int, conf: dict[str, Any]) -> tuple[int, bytes]:
        return self.exec_argv(one_shot_argv(), plugin, command, i, conf)


class Resident(Ours):
    """The same verbs through ``protocol.handle`` in this (warm) process: what a resident helper would pay."""

    name = RESIDENT

    def exec(self, plugin: Path, command: str, i: int, conf: dict[str, Any]) -> tuple[int, bytes]:
        from overlays.cni import plugin as engine_plugin
        from overlays.cni import protocol

        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"bench{i:08d}", "CNI_IFNAME": "eth0",
               "CNI_NETNS": str(netns.path_of(self.container(i))), "CNI_PATH": str(plugin.parent)}
        stdin = json.dumps(conf).encode()

        def run() -> tuple[int, tuple[bytes, int]]:
            t = now_ns()
            answer = protocol.handle(env, stdin, engine_plugin.open_backend)
            return now_ns() - t, answer

        took, (out, code) = self.thread.call(run)
        if code != 0:
            raise RuntimeError(f"{self.name} {command} failed: {out[:400]!r}")
        return took, out


SUBJECTS: dict[str, type[Chain]] = {c.name: c for c in (Ours, Reference, OursPort, ReferencePortmap, OneShot,
                                                         Resident)}


# -- checks and floors (untimed parts) -------------------------------------------


def _wired(sub: Chain, i: int) -> bool:
    """eth0 of container i is up with an address and a default route (``ip -j``, an independent view)."""
    def ipj(*args: str) -> Any:
        out = subprocess.run(["ip", "-j", "-n", sub.container(i), *args], capture_output=True, text=True).stdout
        return json.loads(out or "[]")

    eth0 = [a for a in ipj("addr", "show") if a["ifname"] == "eth0" and a.get("addr_info")]
    return bool(eth0) and any(r.get("dst") == "default" for r in ipj("route", "show"))


def _port_answers(sub: Chain, i: int) -> bool:
    """A connection from the host to the gateway address and container i's host port reaches container i."""
    gateway = sub.subnet.rsplit(".", 1)[0] + ".1"

    def listen() -> socket.socket:
        netns.setns(netns.path_of(sub.container(i)))
        return socket.create_server(("0.0.0.0", CONTAINER_PORT))

    def connect() -> None:
        netns.setns(netns.path_of(sub.host))
        socket.create_connection((gateway, PORT_BASE + i), timeout=2).close()

    listener = netns.in_thread(listen)
    try:
        listener.settimeout(2)
        netns.in_thread(connect)
        listener.accept()[0].close()
        return True
    except OSError:
        return False
    finally:
        listener.close()


def _server_stays(sub: Chain) -> bool:
    """Whether the server of the subject's host still answers 5 s after its last attachment went."""
    from overlays.cni import client, conflist

    where = client.address(conflist.install_key(conflist.package_paths()))

    def answers() -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(where)
                return True
            except OSError:
                return False

    deadline = now_ns() + 5 * 10**9
    while sub.thread.call(answers):  # an abstract socket is the network namespace's: ask from the host's
        if now_ns() > deadline:
            return True
        time.sleep(0.05)
    return False


def _imports_of_add(sub: Ours, env: dict[str, str]) -> tuple[list[str], dict[str, float]]:
    """One more ADD under ``-X importtime`` (untimed, after a warm-up ADD that fills the bytecode cache):
    the top-level modules it imports, and the costliest packages (self times added up, ms)."""
    i = 10**6
    netns.create(sub.container(i))
    try:
        conf = json.dumps(sub.request(i))
        cenv = env | {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "importtime", "CNI_IFNAME": "eth0",
                      "CNI_NETNS": str(netns.path_of(sub.container(i))), "CNI_PATH": str(sub.plugin.parent)}
        plain = one_shot_argv()
        for argv in (plain, [plain[0], "-X", "importtime", *plain[1:]]):

            def add(argv: list[str] = argv) -> subprocess.CompletedProcess[str]:
                return subprocess.run(argv, input=conf, env=cenv, capture_output=True, text=True)

            done = sub.thread.call(add)
            sub.exec(sub.plugin, "DEL", i, sub.request(i))
    finally:
        netns.delete(sub.container(i))
    top: list[str] = []
    by_origin: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            own, _, name = line.removeprefix("import time:").split("|")
            module = name.strip()
            if not name[1:].startswith(" ") and module not in ("site", "encodings") and not module.startswith("_"):
                top.append(module)
            origin = ".".join(module.split(".")[:2]) if module.startswith("overlays.") else module.split(".")[0]
            by_origin[origin] = by_origin.get(origin, 0.0) + int(own) / 1000
    return top, dict(sorted(by_origin.items(), key=lambda kv: -kv[1])[:14])


@contextlib.contextmanager
def _subjects(spec: dict[str, Any], env: dict[str, str]) -> Iterator[dict[str, Chain]]:
    made: dict[str, Chain] = {}
    try:
        for name in spec["subjects"]:
            made[name] = SUBJECTS[name](spec["hosts"][name], spec["subnet"], Path(spec["workdirs"][name]), env)
            made[name].prepare()
        yield made
    finally:
        for sub in made.values():
            sub.close()


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """ADD then DEL of spec["n"] containers per subject, interleaved; floors sampled in the same loop."""
    n = spec["n"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = spec["pycache"]  # bytecode cached as a user's would be, without touching the tree
    times: dict[str, dict[str, list[int]]] = {s: {"add": [], "del": []} for s in spec["subjects"]}
    floors: dict[str, list[int]] = {FLOOR_PY: [], FLOOR_IMPORTS: [], FLOOR_THIN: [], FLOOR_GO: []}
    result: dict[str, Any] = {}
    with _subjects(spec, env) as subs:
        ours = next((s for s in subs.values() if isinstance(s, OneShot)), None)
        imports, by_origin = _imports_of_add(ours, env) if ours else ([], {})
        result["imports_by_origin"] = by_origin
        floor_argv = {FLOOR_PY: [sys.executable, "-c", "pass"],
                      FLOOR_IMPORTS: [sys.executable, "-c", "import " + ", ".join(imports or ["json"])],
                      FLOOR_THIN: [sys.executable, "-I", "-S", "-c", "import _socket, posix"],
                      FLOOR_GO: [str(CNI_BIN / "bridge")]}
        genv = env | {"CNI_COMMAND": "VERSION"}
        order = list(subs)
        try:
            for phase in ("add", "del"):
                for i in range(n):
                    rotated = order[i % len(order):] + order[: i % len(order)]
                    for name in rotated:
                        if phase == "add":
                            netns.create(subs[name].container(i))
                            times[name]["add"].append(subs[name].add(i))
                        else:
                            times[name]["del"].append(subs[name].delete(i))
                            netns.delete(subs[name].container(i))
                    if phase == "del" and i == n - 1:
                        result["servers_left"] = [s for s in SERVED if s in subs and _server_stays(subs[s])]
                    if phase == "add":
                        for label, argv in floor_argv.items():
                            t = now_ns()
                            subprocess.run(argv, env=genv if label == FLOOR_GO else env, capture_output=True,
                                           stdin=subprocess.DEVNULL)
                            floors[label].append(now_ns() - t)
                    if phase == "add" and i == n - 1:
                        result["verify"] = {name: _verify(sub, n) for name, sub in subs.items()}
        finally:
            for sub in subs.values():
                for i in range(n + 1):
                    if netns.path_of(sub.container(i)).exists():
                        netns.delete(sub.container(i))
    completed = {name: sub.completed for name, sub in subs.items() if isinstance(sub, Ours) and sub.completed}
    return result | {"times": times, "floors": floors, "imports": imports, "completed": completed}


def _verify(sub: Chain, n: int) -> dict[str, Any]:
    first_last = sorted({0, n - 1})
    wired = all(_wired(sub, i) for i in first_last)
    port = all(_port_answers(sub, i) for i in first_last) if sub.publishes else None
    return {"wired": wired, "port_answers": port}


# -- the parent: hosts, rows, verdicts ----------------------------------------------


def _available() -> str | None:
    for path in (CNI_BIN / "bridge", CNI_BIN / "host-local", CNI_BIN / "portmap"):
        if not path.exists():
            return f"{path} missing (run scripts/install-bench-deps)"
    if not (Path(sys.executable).parent / "overlays-cni").exists():
        return "overlays-cni is not installed beside this Python (pip install -e .)"
    return None


def _collect(run: Run, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        hosts, workdirs = {}, {}
        for name in ORDER:
            hosts[name] = stack.enter_context(run.host("cn"))
            workdirs[name] = str(run.scratch(hosts[name]))
            if name.startswith(OURS):
                run.add_engine(Path(workdirs[name]) / "state", hosts[name])
        spec = {"n": n, "subjects": ORDER, "hosts": hosts, "workdirs": workdirs, "subnet": "10.79.0.0/16",
                "pycache": str(run.scratch("cni-pycache"))}
        try:
            return run_worker("cni", spec, timeout=60 + n * 10)
        finally:
            run.sweep()


def _row(subject: str, n: int, metric: str, samples: list[int], note: str = "") -> Row:
    return Row(NAME, subject, n, metric, ms(median(samples)), "ms", note=note)


def rows(res: dict[str, Any], n: int) -> list[Row]:
    out: list[Row] = []
    times, floors, verify = res["times"], res["floors"], res.get("verify", {})
    for subject in ORDER:
        v = verify.get(subject, {})
        notes = [f"median of {n}, interleaved with the other subjects",
                 f"first and last container wired: {v.get('wired')}"]
        if v.get("port_answers") is not None:
            notes.append(f"their published port answers: {v['port_answers']}")
        if subject == RESIDENT:
            notes.append("protocol.handle in the worker, no exec and no socket: the server's share of each verb")
        if subject in SERVED:
            notes.append("through the thin client and a server of ours; the server outlived the last DEL: "
                         f"{subject in res.get('servers_left', [])}")
        if subject == ONE_SHOT:
            notes.append("each verb in the exec'd process (python -I -S, bytecode cached): what the launcher's "
                         "fallback pays when no server answers")
        base = REFERENCE_PORT if subject in (OURS_PORT, REFERENCE_PORT) else REFERENCE
        for phase, metric in (("add", "add_median"), ("del", "del_median")):
            row = _row(subject, n, metric, times[subject][phase], "; ".join(notes))
            if subject != base:
                row.with_baseline(ms(median(times[base][phase])), base)
            out.append(row)
            out.append(Row(NAME, subject, n, metric.replace("median", "p90"), ms(percentile(times[subject][phase],
                                                                                             90)), "ms"))
    py = ms(median(floors[FLOOR_PY]))
    where = ", ".join(f"{m} {t:.1f} ms" for m, t in res.get("imports_by_origin", {}).items())
    for label, samples in floors.items():
        note = {FLOOR_PY: "the plugin's interpreter, started and stopped",
                FLOOR_IMPORTS: f"the {len(res['imports'])} top-level modules one ADD imports; their import time "
                               f"(-X importtime, self times by package, one warm run): {where}",
                FLOOR_THIN: "no site, only json, os and socket: the floor of a thin client of a resident helper",
                FLOOR_GO: "the reference bridge plugin answering VERSION: a Go binary's start"}[label]
        row = _row(label, n, "wall_median", samples, note)
        out.append(row.with_baseline(py, FLOOR_PY) if label != FLOOR_PY else row)
    one_shot_add = ms(median(times[ONE_SHOT]["add"]))
    imports = ms(median(floors[FLOOR_IMPORTS]))
    out.append(Row(NAME, ONE_SHOT, n, "add_minus_imports", one_shot_add - imports, "ms",
                   note="the one-shot ADD's median less the import floor's: the engine's work (store, netlink, "
                        "nft) and the plugin's own"))
    for subject in SERVED:
        done = res.get("completed", {}).get(subject)
        if done:
            out.append(Row(NAME, subject, n, "del_completed_median", ms(median(done)), "ms",
                           note="from the DEL's exec until the store forgets the sandbox (after its kernel objects): "
                                "the server answers DEL first and removes the sandbox right after, before it takes "
                                "the next request"))
    return out + _targets(times, n)


def _targets(times: dict[str, dict[str, list[int]]], n: int) -> list[Row]:
    def fig(subject: str, phase: str) -> float:
        return ms(median(times[subject][phase]))

    def row(subject: str, metric: str, phase: str, base: str) -> Row:
        return Row("target", subject, n, metric, fig(subject, phase), "ms").with_baseline(fig(base, phase), base)

    out = [check(row(OURS, "add_median", "add", REFERENCE), ADD_VS_REFERENCE,
                 f"ratio <= {ADD_VS_REFERENCE:g} (ADD within 3x of bridge + host-local)", on_ratio=True)]
    for metric, phase, limit in (("add_median", "add", ADD_VS_PORTMAP), ("del_median", "del", DEL_VS_PORTMAP)):
        out.append(check(row(OURS_PORT, metric, phase, REFERENCE_PORT), limit,
                         f"ratio <= {limit:g} vs bridge + host-local + portmap", on_ratio=True))
        out.append(row(OURS, metric, phase, REFERENCE_PORT))  # shown: the headroom without ports
    return out


def verdicts(target_rows: list[Row]) -> list[Verdict]:
    out = []
    for r in target_rows:
        if r.target is None:
            continue
        figure = f"{r.value:.1f} ms vs {r.baseline_subject} {r.baseline:.1f} ms = {r.ratio:.2f}x at N={r.n}"
        out.append(Verdict(f"{NAME} {r.subject} {r.metric} {r.target}", r.met,
                           figure + (f" ({r.note})" if r.note else "")))
    return out


def run(run: Run, args: argparse.Namespace, log: Callable[[str], None]) -> tuple[list[Row], list[Verdict]]:
    why = _available()
    if why:
        log(f"  cni: skipped, {why}")
        return [Row(NAME, OURS, None, "skipped", None, "", note=why)], []
    n = args.cni_n or (10 if args.quick else 100)
    try:
        res = _collect(run, n, log)
    except WorkerFailed as e:
        log(f"  cni: FAILED: {e}")
        return [Row(NAME, OURS, n, "failed", None, "", note=str(e))], []
    med = {s: (ms(median(t["add"])), ms(median(t["del"]))) for s, t in res["times"].items()}
    left = res.get("servers_left", [])
    log("  cni: " + "; ".join(f"{s} ADD {a:.1f} / DEL {d:.1f} ms" for s, (a, d) in med.items())
        + f"; python floor {ms(median(res['floors'][FLOOR_PY])):.1f} ms")
    all_rows = rows(res, n)
    gone = Verdict(f"{NAME} servers end with the last attachment", not left,
                   f"a server still answered 5 s after the last DEL on {', '.join(left)}" if left else
                   "no server answered after the last DEL")
    return all_rows, [*verdicts([r for r in all_rows if r.benchmark == "target"]), gone]
