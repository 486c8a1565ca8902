"""The real kernel: namespaces under /run/netns and netlink handles into them."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlays.kernel import netns, sysctl
from overlays.kernel.api import Dns, Links, NftChanges

if TYPE_CHECKING:
    from overlays.kernel.nft import TableContents


class LinuxKernel:
    def open(self, netns_name: str | None) -> Links:
        from overlays.kernel.rtnl import Rtnl  # only commands that change the kernel need it

        return Rtnl.open(netns_name)

    def open_path(self, label: str, path: Path) -> Links:
        from overlays.kernel.rtnl import Rtnl

        return Rtnl.open_path(label, path)

    def netns_path(self, name: str) -> Path:
        return netns.path_of(name)

    def netns_exists(self, name: str) -> bool:
        return netns.exists(name)

    def create_netns(self, name: str) -> Path:
        return netns.create(name)

    def adopt_netns(self, name: str, source: Path) -> Path:
        return netns.adopt(name, source)

    def namespace_of(self, path: Path) -> tuple[int, int]:
        """Which network namespace ``path`` names (InvalidSpec if it names none)."""
        return netns.network_namespace(path)

    def delete_netns(self, name: str) -> None:
        nft = sys.modules.get("overlays.kernel.nft")  # never loaded: no cached context to drop
        if nft is not None:
            nft.release(netns.path_of(name))  # a cached nft context would keep the namespace alive
        netns.delete(name)

    def wait_links_gone(self, links: Links, names: list[str], timeout: float = 2.0) -> list[str]:
        """The kernel removes a dead namespace's veths asynchronously: wait, return any left."""
        deadline = time.monotonic() + timeout
        left = list(names)
        while left:
            left = [n for n in left if links.link(n) is not None]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.001)
        return left

    def _path(self, name: str | None) -> Path | None:
        return netns.path_of(name) if name else None

    def sysctl(self, netns_name: str | None, key: str) -> str | None:
        return sysctl.read(self._path(netns_name), key)

    def set_sysctl(self, netns_name: str | None, key: str, value: str, missing_ok: bool = False) -> None:
        sysctl.write(self._path(netns_name), key, value, netns_name, missing_ok)

    def nft_apply(self, netns_name: str | None, script: str) -> None:
        from overlays.kernel import nft  # libnftables: only commands that change a firewall load it

        nft.apply(self._path(netns_name), script, netns_name)

    def nft_delete_table(self, netns_name: str | None, family: str, table: str) -> None:
        from overlays.kernel import nft

        nft.delete_table(self._path(netns_name), family, table, netns_name)

    def nft_list_table(self, netns_name: str | None, family: str, table: str) -> dict[str, Any] | None:
        from overlays.kernel import nft

        return nft.list_table(self._path(netns_name), family, table, netns_name)

    def nft_contents(self, netns_name: str | None, family: str, table: str) -> TableContents | None:
        from overlays.kernel import nft

        return nft.contents(self._path(netns_name), family, table, netns_name)

    def nft_forward_drops(self, netns_name: str | None) -> list[tuple[str, str, str]]:
        from overlays.kernel import nft

        return nft.forward_drops(self._path(netns_name), netns_name)

    def nft_changes(self, netns_name: str | None) -> NftChanges:
        """A socket told of every nftables transaction committed in the namespace (KernelError if none opens)."""
        from overlays.errors import KernelError
        from overlays.kernel import nftwatch

        try:
            return nftwatch.Changes(self._path(netns_name))
        except OSError as e:
            raise KernelError("watch", "nftables ruleset", netns_name, e.strerror or str(e)) from e

    def netns_names(self) -> list[str]:
        """Every namespace mounted under /run/netns, by name."""
        return netns.names()

    def has_qdisc(self, kind: str) -> bool:
        """Whether this kernel has qdisc ``kind`` (netem is not built everywhere): tried once per process."""
        from overlays.kernel import tc

        return tc.has_qdisc(kind)

    def dns(self, state_dir: Path, node: str) -> Dns:
        from overlays.kernel import dnsctl

        return dnsctl.Client(dnsctl.socket_path(state_dir, node))

    def remove_etc(self, netns_name: str) -> None:
        from overlays.kernel import mountns

        mountns.remove_etc_dir(netns_name)

    def etc_binds(self, netns_name: str, shared: Path | None = None) -> list[tuple[str, str]]:
        from overlays.kernel import mountns

        return mountns.etc_binds(netns_name) or (mountns.dir_binds(shared) if shared is not None else [])

    def dns_etc(self, state_dir: Path, node: str) -> Path:
        from overlays.kernel import dnsctl

        return dnsctl.etc_path(dnsctl.socket_path(state_dir, node))
