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
        self.polls = 0
        self.closed = 0
        self.connected = True

    async def connect(self) -> None:
        pass

    def on_data(self, callback: Callable[[], None]) -> None:
        pass

    async def read(self) -> list[Reading]:
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

    async def on_batch(batch: list[Reading]) -> None:
        pass

    slow = FakeSource("slow", duration_s=0.05)
    poller = Poller(on_batch)
    poller.add(slow, 0.01)
    async with poller:
        for _ in range(5):
            poller.refresh("slow")  # refreshes during a poll must not start a second one
            await asyncio.sleep(0)
        await wait_for(lambda: poller.stats()["slow"].overruns >= 4, "overruns counted")
    assert slow.max_active == 1
    warnings = [r for r in caplog.records if "longer than its" in r.getMessage()]
    assert len(warnings) == 1


async def test_refresh_polls_immediately() -> None:
    async def on_batch(batch: list[Reading]) -> None:
        pass

    src = FakeSource("s")
    poller = Poller(on_batch)
    poller.add(src, 3600.0)
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


def test_add_validates() -> None:
    async def on_batch(batch: list[Reading]) -> None:
        pass

    poller = Poller(on_batch)
    poller.add(FakeSource("a"), 1.0)
    with pytest.raises(ValueError, match="twice"):
        poller.add(FakeSource("a"), 1.0)
    with pytest.raises(ValueError, match="interval"):
        poller.add(FakeSource("b"), 0)
