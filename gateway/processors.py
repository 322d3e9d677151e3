"""Report by exception: pass a reading only when it says something new.

A reading passes when
- it is the first of its tag, or its quality differs from the last one passed (availability is data:
  a PLC going bad or coming back is never filtered), or
- its value moved beyond the tag's deadband from the last value passed (not from the last value
  read, so a slow drift is still reported once it adds up), or
- the last value passed is older than ``max_age_s`` (heartbeat: subscribers can tell "unchanged"
  from "gateway dead", the way Sparkplug and OPC UA keep-alives do).

Deadbands follow OPC UA DataChangeFilter (OPC 10000-4 §7.22.2): absolute in engineering units, or
percent of the EURange span; with no EURange known, percent of the last passed value's magnitude.
Non-numeric values (bool, str, enums given as text) pass on any change. No I/O and no clock: time is
the readings' ``gateway_ts``, so a batch replayed gives the same output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.common.status import is_bad
from gateway.readings import Reading, TagValue

TagKey = tuple[str, str, str]  # device, asset, tag


@dataclass(frozen=True, slots=True)
class Deadband:
    absolute: float | None = None
    percent: float | None = None  # of eu_range span, else of the last passed value
    eu_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.absolute is not None and self.absolute < 0:
            raise ValueError("absolute deadband must be >= 0")
        if self.percent is not None and not 0 <= self.percent <= 100:
            raise ValueError("percent deadband must be within 0..100")

    def threshold(self, last: float) -> float:
        """Smallest change that passes; 0 means any change passes."""
        limits = []
        if self.absolute is not None:
            limits.append(self.absolute)
        if self.percent is not None:
            base = abs(self.eu_range[1] - self.eu_range[0]) if self.eu_range is not None else abs(last)
            limits.append(base * self.percent / 100.0)
        # Both given: the larger one wins, so the stricter filter is never silently loosened.
        return max(limits) if limits else 0.0


NO_DEADBAND = Deadband()


def _numeric(value: TagValue | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def changed(last: Reading, new: Reading, deadband: Deadband) -> bool:
    """True if ``new`` should pass after ``last`` (the previously passed reading of the tag)."""
    if new.quality != last.quality:
        return True
    old_v, new_v = _numeric(last.value), _numeric(new.value)
    if old_v is None or new_v is None:
        return new.value != last.value
    threshold = deadband.threshold(old_v)
    delta = abs(new_v - old_v)
    return delta > threshold if threshold > 0 else delta > 0


def _aged(last: Reading, new: Reading, max_age_s: float | None) -> bool:
    """The heartbeat: ``max_age_s`` (None: never) has passed since ``last`` was passed on."""
    return max_age_s is not None and (new.gateway_ts - last.gateway_ts).total_seconds() >= max_age_s


class ReportByException:
    """Stateful filter over batches; state is the last reading passed per tag."""

    def __init__(
        self,
        deadbands: Mapping[TagKey, Deadband] | None = None,
        default: Deadband = NO_DEADBAND,
        max_age_s: float | None = 60.0,
    ) -> None:
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError("max_age_s must be > 0 or None")
        self._deadbands = dict(deadbands or {})
        self._default = default
        self._max_age_s = max_age_s
        self._last: dict[TagKey, Reading] = {}

    def deadband(self, key: TagKey) -> Deadband:
        return self._deadbands.get(key, self._default)

    def __call__(self, batch: Iterable[Reading]) -> list[Reading]:
        out: list[Reading] = []
        for reading in batch:
            key = (reading.device, reading.asset, reading.tag)
            last = self._last.get(key)
            if last is None or changed(last, reading, self.deadband(key)) or _aged(last, reading, self._max_age_s):
                self._last[key] = reading
                out.append(reading)
        return out

    def forget(self, device: str) -> None:
        """Drop the state of one device, so its next readings all pass (e.g. after a rebirth)."""
        for key in [k for k in self._last if k[0] == device]:
            del self._last[key]


class RepeatedBadFilter:
    """Publish an unchanged Bad state once, not at every poll.

    While a PLC is unreachable its source produces a Bad, value-less reading for every tag at every
    poll. Those say nothing new after the first, yet cost as much to encode and send as real
    samples (at 50,000 values/s they crowded the real samples out of the MQTT outbox). A Bad reading
    passes when its tag's last reading was not Bad, when its StatusCode differs from the last Bad
    one passed, or as a heartbeat once ``max_age_s`` passed since then; the first Good or Uncertain
    reading ends the run, so the next Bad one passes again. Good and Uncertain readings always pass.
    """

    def __init__(self, max_age_s: float | None = 60.0) -> None:
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError("max_age_s must be > 0 or None")
        self._max_age_s = max_age_s
        self._bad: dict[TagKey, Reading] = {}  # the last Bad reading passed, per tag in a Bad run

    def __call__(self, batch: list[Reading]) -> list[Reading]:
        bad = self._bad
        out: list[Reading] | None = None  # stays None (the batch passes as it is) until one is held back
        for i, reading in enumerate(batch):
            passes = True
            if is_bad(reading.quality):
                key = (reading.device, reading.asset, reading.tag)
                last = bad.get(key)
                if last is None or last.quality != reading.quality or _aged(last, reading, self._max_age_s):
                    bad[key] = reading
                else:
                    passes = False
            elif bad:  # only while some tag is in a Bad run: no key built per Good reading otherwise
                bad.pop((reading.device, reading.asset, reading.tag), None)
            if out is not None:
                if passes:
                    out.append(reading)
            elif not passes:
                out = batch[:i]
        return batch if out is None else out
