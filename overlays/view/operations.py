"""Recent operations and their ``--explain`` lines, as the live view shows them.

The engine does not record these yet: ``--explain`` is being built. This module is
the reading side of the record the view expects, so the page's panel is real code
with an empty state until the engine writes them. The proposed record, one key per
changing operation, under this host's own keys (``nodes/<node>/``, see
engine.records), so the store's watch brings each one to the page as it lands:

    explain/<sequence>     sequence: zero-padded, increasing (keys sort in order)
    {
      "time": 1733212345.25,                 # when the operation finished (seconds)
      "command": "overlays run -d --name web --network front -p 8080:80 -- ...",
      "ok": true,                            # false: it failed and was rolled back
      "error": null,                         # the one-line error when not ok
      "lines": ["ip netns add ov-1a2b3c-web", "ip link add ... type veth peer ...", ...]
    }

The engine would keep the last ``KEEP`` records (dropping older keys in the same
commit), so the store does not grow with every command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from overlays.store.base import Store

PREFIX = "explain/"
KEEP = 50  # what the engine should keep, and the most the page shows


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


def key_prefix(node: str) -> str:
    return f"nodes/{node}/{PREFIX}"


def recent(store: Store, node: str, limit: int = KEEP) -> list[Operation]:
    """This host's recorded operations, newest first; records that do not parse are skipped, not fatal."""
    found = []
    for entry in store.range(key_prefix(node)):
        op = _parse(entry.key, entry.value)
        if op is not None:
            found.append(op)
    found.sort(key=lambda op: (op.time, op.key), reverse=True)
    return found[:limit]


def _parse(key: str, value: dict[str, Any]) -> Operation | None:
    try:
        lines = value.get("lines") or []
        if not isinstance(lines, list):
            return None
        return Operation(key, float(value.get("time", 0.0)), str(value.get("command", "")), bool(value.get("ok", True)),
                         None if value.get("error") is None else str(value["error"]), tuple(str(x) for x in lines))
    except (TypeError, ValueError):
        return None
