"""Outbox cases modelled on Telegraf's buffer suite (models/buffer_suite_test.go, conventions §5.4)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sinks.outbox import AsyncOutbox, Outbox
from gateway.sinks.outbox_common import OutboxStore
from gateway.sinks.outbox_log import LogOutbox

# Every behaviour of the outbox is asked of both stores (gateway.outbox: sqlite | log).
STORES = {"sqlite": (Outbox, "ob.sqlite"), "log": (LogOutbox, "ob.log")}


def recs(*names: str) -> list[tuple[str, bytes]]:
    return [("t", n.encode()) for n in names]


def payloads(outbox: OutboxStore, n: int = 1000) -> list[str]:
    return [r.payload.decode() for r in outbox.peek(n)]


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[type[Outbox] | type[LogOutbox], Path]:
    """The store class and where it keeps an outbox."""
    cls, name = STORES[request.param]
    return cls, tmp_path / name


@pytest.fixture
def make(store):  # type: ignore[no-untyped-def]
    opened: list[OutboxStore] = []
    cls, path = store

    def _make(max_rows: int = 5) -> OutboxStore:
        ob = cls(path, max_rows)
        opened.append(ob)
        return ob

    yield _make
    for ob in opened:
        ob.close()


@pytest.mark.parametrize(
    ("max_rows", "added", "depth", "dropped", "head"),
    [
        pytest.param(5, 3, 3, 0, ["0", "1", "2"], id="len-under"),
        pytest.param(5, 5, 5, 0, ["0", "1", "2", "3", "4"], id="len-full"),
        pytest.param(5, 8, 5, 3, ["3", "4", "5", "6", "7"], id="len-overfill-drops-oldest"),
        pytest.param(1, 4, 1, 3, ["3"], id="len-one"),
    ],
)
def test_len_and_overfill(make, max_rows, added, depth, dropped, head):  # type: ignore[no-untyped-def]
    ob = make(max_rows)
    for i in range(added):
        ob.append(recs(str(i)))
    assert ob.depth() == depth
    assert ob.dropped_total == dropped
    assert payloads(ob) == head


def test_append_batch_larger_than_capacity_counts_every_drop(make):  # type: ignore[no-untyped-def]
    ob = make(3)
    assert ob.append(recs(*"abcdef")) == 3
    assert payloads(ob) == ["d", "e", "f"]
    assert ob.dropped_total == 3


def test_batch_wrap_keeps_order(make):  # type: ignore[no-untyped-def]
    # TestBufferBatchWrap: after the buffer has wrapped, batches still come oldest first.
    ob = make(5)
    ob.append(recs(*"abcde"))
    batch = ob.peek(2)
    ob.ack(batch[-1].id)
    ob.append(recs(*"fgh"))  # fills to 6 -> drops "c"
    assert payloads(ob) == ["d", "e", "f", "g", "h"]
    assert [r.payload for r in ob.peek(3)] == [b"d", b"e", b"f"]
    assert ob.dropped_total == 1


def test_reject_leaves_batch(make):  # type: ignore[no-untyped-def]
    ob = make(5)
    ob.append(recs(*"abc"))
    first = ob.peek(2)
    # not acked (Reject): the same batch comes back, nothing is lost
    assert ob.peek(2) == first
    assert ob.depth() == 3


def test_accept_removes_batch(make):  # type: ignore[no-untyped-def]
    ob = make(5)
    ob.append(recs(*"abc"))
    batch = ob.peek(2)
    assert ob.ack(batch[-1].id) == 2
    assert payloads(ob) == ["c"]
    assert ob.depth() == 1


def test_overwrite_during_batch_then_accept_keeps_new(make):  # type: ignore[no-untyped-def]
    # TestBufferMetricsOverwriteBatchAccept: the outstanding batch was overwritten by newer
    # records; acking it must not remove the newer ones.
    ob = make(3)
    ob.append(recs(*"abc"))
    batch = ob.peek(3)
    ob.append(recs(*"xyz"))  # drops a, b, c
    assert ob.ack(batch[-1].id) == 0
    assert payloads(ob) == ["x", "y", "z"]
    assert ob.dropped_total == 3


def test_peek_after_cursor(make):  # type: ignore[no-untyped-def]
    ob = make(10)
    ob.append(recs(*"abcd"))
    first = ob.peek(2)
    assert [r.payload for r in ob.peek(10, after_id=first[-1].id)] == [b"c", b"d"]


def test_discard_counts_separately(make):  # type: ignore[no-untyped-def]
    ob = make(10)
    ob.append(recs(*"abc"))
    ob.discard(ob.peek(2)[-1].id)
    assert ob.discarded_total == 2
    assert ob.dropped_total == 0
    assert payloads(ob) == ["c"]


def test_reopen_keeps_data_order_and_counters(store) -> None:  # type: ignore[no-untyped-def]
    cls, path = store
    ob = cls(path, 3)
    ob.append(recs(*"abcd"))  # drops a
    ob.ack(ob.peek(1)[0].id)  # acks b
    ob.close()
    ob.close()  # idempotent
    ob2 = cls(path, 3)
    try:
        assert payloads(ob2) == ["c", "d"]
        assert ob2.depth() == 2
        assert ob2.dropped_total == 1
        ob2.append(recs("e"))
        assert payloads(ob2) == ["c", "d", "e"]  # ids keep growing: order survives reopen
    finally:
        ob2.close()


def test_oldest_age(store) -> None:  # type: ignore[no-untyped-def]
    cls, path = store
    now = [1000.0]
    ob = cls(path, 10, clock=lambda: now[0])
    try:
        assert ob.oldest_age_s() == 0.0
        ob.append(recs("a"))
        now[0] = 1002.5
        ob.append(recs("b"))
        assert ob.oldest_age_s() == pytest.approx(2.5)
        ob.ack(ob.peek(1)[0].id)
        assert ob.oldest_age_s() == pytest.approx(0.0)
    finally:
        ob.close()


def test_survives_sigkill(store) -> None:  # type: ignore[no-untyped-def]
    """A committed append survives SIGKILL of the writing process."""
    cls, path = store
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        from {cls.__module__} import {cls.__name__}
        ob = {cls.__name__}({str(path)!r}, 100)
        ob.append([("t", b"a"), ("t", b"b")])
        ob.append([("t", b"c")])
        sys.stdout.write("appended\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=os.getcwd()
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "appended" in proc.stdout
    ob = cls(path, 100)
    try:
        assert payloads(ob) == ["a", "b", "c"]
    finally:
        ob.close()


@pytest.mark.parametrize("backend", ["sqlite", "log"])
async def test_async_outbox(tmp_path: Path, backend: str) -> None:
    ob = await AsyncOutbox.open(tmp_path / f"ob.{backend}", 2, backend=backend)  # type: ignore[arg-type]
    try:
        assert await ob.append(recs(*"abc")) == 1
        batch = await ob.peek(10)
        assert [r.payload for r in batch] == [b"b", b"c"]
        await ob.ack(batch[0].id)
        assert ob.depth() == 1
        assert ob.dropped_total == 1
    finally:
        await ob.close()


def test_items_weigh_the_bound_and_the_counters(make):  # type: ignore[no-untyped-def]
    """Records carrying several items (the Influx sink's chunks of lines): depth, the bound, drops,
    acks and discards all count items, and overflow drops whole records, oldest first."""
    ob = make(10)
    ob.append(recs("a", "b"), [4, 3])
    assert ob.depth() == 7
    assert ob.append(recs("c"), [5]) == 4  # 12 > 10: "a" (4 items) goes
    assert payloads(ob) == ["b", "c"]
    assert (ob.depth(), ob.dropped_total) == (8, 4)
    assert ob.ack(ob.peek(3)[-1].id) == 3  # peek(3 items) is "b" alone
    ob.append(recs("d", "e"), [1, 1])
    assert ob.discard(ob.peek(100)[-1].id) == 7
    assert (ob.depth(), ob.discarded_total) == (0, 7)


def test_peek_limits_items_but_returns_one_oversized_record(make):  # type: ignore[no-untyped-def]
    ob = make(100)
    ob.append(recs("big", "x", "y"), [50, 2, 2])
    assert [r.payload for r in ob.peek(10)] == [b"big"]  # alone it exceeds 10: still sent alone
    first = ob.peek(10)[0].id
    assert [(r.payload, r.items) for r in ob.peek(4, after_id=first)] == [(b"x", 2), (b"y", 2)]
    assert [r.payload for r in ob.peek(3, after_id=first)] == [b"x"]


def test_bad_item_counts_are_refused(make):  # type: ignore[no-untyped-def]
    ob = make(10)
    with pytest.raises(ValueError, match="items"):
        ob.append(recs("a", "b"), [1])
    with pytest.raises(ValueError, match="items"):
        ob.append(recs("a"), [0])
    assert ob.depth() == 0


def test_file_from_before_items_opens_with_one_item_per_record(tmp_path: Path) -> None:
    path = tmp_path / "ob.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL,"
        " key TEXT NOT NULL, payload BLOB NOT NULL);"
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO records(created, key, payload) VALUES (1.0, 't', x'61'), (2.0, 't', x'62');"
    )
    old.commit()
    old.close()
    ob = Outbox(path, 10)
    try:
        assert ob.depth() == 2
        assert [(r.payload, r.items) for r in ob.peek(10)] == [(b"a", 1), (b"b", 1)]
        ob.append(recs("c"), [3])
        assert ob.depth() == 5
    finally:
        ob.close()


def _from_file(outbox: Outbox, n: int, after_id: int) -> list[tuple[int, str, bytes, int]]:
    """What peek must return, straight from the file: the leading records within ``n`` items."""
    rows = outbox._db.execute(
        "SELECT id, key, payload, items FROM records WHERE id > ? ORDER BY id", (after_id,)
    ).fetchall()
    out: list[tuple[int, str, bytes, int]] = []
    for i, k, p, items in rows:
        if out and sum(r[3] for r in out) + items > n:
            break
        out.append((int(i), str(k), bytes(p), int(items)))
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 12), st.integers(0, 15), st.integers(1, 4), st.lists(
    st.tuples(st.sampled_from(["append", "ack", "discard", "peek"]), st.integers(0, 9), st.integers(0, 40)),
    max_size=40))
def test_memory_tail_answers_like_the_file(tmp_path_factory: pytest.TempPathFactory, max_rows: int, tail_max: int,
                                           max_items: int, ops: list[tuple[str, int, int]]) -> None:
    """Whatever mix of appends (records of 1..max_items items), acks, discards and overflow: peek
    (from the memory tail when it can) returns exactly what the SQLite file holds, and the depth
    is the items it holds."""
    outbox = Outbox(tmp_path_factory.mktemp("tail") / "ob.sqlite", max_rows, tail_max=tail_max)
    serial = 0
    try:
        for op, size, ref in ops:
            if op == "append":
                batch = [("k", f"r{serial + i}".encode()) for i in range(size)]
                outbox.append(batch, [1 + (serial + i) % max_items for i in range(size)])
                serial += size
            elif op in ("ack", "discard"):
                getattr(outbox, op)(ref)
            for n, after in ((size + 1, ref), (1000, 0), (3, serial // 2)):
                got = [(r.id, r.key, r.payload, r.items) for r in outbox.peek(n, after)]
                assert got == _from_file(outbox, n, after)
            assert outbox.depth() == sum(r[3] for r in _from_file(outbox, 10**9, 0))
            live_tail = outbox.tail.records[outbox.tail.start :]
            assert sum(r.items for r in live_tail) == outbox.tail.items <= tail_max  # memory bounded in items
            assert outbox.depth() + outbox.dropped_total + outbox.discarded_total <= sum(
                1 + i % max_items for i in range(serial))
    finally:
        outbox.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(STORES)), st.integers(1, 12), st.integers(0, 15), st.integers(1, 4), st.lists(
    st.tuples(st.sampled_from(["append", "ack", "discard", "reopen"]), st.integers(0, 9), st.integers(0, 40)),
    max_size=40))
def test_every_store_behaves_like_a_bounded_fifo(tmp_path_factory: pytest.TempPathFactory, backend: str,
                                                 max_rows: int, tail_max: int, max_items: int,
                                                 ops: list[tuple[str, int, int]]) -> None:
    """Against a plain list as the model: whatever mix of appends, acks, discards, overflow and
    reopening (which empties the memory tail, so reads come from disk), every peek, the depth and
    both counters are the model's."""
    cls, name = STORES[backend]
    path = tmp_path_factory.mktemp("fifo") / name
    outbox: OutboxStore = cls(path, max_rows, tail_max=tail_max)
    model: list[tuple[int, bytes, int]] = []  # (id, payload, items), oldest first
    dropped = discarded = serial = 0
    next_id = 1
    try:
        for op, size, ref in ops:
            if op == "append" and size:
                counts = [1 + (serial + i) % max_items for i in range(size)]
                outbox.append([("k", f"r{serial + i}".encode()) for i in range(size)], counts)
                model += [(next_id + i, f"r{serial + i}".encode(), n) for i, n in enumerate(counts)]
                next_id, serial = next_id + size, serial + size
                while sum(r[2] for r in model) > max_rows:  # the oldest whole records go
                    dropped += model.pop(0)[2]
            elif op in ("ack", "discard"):
                gone = sum(r[2] for r in model if r[0] <= ref)
                assert getattr(outbox, op)(ref) == gone
                discarded += gone if op == "discard" else 0
                model = [r for r in model if r[0] > ref]
            elif op == "reopen":
                outbox.close()
                outbox = cls(path, max_rows, tail_max=tail_max)
            for n, after in ((size + 1, ref), (1000, 0), (3, serial // 2)):
                expected, total = [], 0
                for r in (r for r in model if r[0] > after):
                    if expected and total + r[2] > n:
                        break
                    expected.append(r)
                    total += r[2]
                assert [(r.id, r.payload, r.items) for r in outbox.peek(n, after)] == expected
            assert outbox.depth() == sum(r[2] for r in model)
            assert (outbox.dropped_total, outbox.discarded_total) == (dropped, discarded)
    finally:
        outbox.close()
