"""What only the segment-file outbox store has: torn records, state slots, segment files, and moving
records between stores when `gateway.outbox` changes. Its FIFO behaviour is in test_outbox.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gateway.sinks.base import open_outbox, outbox_path
from gateway.sinks.outbox import Outbox
from gateway.sinks.outbox_log import LogOutbox, read_live_records


def recs(*names: str) -> list[tuple[str, bytes]]:
    return [(f"topic/{n}", n.encode() * 10) for n in names]


def payload_names(outbox: LogOutbox | Outbox) -> list[str]:
    return [r.payload.decode()[0] for r in outbox.peek(10_000)]


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def test_a_torn_last_record_is_cut_and_appending_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "ob.log"
    ob = LogOutbox(path, 100)
    ob.append(recs("a", "b"))
    ob.append(recs("c"))
    ob.close()
    (segment,) = segments(path)
    segment.write_bytes(segment.read_bytes()[:-5])  # a crash in the middle of writing "c"
    ob = LogOutbox(path, 100)
    assert payload_names(ob) == ["a", "b"]
    assert ob.depth() == 2
    ob.append(recs("d"))
    ob.close()
    ob = LogOutbox(path, 100)
    try:
        assert [(r.id, r.payload.decode()[0]) for r in ob.peek(100)] == [(1, "a"), (2, "b"), (3, "d")]
    finally:
        ob.close()


def test_a_damaged_state_slot_falls_back_to_the_one_before(tmp_path: Path) -> None:
    """The slots are written in turn: losing the newest brings the previous state back, so records
    acknowledged in the lost write are sent again (at-least-once), never lost."""
    path = tmp_path / "ob.log"
    ob = LogOutbox(path, 100)
    ob.append(recs(*"abcd"))
    ob.ack(1)  # state sequence 1: first live id 2
    ob.ack(2)  # state sequence 2: first live id 3, in the other slot
    ob.close()
    state = bytearray((path / "state").read_bytes())
    state[0] ^= 0xFF  # sequence 2 lives in slot 0
    (path / "state").write_bytes(bytes(state))
    ob = LogOutbox(path, 100)
    try:
        assert payload_names(ob) == ["b", "c", "d"]
    finally:
        ob.close()


def test_segments_roll_over_and_leave_once_every_record_in_them_did(tmp_path: Path) -> None:
    path = tmp_path / "ob.log"
    ob = LogOutbox(path, 1000, segment_bytes=100, tail_max=0)  # 3 records (47 bytes each) a segment; reads from disk
    for name in "abcdefghij":
        ob.append(recs(name))
    assert len(segments(path)) >= 3
    assert payload_names(ob) == list("abcdefghij")  # read across segment files
    ob.ack(6)
    assert payload_names(ob) == list("ghij")
    assert all(int(p.stem) + 3 > 6 for p in segments(path))  # no file holds only acknowledged records
    ob.ack(10)
    assert len(segments(path)) <= 1  # the one being appended to
    ob.append(recs("k"))
    ob.close()
    ob = LogOutbox(path, 1000, segment_bytes=100)
    try:
        assert [(r.id, r.payload.decode()[0]) for r in ob.peek(100)] == [(11, "k")]
    finally:
        ob.close()


def test_a_failed_write_leaves_no_torn_record_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ob.log"
    ob = LogOutbox(path, 100)
    ob.append(recs("a"))
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gateway.sinks.outbox_log.os.write", disk_full)
    with pytest.raises(OSError, match="No space"):
        ob.append(recs("b", "c"))
    monkeypatch.undo()
    assert ob.depth() == 1
    ob.append(recs("d"))
    ob.close()
    ob = LogOutbox(path, 100)
    try:
        assert payload_names(ob) == ["a", "d"]
    finally:
        ob.close()


@pytest.mark.parametrize(("old", "new"), [("sqlite", "log"), ("log", "sqlite")])
async def test_switching_stores_moves_every_record_over(tmp_path: Path, old: str, new: str) -> None:
    before = await open_outbox(tmp_path, "mqtt", 100, backend=old)  # type: ignore[arg-type]
    await before.append(recs(*"abc"), [1, 2, 3])
    await before.ack((await before.peek(1))[0].id)
    await before.close()
    after = await open_outbox(tmp_path, "mqtt", 100, backend=new)  # type: ignore[arg-type]
    try:
        assert [(r.payload.decode()[0], r.items) for r in await after.peek(100)] == [("b", 2), ("c", 3)]
        assert after.depth() == 5
        assert not outbox_path(tmp_path, "mqtt", old).exists()  # type: ignore[arg-type]
        if old == "sqlite":
            assert list((tmp_path / "outbox").glob("mqtt.sqlite*")) == []  # its WAL files went too
    finally:
        await after.close()


def test_reading_records_from_outside_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ob.log"
    ob = LogOutbox(path, 100)
    ob.append(recs(*"abc"))
    ob.ack(1)
    with (path / segments(path)[0].name).open("ab") as f:
        f.write(b"\x01\x02\x03")  # what a writer mid-append leaves: not yet a whole record
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    assert [(r.id, r.key, r.payload) for r in read_live_records(path)] == [
        (r.id, r.key, r.payload) for r in ob.peek(100)]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    ob.close()


def test_a_batch_larger_than_the_bound_skips_ids_and_reopens_whole(tmp_path: Path) -> None:
    """Records of a batch that would be dropped at once are not written; their ids are used up (as
    SQLite's AUTOINCREMENT uses them), so the survivors start a segment of their own."""
    path = tmp_path / "ob.log"
    ob = LogOutbox(path, 3)
    ob.append(recs("a", "b"))
    assert ob.append(recs(*"cdefg")) == 4  # a, b, c, d go
    assert [(r.id, r.payload.decode()[0]) for r in ob.peek(10)] == [(5, "e"), (6, "f"), (7, "g")]
    assert [int(p.stem) for p in segments(path)] == [5]  # the old segment held only dropped records
    assert ob.append(recs("h"), [9]) == 12  # alone it exceeds the bound: everything goes, nothing is written
    ob.append(recs("i"))
    ob.close()
    ob = LogOutbox(path, 3)
    try:
        assert [(r.id, r.payload.decode()[0]) for r in ob.peek(10)] == [(9, "i")]
        assert (ob.depth(), ob.dropped_total) == (1, 4 + 3 + 9)
    finally:
        ob.close()


def test_a_failed_write_after_making_room_keeps_the_counts_true(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ob.log"
    ob = LogOutbox(path, 3)
    ob.append(recs(*"abc"))

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gateway.sinks.outbox_log.os.write", disk_full)
    with pytest.raises(OSError, match="No space"):
        ob.append(recs("d", "e"))  # room was made first: a and b are gone, and counted
    monkeypatch.undo()
    assert (payload_names(ob), ob.depth(), ob.dropped_total) == (["c"], 1, 2)
    ob.append(recs("f"))
    ob.close()
    ob = LogOutbox(path, 3)
    try:
        assert (payload_names(ob), ob.depth(), ob.dropped_total) == (["c", "f"], 2, 2)
    finally:
        ob.close()
