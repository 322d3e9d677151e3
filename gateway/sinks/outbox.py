"""Durable, bounded, in-order outbox in SQLite: the store-and-forward buffer behind every sink.

Delivery promise (conventions §5.1): at-least-once. A sink ``peek``s records in insertion order,
sends them, and ``ack``s them only once the remote confirmed them (MQTT PUBACK, HTTP 204). A crash
between send and ack resends the records, so consumers must be idempotent (QoS 1 semantics, and
InfluxDB overwrites an identical series + timestamp).

Durability: every ``append`` is one committed transaction. The database runs in WAL mode with
``synchronous=NORMAL``, which survives a killed process (SIGKILL) but may lose the last
transactions on power loss; pass ``synchronous="FULL"`` to survive that too, at a cost per append.

Overflow policy (Telegraf's, conventions §5.1): the outbox holds at most ``max_rows`` records; when
an append overfills it, the OLDEST records are deleted and counted in the persistent
``dropped_total``. Dropping is never silent: the counter survives restarts and is exported by the
sink's ``stats()``. Records a sink gives up on (a poison batch the remote rejects for good) are
removed with :meth:`Outbox.discard` and counted in ``discarded_total``.

Because records leave only from the front (ack, discard and overflow all delete a prefix), the
live ids always form one contiguous range; ``depth`` is tracked in memory from that invariant.

The class is synchronous and not thread-safe; async code wraps it in :class:`AsyncOutbox`, which
runs every call on one dedicated thread so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused, so order survives drains
    created REAL NOT NULL,                 -- unix seconds, for outbox_oldest_age_s
    key TEXT NOT NULL,                     -- e.g. the MQTT topic; '' when the sink needs none
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One stored record. ``id`` grows strictly with insertion order."""

    id: int
    key: str
    payload: bytes
    created: float


class Outbox:
    """Bounded FIFO of encoded records in one SQLite file (one file per sink)."""

    def __init__(
        self,
        path: str | Path,
        max_rows: int = 100_000,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.path = Path(path)
        self.max_rows = max_rows
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so each append is exactly one
        # transaction. check_same_thread=False: AsyncOutbox moves all calls to one worker thread.
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT COUNT(*) FROM records").fetchone()
        self._depth: int = int(row[0])
        # Counters and the oldest timestamp are cached so stats() can read them from any thread
        # without touching the database; they are refreshed inside each write transaction.
        self._dropped = self._counter("dropped_total")
        self._discarded = self._counter("discarded_total")
        self._oldest_created: float | None = self._query_oldest()
        self._closed = False

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

    @property
    def dropped_total(self) -> int:
        """Records deleted unsent because the outbox was full (oldest first). Persistent."""
        return self._dropped

    @property
    def discarded_total(self) -> int:
        """Records a sink gave up on (poison batches). Persistent."""
        return self._discarded

    # -- operations -------------------------------------------------------------------------------

    def append(self, records: Sequence[tuple[str, bytes]]) -> int:
        """Store ``(key, payload)`` records in one committed transaction; return how many old
        records were dropped to make room."""
        if not records:
            return 0
        now = self._clock()
        dropped = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO records(created, key, payload) VALUES (?, ?, ?)",
                [(now, key, payload) for key, payload in records],
            )
            overflow = self._depth + len(records) - self.max_rows
            if overflow > 0:
                # Oldest are the smallest ids (ids only grow): delete exactly `overflow` of them.
                cur = self._db.execute(
                    "DELETE FROM records WHERE id IN (SELECT id FROM records ORDER BY id LIMIT ?)",
                    (overflow,),
                )
                dropped = cur.rowcount
                self._bump("dropped_total", dropped)
            oldest = self._query_oldest() if dropped or self._oldest_created is None else None
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._depth += len(records) - dropped
        self._dropped += dropped
        if oldest is not None:
            self._oldest_created = oldest
        return dropped

    def peek(self, n: int, after_id: int = 0) -> list[OutboxRecord]:
        """Up to ``n`` oldest records with id > ``after_id``, in order. Does not remove them: a
        batch that is never acked stays (Telegraf's Reject)."""
        rows = self._db.execute(
            "SELECT id, key, payload, created FROM records WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, n),
        ).fetchall()
        return [OutboxRecord(int(r[0]), str(r[1]), bytes(r[2]), float(r[3])) for r in rows]

    def _delete_upto(self, up_to_id: int, counter: str | None) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = self._db.execute("DELETE FROM records WHERE id <= ?", (up_to_id,))
            removed = cur.rowcount
            if counter and removed:
                self._bump(counter, removed)
            oldest = self._query_oldest()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._depth -= removed
        self._oldest_created = oldest
        if counter == "discarded_total":
            self._discarded += removed
        return removed

    def ack(self, up_to_id: int) -> int:
        """Remove every record with id <= ``up_to_id`` (the remote confirmed them). Records
        already dropped by overflow are simply absent, so acking a stale batch never removes
        newer records (Telegraf's TestBufferMetricsOverwriteBatchAccept)."""
        return self._delete_upto(up_to_id, None)

    def discard(self, up_to_id: int) -> int:
        """Remove records the remote rejected for good, counting them in ``discarded_total``."""
        return self._delete_upto(up_to_id, "discarded_total")

    def depth(self) -> int:
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
    """Runs an :class:`Outbox` on one dedicated thread: disk I/O never blocks the event loop and
    the SQLite connection is only ever used from a single thread at a time."""

    def __init__(self, outbox: Outbox, executor: ThreadPoolExecutor) -> None:
        self.sync = outbox
        self._executor = executor

    @classmethod
    async def open(cls, path: str | Path, max_rows: int = 100_000) -> AsyncOutbox:
        """Open (creating if needed) the outbox file on the dedicated thread."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"outbox-{Path(path).stem}")
        outbox = await asyncio.get_running_loop().run_in_executor(executor, Outbox, path, max_rows)
        return cls(outbox, executor)

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def append(self, records: Sequence[tuple[str, bytes]]) -> int:
        return await self._run(self.sync.append, records)

    async def peek(self, n: int, after_id: int = 0) -> list[OutboxRecord]:
        return await self._run(self.sync.peek, n, after_id)

    async def ack(self, up_to_id: int) -> int:
        return await self._run(self.sync.ack, up_to_id)

    async def discard(self, up_to_id: int) -> int:
        return await self._run(self.sync.discard, up_to_id)

    # Cached values: plain attribute reads, safe from the loop thread without the worker.
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
        await self._run(self.sync.close)
        self._executor.shutdown(wait=False)
