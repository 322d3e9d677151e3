"""Durable, bounded, in-order outbox in SQLite: the store-and-forward buffer behind every sink.

Delivery promise (conventions §5.1): at-least-once. A sink ``peek``s records in insertion order,
sends them, and ``ack``s them only once the remote confirmed them (MQTT PUBACK, HTTP 204). A crash
between send and ack resends the records, so consumers must be idempotent (QoS 1 semantics, and
InfluxDB overwrites an identical series + timestamp).

Durability: every ``append`` is one committed transaction. The database runs in WAL mode with
``synchronous=NORMAL``, which survives a killed process (SIGKILL) but may lose the last
transactions on power loss; pass ``synchronous="FULL"`` to survive that too, at a cost per append.

Items: a record may carry several items (the Influx sink stores one record per chunk of lines, so
SQLite handles a row per poll instead of a row per value: selecting and deleting a row per line was
a fifth of the gateway's CPU at 50,000 values/s). Depth, the bound and every counter are in items;
a record of the MQTT sinks is one item (one message).

Overflow policy (Telegraf's, conventions §5.1): the outbox holds at most ``max_rows`` items; when an
append overfills it, the OLDEST records are deleted (whole records, at least as many items as the
overflow) and their items counted in the persistent ``dropped_total``. Dropping is never silent: the
counter survives restarts and is exported by the sink's ``stats()``. Records a sink gives up on (a
poison batch the remote rejects for good) are removed with :meth:`Outbox.discard` and counted in
``discarded_total``.

Because records leave only from the front (ack, discard and overflow all delete a prefix), the
live ids always form one contiguous range; the row count and ``depth`` are tracked in memory.

Records appended in this process are also kept in memory (:class:`MemoryTail`), so a sink that
keeps up never selects back what it just wrote.

The class is synchronous and not thread-safe; async code wraps it in :class:`AsyncOutbox`, which
calls it on the event loop thread itself. That blocks the loop for the length of one transaction
(with WAL and ``synchronous=NORMAL`` a commit does not wait for the disk; appending 500 records took
about 1 ms here), which costs less than handing every call to a worker thread did: the thread
hand-offs were an eighth of the gateway's CPU at 13,000 values/s.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from gateway.sinks.outbox_common import (
    MemoryTail,
    OutboxBackend,
    OutboxRecord,
    OutboxStore,
    PersistentCounters,
    item_counts,
    up_to_items,
)
from gateway.sinks.outbox_log import LogOutbox

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused, so order survives drains
    created REAL NOT NULL,                 -- unix seconds, for outbox_oldest_age_s
    key TEXT NOT NULL,                     -- e.g. the MQTT topic; '' when the sink needs none
    payload BLOB NOT NULL,
    items INTEGER NOT NULL DEFAULT 1       -- how many items (values, lines) the record carries
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class Outbox(PersistentCounters):
    """Bounded FIFO of encoded records in one SQLite file (one file per sink)."""

    def __init__(
        self,
        path: str | Path,
        max_rows: int = 100_000,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        clock: Callable[[], float] = time.time,
        tail_max: int = 20_000,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.path = Path(path)
        self.max_rows = max_rows
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so each append is exactly one transaction.
        self._db = sqlite3.connect(str(self.path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        self._add_items_column()
        rows, items = self._db.execute("SELECT COUNT(*), COALESCE(SUM(items), 0) FROM records").fetchone()
        self._rows: int = int(rows)
        self._depth: int = int(items)
        # Counters and the oldest timestamp are cached so stats() can read them from any thread
        # without touching the database; they are refreshed inside each write transaction.
        self._dropped = self._counter("dropped_total")
        self._discarded = self._counter("discarded_total")
        self._oldest_created: float | None = self._query_oldest()
        self._closed = False
        self.tail = MemoryTail(tail_max)

    def _add_items_column(self) -> None:
        """Outbox files written before records carried items hold one item per record."""
        columns = {str(row[1]) for row in self._db.execute("PRAGMA table_info(records)")}
        if "items" not in columns:
            self._db.execute("ALTER TABLE records ADD COLUMN items INTEGER NOT NULL DEFAULT 1")

    # -- counters ---------------------------------------------------------------------------------

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def _query_oldest(self) -> float | None:
        row = self._db.execute("SELECT created FROM records ORDER BY id LIMIT 1").fetchone()
        return float(row[0]) if row else None

    # -- operations -------------------------------------------------------------------------------

    def append(self, records: Sequence[tuple[str, bytes]], items: Sequence[int] | None = None) -> int:
        """Store ``(key, payload)`` records in one committed transaction; ``items[i]`` is how many
        items record ``i`` carries (1 each by default). Return how many old items were dropped to
        make room."""
        if not records:
            return 0
        counts = item_counts(records, items)
        now = self._clock()
        added = sum(counts)
        dropped = dropped_rows = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO records(created, key, payload, items) VALUES (?, ?, ?, ?)",
                [(now, key, payload, n) for (key, payload), n in zip(records, counts, strict=True)],
            )
            # Read before the counters' upsert below, which changes last_insert_rowid().
            last_id = int(self._db.execute("SELECT last_insert_rowid()").fetchone()[0])
            overflow = self._depth + added - self.max_rows
            if overflow > 0:
                dropped, dropped_rows = self._drop_oldest(overflow)
                self._bump("dropped_total", dropped)
            oldest = self._query_oldest() if dropped or self._oldest_created is None else None
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._depth += added - dropped
        self._rows += len(records) - dropped_rows
        self._dropped += dropped
        if oldest is not None:
            self._oldest_created = oldest
        self.tail.remember(last_id - len(records) + 1, records, counts, now)
        if dropped:  # live ids are contiguous and end at last_id
            self.tail.forget_upto(last_id - self._rows)
        return dropped

    def _drop_oldest(self, overflow: int) -> tuple[int, int]:
        """Delete the oldest whole records holding at least ``overflow`` items (inside the caller's
        transaction); return (items, records) deleted. Every record holds >= 1 item, so the first
        ``overflow`` rows always suffice."""
        freed = rows = 0
        last = 0
        for record_id, count in self._db.execute("SELECT id, items FROM records ORDER BY id LIMIT ?", (overflow,)):
            freed += int(count)
            rows += 1
            last = int(record_id)
            if freed >= overflow:
                break
        self._db.execute("DELETE FROM records WHERE id <= ?", (last,))
        return freed, rows

    def peek(self, n: int, after_id: int = 0) -> list[OutboxRecord]:
        """The oldest records with id > ``after_id``, in order, holding at most ``n`` items between
        them (always at least one record when there is one, however many items it holds). Does
        not remove them: a batch that is never acked stays (Telegraf's Reject)."""
        remembered = self.tail.peek(n, after_id, self._rows)
        if remembered is not None:
            return remembered
        rows = self._db.execute(
            "SELECT id, key, payload, created, items FROM records WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, n),
        )
        return up_to_items(
            (OutboxRecord(int(r[0]), str(r[1]), bytes(r[2]), float(r[3]), int(r[4])) for r in rows), n)

    def _delete_upto(self, up_to_id: int, counter: str | None) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rows, items = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(items), 0) FROM records WHERE id <= ?", (up_to_id,)
            ).fetchone()
            removed = int(items)
            self._db.execute("DELETE FROM records WHERE id <= ?", (up_to_id,))
            if counter and removed:
                self._bump(counter, removed)
            oldest = self._query_oldest()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._depth -= removed
        self._rows -= int(rows)
        self._oldest_created = oldest
        self.tail.forget_upto(up_to_id)
        if counter == "discarded_total":
            self._discarded += removed
        return removed

    def ack(self, up_to_id: int) -> int:
        """Remove every record with id <= ``up_to_id`` (the remote confirmed them); how many items
        went. Records
        already dropped by overflow are simply absent, so acking a stale batch never removes
        newer records (Telegraf's TestBufferMetricsOverwriteBatchAccept)."""
        return self._delete_upto(up_to_id, None)

    def discard(self, up_to_id: int) -> int:
        """Remove records the remote rejected for good, counting them in ``discarded_total``."""
        return self._delete_upto(up_to_id, "discarded_total")

    def depth(self) -> int:
        """Items waiting (records, for sinks whose records are one item each)."""
        return self._depth

    def oldest_age_s(self) -> float:
        """Age of the oldest unsent record, 0.0 when empty. Reads the cache: no I/O."""
        oldest = self._oldest_created
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.close()


class AsyncOutbox:
    """The sinks' face of an outbox store (SQLite or segment files): the same operations as
    coroutines, run on the loop thread (see the module docstring for why not on a worker thread).
    Sinks await them, so moving the disk work elsewhere again would not change a caller."""

    def __init__(self, outbox: OutboxStore) -> None:
        self.sync = outbox

    @classmethod
    async def open(cls, path: str | Path, max_rows: int = 100_000, *, tail_max: int = 20_000,
                   backend: OutboxBackend = "sqlite") -> AsyncOutbox:
        """Open (creating if needed) the outbox at ``path``: an SQLite file or, with ``backend="log"``,
        a directory of segment files; ``tail_max`` as for :class:`Outbox`."""
        if backend == "log":
            return cls(LogOutbox(path, max_rows, tail_max=tail_max))
        return cls(Outbox(path, max_rows, tail_max=tail_max))

    async def append(self, records: Sequence[tuple[str, bytes]], items: Sequence[int] | None = None) -> int:
        return self.sync.append(records, items)

    async def peek(self, n: int, after_id: int = 0) -> list[OutboxRecord]:
        return self.sync.peek(n, after_id)

    async def ack(self, up_to_id: int) -> int:
        return self.sync.ack(up_to_id)

    async def discard(self, up_to_id: int) -> int:
        return self.sync.discard(up_to_id)

    def oldest_age_s(self) -> float:
        return self.sync.oldest_age_s()

    @property
    def dropped_total(self) -> int:
        return self.sync.dropped_total

    @property
    def discarded_total(self) -> int:
        return self.sync.discarded_total

    def depth(self) -> int:
        return self.sync.depth()

    async def close(self) -> None:
        self.sync.close()
