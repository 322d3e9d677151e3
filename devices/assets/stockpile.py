"""Stockpile: a mass balance of crusher product in and reclaim out.

Equations (per instance, step dt; masses in tonnes):
- accepted = min(inflow, capacity - level); overflow += inflow - accepted (spilled past the stacker)
- out = min(reclaim_rate * dt * reclaiming, level + accepted)
- level' = level + accepted - out, so 0 <= level <= capacity always, and
  level = level_0 + total_in - total_out - overflow_total closes exactly (a property test checks it).
``inflow_t`` is the coupling input (crusher product of the last scan), consumed and zeroed here.
``full`` feeds back to the crusher as ``downstream_blocked``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from devices.assets.base import ArgValue, Array, AssetModel, State
from devices.assets.physics import as_flag, tag_outputs
from devices.tags import Access, CommandRejected, CommandSpec, DataType, TagKind, TagSpec

CAPACITY_T = 50_000.0
RECLAIM_TPH = 1800.0
FULL_FRACTION = 0.98
HIGH_PCT, LOW_PCT = 90.0, 10.0


class Stockpile(AssetModel):
    type_name: ClassVar[str] = "stockpile"
    model_name: ClassVar[str] = "TE-SP50 conical stockpile with reclaim feeders"
    tags: ClassVar[tuple[TagSpec, ...]] = (
        TagSpec(
            "level",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Inventory on the pile",
            unit="TNE",
            eu_range=(0.0, CAPACITY_T),
        ),
        TagSpec(
            "level_pct",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Inventory in percent of capacity",
            unit="P1",
            eu_range=(0.0, 100.0),
        ),
        TagSpec(
            "fill_rate",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Stacking rate",
            unit="E18",
            eu_range=(0.0, 3000.0),
        ),
        TagSpec(
            "discharge_rate",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Reclaim rate",
            unit="E18",
            eu_range=(0.0, 3000.0),
        ),
        TagSpec(
            "total_in",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Tonnes stacked since start",
            unit="TNE",
            eu_range=(0.0, 1e9),
        ),
        TagSpec(
            "total_out",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Tonnes reclaimed since start",
            unit="TNE",
            eu_range=(0.0, 1e9),
        ),
        TagSpec(
            "overflow_total",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Tonnes spilled when full",
            unit="TNE",
            eu_range=(0.0, 1.0),
        ),
        TagSpec("reclaiming", DataType.BOOL, TagKind.STATE, "Reclaim feeders running"),
        TagSpec("high_level_alarm", DataType.BOOL, TagKind.ALARM, "Level above 90 %"),
        TagSpec("low_level_alarm", DataType.BOOL, TagKind.ALARM, "Level below 10 %"),
        TagSpec(
            "reclaim_setpoint",
            DataType.FLOAT32,
            TagKind.SETPOINT,
            "Reclaim feeder rate",
            unit="E18",
            eu_range=(0.0, 3000.0),
            access=Access.RW,
        ),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (
        CommandSpec("start_reclaim", "Start the reclaim feeders"),
        CommandSpec("stop_reclaim", "Stop the reclaim feeders"),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        z = np.zeros(count)
        level = np.full(count, CAPACITY_T * 0.4)
        return {
            "level": level,
            "level_pct": level / CAPACITY_T * 100.0,
            "inflow_t": z.copy(),
            "fill_rate": z.copy(),
            "discharge_rate": z.copy(),
            "total_in": z.copy(),
            "total_out": z.copy(),
            "overflow_total": z.copy(),
            "reclaiming": np.ones(count),
            "high_level_alarm": z.copy(),
            "low_level_alarm": z.copy(),
            "reclaim_setpoint": np.full(count, RECLAIM_TPH),
            "full": z.copy(),
            "capacity_t": np.full(count, CAPACITY_T),
        }

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        level, capacity = state["level"], state["capacity_t"]
        inflow = np.maximum(state["inflow_t"], 0.0)
        accepted = np.minimum(inflow, capacity - level)
        out = np.minimum(state["reclaim_setpoint"] * dt / 3600.0 * state["reclaiming"], level + accepted)
        new_level = level + accepted - out
        pct = new_level / capacity * 100.0
        return {
            **state,
            "level": new_level,
            "level_pct": pct,
            "inflow_t": np.zeros_like(level),
            "fill_rate": accepted / dt * 3600.0,
            "discharge_rate": out / dt * 3600.0,
            "total_in": state["total_in"] + accepted,
            "total_out": state["total_out"] + out,
            "overflow_total": state["overflow_total"] + (inflow - accepted),
            "high_level_alarm": as_flag(pct > HIGH_PCT),
            "low_level_alarm": as_flag(pct < LOW_PCT),
            "full": as_flag(new_level >= capacity * FULL_FRACTION),
        }

    def outputs(self, state: State) -> Mapping[str, Array]:
        return tag_outputs(self, state)

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        if name == "start_reclaim":
            if state["level"][index] <= 0.0:
                raise CommandRejected("stockpile is empty: nothing to reclaim")
            state["reclaiming"][index] = 1.0
        elif name == "stop_reclaim":
            state["reclaiming"][index] = 0.0
        else:
            super().apply_command(state, index, name, args)
