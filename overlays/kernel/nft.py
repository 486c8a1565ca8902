"""nftables: the only code that changes or reads a ruleset.

Design note. Scripts run in-process through libnftables (``libnft``), the library
the ``nft`` command is made of: one script is one ``nft -f`` run, so it is still
one kernel transaction that applies whole or not at all, and its errors read as
nft's own. Starting an ``nft`` process cost 3-13 ms a call (up to 19 ms on a
busy machine); a call now costs about 0.25 ms.

Namespaces. A libnftables context acts in the namespace where its socket was
opened (when the context was made), whichever thread uses it later. So each
context is made once, with the calling thread inside the namespace
(``netns.inside``), and kept for the life of the process, keyed by the
namespace's identity (nsfs device and inode), not by its name: a namespace
deleted and made again under the same name is another key. Reusing a context
saves more than its making (~30 us): closing its socket right after a
transaction that deleted anything waits for an RCU grace period in the kernel
(measured: 4-19 ms), as every ``nft`` process did on exit.

A context holds its namespace alive, as any socket does. So that a namespace
someone deletes really goes: every call first drops the contexts whose namespace
is no longer where it was seen (its path gone or naming another namespace),
``release`` drops one on purpose (``LinuxKernel.delete_netns`` calls it first),
and a forked child closes its copies of the sockets at once. None of them is
ever inherited by an exec'd program (see ``libnft``).

Commands run inside the namespace too (entering and leaving costs ~15 us): the
one thing libnftables looks up through the calling thread's own namespace rather
than its socket is an interface's index (``iif``, ``oif``), and it must find the
namespace's interfaces. (Our own scripts match names, ``iifname``.)

Calls are serialized by one lock: ctypes releases the GIL while C runs, and
libnftables keeps some state in globals.

Our writes name themselves: each script runs with its thread named ``WRITER``, and
nftables records the committing thread's name in the transaction's notification
(``nftwatch``), so the agent's self-heal tells our commits from anyone else's. Naming the
thread costs two prctl calls (~2 us); ``ps`` shows it for the length of one transaction.

We never flush the ruleset: scripts name our own table, and deleting it uses the
``add table; delete table`` idiom, which succeeds whether or not the table exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from overlays.errors import KernelError
from overlays.kernel import libnft, netns

OBJECT = "nftables ruleset"
WRITER = "overlays-nft"  # the name our threads carry while they commit (at most 15 characters)
PR_SET_NAME, PR_GET_NAME = 15, 16
_THREAD_NETNS = "/proc/thread-self/ns/net"
# nft -f FILE prints "FILE:LINE:COLUMNS: Error: ..." (the file here being our memfd).
_LOCATED = re.compile(r"^/proc/self/fd/\d+:(?P<line>\d+):[\d-]+: (?P<message>.*)$")

Identity = netns.Identity
_identity = netns.identity


@dataclass
class _Entry:
    context: libnft.Context
    seen_at: str  # a path that showed this namespace when it was last used


_lock = threading.Lock()
_contexts: dict[Identity, _Entry] = {}


def _after_fork_in_child() -> None:
    """The parent's contexts are not ours: close our copies of their sockets, start afresh."""
    global _lock, _contexts
    for entry in _contexts.values():
        entry.context.forget()
    _contexts = {}
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _where(netns_path: Path | None) -> str:
    """A path that names the namespace of ``netns_path`` (None: the calling thread's own)."""
    if netns_path is not None:
        return str(netns_path)
    return f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"


def _sweep(keep: Identity) -> None:
    """Free the contexts whose namespace is no longer where it was seen: they would keep it alive."""
    for key, entry in list(_contexts.items()):
        if key == keep:
            continue
        try:
            alive = _identity(entry.seen_at) == key
        except OSError:
            alive = False
        if not alive:
            del _contexts[key]
            entry.context.close()


def _make(netns_path: Path | None, key: Identity) -> libnft.Context:
    """A new context whose socket lives in the namespace ``key`` (the namespace at ``netns_path``)."""
    with netns.inside(netns_path):
        if _identity(_THREAD_NETNS) != key:  # replaced between our stat and our setns
            raise libnft.Unavailable("the namespace changed while we entered it")
        return libnft.Context()


def _context(netns_path: Path | None, what: str, label: str | None) -> libnft.Context:
    """The cached context for the namespace at ``netns_path``; call with ``_lock`` held."""
    where = _where(netns_path)
    try:
        key = _identity(where)
    except OSError as e:
        raise KernelError(what, OBJECT, label, f"network namespace {where} does not exist ({e.strerror})") from e
    _sweep(keep=key)
    entry = _contexts.get(key)
    if entry is None:
        try:
            entry = _Entry(_make(netns_path, key), where)
        except libnft.Unavailable as e:
            raise KernelError(what, OBJECT, label, str(e)) from e
        except OSError as e:  # the namespace went between our stat and our setns
            raise KernelError(what, OBJECT, label, _cannot_enter(where, e)) from e
        _contexts[key] = entry
    entry.seen_at = where
    return entry.context


def _cannot_enter(where: str | Path | None, e: OSError) -> str:
    return f"cannot enter network namespace {where}: {e.strerror or e}"


def _first_error(stderr: str) -> str:
    """nft prints the error, then the offending line and a caret line: keep the error, name the line."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "nft failed"
    message, line_no = lines[0], ""
    located = _LOCATED.match(message)
    if located:
        message, line_no = located["message"], f" line {located['line']}"
    if len(lines) > 1 and "^" not in lines[1]:
        message += f" (at{line_no}: {lines[1].strip()})"
    return message


def apply(netns_path: Path | None, script: str, label: str | None = None) -> None:
    """Apply ``script`` (nft syntax) atomically in the namespace at ``netns_path``."""
    with _lock:
        context = _context(netns_path, "apply", label)
        try:
            with netns.inside(netns_path), _named(WRITER):
                context.run_script(script)
        except libnft.Failed as e:
            raise KernelError("apply", OBJECT, label, _first_error(e.errors)) from e
        except OSError as e:
            raise KernelError("apply", OBJECT, label, _cannot_enter(netns_path, e)) from e


@contextlib.contextmanager
def _named(name: str) -> Iterator[None]:
    """The calling thread named ``name`` (its comm), and as before afterwards."""
    import ctypes

    libc = netns.libc()
    old = ctypes.create_string_buffer(16)
    if libc.prctl(PR_GET_NAME, old, 0, 0, 0) != 0:
        yield  # cannot say: our commit then reads as anyone's, which is safe (the agent compares)
        return
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_NAME, old.value, 0, 0, 0)


def delete_table(netns_path: Path | None, family: str, table: str, label: str | None = None) -> None:
    """Remove one table of ours; a missing table is success."""
    apply(netns_path, f"add table {family} {table}\ndelete table {family} {table}\n", label)


def list_table(netns_path: Path | None, family: str, table: str, label: str | None = None) -> dict[str, Any] | None:
    """The table as nft's JSON (``nft -j list table``), or None if it does not exist."""
    return _list(netns_path, f"list table {family} {table}", label)


def _list(netns_path: Path | None, command: str, label: str | None) -> dict[str, Any] | None:
    """A read of nft as its JSON, or None if what it names does not exist."""
    with _lock:
        context = _context(netns_path, "list", label)
        try:
            with netns.inside(netns_path):
                out = context.run_command(command, json_output=True)
        except libnft.Failed as e:
            if "No such file or directory" in e.errors:
                return None
            raise KernelError("list", OBJECT, label, _first_error(e.errors)) from e
        except OSError as e:
            raise KernelError("list", OBJECT, label, _cannot_enter(netns_path, e)) from e
    data: dict[str, Any] = json.loads(out)
    return data


def forward_drops(netns_path: Path | None, label: str | None = None) -> list[tuple[str, str, str]]:
    """(family, table, chain) of every base chain on the forward hook whose policy is drop, in any table:
    a packet any of them drops is dropped, whatever our own table accepts (iptables' FORWARD DROP is one)."""
    listed = _list(netns_path, "list chains", label) or {}
    return sorted((c["family"], c["table"], c["name"]) for item in listed.get("nftables", [])
                  if (c := item.get("chain")) and c.get("hook") == "forward" and c.get("policy") == "drop")


def release(netns_path: Path | None) -> None:
    """Drop the context of the namespace at ``netns_path``, if any, so that it does not keep it alive."""
    with _lock:
        try:
            key = _identity(_where(netns_path))
        except OSError:
            return
        entry = _contexts.pop(key, None)
        if entry is not None:
            entry.context.close()


class TableContents(NamedTuple):
    """What a table holds, in nft's own text notation: the elements of each set and map (``key : value``
    for a map), and the comments of each chain's rules, in order (None for a rule without one)."""

    elements: dict[str, frozenset[str]]
    rules: dict[str, tuple[str | None, ...]]


def contents(netns_path: Path | None, family: str, table: str, label: str | None = None) -> TableContents | None:
    """The table's sets, maps and rules as TableContents, or None if it does not exist."""
    listed = list_table(netns_path, family, table, label)
    return None if listed is None else contents_of(listed)


def contents_of(listed: dict[str, Any]) -> TableContents:
    """nft's JSON of one table (``nft -j list table``) as TableContents."""
    elements: dict[str, frozenset[str]] = {}
    rules: dict[str, list[str | None]] = {}
    for item in listed.get("nftables", []):
        for kind in ("set", "map"):
            if kind in item:
                found = item[kind]
                types = _types(found["type"])
                values = _types(found["map"]) if kind == "map" else []
                elements[found["name"]] = frozenset(_element(e, types, values) for e in found.get("elem", []))
        if "chain" in item:
            rules.setdefault(item["chain"]["name"], [])
        if "rule" in item:
            rules.setdefault(item["rule"]["chain"], []).append(item["rule"].get("comment"))
    return TableContents(elements, {chain: tuple(found) for chain, found in rules.items()})


def _types(declared: Any) -> list[str]:
    if isinstance(declared, list):
        return [str(t) for t in declared]
    return [t.strip() for t in str(declared).split(".")]


def _element(e: Any, types: list[str], values: list[str]) -> str:
    if isinstance(e, dict) and "elem" in e:  # an element with options (a timeout, a comment)
        e = e["elem"]["val"]
    if values:  # a map element: [key, value]
        return f"{_value(e[0], types)} : {_value(e[1], values)}"
    return _value(e, types)


def _value(v: Any, types: list[str]) -> str:
    if isinstance(v, dict) and "concat" in v:
        return " . ".join(_value(part, [t]) for part, t in zip(v["concat"], types, strict=False))
    if isinstance(v, dict) and "prefix" in v:
        return f"{v['prefix']['addr']}/{v['prefix']['len']}"
    if isinstance(v, dict) and "range" in v:
        return f"{v['range'][0]}-{v['range'][1]}"
    if types and types[0] == "ifname":
        return f'"{v}"'
    return str(v)

