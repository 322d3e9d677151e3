"""Durable, bounded, in-order outbox in append-only segment files: the ``log`` outbox store.

The same promise and the same operations as the SQLite :class:`~gateway.sinks.outbox.Outbox`
(at-least-once, in order, bounded in items with the oldest dropped and counted, persistent counters),
at a fraction of its cost per record. SQLite inserts every record into a B-tree, writes the changed
pages to its WAL at each commit and rewrites them again when records are deleted: about 10 us per
record appended and acknowledged on the reference machine (BENCHMARKS.md). Here an append is one
``write`` of the framed records to the end of a segment file, and an acknowledgement rewrites a
state slot (36 bytes); whole segments are unlinked once every record in them left. Fewer bytes are
written per record too, which matters on the flash storage edge devices run on.

Layout of the store's directory (``<data_dir>/outbox/<sink>.log/``):

- ``<first id, 20 digits>.seg``: records, each ``crc32 | payload length | id | created | items | key
  length`` (little-endian) then the UTF-8 key and the payload. The CRC covers everything after it, so
  a record torn by a crash mid-write is recognised and cut off when the store is opened.
- ``state``: two 64-byte slots, written alternately, each ``sequence | first live id | dropped_total |
  discarded_total | crc32``; the valid slot with the higher sequence wins, so a torn slot write leaves
  the previous state readable.

Records leave only from the front, so "first live id" says everything about what is gone: ack,
discard and overflow move it forward (the latter two also count what they removed). Ids are never
reused: after a restart the next id is past both the last record on disk and the first live id.
Within a segment ids are consecutive; they jump between segments only past records a batch larger
than the bound dropped before they were written.

Durability: ``synchronous="NORMAL"`` writes to the kernel (a SIGKILLed process loses nothing it
returned from; power loss may lose the last appends), ``"FULL"`` also fsyncs each write. When an
append overfills the store, the new state (dropped records gone, counted) is written before the new
records, so a crash in between can only lose records that had already been counted as dropped.

Synchronous and not thread-safe, like the SQLite store; :class:`~gateway.sinks.outbox.AsyncOutbox`
calls it on the event loop thread.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import time
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from gateway.sinks.outbox_common import MemoryTail, OutboxRecord, PersistentCounters, item_counts, up_to_items

log = logging.getLogger(__name__)

# crc32, payload length, id, created (Unix s), items, key length.
_RECORD = struct.Struct("<IIQdIH")
_CRC = struct.Struct("<I")
_AFTER_CRC = struct.Struct("<IQdIH")  # the header without its crc, which covers it, the key and the payload
# sequence, first live id, dropped_total, discarded_total; then the crc32 of these 32 bytes.
_STATE = struct.Struct("<QQQQ")
_STATE_SLOT = 64
_SEGMENT_SUFFIX = ".seg"


def _frames(first_id: int, created: float, records: Sequence[tuple[str, bytes]], counts: Sequence[int],
            offset: int) -> tuple[bytes, list[int]]:
    """The records framed for one write, and where each will start in its segment. One loop without
    a call per record: this is the store's whole cost per record besides the memory tail."""
    parts: list[bytes] = []
    offsets: list[int] = []
    pack_head, pack_crc, crc32 = _AFTER_CRC.pack, _CRC.pack, zlib.crc32
    record_id = first_id
    for (key, payload), items in zip(records, counts, strict=True):
        key_bytes = key.encode()
        head = pack_head(len(payload), record_id, created, items, len(key_bytes))
        parts += (pack_crc(crc32(payload, crc32(key_bytes, crc32(head)))), head, key_bytes, payload)
        offsets.append(offset)
        offset += _RECORD.size + len(key_bytes) + len(payload)
        record_id += 1
    return b"".join(parts), offsets


def _parse_state(raw: bytes) -> tuple[int, int, int, int]:
    """(sequence, first live id, dropped_total, discarded_total) of the newer valid slot; a new store's
    when neither is valid (no state written yet)."""
    best = (0, 1, 0, 0)
    for slot in range(2):
        chunk = raw[slot * _STATE_SLOT : slot * _STATE_SLOT + _STATE.size + 4]
        if len(chunk) < _STATE.size + 4:
            continue
        body, (crc,) = chunk[: _STATE.size], _CRC.unpack(chunk[_STATE.size :])
        if zlib.crc32(body) == crc and (fields := _STATE.unpack(body))[0] > best[0]:
            best = (fields[0], fields[1], fields[2], fields[3])
    return best


def _segment_files(path: Path) -> list[tuple[int, Path]]:
    """The segment files of a store with the id of their first record, in id order."""
    found = []
    for file in path.glob("*" + _SEGMENT_SUFFIX):
        stem = file.name[: -len(_SEGMENT_SUFFIX)]
        if stem.isdigit():
            found.append((int(stem), file))
    return sorted(found)


def _scan(data: bytes, first_id: int) -> Iterator[tuple[int, int, int, float, int]]:
    """(id, start, end, created, items) of each intact record of a segment's bytes, in order, up to the
    first one that is short, damaged or out of sequence."""
    offset, record_id = 0, first_id
    while offset + _RECORD.size <= len(data):
        crc, length, stored_id, created, items, key_length = _RECORD.unpack_from(data, offset)
        end = offset + _RECORD.size + key_length + length
        if end > len(data) or stored_id != record_id or zlib.crc32(data[offset + 4 : end]) != crc:
            return
        yield record_id, offset, end, created, items
        offset, record_id = end, record_id + 1


def read_live_records(path: str | Path) -> list[OutboxRecord]:
    """The records a store holds, read without changing anything, even while a gateway appends to
    it (a record being written is not yet whole, so it is left out): for tools and tests."""
    path = Path(path)
    first_live = _parse_state((path / "state").read_bytes() if (path / "state").exists() else b"")[1]
    records: list[OutboxRecord] = []
    for first_id, file in _segment_files(path):
        try:
            data = file.read_bytes()
        except FileNotFoundError:  # removed meanwhile: every record in it had been acknowledged
            continue
        for record_id, offset, end, created, items in _scan(data, first_id):
            if record_id >= first_live:
                key_end = end - _RECORD.unpack_from(data, offset)[1]
                key = data[offset + _RECORD.size : key_end].decode()
                records.append(OutboxRecord(record_id, key, data[key_end:end], created, items))
    return records


def _unlink_all(paths: Iterator[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class _Segment:
    """One segment file: the id of its first record, the id its next record takes, its length in bytes."""

    def __init__(self, path: Path, first_id: int) -> None:
        self.path = path
        self.first_id = first_id
        self.end_id = first_id
        self.size = 0


class LogOutbox(PersistentCounters):
    """Bounded FIFO of encoded records in append-only segment files (one directory per sink)."""

    def __init__(
        self,
        path: str | Path,
        max_rows: int = 100_000,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        clock: Callable[[], float] = time.time,
        tail_max: int = 20_000,
        segment_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.path = Path(path)
        self.max_rows = max_rows
        self._clock = clock
        self._fsync = synchronous == "FULL"
        self._segment_bytes = segment_bytes
        self.path.mkdir(parents=True, exist_ok=True)
        self._state_fd = os.open(self.path / "state", os.O_RDWR | os.O_CREAT, 0o644)
        self._sequence, self._first_live, self._dropped, self._discarded = _parse_state(
            os.pread(self._state_fd, 2 * _STATE_SLOT, 0))
        # The records' metadata, index i holding id _base + i; ids before _first_live are gone and
        # their entries are cut off once they are the larger half.
        self._base = self._first_live
        self._items = array("I")
        self._created = array("d")
        self._offsets = array("Q")  # where each record starts in its segment
        self._segments: list[_Segment] = []
        self._next_id = self._first_live
        self._recover()
        self._depth = sum(self._items)
        self._write_fd: int | None = None
        self._closed = False
        self.tail = MemoryTail(tail_max)

    # -- opening ------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Index the live records on disk, cut a torn last record off, and remove dead segments."""
        found = _segment_files(self.path)
        if found:
            # A power loss can keep the removal of a segment but lose the state write made before it:
            # nothing older than the first file is left either way.
            self._first_live = self._base = max(self._first_live, min(first for first, _ in found))
        expected: int | None = None
        for index, (first_id, path) in enumerate(found):
            # Ids jump only past records that were dropped before being written: everything before
            # the jump is then gone, so the segment starts at or before the first live id.
            if expected is not None and first_id != expected and not expected < first_id <= self._first_live:
                log.error("outbox %s: segment %s does not continue at id %d; it and later segments ignored",
                          self.path, path.name, expected)
                _unlink_all(p for _, p in found[index:])
                break
            segment = _Segment(path, first_id)
            intact = self._index_segment(segment)
            self._segments.append(segment)
            expected = self._next_id
            if not intact:
                _unlink_all(p for _, p in found[index + 1 :])
                break
        self._drop_dead_segments(keep_last=False)

    def _index_segment(self, segment: _Segment) -> bool:
        """Index the segment's records from its start; False when a damaged record ended it (the file
        is cut there: the record a crash tore, and nothing after it, was ever acknowledged as stored)."""
        data = segment.path.read_bytes()
        size, next_id = 0, segment.first_id
        for record_id, offset, end, created, items in _scan(data, segment.first_id):
            if record_id >= self._first_live:
                self._items.append(items)
                self._created.append(created)
                self._offsets.append(offset)
            size, next_id = end, record_id + 1
        intact = size == len(data)
        if not intact:
            log.warning("outbox %s: %s ends in a damaged record at byte %d; cut there",
                        self.path, segment.path.name, size)
            os.truncate(segment.path, size)
        segment.size, segment.end_id = size, next_id
        self._next_id = max(self._next_id, next_id)
        return intact

    # -- counters and state ---------------------------------------------------------------------------

    def _write_state(self) -> None:
        self._sequence += 1
        body = _STATE.pack(self._sequence, self._first_live, self._dropped, self._discarded)
        os.pwrite(self._state_fd, body + _CRC.pack(zlib.crc32(body)), (self._sequence % 2) * _STATE_SLOT)
        if self._fsync:
            os.fsync(self._state_fd)

    def depth(self) -> int:
        """Items waiting."""
        return self._depth

    def oldest_age_s(self) -> float:
        """Age of the oldest unsent record, 0.0 when empty. No I/O."""
        if self._first_live >= self._next_id:
            return 0.0
        return max(0.0, self._clock() - self._created[self._first_live - self._base])

    # -- operations -------------------------------------------------------------------------------------

    def append(self, records: Sequence[tuple[str, bytes]], items: Sequence[int] | None = None) -> int:
        """Store ``(key, payload)`` records with one write; ``items[i]`` is how many items record ``i``
        carries (1 each by default). Return how many old items were dropped to make room."""
        if not records:
            return 0
        counts = item_counts(records, items)
        now = self._clock()
        first = self._next_id
        dropped = 0
        overflow = self._depth + sum(counts) - self.max_rows
        if overflow > 0:
            dropped, skip = self._make_room(overflow, counts)
            # Records of the batch that would go at once are not written; their ids are used up all
            # the same (as SQLite's AUTOINCREMENT does), and the survivors start a segment of their own.
            records, counts, first = records[skip:], counts[skip:], first + skip
            if not records:
                self._next_id = first
                return dropped
        segment = self._segment_for_append(first)
        fd = self._write_fd
        assert fd is not None
        offset = segment.size
        frames, offsets = _frames(first, now, records, counts, offset)
        try:
            written = 0
            while written < len(frames):
                written += os.write(fd, frames[written:])
            if self._fsync:
                os.fsync(fd)
        except OSError:
            # Disk full, say: cut what was written, or the next append would follow a torn record
            # and be cut off with it when the store is next opened.
            os.ftruncate(fd, offset)
            raise
        segment.size += len(frames)
        self._next_id = segment.end_id = first + len(records)
        self._items.extend(counts)
        self._created.extend([now] * len(records))
        self._offsets.extend(offsets)
        self._depth += sum(counts)
        self.tail.remember(first, records, counts, now)
        return dropped

    def _make_room(self, overflow: int, new_counts: list[int]) -> tuple[int, int]:
        """Drop the oldest whole records holding >= ``overflow`` items, the stored ones first, then
        the leading records of the batch being appended; return the items dropped and how many of
        the batch's records went. The new state (counted, first live id moved) is written before
        the batch: see the module docstring."""
        freed = 0
        record_id = self._first_live
        stored = self._items
        while freed < overflow and record_id < self._next_id:
            freed += stored[record_id - self._base]
            record_id += 1
        skip = skipped = 0
        while freed + skipped < overflow:  # every stored record is gone: the batch alone overfills
            skipped += new_counts[skip]
            skip += 1
        self._first_live = record_id + skip
        self._dropped += freed + skipped
        self._depth -= freed
        self._write_state()
        self._forget_upto(self._first_live - 1)
        return freed + skipped, skip

    def _segment_for_append(self, first_id: int) -> _Segment:
        last = self._segments[-1] if self._segments else None
        # A new segment when the last is full, and when ids jump (records dropped before being
        # written): within a segment, ids are consecutive.
        if last is None or last.size >= self._segment_bytes or first_id != last.end_id:
            if self._write_fd is not None:
                os.close(self._write_fd)
                self._write_fd = None
            last = _Segment(self.path / f"{first_id:020d}{_SEGMENT_SUFFIX}", first_id)
            self._segments.append(last)
            self._drop_dead_segments(keep_last=True)
        if self._write_fd is None:
            self._write_fd = os.open(last.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if self._fsync:  # the new file's directory entry must survive power loss too
                dir_fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        return last

    def peek(self, n: int, after_id: int = 0) -> list[OutboxRecord]:
        """The oldest records with id > ``after_id``, in order, holding at most ``n`` items between
        them (always at least one record when there is one, however many items it holds). Does
        not remove them: a batch that is never acked stays (Telegraf's Reject)."""
        remembered = self.tail.peek(n, after_id, self._next_id - self._first_live)
        if remembered is not None:
            return remembered
        return up_to_items(self._read_from(max(after_id + 1, self._first_live), n), n)

    def _read_from(self, first_id: int, n: int) -> list[OutboxRecord]:
        """Records from ``first_id`` on, read back from the segment files, until they hold ``n`` items
        (the one that passes ``n`` included: ``up_to_items`` decides about it)."""
        out: list[OutboxRecord] = []
        record_id, total = first_id, 0
        starts = [segment.first_id for segment in self._segments]
        while record_id < self._next_id and total < n:
            index = bisect.bisect_right(starts, record_id) - 1
            end_id = starts[index + 1] if index + 1 < len(starts) else self._next_id
            with open(self._segments[index].path, "rb") as f:
                f.seek(self._offsets[record_id - self._base])
                while record_id < end_id and total < n:
                    _, length, _, created, items, key_length = _RECORD.unpack(f.read(_RECORD.size))
                    key = f.read(key_length).decode()
                    out.append(OutboxRecord(record_id, key, f.read(length), created, items))
                    record_id += 1
                    total += items
        return out

    def _remove_upto(self, up_to_id: int) -> int:
        """Move the first live id past ``up_to_id``; the items that left."""
        end = min(up_to_id, self._next_id - 1)
        if end < self._first_live:
            return 0
        removed = sum(self._items[self._first_live - self._base : end - self._base + 1])
        self._first_live = end + 1
        return removed

    def ack(self, up_to_id: int) -> int:
        """Remove every record with id <= ``up_to_id`` (the remote confirmed them); how many items
        went. Records already dropped by overflow are simply absent, so acking a stale batch never
        removes newer records."""
        removed = self._remove_upto(up_to_id)
        if removed:
            self._write_state()
            self._depth -= removed
            self._forget_upto(up_to_id)
        return removed

    def discard(self, up_to_id: int) -> int:
        """Remove records the remote rejected for good, counting them in ``discarded_total``."""
        removed = self._remove_upto(up_to_id)
        if removed:
            self._discarded += removed
            self._write_state()
            self._depth -= removed
            self._forget_upto(up_to_id)
        return removed

    def _forget_upto(self, up_to_id: int) -> None:
        """Records up to ``up_to_id`` left: drop them from memory and unlink segments now all dead."""
        self.tail.forget_upto(up_to_id)
        dead = self._first_live - self._base
        # Compact the metadata arrays only once the dead prefix is the larger half (a copy each time).
        if dead * 2 >= len(self._items) and dead:
            del self._items[:dead]
            del self._created[:dead]
            del self._offsets[:dead]
            self._base = self._first_live
        self._drop_dead_segments(keep_last=True)

    def _drop_dead_segments(self, *, keep_last: bool) -> None:
        """Unlink segments whose records all left; the one being appended to stays when asked."""
        segments = self._segments
        while segments:
            following = segments[1].first_id if len(segments) > 1 else self._next_id
            if following > self._first_live or (keep_last and len(segments) == 1):
                break
            segments.pop(0).path.unlink(missing_ok=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._write_fd is not None:
                os.close(self._write_fd)
            os.close(self._state_fd)
