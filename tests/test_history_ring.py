"""The local history's typed rings answer exactly as a deque of (ts, value, quality) tuples would."""

from __future__ import annotations

import tracemalloc
from collections import deque
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from gateway.api.history_ring import TagRing
from gateway.api.state import RecentHistory, Sample
from gateway.common.epoch import epoch_us, from_epoch_us
from gateway.readings import Reading, TagValue

T0 = datetime(2026, 11, 21, 22, 0, tzinfo=UTC)

_values = st.one_of(st.floats(allow_nan=False), st.integers(-(2**70), 2**70), st.booleans(), st.text(max_size=5))


@given(st.integers(1, 6), st.lists(st.tuples(st.integers(-3, 50), _values, st.integers(0, 2**32 - 1)),
                                   max_size=40), st.sampled_from([0, 1, 2, 3]))
def test_ring_keeps_what_a_bounded_deque_keeps(size: int, adds: list[tuple[int, TagValue, int]],
                                               kind: int) -> None:
    """Whatever the values (types mixed or not, ints beyond int64) and timestamps (repeated or going
    back, which RecentHistory skips), the newest ``size`` samples come back exactly, oldest first."""
    if kind:  # most tags keep one type: draw those cases too
        pick = {1: float, 2: int, 3: bool}[kind]
        adds = [(t, v, q) for t, v, q in adds if type(v) is pick]
    history, reference = RecentHistory(size), deque[Sample](maxlen=size)
    for ms, value, quality in adds:
        ts = T0 + timedelta(milliseconds=ms)
        history.add([Reading("plc", "a", "t", value, quality, ts, ts)])
        if not reference or reference[-1].ts < ts:
            reference.append(Sample(ts, value, quality))
    got = history.query("a", "t")
    assert got == list(reference)
    assert [type(s.value) for s in got] == [type(s.value) for s in reference]
    if len(got) > 2:
        mid = got[len(got) // 2].ts
        assert history.query("a", "t", start=mid) == [s for s in reference if s.ts >= mid]
        assert history.query("a", "t", end=mid) == [s for s in reference if s.ts <= mid]


def test_microseconds_round_trip_and_naive_is_utc() -> None:
    ts = datetime(2026, 11, 21, 22, 0, 1, 123457, tzinfo=UTC)
    assert from_epoch_us(epoch_us(ts)) == ts
    assert epoch_us(ts.replace(tzinfo=None)) == epoch_us(ts)


def test_a_float_sample_takes_about_twenty_bytes() -> None:
    ring = TagRing(10_000, 0.5)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(10_000):
            ring.add(i, i + 0.5, 0)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(ring) == 10_000
    assert used < 10_000 * 30  # tuples of (datetime, float, int) took ~90 bytes a sample
