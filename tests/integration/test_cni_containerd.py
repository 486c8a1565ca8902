"""containerd 1.6: ``ctr run --cni`` puts its container on an overlays network (inside a host namespace).

The test starts a containerd of its own in its host namespace (own root, state and
socket). ``ctr`` runs the CNI plugins itself, from the dirs it was built with; it runs
in a mount namespace of its own where the test's CNI dirs cover those (see
``runtimes.Containerd``), so the machine's /etc/cni/net.d is never written.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlays import Engine

from .conftest import Cli, ip_json
from .runtimes import (
    IMAGE,
    REFERENCE_PLUGINS,
    Containerd,
    containerd,
    docker_archive,
    eventually,
    no_server_outlives_its_attachments,
)


@pytest.fixture(autouse=True)
def no_server_left() -> Iterator[None]:
    """Torn down after the test's own fixtures: its attachments are gone, and so must its servers be."""
    with no_server_outlives_its_attachments():
        yield


@pytest.fixture
def ctrd(host: str, tmp_path: Path) -> Iterator[Containerd]:
    reason = Containerd.unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "ctrd"
    root.mkdir()
    with containerd(root, host) as daemon:
        daemon.import_image(docker_archive(tmp_path / "busybox.tar"))
        yield daemon


def test_ctr_run_cni_gets_an_address_and_rm_takes_it_away(ctrd: Containerd, cli: Cli, host: str, state_dir: Path,
                                                         tmp_path: Path) -> None:
    cli("network", "create", "front", "--subnet", "10.63.0.0/24", check=True)
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    cli("cni", "install", "front", "--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir), check=True)
    loopback = REFERENCE_PLUGINS / "loopback"
    if loopback.exists():  # ctr adds a loopback network of its own; our bin dir covers the reference one
        shutil.copy(loopback, bin_dir / "loopback")
    done = ctrd.run_with_cni(conf_dir, bin_dir, "--rm", IMAGE, "c1", "ip", "-4", "-o", "addr", "show", "eth0")
    assert done.returncode == 0, done.stderr
    assert "inet 10.63.0.2/24" in done.stdout
    with Engine(host_netns=host, state_dir=state_dir) as eng:
        # ctr's plugins run in its own mount namespace, so a server of theirs is not ours to settle: wait for it.
        assert eventually(lambda: eng.sandboxes() == []), "ctr run --rm sent DEL"
    assert [str(link["ifname"]) for link in ip_json(host, "link", "show")] == ["lo", "ovb-front"]
