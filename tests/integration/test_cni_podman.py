"""Debian's podman 4.3, CNI backend, putting its containers on an overlays network (inside a host namespace).

The network is made with the overlays CLI and installed with ``overlays cni install``
into CNI dirs of the test's own; podman reads them through a private containers.conf
(see ``runtimes.Podman``). Containers run Debian's static busybox.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlays import Engine

from .conftest import Cli, ip_json, sh
from .runtimes import HOST_OUT, IMAGE, PAGE, Podman, fetch, no_server_outlives_its_attachments, outside_peer, settle

SUBNET = "10.62.0.0/24"


@pytest.fixture(autouse=True)
def no_server_left() -> Iterator[None]:
    """Torn down after the test's own fixtures: its attachments are gone, and so must its servers be."""
    with no_server_outlives_its_attachments():
        yield


@pytest.fixture(scope="session")
def podman_root(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    reason = Podman.unavailable()
    if reason:
        pytest.skip(reason)
    return Podman(tmp_path_factory.mktemp("podman"))


@dataclass
class Pod:
    """podman on the test's host, configured to see the test's overlays network ``front``."""

    podman: Podman
    host: str
    env: dict[str, str]
    bin_dir: Path

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = self.podman.run(self.host, self.env, *args, check=check)
        if args[0] in ("rm", "run"):  # commands that may DEL: wait until what they asked is done
            settle(self.host, self.bin_dir)
        return done

    def ip_of(self, container: str) -> str:
        return self("inspect", container, "--format", "{{.NetworkSettings.Networks.front.IPAddress}}").stdout.strip()


@pytest.fixture
def pod(podman_root: Podman, cli: Cli, host: str, tmp_path: Path) -> Iterator[Pod]:
    cli("network", "create", "front", "--subnet", SUBNET, check=True)
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    cli("cni", "install", "front", "--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir), check=True)
    env = podman_root.configure(conf_dir, bin_dir)
    podman_root.import_image(host, env)
    yield Pod(podman_root, host, env, bin_dir)
    podman_root.remove_all(host, env)  # before the host namespace goes: DEL runs in it
    settle(host, bin_dir)  # and before the CLI's clean-up looks: what those DELs asked is done


def sandboxes(host: str, state_dir: Path) -> list[str]:
    with Engine(host_netns=host, state_dir=state_dir) as eng:
        return [b.name for b in eng.sandboxes()]


def test_podman_lists_the_network(pod: Pod) -> None:
    names = pod("network", "ls", "--format", "{{.Name}} {{.Driver}}").stdout.splitlines()
    assert "front overlays-cni" in names


def test_podman_run_gets_an_address_and_containers_reach_each_other(pod: Pod, host: str, state_dir: Path) -> None:
    pod("run", "-d", "--name", "web", "--network", "front", "-p", "8080:80", IMAGE, "httpd", "-f", "-p", "80",
        "-h", "/www")
    web_ip = pod.ip_of("web")
    assert web_ip.startswith("10.62.0.")
    # podman's view, overlays' view and the kernel's agree.
    with Engine(host_netns=host, state_dir=state_dir) as eng:
        (box,) = eng.sandboxes()
        assert box.adopted and str(box.endpoints[0].ip) == web_ip
        assert eng.network("front")[1] == [box.name]
    inside = pod("exec", "web", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert f"inet {web_ip}/24" in inside
    assert ip_json(host, "link", "show", box.endpoints[0].host_ifname)[0]["master"] == "ovb-front"
    # A second container reaches the first over the network, by address (httpd may still be starting).
    fetch = f"for i in $(seq 50); do wget -q -O - http://{web_ip}/ && exit 0; sleep 0.1; done; exit 1"
    got = pod("run", "--rm", "--network", "front", IMAGE, "sh", "-c", fetch)
    assert got.stdout == PAGE
    assert sandboxes(host, state_dir) == [box.name], "run --rm took its attachment away again"
    # The host reaches it too (the bridge holds the gateway).
    assert sh(host, "busybox", "wget", "-q", "-O", "-", f"http://{web_ip}/").stdout == PAGE


def test_podman_rm_leaves_nothing_in_the_store_or_the_kernel(pod: Pod, host: str, state_dir: Path) -> None:
    pod("run", "-d", "--name", "one", "--network", "front", "--ip", "10.62.0.40", IMAGE, "sleep", "600")
    assert pod.ip_of("one") == "10.62.0.40"
    netns = json.loads(pod("inspect", "one").stdout)[0]["NetworkSettings"]["SandboxKey"]
    pod("rm", "--force", "--time", "0", "one")
    assert sandboxes(host, state_dir) == []
    assert [str(link["ifname"]) for link in ip_json(host, "link", "show")] == ["lo", "ovb-front"]
    assert not Path(netns).exists(), "podman deleted its namespace, and nothing of ours kept a name for it"
    with Engine(host_netns=host, state_dir=state_dir) as eng:
        assert eng.network("front")[1] == []
        left = [n for n in Path("/run/netns").iterdir() if n.name.startswith(f"ov-{eng.ctx.instance}-")]
    assert left == []


def test_a_0_4_0_conflist_as_podman_writes_them(pod: Pod, tmp_path: Path) -> None:
    path = tmp_path / "net.d" / "overlays-front.conflist"
    doc = json.loads(path.read_text())
    del doc["cniVersions"]
    path.write_text(json.dumps(doc | {"cniVersion": "0.4.0"}))
    pod("run", "-d", "--name", "old", "--network", "front", IMAGE, "sleep", "600")
    ip = pod.ip_of("old")
    assert ip.startswith("10.62.0.")
    assert f"inet {ip}/24" in pod("exec", "old", "ip", "-4", "-o", "addr", "show", "eth0").stdout


def test_a_static_mac_and_aliases_are_kept(pod: Pod, host: str, state_dir: Path) -> None:
    pod("run", "-d", "--name", "mac", "--network", "front", "--mac-address", "02:42:0a:3e:00:09",
        "--network-alias", "db", IMAGE, "sleep", "600")
    assert "link/ether 02:42:0a:3e:00:09" in pod("exec", "mac", "ip", "-o", "link", "show", "eth0").stdout
    with Engine(host_netns=host, state_dir=state_dir) as eng:
        (box,) = eng.sandboxes()
        assert box.endpoints[0].mac == "02:42:0a:3e:00:09" and "db" in box.endpoints[0].aliases


def test_published_port_answers_from_outside(pod: Pod, make_netns: Callable[[str], str], host: str) -> None:
    peer = outside_peer(make_netns, host)
    pod("run", "-d", "--name", "web", "--network", "front", "-p", "8080:80", "-p", f"{HOST_OUT}:8081:80/tcp", IMAGE,
        "httpd", "-f", "-p", "80", "-h", "/www")
    for port in (8080, 8081):
        assert fetch(peer, f"http://{HOST_OUT}:{port}/") == PAGE
    pod("rm", "--force", "--time", "0", "web")
    assert fetch(peer, f"http://{HOST_OUT}:8080/", tries=1) == ""
