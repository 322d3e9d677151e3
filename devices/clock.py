"""Virtual plant time: fixed steps of plant time paced against the real clock by a speed factor.

The plant never reads the wall clock to decide *what* happens, only *when* to compute it: a PLC
always advances by exactly one scan period of plant time, so the same seed gives the same series
bit for bit whatever the host's load, and ``--speed 60`` runs an hour of plant time in a minute.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class VirtualClock:
    def __init__(
        self,
        speed: float = 1.0,
        start: datetime | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"clock speed must be positive, got {speed}")
        self._monotonic = monotonic
        self._start_given = start is not None
        self.start = start if start is not None else datetime.now(UTC).replace(microsecond=0)
        self._speed = speed
        self._anchor_real = monotonic()
        self._anchor_plant = 0.0

    def begin(self) -> None:
        """Start pacing now: plant second 0 is this instant (and, unless configured, ``start`` too).

        Called when the PLCs start scanning, so the seconds spent starting servers neither count as
        overruns nor put the plant's timestamps behind the wall clock.
        """
        self._anchor_real = self._monotonic()
        self._anchor_plant = 0.0
        if not self._start_given:
            self.start = datetime.now(UTC)

    @property
    def speed(self) -> float:
        return self._speed

    def set_speed(self, speed: float) -> None:
        """Change pace from now on, keeping plant time continuous."""
        if speed <= 0:
            raise ValueError(f"clock speed must be positive, got {speed}")
        now = self._monotonic()
        self._anchor_plant = self.plant_seconds_at(now)
        self._anchor_real = now
        self._speed = speed

    def plant_seconds_at(self, real: float) -> float:
        return self._anchor_plant + (real - self._anchor_real) * self._speed

    def plant_seconds(self) -> float:
        """Plant seconds elapsed since ``start`` according to the real clock."""
        return self.plant_seconds_at(self._monotonic())

    def real_deadline(self, plant_seconds: float) -> float:
        """The monotonic real time at which ``plant_seconds`` of plant time is reached."""
        return self._anchor_real + (plant_seconds - self._anchor_plant) / self._speed

    def timestamp(self, plant_seconds: float) -> datetime:
        return self.start + timedelta(seconds=plant_seconds)
