"""``overlays cni ...``: conflist, install, uninstall — an overlays network for CNI runtimes (podman, containerd)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from overlays.cli.main import Command, Group, Settings
from overlays.cli.render import echo


def _network(p: argparse.ArgumentParser) -> None:
    p.add_argument("network", metavar="NETWORK", help="An existing overlays network.")


def _dirs(p: argparse.ArgumentParser) -> None:
    _network(p)
    p.add_argument("--conf-dir", type=Path, metavar="DIR",
                   help="CNI configuration dir, where runtimes read conflists (default: /etc/cni/net.d).")
    p.add_argument("--bin-dir", type=Path, metavar="DIR",
                   help="CNI plugin dir, where runtimes find plugins (default: /usr/lib/cni if it exists, as on "
                   "Debian, else /opt/cni/bin).")


def _conflist(s: Settings, network: str) -> dict[str, Any]:
    from overlays.cni import conflist

    engine = s.engine()
    engine.network(network)  # it must exist: "network X does not exist" otherwise
    return conflist.build(network, state_dir=engine.state_dir.resolve(), store=conflist.store_url(s.store),
                          node=engine.node, host_netns=s.host_netns)


def show(s: Settings, a: argparse.Namespace) -> None:
    """Print the conflist of NETWORK (what install writes)."""
    from overlays.cni import conflist

    echo(conflist.render(_conflist(s, a.network)).rstrip("\n"))


def install(s: Settings, a: argparse.Namespace) -> None:
    """Write NETWORK's conflist into the CNI config dir and overlays-cni into the CNI bin dir."""
    from overlays.cni import conflist

    doc = _conflist(s, a.network)
    conf_dir = a.conf_dir or conflist.DEFAULT_CONF_DIR
    bin_dir = a.bin_dir or conflist.default_bin_dir()
    path, plugin = conflist.install(doc, conf_dir, bin_dir, conflist.launcher())
    conflist.compile_package()
    echo(f"network {a.network}: wrote {path} and {plugin}")
    echo(f"try: podman run --rm --network {a.network} IMAGE ip addr")


def uninstall(s: Settings, a: argparse.Namespace) -> None:
    """Remove NETWORK's conflist (and the plugin, once no overlays network is installed)."""
    from overlays.cni import conflist

    conf_dir = a.conf_dir or conflist.DEFAULT_CONF_DIR
    removed = conflist.uninstall(a.network, conf_dir, a.bin_dir or conflist.default_bin_dir())
    echo(f"network {a.network}: removed " + ", ".join(map(str, removed)))


COMMANDS = {
    "cni": Group("Put an overlays network in reach of CNI runtimes (podman, containerd).", {
        "conflist": Command(show, _network),
        "install": Command(install, _dirs),
        "uninstall": Command(uninstall, _dirs),
    }),
}
