"""What every outbox store shares: the store's operations, the record shape, the item-bounded batch,
and the memory tail. Two stores implement them: SQLite (:mod:`gateway.sinks.outbox`, the default) and
append-only segment files (:mod:`gateway.sinks.outbox_log`).

Records appended in this process are also kept in memory (the newest, up to ``max_items`` items), so
a sink that keeps up reads what it just wrote from memory instead of reading it back from disk: the
store is written for durability and read only after a restart or by a sink that fell far behind.
The bound is in items, not records: 20,000 records of the Influx sink's chunks of lines held 1.4 GB.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

OutboxBackend = Literal["sqlite", "log"]


@dataclass(slots=True)
class OutboxRecord:
    """One stored record. ``id`` grows strictly with insertion order. Never changed once made; not
    ``frozen`` because one is built per record appended and frozen construction costs 4x as much."""

    id: int
    key: str
    payload: bytes
    created: float
    items: int = 1


class OutboxStore(Protocol):
    """The synchronous operations of a durable outbox (see :mod:`gateway.sinks.outbox` for the promise)."""

    path: Path
    max_rows: int

    def append(self, records: Sequence[tuple[str, bytes]], items: Sequence[int] | None = None) -> int: ...

    def peek(self, n: int, after_id: int = 0) -> list[OutboxRecord]: ...

    def ack(self, up_to_id: int) -> int: ...

    def discard(self, up_to_id: int) -> int: ...

    def depth(self) -> int: ...

    def oldest_age_s(self) -> float: ...

    @property
    def dropped_total(self) -> int: ...

    @property
    def discarded_total(self) -> int: ...

    def close(self) -> None: ...


class PersistentCounters:
    """The two loss counters both stores keep on disk and cache in ``_dropped`` and ``_discarded``."""

    _dropped: int
    _discarded: int

    @property
    def dropped_total(self) -> int:
        """Items removed unsent because the outbox was full (oldest first). Persistent."""
        return self._dropped

    @property
    def discarded_total(self) -> int:
        """Items a sink gave up on (poison batches). Persistent."""
        return self._discarded


def up_to_items(records: Iterable[OutboxRecord], n: int) -> list[OutboxRecord]:
    """The leading records whose items add up to at most ``n``; the first one in any case."""
    out: list[OutboxRecord] = []
    total = 0
    for record in records:
        total += record.items
        if total > n and out:
            break
        out.append(record)
    return out


def item_counts(records: Sequence[tuple[str, bytes]], items: Sequence[int] | None) -> list[int]:
    """The item count of every record (1 each by default), checked: one count >= 1 per record."""
    counts = [1] * len(records) if items is None else list(items)
    if len(counts) != len(records) or min(counts) < 1:
        raise ValueError("items must give a count >= 1 for every record")
    return counts


class MemoryTail:
    """The newest appended records, contiguous ids, oldest first: ``records[start:]`` is live."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self.records: list[OutboxRecord] = []
        self.start = 0
        self.items = 0  # items in the live part

    def remember(self, first_id: int, records: Sequence[tuple[str, bytes]], counts: Sequence[int],
                 created: float) -> None:
        """Keep records just stored with ids ``first_id, first_id + 1, ...`` (one writer hands out
        consecutive ids), dropping the oldest kept ones until the newest fit the bound."""
        if self.max_items == 0:
            return
        tail = self.records
        if tail and tail[-1].id != first_id - 1:
            tail.clear()  # not contiguous (cannot happen with one writer): start over
            self.start = self.items = 0
        tail.extend(
            OutboxRecord(first_id + i, key, payload, created, n)
            for i, ((key, payload), n) in enumerate(zip(records, counts, strict=True))
        )
        self.items += sum(counts)
        start = self.start
        while self.items > self.max_items:
            self.items -= tail[start].items
            start += 1
        self.start = start
        self._compact()

    def forget_upto(self, up_to_id: int) -> None:
        """Records with ids <= ``up_to_id`` left the store."""
        tail = self.records
        if tail:
            start = max(self.start, min(len(tail), up_to_id - tail[0].id + 1))
            self.items -= sum(r.items for r in tail[self.start : start])
            self.start = start
            self._compact()

    def peek(self, n: int, after_id: int, live_records: int) -> list[OutboxRecord] | None:
        """What the store's ``peek(n, after_id)`` returns, when memory can answer (``live_records``:
        how many records the store holds); None when the answer needs records older than the tail."""
        tail, start = self.records, self.start
        if start >= len(tail):
            return None
        first = tail[start].id
        if after_id + 1 >= first:  # the common case: a sink that keeps up
            begin = start + (after_id + 1 - first)
            return up_to_items(tail[begin : begin + n], n)
        if live_records <= len(tail) - start:
            return up_to_items(tail[start : start + n], n)  # every live record is in the tail
        return None

    def _compact(self) -> None:
        # Dropping the dead prefix costs a copy of the live part: do it only once it is the larger half.
        if self.start and self.start * 2 >= len(self.records):
            del self.records[: self.start]
            self.start = 0
