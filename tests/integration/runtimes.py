"""Real CNI runtimes for tests, each kept off the machine's own configuration and network.

- ``Libcni``: execs an installed plugin exactly as libcni does (the environment, the
  configuration derived from a conflist on stdin, the error JSON read from stdout).
- ``Podman``: Debian's podman 4.3 with its CNI backend, from a private ``containers.conf``
  (``CONTAINERS_CONF``) and ``storage.conf`` (``CONTAINERS_STORAGE_CONF``): vfs storage
  under a temporary root, cgroupfs, runc, capped ulimits, events to a file, and the CNI
  config and plugin dirs of the test. Its image is a tarball of Debian's busybox-static,
  imported (no registry).
- ``Containerd``: containerd 1.6 started by the test inside its host namespace, with its own
  root, state and socket; ``ctr run --cni`` reads the CNI dirs it was built with
  (/etc/cni/net.d, /opt/cni/bin and /usr/lib/cni) and has no option to change them, so it runs
  in a mount namespace of its own where the test's dirs are bind-mounted over those.

Every runtime command runs inside the test's host namespace through ``nsenter --net``
(``ip netns exec`` remounts /sys, and runc then fails with "no cgroup mount found").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from io import BytesIO
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "ip", "ifconfig", "ping", "wget", "nc", "httpd", "sleep", "seq", "cat", "echo", "hostname", "true")
PAGE = "hello from an overlays network\n"  # served by busybox httpd (its wget -T segfaults: do not use it)
IMAGE = "localhost/overlays-busybox:latest"
CNI_CONF_DIR, CNI_BIN_DIRS = Path("/etc/cni/net.d"), (Path("/opt/cni/bin"), Path("/usr/lib/cni"))
REFERENCE_PLUGINS = Path("/usr/lib/cni")


def in_host(host: str, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{host}", *argv]


def missing(*programs: str) -> str | None:
    """None if every program is installed, else a skip reason naming the first missing one."""
    for program in programs:
        if not shutil.which(program) and not Path(program).exists():
            return f"{program} is not installed (the Makefile's APT_PACKAGES bring it)"
    return None


def busybox_rootfs(dest: Path) -> Path:
    """A root file system tarball: Debian's static busybox, its applets, and a page at /www/index.html."""
    with tarfile.open(dest, "w") as tar:
        for folder in ("bin", "www", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), "bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        page = PAGE.encode()
        info = tarfile.TarInfo("www/index.html")
        info.size, info.mode = len(page), 0o644
        tar.addfile(info, BytesIO(page))
    return dest


def docker_archive(dest: Path) -> Path:
    """The busybox root file system as a one-layer image in docker-archive form, for ``ctr image import``."""
    layer = busybox_rootfs(dest.with_suffix(".layer.tar")).read_bytes()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]}})
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [IMAGE], "Layers": ["layer.tar"]}])
    with tarfile.open(dest, "w") as tar:
        for name, data in (("layer.tar", layer), ("config.json", config.encode()), ("manifest.json",
                                                                                  manifest.encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, BytesIO(data))
    return dest


# -- libcni, by hand -------------------------------------------------------------


class Libcni:
    """Execs a conflist's plugin as libcni 1.x does, and checks the protocol's side of each answer."""

    def __init__(self, host: str, bin_dir: Path, conflist: dict[str, Any]) -> None:
        self.host = host
        self.bin_dir = bin_dir
        self.conflist = conflist
        self.plugin = conflist["plugins"][0]

    def config(self, version: str, runtime: Mapping[str, Any] | None = None, prev: dict[str, Any] | None = None,
               **extra: Any) -> bytes:
        """The request configuration (spec, section 3): the plugin object, name and version in, capabilities
        turned into ``runtimeConfig`` for what the runtime provides, the previous result as ``prevResult``."""
        doc = {k: v for k, v in self.plugin.items() if k != "capabilities"}
        doc |= {"cniVersion": version, "name": self.conflist["name"]}
        wanted = {k: v for k, v in (runtime or {}).items() if self.plugin.get("capabilities", {}).get(k)}
        if wanted:
            doc["runtimeConfig"] = wanted
        if prev is not None:
            doc["prevResult"] = prev
        return json.dumps(doc | extra).encode()

    def environment(self, command: str, container_id: str = "", netns: str = "", ifname: str = "eth0",
                    args: str = "") -> dict[str, str]:
        env = dict(os.environ, CNI_COMMAND=command, CNI_PATH=f"{self.bin_dir}:{REFERENCE_PLUGINS}")
        for key, value in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname),
                           ("CNI_ARGS", args)):
            if value:
                env[key] = value
        return env

    def exec(self, env: Mapping[str, str], stdin: bytes, netns_of_plugin: str | None = None,
             ) -> tuple[dict[str, Any] | None, int, str]:
        """(stdout's JSON or None if empty, exit code, stderr); fails the test where the protocol is broken."""
        argv = in_host(netns_of_plugin or self.host, [str(self.bin_dir / "overlays-cni")])
        done = subprocess.run(argv, input=stdin, env=dict(env), capture_output=True, timeout=30)
        stderr = done.stderr.decode(errors="replace")
        doc = json.loads(done.stdout) if done.stdout.strip() else None
        if done.returncode != 0:  # libcni: a failed plugin's error is the JSON on its stdout
            assert doc is not None, f"plugin failed ({done.returncode}) without an error on stdout: {stderr}"
            assert isinstance(doc.get("code"), int) and doc.get("msg"), doc
        return doc, done.returncode, stderr

    def add(self, container_id: str, netns: str, version: str = "1.0.0", args: str = "",
            runtime: Mapping[str, Any] | None = None, ifname: str = "eth0") -> dict[str, Any]:
        doc, code, stderr = self.exec(self.environment("ADD", container_id, netns, ifname, args),
                                      self.config(version, runtime))
        assert code == 0 and doc is not None, f"ADD failed: {doc} {stderr}"
        assert doc["cniVersion"] == version
        return doc

    def delete(self, container_id: str, netns: str = "", version: str = "1.0.0",
               prev: dict[str, Any] | None = None, ifname: str = "eth0") -> None:
        doc, code, stderr = self.exec(self.environment("DEL", container_id, netns, ifname),
                                      self.config(version, prev=prev))
        assert (doc, code) == (None, 0), f"DEL failed: {doc} {stderr}"
        settle(self.host, self.bin_dir)


def settle(host: str, bin_dir: Path) -> None:
    """Return once the DELs answered so far are done. The server answers a DEL first and removes right after,
    before it takes the next request: any verb answered later (here VERSION) comes after the removal."""
    done = subprocess.run(in_host(host, [str(bin_dir / "overlays-cni")]), input=b"{}", capture_output=True,
                          env=dict(os.environ, CNI_COMMAND="VERSION"), timeout=30)
    assert done.returncode == 0, done


# -- the plugin's servers ----------------------------------------------------------------


def cni_servers(netns: str | None = None) -> list[int]:
    """PIDs of this install's overlays-cni servers (only those in network namespace ``netns``, if given)."""
    from overlays.cni import conflist

    key = conflist.install_key(conflist.package_paths()).encode()
    where = os.stat(f"/run/netns/{netns}") if netns else None
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes() if entry.isdigit() else b""
            if b"overlays.cni.server" in argv and key in argv:
                ns = os.stat(f"/proc/{entry}/ns/net")
                if where is None or (ns.st_dev, ns.st_ino) == (where.st_dev, where.st_ino):
                    found.append(int(entry))
        except OSError:
            continue  # it ended meanwhile
    return found


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``condition`` holds within ``timeout`` seconds (for what settles in another process)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def servers_outliving(timeout: float = 10.0) -> list[int]:
    """This install's servers still running after ``timeout`` seconds (each leaves once no attachment remains)."""
    deadline = time.monotonic() + timeout
    while (left := cni_servers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@contextlib.contextmanager
def no_server_outlives_its_attachments() -> Iterator[None]:
    """After a test: no server of ours is left once the test's attachments are gone (those left are killed)."""
    yield
    left = servers_outliving()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"overlays-cni servers left running: {left}"


# -- the outside world, and a page to fetch ---------------------------------------------

HOST_OUT, OUTSIDE = "198.51.100.1", "198.51.100.2"


def outside_peer(make_netns: Callable[[str], str], host: str) -> str:
    """A peer wired to the host by a veth (host at HOST_OUT): it knows the host's address and nothing behind it."""
    name = make_netns("o")
    for argv in (["-n", host, "link", "add", "to-o", "type", "veth", "peer", "name", "eth0", "netns", name],
                 ["-n", host, "addr", "add", f"{HOST_OUT}/24", "dev", "to-o"],
                 ["-n", host, "link", "set", "to-o", "up"],
                 ["-n", name, "addr", "add", f"{OUTSIDE}/24", "dev", "eth0"],
                 ["-n", name, "link", "set", "eth0", "up"]):
        subprocess.run(["ip", *argv], check=True)
    return name


def fetch(netns: str, url: str, tries: int = 50) -> str:
    """The page at ``url`` as seen from ``netns`` ("" if it never answers); retried while a server starts."""
    for _ in range(tries):
        done = subprocess.run(["ip", "netns", "exec", netns, str(BUSYBOX), "wget", "-q", "-O", "-", url],
                              capture_output=True, text=True, timeout=10)
        if done.returncode == 0:
            return done.stdout
        time.sleep(0.1)
    return ""


@contextlib.contextmanager
def serving(netns: str, scratch: Path, port: int = 80) -> Iterator[str]:
    """busybox httpd serving PAGE on ``port`` inside ``netns`` (stopped after); yields the page."""
    www = scratch / f"www-{netns}"
    www.mkdir()
    (www / "index.html").write_text(PAGE)
    server = subprocess.Popen(["ip", "netns", "exec", netns, str(BUSYBOX), "httpd", "-f", "-p", str(port), "-h",
                               str(www)])
    try:
        assert fetch(netns, f"http://127.0.0.1:{port}/") == PAGE, "httpd did not start"
        yield PAGE
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- podman ------------------------------------------------------------------------


class Podman:
    """podman 4.3 with the CNI backend, private configuration and storage under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage_conf = root / "storage.conf"
        self.storage_conf.write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/storage"\nrunroot = "{root}/run"\n')

    @staticmethod
    def unavailable() -> str | None:
        return missing("podman", "runc", "conmon", "nsenter", str(BUSYBOX))

    def configure(self, conf_dir: Path, bin_dir: Path) -> dict[str, str]:
        """The environment of podman commands that use these CNI dirs."""
        conf = conf_dir.parent / "containers.conf"
        conf.write_text("\n".join([
            "[containers]",
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]',  # runc cannot set the machine's
            "[engine]",
            'cgroup_manager = "cgroupfs"',
            'runtime = "runc"',
            'events_logger = "file"',
            f'events_logfile_path = "{self.root}/events.log"',
            f'tmp_dir = "{self.root}/tmp"',
            "[network]",
            'network_backend = "cni"',
            f'network_config_dir = "{conf_dir}"',
            f'cni_plugin_dirs = ["{bin_dir}", "{REFERENCE_PLUGINS}"]',
            "",
        ]))
        return dict(os.environ, CONTAINERS_CONF=str(conf), CONTAINERS_STORAGE_CONF=str(self.storage_conf))

    def run(self, host: str, env: Mapping[str, str], *args: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(in_host(host, ["podman", *args]), env=dict(env), capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def import_image(self, host: str, env: Mapping[str, str]) -> None:
        if self.run(host, env, "image", "exists", IMAGE, check=False).returncode != 0:
            tarball = busybox_rootfs(self.root / "busybox-rootfs.tar")
            self.run(host, env, "import", str(tarball), IMAGE)

    def save_image(self, host: str, env: Mapping[str, str], dest: Path) -> Path:
        """The image as a docker archive, for ``ctr image import``."""
        if not dest.exists():
            self.run(host, env, "save", "--format", "docker-archive", "-o", str(dest), IMAGE)
        return dest

    def remove_all(self, host: str, env: Mapping[str, str]) -> None:
        self.run(host, env, "rm", "--all", "--force", "--time", "0", check=False)


# -- containerd ------------------------------------------------------------------------


def root_mount_is_private() -> bool:
    """Whether mounts made under / in a new mount namespace stay there (/run/netns, shared, still propagates)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return not any(f.startswith("shared:") for f in fields[6:fields.index("-")])
    return False


class Containerd:
    """A containerd of the test's own, inside its host namespace, and ``ctr`` against it."""

    def __init__(self, root: Path, host: str) -> None:
        self.root = root
        self.host = host
        self.socket = root / "c.sock"  # a unix socket's path has room for 107 bytes
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def unavailable() -> str | None:
        reason = missing("containerd", "ctr", "runc", "unshare", "nsenter", str(BUSYBOX))
        if reason:
            return reason
        if not CNI_CONF_DIR.is_dir():
            return f"ctr reads {CNI_CONF_DIR} and nothing else, and it does not exist here to mount over"
        if not root_mount_is_private():
            return "/ is a shared mount: bind mounts over ctr's CNI dirs would reach the machine's own"
        return None

    def start(self) -> None:
        config = self.root / "config.toml"
        config.write_text("\n".join([
            "version = 2",
            f'root = "{self.root}/root"',
            f'state = "{self.root}/state"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',  # no Kubernetes: no CNI of its own
            "[grpc]",
            f'  address = "{self.socket}"',
            "[ttrpc]",
            f'  address = "{self.socket}.ttrpc"',
            "",
        ]))
        log = open(self.root / "containerd.log", "wb")  # noqa: SIM115  # closed with the process
        self.process = subprocess.Popen(in_host(self.host, ["containerd", "--config", str(config)]),
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while self.ctr("version", check=False).returncode != 0:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"containerd did not start: {(self.root / 'containerd.log').read_text()}")
            time.sleep(0.05)

    def ctr(self, *args: str, check: bool = True, timeout: float = 60, argv_prefix: tuple[str, ...] = (),
            ) -> subprocess.CompletedProcess[str]:
        argv = [*argv_prefix, *in_host(self.host, ["ctr", "--address", str(self.socket), *args])]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def import_image(self, archive: Path) -> None:
        self.ctr("image", "import", "--snapshotter", "native", str(archive))

    def run_with_cni(self, conf_dir: Path, bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """``ctr run --cni ARGS`` in a mount namespace where ctr's CNI dirs are the test's."""
        mounts = [f"mount --bind {conf_dir} {CNI_CONF_DIR}"]
        mounts += [f"mount --bind {bin_dir} {d}" for d in CNI_BIN_DIRS if d.is_dir()]
        inner = " && ".join([*mounts, 'exec "$@"'])
        prefix = ("unshare", "--mount", "--propagation", "unchanged", "sh", "-c", inner, "sh")
        return self.ctr("run", "--cni", "--snapshotter", "native", *args, check=False, argv_prefix=prefix)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            for task in self.ctr("task", "ls", "-q", check=False).stdout.split():
                self.ctr("task", "rm", "--force", task, check=False)
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextlib.contextmanager
def containerd(root: Path, host: str) -> Iterator[Containerd]:
    daemon = Containerd(root, host)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
