"""The multi-machine store: etcd v3, through the maintained asyncio client ``aetcd`` (gRPC).

Our keys live under a versioned root (``/overlays/v1/``), so a later layout can sit
beside this one and nothing else in the cluster is touched. The protocol maps onto
etcd one to one: ``commit`` is one etcd Txn (compare ``version == 0`` for "absent",
else ``mod_revision == what we read``; puts with their lease; deletes), ``revision``
is the header revision of a read, ``watch`` reads from one etcd watch per prefix kept
open from ``after + 1`` (etcdstream.py: a watch made anew from a past revision would
deliver up to 100 ms late), and leases are
etcd leases (whole seconds; etcd enforces a minimum of about 2 s).

The store API stays synchronous: the client runs on an event loop in a daemon thread
(one for the process), and each call is a coroutine handed to it. With several
endpoints we stick to one until it fails with "unavailable" or a deadline (a killed
member, a leader election), then ask every member who leads (a local answer, even
mid-election) and retry there, for at most ``retry_for`` seconds in all. Retrying a
commit whose answer was lost is safe for what we write: a create or update compares
revisions, so it cannot apply twice (the retry sees the conflict, and ``transact``
re-reads), and plain puts and deletes are idempotent. (A lost answer can leave one
extra record, an address allocated twice to the same owner, never one address to two.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from overlays.errors import InvalidSpec, StoreError
from overlays.store.base import Compacted, Entry, Event, LeaseNotFound, Value
from overlays.store.etcdstream import Ended, Stream

# gRPC's fork handlers serve children that go on using gRPC; ours never do (they exec, or
# run pyroute2), and with the handlers on, each fork during a call logs a line on stderr.
# gRPC reads the switch when it is imported: set it for the import only, unless the user did.
_FORK_SWITCH = "GRPC_ENABLE_FORK_SUPPORT"
_user_set_fork = _FORK_SWITCH in os.environ
os.environ.setdefault(_FORK_SWITCH, "false")
try:
    import aetcd  # type: ignore[import-untyped]
    import aetcd.exceptions  # type: ignore[import-untyped]
    import aetcd.rpc  # type: ignore[import-untyped]
    import aetcd.utils  # type: ignore[import-untyped]
finally:
    if not _user_set_fork:
        del os.environ[_FORK_SWITCH]

T = TypeVar("T")
_log = logging.getLogger(__name__)

ROOT = "/overlays/v1/"
SCHEME = "etcd://"
# One RPC on one member. A request that reached a follower just as the leader died is
# lost inside etcd and would only fail after etcd's own 7 s: give up sooner and retry.
CALL_TIMEOUT = 1.5
RETRY_FOR = 15.0  # one store call, across members and elections
LEADER_POLL = 0.05  # how often to ask the members who leads, after a failure
# Worth trying another member (or the same one again, after a leader election): a member
# that is gone (UNAVAILABLE; INTERNAL for a stream it cut), or that could not answer in time
# (DEADLINE_EXCEEDED; UNKNOWN "context deadline exceeded" from a follower that lost its
# leader; RESOURCE_EXHAUSTED "too many requests").
_RETRYABLE_CODES = frozenset({
    aetcd.rpc.StatusCode.UNAVAILABLE,
    aetcd.rpc.StatusCode.INTERNAL,
    aetcd.rpc.StatusCode.DEADLINE_EXCEEDED,
    aetcd.rpc.StatusCode.UNKNOWN,
    aetcd.rpc.StatusCode.RESOURCE_EXHAUSTED,
})
_RETRYABLE_ERRORS = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.WatchTimeoutError,
    aetcd.exceptions.InternalError,
)


def _retryable(error: BaseException) -> bool:
    if isinstance(error, _RETRYABLE_ERRORS):
        return True
    cause = error.__cause__ if isinstance(error, aetcd.exceptions.ClientError) else error
    return isinstance(cause, aetcd.rpc.AioRpcError) and cause.code() in _RETRYABLE_CODES


_loop_lock = threading.Lock()
_loop_of_process: tuple[int, asyncio.AbstractEventLoop] | None = None


def _shared_loop() -> asyncio.AbstractEventLoop:
    """The event loop (in a daemon thread) that runs the client calls of every EtcdStore in this process.

    One loop, not one per store: gRPC's asyncio layer keeps per-process state that outlives
    a closed loop and then calls into it. A forked child gets a loop of its own.
    """
    global _loop_of_process
    with _loop_lock:
        if _loop_of_process is None or _loop_of_process[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="overlays-etcd", daemon=True).start()
            _loop_of_process = (os.getpid(), loop)
        return _loop_of_process[1]


def parse_url(url: str) -> list[str]:
    """``etcd://host:port[,host:port...]`` -> ``["host:port", ...]``."""
    if not url.startswith(SCHEME):
        raise InvalidSpec(f"store URL {url!r}: expected {SCHEME}HOST:PORT[,HOST:PORT...]")
    endpoints = [e.strip() for e in url[len(SCHEME):].rstrip("/").split(",")]
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidSpec(f"store URL {url!r}: {endpoint!r} is not HOST:PORT")
    return endpoints


class EtcdStore:
    txn_ops: int | None = 128  # etcd's --max-txn-ops default: more is "too many operations in txn request"

    def __init__(
        self,
        endpoints: Sequence[str],
        root: str = ROOT,
        call_timeout: float = CALL_TIMEOUT,
        retry_for: float = RETRY_FOR,
    ) -> None:
        if not endpoints:
            raise InvalidSpec("etcd store: no endpoint given")
        self.endpoints = list(endpoints)
        self._root = root
        self._call_timeout = call_timeout
        self._retry_for = retry_for
        self._loop = _shared_loop()
        self._closed = False
        self._clients = [self._client(e) for e in self.endpoints]
        self._current = 0  # the member we talk to until it fails
        self._streams: dict[str, Stream] = {}  # prefix -> its open watch (used on the loop's thread only)

    @classmethod
    def from_url(cls, url: str) -> EtcdStore:
        return cls(parse_url(url))

    def _client(self, endpoint: str) -> Any:
        host, _, port = endpoint.rpartition(":")
        # No HTTP proxy from the environment: etcd members are reached directly. Answers may
        # exceed gRPC's default 4 MiB (a range over thousands of endpoints).
        options = {"grpc.enable_http_proxy": 0, "grpc.max_receive_message_length": 64 << 20}
        return aetcd.Client(host.strip("[]"), int(port), timeout=self._call_timeout, options=options)

    # -- reads -----------------------------------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        got = self._call(f"get {key}", lambda c: c.get(self._key(key)))
        return None if got is None else Entry(key, json.loads(got.value), int(got.mod_revision))

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Ranges in one Txn without compares: one round trip (per ``txn_ops`` keys), one revision."""
        found: dict[str, Entry] = {}
        step = self.txn_ops or max(1, len(keys))

        def reads(part: list[str]) -> Callable[[Any], Awaitable[tuple[bool, Any]]]:
            return lambda c: c.transaction(  # type: ignore[no-any-return]
                compare=[], success=[c.transactions.get(self._key(k)) for k in part], failure=[])

        for i in range(0, len(keys), step):
            part = list(keys[i:i + step])
            _, responses = self._call(f"get {len(part)} keys", reads(part))
            for key, kvs in zip(part, responses, strict=True):
                if kvs:
                    value, meta = kvs[0]
                    found[key] = Entry(key, json.loads(value), int(meta.mod_revision))
        return found

    def range(self, prefix: str) -> list[Entry]:
        got = self._call(f"range {prefix}", lambda c: c.get_prefix(self._key(prefix)))
        return [Entry(self._unkey(kv.key), json.loads(kv.value), int(kv.mod_revision)) for kv in got]

    def revision(self) -> int:
        # A range that matches nothing still answers with the store's current revision.
        got = self._call("read revision", lambda c: c.get_prefix(self._root.encode() + b"\0"))
        return int(got.header.revision)

    # -- writes ----------------------------------------------------------------------------------------------------

    def commit(
        self,
        compares: Mapping[str, int],
        puts: Mapping[str, Value],
        deletes: Sequence[str],
        leases: Mapping[str, int] | None = None,
    ) -> bool:
        leases = leases or {}

        def txn(client: Any) -> Awaitable[tuple[bool, Any]]:
            tx = client.transactions
            conditions = [
                tx.version(self._key(k)) == 0 if rev == 0 else tx.mod(self._key(k)) == rev
                for k, rev in compares.items()
            ]
            ops = [
                tx.put(self._key(k), json.dumps(v, sort_keys=True).encode(), lease=leases.get(k))
                for k, v in puts.items()
            ]
            # etcd refuses a Txn that names one key twice; a put wins over a delete anyway.
            ops += [tx.delete(self._key(k)) for k in deletes if k not in puts]
            return client.transaction(compare=conditions, success=ops, failure=[])  # type: ignore[no-any-return]

        try:
            succeeded, _ = self._call("commit", txn)
        except StoreError as e:
            if _not_found(e.__cause__):
                missing = sorted({leases[k] for k in puts if k in leases})
                raise LeaseNotFound(f"commit: lease(s) {', '.join(f'{x:x}' for x in missing)} do not exist") from e
            raise
        return bool(succeeded)

    def grant_lease(self, ttl: float) -> int:
        lease = self._call("grant lease", lambda c: c.lease(max(1, math.ceil(ttl))))
        return int(lease.id)

    def keepalive(self, lease: int) -> bool:
        reply = self._call(f"keep lease {lease:x} alive", lambda c: c.refresh_lease(lease))
        return reply is not None and int(reply.TTL) > 0

    def revoke_lease(self, lease: int) -> None:
        try:
            self._call(f"revoke lease {lease:x}", lambda c: c.revoke_lease(lease))
        except StoreError as e:
            if not _not_found(e.__cause__):  # already gone: that is what we wanted
                raise

    # -- watch -----------------------------------------------------------------------------------------------------

    def watch(self, prefix: str, after_revision: int, timeout: float) -> list[Event]:
        return self._run(self._watch(prefix, after_revision, timeout), timeout + self._retry_for + 5)

    async def _watch(self, prefix: str, after_revision: int, timeout: float) -> list[Event]:
        """From the prefix's open stream (etcdstream.py says why one stays open), opened again as needed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        give_up = deadline + self._retry_for
        while True:
            stream = await self._stream(prefix, after_revision, give_up)
            found = stream.after(after_revision)
            if found:
                return found
            if stream.error is not None:
                await self._drop_stream(prefix, stream)
                await self._watch_failed(stream.client, stream.error, prefix, after_revision, give_up)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await stream.wait(remaining)

    async def _stream(self, prefix: str, after_revision: int, give_up: float) -> Stream:
        """The open stream of ``prefix`` if it covers ``after_revision``, else a new one from there."""
        while True:
            stream = self._streams.get(prefix)
            if stream is not None and stream.covers(after_revision):
                return stream
            if stream is not None:
                await self._drop_stream(prefix, stream)
            client = self._clients[self._current]
            key = self._key(prefix)
            try:
                watch = await client.watch(key, range_end=aetcd.utils.prefix_range_end(key),
                                           start_revision=after_revision + 1)
            except aetcd.exceptions.ClientError as e:
                await self._watch_failed(client, e, prefix, after_revision, give_up)
                continue
            if prefix in self._streams:  # another caller opened one meanwhile: keep theirs, loop to check it
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watch.cancel(), self._call_timeout)
                continue
            self._streams[prefix] = Stream(client, watch, after_revision, self._event)
            return self._streams[prefix]

    async def _drop_stream(self, prefix: str, stream: Stream) -> None:
        if self._streams.get(prefix) is stream:
            del self._streams[prefix]
        await stream.close(self._call_timeout)

    async def _watch_failed(self, client: Any, error: BaseException, prefix: str, after_revision: int,
                            give_up: float) -> None:
        """Compaction and lasting errors raise; otherwise on to the member that leads (bounded by ``give_up``)."""
        if isinstance(error, aetcd.exceptions.RevisionCompactedError):
            raise Compacted(prefix, after_revision, int(error.compacted_revision) - 1) from error
        if isinstance(error, Ended):
            error = aetcd.exceptions.ConnectionFailedError(str(error))
        if not isinstance(error, Exception) or not _retryable(error):
            raise StoreError(f"etcd store: watch {prefix} failed: {error}") from error
        await self._next_member(client, give_up, f"watch {prefix}", error)

    def _event(self, event: Any) -> Event:
        kv = event.kv
        if event.kind == "DELETE":
            return Event("delete", self._unkey(kv.key), None, int(kv.mod_revision))
        return Event("put", self._unkey(kv.key), json.loads(kv.value), int(kv.mod_revision))

    # -- plumbing --------------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            streams, self._streams = list(self._streams.values()), {}
            await asyncio.gather(*(s.close(self._call_timeout) for s in streams), return_exceptions=True)
            await asyncio.gather(*(c.close() for c in self._clients), return_exceptions=True)

        with contextlib.suppress(StoreError):  # closing is best-effort: the members may be gone
            self._submit(shut(), self._call_timeout + 1)

    def _key(self, key: str) -> bytes:
        return (self._root + key).encode()

    def _unkey(self, key: bytes) -> str:
        return key.decode()[len(self._root):]

    def _call(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``op`` against a member, moving to the next one on failure, for at most ``retry_for``."""
        return self._run(self._with_failover(what, op), self._retry_for + self._call_timeout + 5)

    async def _with_failover(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        give_up = asyncio.get_running_loop().time() + self._retry_for
        while True:
            client = self._clients[self._current]
            try:
                return await op(client)
            except aetcd.exceptions.ClientError as e:
                if not _retryable(e):
                    raise StoreError(f"etcd store: {what} failed: {e}") from e
                await self._next_member(client, give_up, what, e)

    async def _next_member(self, failed: Any, give_up: float, what: str, error: Exception) -> None:
        """After ``failed`` let us down, move to the member that says it leads (waiting out an election)."""
        if asyncio.get_running_loop().time() >= give_up:
            raise StoreError(f"etcd store {','.join(self.endpoints)}: {what} failed: {error}") from error
        if self._clients[self._current] is not failed:
            return  # another caller has moved on already
        _log.info("etcd %s: %s failed (%s); looking for the leader", self.endpoints[self._current], what, error)
        self._current = await self._find_leader(give_up)

    async def _find_leader(self, give_up: float) -> int:
        """The index of the member that reports itself as leader; the next member if none does by ``give_up``.

        A request sent during an election is lost inside etcd and only fails at its deadline,
        even after a new leader is up; the status call is answered locally by each member, so
        polling it finds the new leader as soon as there is one, and the retry goes there.
        """
        loop = asyncio.get_running_loop()
        while True:
            statuses = await asyncio.gather(*(self._status(c) for c in self._clients), return_exceptions=True)
            for index, status in enumerate(statuses):
                if not isinstance(status, BaseException) and status.leader == status.header.member_id != 0:
                    return index
            if loop.time() >= give_up:
                return (self._current + 1) % len(self._clients)
            await asyncio.sleep(LEADER_POLL)

    async def _status(self, client: Any) -> Any:
        await client.connect()
        return await client.maintenancestub.Status(aetcd.rpc.StatusRequest(), timeout=LEADER_POLL * 5)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._closed:
            coro.close()
            raise StoreError("etcd store: used after close()")
        return self._submit(coro, timeout)

    def _submit(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError as e:
            future.cancel()
            raise StoreError(f"etcd store {','.join(self.endpoints)}: no answer within {timeout:.0f}s") from e


def _not_found(cause: BaseException | None) -> bool:
    """An etcd error with gRPC code NOT_FOUND (a lease that does not exist)."""
    rpc_error = cause.__cause__ if cause is not None else None
    return isinstance(rpc_error, aetcd.rpc.AioRpcError) and rpc_error.code() == aetcd.rpc.StatusCode.NOT_FOUND
