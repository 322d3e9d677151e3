"""Alert rules evaluated over batches of readings: pure, deterministic, no I/O.

Rule types:

- ``high`` / ``low``: value above / below ``threshold``; clears only once the value is back past
  ``threshold -/+ hysteresis`` (deadband against chattering, as ISA-18.2 recommends).
- ``rate_of_change``: ``|dvalue/dt|`` between consecutive good samples above ``rate_per_s``.
- ``stale``: the tag's source timestamp has not advanced for ``stale_after_s`` (checked on every
  evaluation against ``now``, so it fires even when no readings arrive).
- ``offline``: the asset's readings carry BadNoCommunication (OPC UA StatusCode, conventions §1.1).
- ``state``: the value equals ``equals`` (e.g. ``efficiency_status == "Low"``).

``on_delay_s`` holds back a raise until the condition has held that long (by source timestamps).
Readings of bad or uncertain quality neither raise nor clear value rules: a lost connection must not
look like a return to normal; ``offline`` reports it instead. The engine keeps at most one active
alert per (rule, asset); it returns transitions and leaves lifecycle and storage to its caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Self

from pydantic import Field, model_validator

from gateway.common.configfile import StrictModel
from gateway.common.status import BAD_NO_COMMUNICATION, GOOD
from gateway.readings import Reading, TagValue

RuleType = Literal["high", "low", "rate_of_change", "stale", "offline", "state"]
Severity = Literal["info", "warning", "critical"]

_NEEDS: dict[str, tuple[str, ...]] = {
    "high": ("tag", "threshold"),
    "low": ("tag", "threshold"),
    "rate_of_change": ("tag", "rate_per_s"),
    "stale": ("tag", "stale_after_s"),
    "offline": (),
    "state": ("tag", "equals"),
}


class AlertRuleConfig(StrictModel):
    """One rule; ``alerts.rules[]`` in gateway.yaml or the body of the rules API."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", examples=["conveyor-motor-temp-high"])
    type: RuleType
    assets: tuple[str, ...] = Field(default=(), description="asset ids; empty means every asset")
    tag: str | None = Field(default=None, examples=["motor_temp"])
    threshold: float | None = None
    hysteresis: float = Field(default=0.0, ge=0)
    on_delay_s: float = Field(default=0.0, ge=0)
    rate_per_s: float | None = Field(default=None, gt=0)
    stale_after_s: float | None = Field(default=None, gt=0)
    equals: TagValue | None = None
    severity: Severity = "warning"
    message: str | None = Field(default=None, description="default: generated from the rule")
    enabled: bool = True

    @model_validator(mode="after")
    def _fields_for_type(self) -> Self:
        missing = [name for name in _NEEDS[self.type] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.type} rule needs {', '.join(missing)}")
        return self

    def applies_to(self, reading: Reading) -> bool:
        if self.assets and reading.asset not in self.assets:
            return False
        return self.tag is None or reading.tag == self.tag

    def describe(self, value: TagValue | None) -> str:
        if self.message:
            return self.message
        what = self.tag or "device"
        text = {
            "high": f"{what} = {value} above {self.threshold}",
            "low": f"{what} = {value} below {self.threshold}",
            "rate_of_change": f"{what} changing faster than {self.rate_per_s}/s",
            "stale": f"{what} not updated for more than {self.stale_after_s} s",
            "offline": "device not communicating (BadNoCommunication)",
            "state": f"{what} = {value}",
        }
        return text[self.type]


@dataclass(frozen=True)
class AlertEvent:
    """A transition the engine decided: raise or clear the alert of (rule, asset)."""

    kind: Literal["raised", "cleared"]
    rule_id: str
    asset: str
    tag: str | None
    severity: Severity
    value: TagValue | None
    message: str
    ts: datetime


@dataclass
class _Track:
    """What the engine remembers about one (rule, asset)."""

    active: bool = False
    pending_since: datetime | None = None  # condition true since, waiting for on_delay
    last_value: float | None = None
    last_ts: datetime | None = None
    tags_seen: dict[str, datetime] = field(default_factory=dict)  # stale: tag -> last new source_ts


def _number(value: TagValue | None) -> float | None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    return float(value)


def _same(value: TagValue | None, expected: TagValue | None) -> bool:
    """Equality for state rules: 2 == 2.0, but True is not 1 and "1" is not 1."""
    a, b = _number(value), _number(expected)
    if a is not None and b is not None:
        return a == b
    return type(value) is type(expected) and value == expected


class AlertEngine:
    def __init__(self, rules: Iterable[AlertRuleConfig] = ()) -> None:
        self._rules: dict[str, AlertRuleConfig] = {}
        self._tracks: dict[tuple[str, str], _Track] = {}
        self.set_rules(rules)

    @property
    def rules(self) -> list[AlertRuleConfig]:
        return list(self._rules.values())

    def set_rules(self, rules: Iterable[AlertRuleConfig]) -> list[tuple[str, str]]:
        """Replace the rule set; return the (rule, asset) pairs left active by removed or changed rules,
        which the caller clears (their condition is no longer being watched)."""
        new = {rule.id: rule for rule in rules if rule.enabled}
        orphaned = []
        for key in list(self._tracks):
            rule_id = key[0]
            if new.get(rule_id) != self._rules.get(rule_id):
                if self._tracks[key].active:
                    orphaned.append(key)
                del self._tracks[key]
        self._rules = new
        return orphaned

    def restore(self, active: Iterable[tuple[str, str]]) -> None:
        """After a restart: these (rule, asset) alerts are still open in storage."""
        for key in active:
            if key[0] in self._rules:
                self._tracks.setdefault(key, _Track()).active = True

    def evaluate(self, readings: Sequence[Reading], now: datetime) -> list[AlertEvent]:
        """Feed a batch (in arrival order) and the current time; return the transitions."""
        events: list[AlertEvent] = []
        for reading in readings:
            for rule in self._rules.values():
                if rule.applies_to(reading):
                    track = self._tracks.setdefault((rule.id, reading.asset), _Track())
                    self._step(rule, track, reading, events)
        for (rule_id, asset), track in self._tracks.items():
            rule = self._rules[rule_id]
            if rule.type == "stale" and track.tags_seen:
                age = max((now - ts).total_seconds() for ts in track.tags_seen.values())
                assert rule.stale_after_s is not None
                stale = age > rule.stale_after_s
                if stale != track.active:
                    track.active = stale
                    events.append(self._event(rule, asset, stale, None, now))
        return events

    def _step(self, rule: AlertRuleConfig, track: _Track, reading: Reading, events: list[AlertEvent]) -> None:
        if rule.type == "stale":
            previous = track.tags_seen.get(reading.tag)
            if reading.good and (previous is None or reading.source_ts > previous):
                track.tags_seen[reading.tag] = reading.source_ts
            return
        condition = self._condition(rule, track, reading)
        if condition is None:
            return
        if condition and not track.active:
            track.pending_since = track.pending_since or reading.source_ts
            if (reading.source_ts - track.pending_since).total_seconds() >= rule.on_delay_s:
                track.active, track.pending_since = True, None
                events.append(self._event(rule, reading.asset, True, reading.value, reading.source_ts))
        elif not condition:
            track.pending_since = None
            if track.active:
                track.active = False
                events.append(self._event(rule, reading.asset, False, reading.value, reading.source_ts))

    @staticmethod
    def _condition(rule: AlertRuleConfig, track: _Track, reading: Reading) -> bool | None:
        """True: alarm condition; False: back to normal; None: no decision from this reading."""
        if rule.type == "offline":
            return reading.quality == BAD_NO_COMMUNICATION
        if reading.quality != GOOD:
            return None
        if rule.type == "state":
            return _same(reading.value, rule.equals)
        value = _number(reading.value)
        if value is None:
            return None
        if rule.type in ("high", "low"):
            assert rule.threshold is not None
            sign = 1.0 if rule.type == "high" else -1.0
            excess = sign * (value - rule.threshold)
            if track.active:
                return excess > -rule.hysteresis  # stays active until back past the deadband
            return excess > 0
        # rate_of_change
        assert rule.rate_per_s is not None
        previous, previous_ts = track.last_value, track.last_ts
        track.last_value, track.last_ts = value, reading.source_ts
        if previous is None or previous_ts is None or reading.source_ts <= previous_ts:
            return None
        rate = abs(value - previous) / (reading.source_ts - previous_ts).total_seconds()
        limit = rule.rate_per_s - rule.hysteresis if track.active else rule.rate_per_s
        return rate > limit

    @staticmethod
    def _event(
        rule: AlertRuleConfig, asset: str, raised: bool, value: TagValue | None, ts: datetime
    ) -> AlertEvent:
        return AlertEvent(
            kind="raised" if raised else "cleared", rule_id=rule.id, asset=asset, tag=rule.tag,
            severity=rule.severity, value=value, message=rule.describe(value), ts=ts,
        )
