"""The conflist of an overlays network, and putting it where runtimes look.

``overlays cni install NET`` writes ``<conf dir>/overlays-NET.conflist`` and links
``overlays-cni`` into the CNI bin dir; ``uninstall`` removes the file, and the link
once no overlays conflist is left. The conflist carries the engine that wrote it
(state dir, store, node, host namespace), so the plugin, exec'd by a runtime with
nothing but the CNI environment, opens the same state and the same engine instance.

Its ``cniVersion`` is 1.0.0, the newest that Debian's runtimes (libcni 1.1) take;
``cniVersions`` lets a newer libcni choose 1.1.0, which brings GC and STATUS.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from overlays.cni.config import CAPABILITIES, PLUGIN_TYPE
from overlays.cni.protocol import SUPPORTED_VERSIONS
from overlays.errors import Conflict, NotFound, NotPermitted, OverlaysError

DEFAULT_CONF_DIR = Path("/etc/cni/net.d")
DEBIAN_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins, and where its runtimes look
UPSTREAM_BIN_DIR = Path("/opt/cni/bin")
CONF_VERSION = "1.0.0"
PLUGIN = "overlays-cni"


def default_bin_dir() -> Path:
    """Where the installed runtimes look for plugins: Debian's directory if it has one, else upstream's."""
    return DEBIAN_BIN_DIR if DEBIAN_BIN_DIR.is_dir() else UPSTREAM_BIN_DIR


def build(network: str, *, state_dir: Path, store: str | None, node: str, host_netns: str | None) -> dict[str, Any]:
    """The conflist of ``network`` for the engine described by the other arguments."""
    return {
        "cniVersion": CONF_VERSION,
        "cniVersions": list(SUPPORTED_VERSIONS),
        "name": network,
        "plugins": [{
            "type": PLUGIN_TYPE,
            "stateDir": str(state_dir),
            "store": store,
            "node": node,
            "hostNetns": host_netns,
            "capabilities": dict.fromkeys(CAPABILITIES, True),
        }],
    }


def store_url(given: str | None) -> str | None:
    """A ``--store`` value as the plugin must see it: a SQLite path made absolute (the runtime's cwd is not ours)."""
    if not given or given.startswith("etcd://"):
        return given or None
    return str(Path(given).resolve())


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def conf_path(conf_dir: Path, network: str) -> Path:
    return conf_dir / f"overlays-{network}.conflist"


def _is_ours(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text())
        return bool(doc["plugins"][0]["type"] == PLUGIN_TYPE)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def _network_name(path: Path) -> str | None:
    try:
        name = json.loads(path.read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _others_named(conf_dir: Path, network: str, mine: Path) -> list[Path]:
    """Other configurations in the dir for a network of the same name (runtimes would take either)."""
    found = [p for p in sorted(conf_dir.glob("*.conf*")) if p != mine and p.suffix in (".conf", ".conflist", ".json")]
    return [p for p in found if _network_name(p) == network]


def plugin_executable() -> Path:
    """The installed ``overlays-cni`` console script: beside this Python's (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / PLUGIN
    if beside.exists():
        return beside.absolute()
    found = shutil.which(PLUGIN)
    if not found:
        raise NotFound(f"{PLUGIN} is not installed (it comes with the overlays package: pip install overlays)")
    return Path(found).absolute()


@contextmanager
def _writing() -> Iterator[None]:
    """File errors as one line naming the path."""
    try:
        yield
    except PermissionError as e:
        raise NotPermitted(f"cannot write {e.filename}: permission denied (run as root?)") from e
    except OSError as e:
        raise OverlaysError(f"cannot write {e.filename}: {e.strerror}") from e


def install(doc: dict[str, Any], conf_dir: Path, bin_dir: Path, plugin: Path) -> tuple[Path, Path]:
    """Write the conflist and link the plugin; returns both paths. Refuses to replace what is not ours."""
    network = doc["name"]
    path = conf_path(conf_dir, network)
    link = bin_dir / PLUGIN
    if path.exists() and not _is_ours(path):
        raise Conflict(f"{path} exists and is not an overlays conflist; remove it first")
    clash = _others_named(conf_dir, network, path) if conf_dir.is_dir() else []
    if clash:
        raise Conflict(f"{clash[0]} already configures a CNI network named {network}; remove it first")
    if (link.exists() or link.is_symlink()) and not link.is_symlink():
        raise Conflict(f"{link} exists and is not a link to {PLUGIN}; remove it first")
    with _writing():
        conf_dir.mkdir(parents=True, exist_ok=True)
        bin_dir.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.tmp")
        staged.write_text(render(doc))
        os.replace(staged, path)  # a runtime reading the dir sees the old file or the new one, never half of one
        if not (link.is_symlink() and os.readlink(link) == str(plugin)):
            staged_link = link.with_name(f".{PLUGIN}.tmp")
            staged_link.unlink(missing_ok=True)
            staged_link.symlink_to(plugin)
            os.replace(staged_link, link)
    return path, link


def uninstall(network: str, conf_dir: Path, bin_dir: Path) -> list[Path]:
    """Remove the network's conflist, and the plugin link once no overlays conflist is left; returns what went."""
    path = conf_path(conf_dir, network)
    if not path.exists():
        raise NotFound(f"no conflist for network {network} in {conf_dir} (looked for {path.name})")
    if not _is_ours(path):
        raise Conflict(f"{path} is not an overlays conflist; leaving it")
    removed = [path]
    link = bin_dir / PLUGIN
    with _writing():
        path.unlink()
        if link.is_symlink() and not any(_is_ours(p) for p in conf_dir.glob("*.conflist")):
            link.unlink()
            removed.append(link)
    return removed
