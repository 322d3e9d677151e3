"""Scenarios: faults scheduled in plant time, from config or at runtime through a Python API.

A ``ScenarioRunner`` listens to one PLC's scans. After the scan that reaches an event's time it fires
the event, so its effect shows from the next scan on; timed effects end ``duration_s`` later.
- model faults (motor_failure, overheating, tool_wear, truck_breakdown, network_congestion) call the
  model's ``inject_fault(state, index, kind, active)``; the conveyor of the core, which has none, gets
  its motor failure by knocking motor health down to 15 %.
- sensor_drift: the tag reads its true value plus ``rate`` units per hour since the start, flagged
  BadSensorFailure through ``Plc.set_sensor_fault`` (a drifting sensor must not look good).
- ghost_readings: with ``probability`` per scan a bool sensor (a light barrier) reads 1 with bad
  quality, otherwise it is left alone; drawn from the runner's own seeded generator, so the plant's
  random stream and hence determinism are untouched.
- plc_offline: every tag of the PLC freezes at its last value with bad quality until it is back.
``warehouse_month`` is the seed's 30-day history: motor M1 fails on day 12, the process light barrier
gives ghost readings from day 25.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

import numpy as np
from pydantic import Field

from devices.assets.base import AssetModel, State
from devices.plc import Plc
from devices.process_image import ProcessImage
from gateway.common.configfile import StrictModel

log = logging.getLogger(__name__)
DAY_S = 86_400.0


class FaultKind(StrEnum):
    MOTOR_FAILURE = "motor_failure"
    OVERHEATING = "overheating"
    TOOL_WEAR = "tool_wear"
    TRUCK_BREAKDOWN = "truck_breakdown"
    NETWORK_CONGESTION = "network_congestion"
    SENSOR_DRIFT = "sensor_drift"
    GHOST_READINGS = "ghost_readings"
    PLC_OFFLINE = "plc_offline"


SENSOR_FAULTS = (FaultKind.SENSOR_DRIFT, FaultKind.GHOST_READINGS)


@runtime_checkable
class FaultInjectable(Protocol):
    def inject_fault(self, state: State, index: int, kind: str, active: bool) -> None: ...


@dataclass(frozen=True)
class ScenarioEvent:
    at_s: float
    kind: FaultKind
    asset: str = ""  # empty for plc_offline
    tag: str = ""  # the sensor for sensor_drift / ghost_readings
    duration_s: float | None = None  # None: until the end (or until repaired by a command)
    rate: float = 0.0  # sensor_drift: engineering units per hour
    probability: float = 0.2  # ghost_readings: chance per scan

    def __post_init__(self) -> None:
        if self.kind in SENSOR_FAULTS and not self.tag:
            raise ValueError(f"{self.kind} needs the tag of the sensor")
        if self.kind is not FaultKind.PLC_OFFLINE and not self.asset:
            raise ValueError(f"{self.kind} needs an asset id")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(d|h|min|m|s)?\s*$")
_UNIT_S = {"d": DAY_S, "h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0, None: 1.0}


def parse_plant_time(value: float | str) -> float:
    """Plant seconds from a number of seconds or a string such as '12d', '6h', '30min', '45s'."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"not a plant time: {value!r} (use e.g. 90, '45s', '30min', '6h', '12d')")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


class ScenarioConfig(StrictModel):
    """One event in config: ``{at: 12d, kind: motor_failure, asset: hbw-1}``."""

    at: float | str
    kind: FaultKind
    asset: str = ""
    tag: str = ""
    duration: float | str | None = None
    rate: float = 0.0
    probability: float = Field(default=0.2, ge=0.0, le=1.0)

    def event(self) -> ScenarioEvent:
        duration = None if self.duration is None else parse_plant_time(self.duration)
        return ScenarioEvent(
            parse_plant_time(self.at), self.kind, self.asset, self.tag, duration, self.rate, self.probability
        )


def events_from_config(items: Iterable[Mapping[str, object]]) -> list[ScenarioEvent]:
    return [ScenarioConfig.model_validate(item).event() for item in items]


def warehouse_month(warehouse_id: str, barrier_tag: str = "light_barrier_out") -> list[ScenarioEvent]:
    """The seed's month: motor M1 fails on day 12; the process barrier (L2) ghosts from day 25."""
    return [
        ScenarioEvent(12 * DAY_S, FaultKind.MOTOR_FAILURE, warehouse_id),
        ScenarioEvent(25 * DAY_S, FaultKind.GHOST_READINGS, warehouse_id, barrier_tag, probability=0.3),
    ]


class ScenarioRunner:
    """Fires one PLC's events at their plant time; ``schedule`` adds events while the plant runs."""

    def __init__(self, plc: Plc, events: Iterable[ScenarioEvent] = (), seed: int = 0) -> None:
        self.plc = plc
        self._pending: list[ScenarioEvent] = []
        self._active: list[ScenarioEvent] = []
        self._rng = np.random.default_rng(seed)
        self.fired: list[tuple[float, str]] = []  # (plant seconds, description): an audit trail
        for event in events:
            self.schedule(event)
        plc.add_listener(self._on_scan)

    def schedule(self, event: ScenarioEvent) -> None:
        if event.asset:
            group, _ = self.plc.asset(event.asset)  # fail now, not at day 12
            if event.tag:
                group.model.tag(event.tag)
            elif not self._supports(group.model, event.kind):
                raise ValueError(f"{group.model.type_name} {event.asset} cannot have {event.kind}")
        self._pending.append(event)
        self._pending.sort(key=lambda e: e.at_s)

    @staticmethod
    def _supports(model: AssetModel, kind: FaultKind) -> bool:
        if isinstance(model, FaultInjectable):
            return kind.value in getattr(model, "faults", ())
        return model.type_name == "conveyor" and kind is FaultKind.MOTOR_FAILURE

    def _on_scan(self, image: ProcessImage) -> None:
        now = image.scan_count * self.plc.scan_period_s
        while self._pending and self._pending[0].at_s <= now:
            event = self._pending.pop(0)
            self._set(event, True)
            self._active.append(event)
            self.fired.append((now, f"start {event.kind} {event.asset} {event.tag}".strip()))
            log.info("scenario: %s on %s at plant %.0f s", event.kind, event.asset or self.plc.plc_id, now)
        for event in list(self._active):
            if event.duration_s is not None and now >= event.at_s + event.duration_s:
                self._set(event, False)
                self._active.remove(event)
                self.fired.append((now, f"end {event.kind} {event.asset} {event.tag}".strip()))
            else:
                self._continue(event, image, now)

    def _set(self, event: ScenarioEvent, active: bool) -> None:
        if event.kind is FaultKind.PLC_OFFLINE:
            self._offline(active)
        elif event.kind in SENSOR_FAULTS:
            if not active:
                self.plc.set_sensor_fault(event.asset, event.tag, None)
        else:
            group, index = self.plc.asset(event.asset)
            if isinstance(group.model, FaultInjectable):
                group.model.inject_fault(group.state, index, event.kind.value, active)
            elif active:
                health = group.state["motor_health"]
                health[index] = min(float(health[index]), 15.0)

    def _continue(self, event: ScenarioEvent, image: ProcessImage, now: float) -> None:
        """Per-scan effects of active sensor faults (drift grows, ghosts come and go)."""
        if event.kind is FaultKind.SENSOR_DRIFT:
            group, index = self.plc.asset(event.asset)
            true_value = float(group.model.outputs(group.state)[event.tag][index])
            self.plc.set_sensor_fault(
                event.asset, event.tag, true_value + event.rate * (now - event.at_s) / 3600
            )
        elif event.kind is FaultKind.GHOST_READINGS:
            ghost = self._rng.uniform() < event.probability
            self.plc.set_sensor_fault(event.asset, event.tag, 1.0 if ghost else None)

    def _offline(self, active: bool) -> None:
        # Stand-in until the PLC has an online flag: freeze every tag with bad quality.
        image = self.plc.image
        for group in self.plc.groups:
            for asset_id in group.asset_ids:
                for spec in group.model.tags:
                    value = None
                    if active:
                        value = image.lookup(asset_id, spec.key)[0] if image is not None else 0.0
                    self.plc.set_sensor_fault(asset_id, spec.key, value)
