"""nftables: the only code that runs ``nft``.

Each call is one ``nft -f -`` process, so everything in one script is one kernel
transaction: it applies whole or not at all. The process runs inside the host
namespace (entered between fork and exec); the root namespace is only touched
when it *is* the engine's host. We never flush the ruleset: scripts name our
own table, and deleting it uses the ``add table; delete table`` idiom, which
succeeds whether or not the table exists.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from overlays.errors import KernelError
from overlays.kernel import netns

NFT = "nft"
TIMEOUT = 30.0


def _run(netns_path: Path | None, args: list[str], stdin: str | None, what: str, label: str | None) -> str:
    def enter() -> None:
        if netns_path is not None:
            netns.setns(netns_path)

    try:
        done = subprocess.run(
            [NFT, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            preexec_fn=enter if netns_path is not None else None,
        )
    except FileNotFoundError as e:
        raise KernelError(what, "nftables ruleset", label, "nft is not installed (apt install nftables)") from e
    except subprocess.TimeoutExpired as e:
        raise KernelError(what, "nftables ruleset", label, f"nft did not answer within {TIMEOUT:.0f} s") from e
    if done.returncode != 0:
        raise KernelError(what, "nftables ruleset", label, _first_error(done.stderr))
    return done.stdout


def _first_error(stderr: str) -> str:
    """nft prints the error, then the offending line and a caret line: keep the error, name the line."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "nft failed"
    message = lines[0]
    if len(lines) > 1 and "^" not in lines[1]:
        message += f" (at: {lines[1].strip()})"
    return message


def apply(netns_path: Path | None, script: str, label: str | None = None) -> None:
    """Apply ``script`` (nft syntax) atomically in the namespace at ``netns_path``."""
    _run(netns_path, ["-f", "-"], script, "apply", label)


def delete_table(netns_path: Path | None, family: str, table: str, label: str | None = None) -> None:
    """Remove one table of ours; a missing table is success."""
    apply(netns_path, f"add table {family} {table}\ndelete table {family} {table}\n", label)


def list_table(netns_path: Path | None, family: str, table: str, label: str | None = None) -> dict[str, Any] | None:
    """The table as nft's JSON, or None if it does not exist."""
    try:
        out = _run(netns_path, ["-j", "list", "table", family, table], None, "list", label)
    except KernelError as e:
        if "No such file or directory" in str(e):
            return None
        raise
    data: dict[str, Any] = json.loads(out)
    return data
