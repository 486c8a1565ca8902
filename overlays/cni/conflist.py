"""The conflist of an overlays network, and putting it where runtimes look.

``overlays cni install NET`` writes ``<conf dir>/overlays-NET.conflist`` and the
plugin ``overlays-cni`` into the CNI bin dir; ``uninstall`` removes the file, and the
plugin once no overlays conflist is left. The conflist carries the engine that wrote
it (state dir, store, node, host namespace), so the plugin, exec'd by a runtime with
nothing but the CNI environment, opens the same state and the same engine instance.

The plugin in the bin dir is a launcher: the thin client (``client``) behind a
``#!PYTHON -I -S`` line, with the paths where this install's package lives, so it
starts without the site and, when no server answers, imports the package itself.
Install also compiles the package's bytecode, which that fallback and a server's
start would otherwise compile.

Its ``cniVersion`` is 1.0.0, the newest that Debian's runtimes (libcni 1.1) take;
``cniVersions`` lets a newer libcni choose 1.1.0, which brings GC and STATUS.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from overlays.cni.config import CAPABILITIES, PLUGIN_TYPE
from overlays.cni.protocol import SUPPORTED_VERSIONS
from overlays.errors import Conflict, InvalidSpec, NotFound, NotPermitted, OverlaysError

DEFAULT_CONF_DIR = Path("/etc/cni/net.d")
DEBIAN_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins, and where its runtimes look
UPSTREAM_BIN_DIR = Path("/opt/cni/bin")
CONF_VERSION = "1.0.0"
PLUGIN = "overlays-cni"
LAUNCHER_MARK = "# overlays-cni: the thin client of overlays' CNI plugin, written by `overlays cni install`"
SHEBANG_MAX = 255  # what Linux reads of a #! line since 5.1


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


def package_paths() -> list[str]:
    """Where the launcher finds the package and what it imports, without the site: our root, then every
    site-packages dir of this Python (a venv's; on Debian also the dist-packages apt fills)."""
    import site
    import sysconfig

    import overlays

    found = [str(Path(overlays.__file__).resolve().parent.parent)]
    for path in [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]:
        if path not in found and Path(path).is_dir():
            found.append(path)
    return found


def install_key(paths: list[str]) -> str:
    """What names this install's server: the version and where the package is (two installs never share one)."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("overlays")
    except PackageNotFoundError:
        ours = "0"
    return f"{ours}-{hashlib.sha256(paths[0].encode()).hexdigest()[:12]}"


def launcher(python: str = sys.executable, paths: list[str] | None = None) -> str:
    """The ``overlays-cni`` a runtime execs: the thin client (``client``) behind a ``python -I -S`` line."""
    from overlays.cni import client

    paths = paths or package_paths()
    shebang = f"#!{python} -IS"  # one argument, as Linux passes the rest of the line: -I -S
    if len(shebang) > SHEBANG_MAX or any(c.isspace() for c in python):
        raise InvalidSpec(f"Python {python}: its path cannot be a script's #! line (too long or with spaces)")
    body = Path(client.__file__).read_text()
    return (f"{shebang}\n{LAUNCHER_MARK}\n{body}\n\n"
            f"if __name__ == \"__main__\":\n    sys.exit(main({install_key(paths)!r}, {paths!r}))\n")


def compile_package() -> None:
    """Bytecode for every module, so a fallback and a server's start never compile (best-effort: read-only is fine)."""
    import compileall

    import overlays

    with contextlib.suppress(OSError):
        compileall.compile_dir(str(Path(overlays.__file__).parent), quiet=2)


def _is_launcher(path: Path) -> bool:
    """Ours: a launcher we wrote, or the link to the console script earlier versions made."""
    if path.is_symlink():
        return Path(os.readlink(path)).name == PLUGIN
    try:
        with path.open("rb") as f:
            return f.read(4096).split(b"\n")[1:2] == [LAUNCHER_MARK.encode()]
    except OSError:
        return False


@contextmanager
def _writing() -> Iterator[None]:
    """File errors as one line naming the path."""
    try:
        yield
    except PermissionError as e:
        raise NotPermitted(f"cannot write {e.filename}: permission denied (run as root?)") from e
    except OSError as e:
        raise OverlaysError(f"cannot write {e.filename}: {e.strerror}") from e


def install(doc: dict[str, Any], conf_dir: Path, bin_dir: Path, plugin: str) -> tuple[Path, Path]:
    """Write the conflist and the launcher ``plugin``; returns both paths. Refuses to replace what is not ours."""
    network = doc["name"]
    path = conf_path(conf_dir, network)
    target = bin_dir / PLUGIN
    if path.exists() and not _is_ours(path):
        raise Conflict(f"{path} exists and is not an overlays conflist; remove it first")
    clash = _others_named(conf_dir, network, path) if conf_dir.is_dir() else []
    if clash:
        raise Conflict(f"{clash[0]} already configures a CNI network named {network}; remove it first")
    if (target.exists() or target.is_symlink()) and not _is_launcher(target):
        raise Conflict(f"{target} exists and is not overlays' {PLUGIN}; remove it first")
    with _writing():
        conf_dir.mkdir(parents=True, exist_ok=True)
        bin_dir.mkdir(parents=True, exist_ok=True)
        # Staged and renamed: a runtime reading the dirs sees the old file or the new one, never half of one.
        _replace(path, render(doc), 0o644)
        _replace(target, plugin, 0o755)
    return path, target


def _replace(path: Path, text: str, mode: int) -> None:
    staged = path.with_name(f".{path.name}.tmp")
    staged.unlink(missing_ok=True)
    staged.write_text(text)
    staged.chmod(mode)
    os.replace(staged, path)


def uninstall(network: str, conf_dir: Path, bin_dir: Path) -> list[Path]:
    """Remove the network's conflist, and the plugin link once no overlays conflist is left; returns what went."""
    path = conf_path(conf_dir, network)
    if not path.exists():
        raise NotFound(f"no conflist for network {network} in {conf_dir} (looked for {path.name})")
    if not _is_ours(path):
        raise Conflict(f"{path} is not an overlays conflist; leaving it")
    removed = [path]
    target = bin_dir / PLUGIN
    with _writing():
        path.unlink()
        if _is_launcher(target) and not any(_is_ours(p) for p in conf_dir.glob("*.conflist")):
            target.unlink()
            removed.append(target)
    return removed
