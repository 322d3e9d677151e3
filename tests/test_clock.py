"""The virtual clock: plant time paced by a speed factor, continuous across speed changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devices.clock import VirtualClock


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_speed_factor_and_deadlines() -> None:
    real = FakeMonotonic()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = VirtualClock(speed=60.0, start=start, monotonic=real)
    real.now += 1.0
    assert clock.plant_seconds() == pytest.approx(60.0)
    assert clock.real_deadline(120.0) == pytest.approx(102.0)
    assert clock.timestamp(3600.0) == start + timedelta(hours=1)


def test_speed_change_keeps_plant_time_continuous() -> None:
    real = FakeMonotonic()
    clock = VirtualClock(speed=1.0, monotonic=real)
    real.now += 10.0
    clock.set_speed(10.0)
    assert clock.plant_seconds() == pytest.approx(10.0)
    real.now += 1.0
    assert clock.plant_seconds() == pytest.approx(20.0)
    with pytest.raises(ValueError, match="positive"):
        clock.set_speed(0.0)


def test_begin_restarts_pacing_but_keeps_a_configured_start() -> None:
    real = FakeMonotonic()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = VirtualClock(speed=2.0, start=start, monotonic=real)
    real.now += 30.0  # servers starting
    clock.begin()
    assert clock.plant_seconds() == pytest.approx(0.0)
    assert clock.start == start
    unconfigured = VirtualClock(monotonic=real)
    before = datetime.now(UTC)
    unconfigured.begin()
    assert unconfigured.start >= before
