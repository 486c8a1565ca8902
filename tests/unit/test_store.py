"""The store contract, run against every backend, and transactions over it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overlays.errors import StoreError
from overlays.store import MemoryStore, SqliteStore, Store, Txn, transact


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "state.db")
    yield s
    s.close()


def put(store: Store, key: str, value: dict[str, object], expect: int | None = None) -> None:
    """Write one key; with ``expect``, only if it is still at that revision."""
    compares = {} if expect is None else {key: expect}
    assert store.commit(compares, {key: value}, [])


# -- get / range / commit ------------------------------------------------------------------------------------------


def test_get_missing_is_none(store: Store) -> None:
    assert store.get("net/a") is None


def test_put_then_get(store: Store) -> None:
    put(store, "net/a", {"x": 1, "nested": {"y": [1, 2]}})
    entry = store.get("net/a")
    assert entry is not None
    assert entry.key == "net/a"
    assert entry.value == {"x": 1, "nested": {"y": [1, 2]}}
    assert entry.mod_revision > 0


def test_each_commit_raises_the_revision(store: Store) -> None:
    put(store, "a", {"v": 1})
    first = store.get("a")
    put(store, "b", {"v": 2})
    put(store, "a", {"v": 3})
    second, other = store.get("a"), store.get("b")
    assert first and second and other
    assert first.mod_revision < other.mod_revision < second.mod_revision


def test_one_commit_writes_its_keys_at_one_revision(store: Store) -> None:
    assert store.commit({}, {"a": {"v": 1}, "b": {"v": 2}}, [])
    a, b = store.get("a"), store.get("b")
    assert a and b and a.mod_revision == b.mod_revision


def test_range_is_sorted_and_bounded_by_the_prefix(store: Store) -> None:
    for key in ["net/b", "net/a", "net/ab", "net/a/x", "net", "neu/a", "ipam/a", "net0"]:
        put(store, key, {"k": key})
    assert [e.key for e in store.range("net/")] == ["net/a", "net/a/x", "net/ab", "net/b"]
    assert [e.key for e in store.range("net/a/")] == ["net/a/x"]
    assert [e.key for e in store.range("net/ab")] == ["net/ab"]
    assert [e.key for e in store.range("nothing/")] == []
    assert store.range("net/b")[0].value == {"k": "net/b"}


def test_range_prefix_is_literal(store: Store) -> None:
    """No wildcards and no case folding: names may contain '_' and '.'."""
    for key in ["net/a_b", "net/axb", "net/A_B", "net/a.b", "net/a%"]:
        put(store, key, {})
    assert [e.key for e in store.range("net/a_")] == ["net/a_b"]
    assert [e.key for e in store.range("net/a.")] == ["net/a.b"]
    assert [e.key for e in store.range("net/a%")] == ["net/a%"]


def test_range_of_everything(store: Store) -> None:
    put(store, "b", {})
    put(store, "a", {})
    assert [e.key for e in store.range("")] == ["a", "b"]


def test_delete(store: Store) -> None:
    put(store, "a", {"v": 1})
    put(store, "b", {"v": 2})
    assert store.commit({}, {}, ["a", "missing"])
    assert store.get("a") is None
    assert store.get("b") is not None
    assert [e.key for e in store.range("")] == ["b"]


# -- compares ------------------------------------------------------------------------------------------------------


def test_compare_zero_means_absent(store: Store) -> None:
    assert store.commit({"a": 0}, {"a": {"v": 1}}, [])
    assert not store.commit({"a": 0}, {"a": {"v": 2}}, [])
    entry = store.get("a")
    assert entry and entry.value == {"v": 1}


def test_stale_compare_fails_and_changes_nothing(store: Store) -> None:
    put(store, "a", {"v": 1})
    seen = store.get("a")
    assert seen
    put(store, "a", {"v": 2})  # another writer
    assert not store.commit({"a": seen.mod_revision}, {"a": {"v": 3}, "b": {"v": 3}}, ["a"])
    now = store.get("a")
    assert now and now.value == {"v": 2}
    assert store.get("b") is None


def test_current_compare_succeeds(store: Store) -> None:
    put(store, "a", {"v": 1})
    seen = store.get("a")
    assert seen
    assert store.commit({"a": seen.mod_revision}, {"a": {"v": 2}}, [])
    now = store.get("a")
    assert now and now.value == {"v": 2}


def test_compare_on_a_deleted_key(store: Store) -> None:
    put(store, "a", {"v": 1})
    seen = store.get("a")
    assert seen
    assert store.commit({}, {}, ["a"])
    assert not store.commit({"a": seen.mod_revision}, {"b": {}}, [])
    assert store.commit({"a": 0}, {"b": {}}, [])


def test_failed_commit_does_not_raise_the_revision(store: Store) -> None:
    put(store, "a", {"v": 1})
    before = store.get("a")
    assert before
    assert not store.commit({"a": 0}, {"b": {}}, [])
    put(store, "c", {})
    after = store.get("c")
    assert after and after.mod_revision == before.mod_revision + 1


# -- Txn -----------------------------------------------------------------------------------------------------------


def test_txn_reads_its_own_writes(store: Store) -> None:
    put(store, "net/a", {"v": 1})
    put(store, "net/b", {"v": 1})
    txn = Txn(store)
    txn.put("net/a", {"v": 2})
    txn.put("net/c", {"v": 3})
    txn.delete("net/b")
    assert txn.get("net/a") == {"v": 2}
    assert txn.get("net/b") is None
    assert txn.get("net/c") == {"v": 3}
    assert txn.range("net/") == {"net/a": {"v": 2}, "net/c": {"v": 3}}
    # nothing reached the store yet
    b = store.get("net/b")
    assert b and b.value == {"v": 1}
    assert store.get("net/c") is None


def test_txn_put_after_delete_and_delete_after_put(store: Store) -> None:
    put(store, "a", {"v": 1})
    txn = Txn(store)
    txn.delete("a")
    txn.put("a", {"v": 2})
    txn.put("b", {"v": 2})
    txn.delete("b")
    assert txn.get("a") == {"v": 2}
    assert txn.get("b") is None
    assert txn.range("") == {"a": {"v": 2}}


def test_txn_records_what_it_read(store: Store) -> None:
    put(store, "a", {"v": 1})
    txn = Txn(store)
    txn.get("a")
    txn.get("missing")
    a = store.get("a")
    assert a
    assert txn.compares == {"a": a.mod_revision, "missing": 0}


def test_txn_create(store: Store) -> None:
    put(store, "a", {"v": 1})
    txn = Txn(store)
    assert not txn.create("a", {"v": 2})
    assert txn.create("b", {"v": 2})
    assert not txn.create("b", {"v": 3})  # present in this txn now
    assert txn.get("b") == {"v": 2}
    assert txn.puts == {"b": {"v": 2}}


def test_txn_create_fails_at_commit_if_another_writer_created_the_key(store: Store) -> None:
    txn = Txn(store)
    assert txn.create("a", {"who": "first"})
    put(store, "a", {"who": "second"})
    assert not store.commit(txn.compares, txn.puts, sorted(txn.deletes))
    a = store.get("a")
    assert a and a.value == {"who": "second"}


# -- transact ------------------------------------------------------------------------------------------------------


def test_transact_commits(store: Store) -> None:
    assert transact(store, lambda txn: txn.put("a", {"v": 1})) is None
    a = store.get("a")
    assert a and a.value == {"v": 1}


def test_transact_read_only_does_not_commit(store: Store) -> None:
    put(store, "a", {"v": 1})
    before = store.get("a")
    assert transact(store, lambda txn: txn.get("a")) == {"v": 1}
    put(store, "b", {})
    after = store.get("b")
    assert before and after and after.mod_revision == before.mod_revision + 1


def test_transact_retries_when_a_racing_txn_wins(store: Store) -> None:
    put(store, "counter", {"n": 0})
    calls = 0

    def increment(txn: Txn) -> int:
        nonlocal calls
        calls += 1
        n = int((txn.get("counter") or {})["n"]) + 1
        if calls == 1:
            # A racing transaction commits between our read and our commit.
            transact(store, lambda other: other.put("counter", {"n": 100}))
        txn.put("counter", {"n": n})
        return n

    assert transact(store, increment) == 101
    assert calls == 2
    counter = store.get("counter")
    assert counter and counter.value == {"n": 101}


def test_transact_gives_up_with_store_error(store: Store) -> None:
    put(store, "a", {"n": 0})

    def always_loses(txn: Txn) -> None:
        txn.get("a")
        transact(store, lambda other: other.put("a", {"n": 1}))
        txn.put("b", {})

    with pytest.raises(StoreError, match="busy"):
        transact(store, always_loses, attempts=3)
    assert store.get("b") is None


def test_transact_propagates_errors_without_committing(store: Store) -> None:
    def fails(txn: Txn) -> None:
        txn.put("a", {})
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        transact(store, fails)
    assert store.get("a") is None


def test_transact_counter_under_threads(tmp_path: Path) -> None:
    """Eight threads, each with its own connection, add 10 each to one counter: no update is lost."""
    path = tmp_path / "state.db"
    first = SqliteStore(path)
    put(first, "counter", {"n": 0})
    errors: list[BaseException] = []

    def work() -> None:
        s = SqliteStore(path)
        try:
            for _ in range(10):
                transact(s, _increment)
        except BaseException as e:
            errors.append(e)
        finally:
            s.close()

    run_threads(work, 8)
    assert errors == []
    counter = first.get("counter")
    first.close()
    assert counter and counter.value == {"n": 80}


def _increment(txn: Txn) -> None:
    txn.put("counter", {"n": (txn.get("counter") or {})["n"] + 1})


def run_threads(work: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=work) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# -- SqliteStore specifics -----------------------------------------------------------------------------------------


def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SqliteStore(path)
    put(s, "net/a", {"subnet": "10.1.0.0/24"})
    put(s, "net/b", {"subnet": "10.2.0.0/24"})
    put(s, "net/b", {"subnet": "10.3.0.0/24"})
    assert s.commit({}, {}, ["net/a"])
    rev = s.get("net/b")
    s.close()

    again = SqliteStore(path)
    try:
        assert again.get("net/a") is None
        assert again.get("net/b") == rev
        put(again, "net/c", {})
        c = again.get("net/c")
        assert rev and c and c.mod_revision > rev.mod_revision  # revisions keep counting up
    finally:
        again.close()


def test_sqlite_two_connections_see_each_other(tmp_path: Path) -> None:
    one, two = SqliteStore(tmp_path / "state.db"), SqliteStore(tmp_path / "state.db")
    try:
        put(one, "a", {"v": 1})
        seen = two.get("a")
        assert seen and seen.value == {"v": 1}
        put(two, "a", {"v": 2}, expect=seen.mod_revision)
        assert not one.commit({"a": seen.mod_revision}, {"a": {"v": 3}}, [])
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("where", ["missing-dir/state.db", "."])
def test_sqlite_unopenable_path_raises_store_error(tmp_path: Path, where: str) -> None:
    path = tmp_path / where
    with pytest.raises(StoreError, match="cannot open state store"):
        SqliteStore(path)


# -- several keys in one read --------------------------------------------------------------------------------------


def test_get_many_reads_the_present_keys_with_their_revisions_and_leaves_out_the_absent(store: Store) -> None:
    put(store, "k/a", {"v": 1})
    put(store, "k/b", {"v": 2})
    a, b = store.get("k/a"), store.get("k/b")
    found = store.get_many(["k/b", "k/missing", "k/a"])
    assert found == {"k/a": a, "k/b": b}
    assert store.get_many([]) == {}


class _Counting:
    """A store that counts its reads (get and get_many) and passes everything through."""

    def __init__(self, inner: Store) -> None:
        self.inner, self.reads = inner, 0

    def get(self, key: str) -> object:
        self.reads += 1
        return self.inner.get(key)

    def get_many(self, keys: list[str]) -> object:
        self.reads += 1
        return self.inner.get_many(keys)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_transaction_reads_each_key_once_and_a_prefetch_reads_many_in_one_request(store: Store) -> None:
    put(store, "p/a", {"v": 1})
    put(store, "p/b", {"v": 2})
    counting = _Counting(store)
    txn = Txn(counting)  # type: ignore[arg-type]
    txn.prefetch(["p/a", "p/b", "p/c"])
    assert counting.reads == 1
    assert (txn.get("p/a"), txn.peek("p/b"), txn.get("p/c"), txn.get("p/a")) == ({"v": 1}, {"v": 2}, None, {"v": 1})
    assert counting.reads == 1, "prefetched keys, and a key read twice, cost no more reads"
    assert "p/b" not in txn.compares, "a prefetch (and a peek) adds no compare; a get does"
    # The compares are those of the prefetched revisions: a writer in between makes the commit fail.
    put(store, "p/a", {"v": 9})
    txn.put("p/c", {"v": 3})
    assert not store.commit(txn.compares, txn.puts, [])
