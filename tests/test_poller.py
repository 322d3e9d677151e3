"""Poller: interval, no overlapping polls, overruns, refresh, error isolation (no fixed sleeps)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Self

import pytest

from gateway.common.status import BAD_NO_COMMUNICATION, GOOD
from gateway.poller import Poller
from gateway.readings import Reading, TagValue
from gateway.sources.base import Source, utcnow


class FakeSource:
    def __init__(self, name: str, duration_s: float = 0.0, fail: bool = False) -> None:
        self.name = name
        self.duration_s = duration_s
        self.fail = fail
        self.active = 0
        self.max_active = 0
        self.starts: list[float] = []  # time.monotonic() at the start of each read()
        self.polls = 0
        self.closed = 0
        self.connected = True

    async def connect(self) -> None:
        pass

    def on_data(self, callback: Callable[[], None]) -> None:
        pass

    async def read(self) -> list[Reading]:
        self.starts.append(time.monotonic())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.duration_s)
            self.polls += 1
            if self.fail:
                raise RuntimeError("bug")
            now = utcnow()
            quality = GOOD if self.polls % 2 else BAD_NO_COMMUNICATION
            return [Reading(self.name, "a", "t", self.polls, quality, now, now)]
        finally:
            self.active -= 1

    async def write(self, asset: str, tag: str, value: TagValue) -> None:
        pass

    async def call(self, asset: str, command: str, args: Sequence[Any] = ()) -> Any:
        return None

    async def close(self) -> None:
        self.closed += 1

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def wait_for(cond: Any, what: str, deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"not within {deadline_s}s: {what}")


async def ignore(batch: list[Reading]) -> None:
    pass


def poller_of(interval_s: float, *sources: FakeSource) -> Poller:
    """A poller of ``sources``, each at ``interval_s``, whose batches go nowhere."""
    poller = Poller(ignore)
    for src in sources:
        poller.add(src, interval_s)
    return poller


def test_fake_source_satisfies_the_protocol() -> None:
    assert isinstance(FakeSource("x"), Source)


async def test_polls_at_interval_and_hands_batches_on() -> None:
    batches: list[list[Reading]] = []

    async def on_batch(batch: list[Reading]) -> None:
        batches.append(batch)

    fast = FakeSource("fast")
    poller = Poller(on_batch)
    poller.add(fast, 0.02)
    async with poller:
        await wait_for(lambda: len(batches) >= 5, "five batches")
        stats = poller.stats()["fast"]
        assert stats.reads >= 5
        assert stats.connected
    assert fast.closed == 1
    assert stats.values == stats.reads
    assert stats.bad_values == stats.reads // 2
    assert stats.overruns == 0


async def test_never_two_polls_at_once_and_overruns_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.poller")

    slow = FakeSource("slow", duration_s=0.05)
    poller = poller_of(0.01, slow)
    async with poller:
        for _ in range(5):
            poller.refresh("slow")  # refreshes during a poll must not start a second one
            await asyncio.sleep(0)
        await wait_for(lambda: poller.stats()["slow"].overruns >= 4, "overruns counted")
    assert slow.max_active == 1
    warnings = [r for r in caplog.records if "longer than its" in r.getMessage()]
    assert len(warnings) == 1


async def test_refresh_polls_immediately() -> None:
    src = FakeSource("s")
    poller = poller_of(3600.0, src)
    async with poller:
        await wait_for(lambda: src.polls == 1, "first poll at start")
        poller.refresh("s")
        await wait_for(lambda: src.polls == 2, "refresh poll")
        with pytest.raises(KeyError):
            poller.refresh("unknown")


async def test_a_failing_source_or_callback_does_not_stop_polling() -> None:
    calls = 0

    async def on_batch(batch: list[Reading]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("sink down")

    broken, ok = FakeSource("broken", fail=True), FakeSource("ok")
    poller = Poller(on_batch)
    poller.add(broken, 0.01)
    poller.add(ok, 0.01)
    async with poller:
        await wait_for(lambda: broken.polls >= 3 and calls >= 3, "both keep polling")
        stats = poller.stats()
    assert stats["broken"].errors >= 3
    assert stats["broken"].last_error is not None
    assert "read" in stats["broken"].last_error
    assert stats["ok"].errors >= 3
    assert "on_batch" in str(stats["ok"].last_error)


async def test_a_refresh_while_waiting_starts_the_poll_in_the_next_iteration() -> None:
    # On a busy loop every hop waits for an iteration of everything else, so waking must cost one.
    src = FakeSource("s")
    poller = poller_of(3600.0, src)
    async with poller:
        await wait_for(lambda: src.polls == 1, "first poll at start")
        await asyncio.sleep(0)  # the poll task is now waiting for its next slot
        poller.refresh("s")
        await asyncio.sleep(0)
        assert len(src.starts) == 2


async def test_a_refresh_during_a_poll_polls_again_right_after() -> None:
    src = FakeSource("s", duration_s=0.05)
    poller = poller_of(3600.0, src)
    async with poller:
        await wait_for(lambda: src.active == 1, "first poll in progress")
        poller.refresh("s")
        await wait_for(lambda: src.polls == 2, "the refresh's poll, an hour before the slot")
    assert src.max_active == 1


async def test_sources_slots_are_spread_over_the_interval() -> None:
    # Golden-ratio phases: source 0 at 0, source 1 at 0.618 and source 2 at 0.236 of the interval, so
    # after the first polls (all at once, at start) source 2 comes first, then 1, then 0 a whole
    # interval after start. The phases are 94 ms and more apart, far beyond a loop's jitter.
    sources = [FakeSource(f"s{n}") for n in range(3)]
    poller = poller_of(0.4, *sources)
    async with poller:
        await wait_for(lambda: all(len(s.starts) >= 2 for s in sources), "second polls")
    first = [s.starts[0] for s in sources]
    assert max(first) - min(first) < 0.1  # connecting is the first poll, for every source at once
    second = {s.name: s.starts[1] for s in sources}
    assert second["s2"] < second["s1"] < second["s0"]


def test_add_validates() -> None:
    poller = poller_of(1.0, FakeSource("a"))
    with pytest.raises(ValueError, match="twice"):
        poller.add(FakeSource("a"), 1.0)
    with pytest.raises(ValueError, match="interval"):
        poller.add(FakeSource("b"), 0)
