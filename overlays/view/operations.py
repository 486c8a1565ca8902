"""Recent operations and their ``--explain`` lines: a journal per host, and what the live view reads of it.

Design note. Every CLI command that changed the kernel appends one record to its
host's journal, whether or not --explain was given (see cli.main.Settings): the live
view then shows what each operation did as ``ip``/``bridge``/``nft`` commands, even
when the person at the terminal did not ask. The journal is a file, not the store:
a store write per operation would put a third commit on every attach. One record is
one ``write`` of one JSON line to a file opened with O_APPEND, so records of
concurrent processes never interleave and the file's order is the order in which
operations finished. The file is kept short: past ``MAX_BYTES`` the appender keeps
the last ``KEEP`` records (under a lock, replacing the file by a rename, so a reader
sees the old file or the new one). A record holds at most ``MAX_LINES`` lines: a
topology of a thousand sandboxes is summarised, not kept whole.

    <state dir>/explain/<node>.jsonl, one record a line:
    {"time": 1733212345.25, "command": "overlays run -d --name web ...",
     "ok": true, "error": null, "lines": ["ip netns add ov-1a2b3c-web", ...]}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEEP = 50  # records kept when the journal is compacted, and the most the page shows
MAX_BYTES = 1 << 20
MAX_LINES = 400


@dataclass(frozen=True)
class Operation:
    """One operation that changed something, with the commands a person would type to do the same."""

    key: str
    time: float
    command: str
    ok: bool
    error: str | None
    lines: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "time": self.time, "command": self.command, "ok": self.ok, "error": self.error,
                "lines": list(self.lines)}


def journal_path(state_dir: Path, node: str) -> Path:
    return state_dir / "explain" / f"{node}.jsonl"


def append(state_dir: Path, node: str, command: str, lines: list[str], error: str | None = None,
           when: float | None = None) -> None:
    """One operation's record at the end of the host's journal (compacted when it grew past MAX_BYTES)."""
    kept = lines if len(lines) <= MAX_LINES else [
        *lines[:MAX_LINES], f"# ... and {len(lines) - MAX_LINES} more (overlays --explain prints them all)"]
    record = {"time": time.time() if when is None else when, "command": command, "ok": error is None,
              "error": error, "lines": kept}
    path = journal_path(state_dir, node)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        _compact(path)


def _compact(path: Path) -> None:
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.stat().st_size <= MAX_BYTES:  # another process compacted it meanwhile
            return
        tail = path.read_text(errors="replace").splitlines()[-KEEP:]
        fresh = path.with_suffix(f".{os.getpid()}.tmp")
        fresh.write_text("".join(f"{line}\n" for line in tail))
        os.replace(fresh, path)


def stamp(state_dir: Path, node: str) -> tuple[int, int] | None:
    """What changes when a record is appended (size, mtime): the live view rebuilds when it does."""
    try:
        st = os.stat(journal_path(state_dir, node))
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def recent(state_dir: Path, node: str, limit: int = KEEP) -> list[Operation]:
    """This host's recorded operations, newest first; records that do not parse are skipped, not fatal."""
    text = ""
    with contextlib.suppress(OSError):
        text = journal_path(state_dir, node).read_text(errors="replace")
    found = []
    for number, line in enumerate(text.splitlines()):
        op = _parse(f"{node}:{number}", line)
        if op is not None:
            found.append(op)
    found.reverse()
    return found[:limit]


def _parse(key: str, line: str) -> Operation | None:
    try:
        value = json.loads(line)
        lines = value.get("lines") or []
        if not isinstance(lines, list):
            return None
        return Operation(key, float(value.get("time", 0.0)), str(value.get("command", "")), bool(value.get("ok", True)),
                         None if value.get("error") is None else str(value["error"]), tuple(str(x) for x in lines))
    except (TypeError, ValueError, AttributeError):
        return None
