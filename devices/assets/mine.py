"""Mine-level KPIs as an asset, and the couplings that make trucks, crushers and stockpiles one mine.

Flows (per scan, see ``coupling``): trucks' ``dumped_t`` -> crusher ``feed_t`` (sum per crusher);
crusher ``crushed_t`` -> stockpile ``inflow_t``; stockpile ``full`` -> crusher ``downstream_blocked``
(back-pressure). KPI inputs: the share of trucks in a productive state, the share of crushers available
and the summed crusher throughput; the KPI asset smooths them:
- truck utilisation U' = U + (100 * mean(productive) - U) * (1 - exp(-dt / 1 h))
- crusher availability A likewise from mean(available); total throughput is the instantaneous sum
  smoothed over 10 min (truck dumps arrive in pulses, the hopper evens most of them out).
``mine_kpis`` computes the unsmoothed figures from the raw states for anyone without a KPI asset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from devices.assets import mine_truck
from devices.assets.base import Array, AssetModel, State
from devices.assets.coupling import Link, PlantCoupling
from devices.assets.physics import approach, as_flag, tag_outputs
from devices.tags import DataType, TagKind, TagSpec

TAU_UTILISATION_S = 3600.0
TAU_THROUGHPUT_S = 600.0


def mine_kpis(truck_states: Array, crusher_available: Array, crusher_throughput: Array) -> dict[str, float]:
    """Instant KPIs: truck utilisation %, crusher availability %, total throughput t/h."""
    productive = np.isin(truck_states, mine_truck.PRODUCTIVE)
    return {
        "truck_utilisation": float(productive.mean() * 100.0) if len(truck_states) else 0.0,
        "crusher_availability": float(crusher_available.mean() * 100.0) if len(crusher_available) else 0.0,
        "total_throughput": float(crusher_throughput.sum()),
    }


class MineKpis(AssetModel):
    type_name: ClassVar[str] = "mine"
    model_name: ClassVar[str] = "TE-KPI mine performance"
    tags: ClassVar[tuple[TagSpec, ...]] = (
        TagSpec(
            "truck_utilisation",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Share of trucks loading, hauling, dumping or returning (1 h average)",
            unit="P1",
            eu_range=(60.0, 100.0),
        ),
        TagSpec(
            "crusher_availability",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Share of crushers running without fault (1 h average)",
            unit="P1",
            eu_range=(80.0, 100.0),
        ),
        TagSpec(
            "total_throughput",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Crushed ore rate of all crushers (10 min average)",
            unit="E18",
            eu_range=(0.0, 10000.0),
        ),
        TagSpec(
            "stockpile_inventory",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Ore on all stockpiles",
            unit="TNE",
            eu_range=(0.0, 1e6),
        ),
        TagSpec(
            "trucks_down",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Share of trucks broken down or dry",
            unit="P1",
            eu_range=(0.0, 20.0),
        ),
        TagSpec(
            "ore_crushed",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Ore crushed since start",
            unit="TNE",
            eu_range=(0.0, 1e9),
        ),
        TagSpec("throughput_alarm", DataType.BOOL, TagKind.ALARM, "Throughput below 25 % of its 1 h mean"),
        TagSpec("stockpile_low_alarm", DataType.BOOL, TagKind.ALARM, "Inventory below 5 000 t"),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        z = np.zeros(count)
        keys = (
            "in_productive",
            "in_available",
            "in_throughput",
            "in_inventory",
            "in_down",
            "total_throughput",
            "stockpile_inventory",
            "trucks_down",
            "ore_crushed",
            "throughput_alarm",
            "stockpile_low_alarm",
            "throughput_1h",
        )
        state = {key: z.copy() for key in keys}
        state["truck_utilisation"] = np.full(count, 100.0)
        state["crusher_availability"] = np.full(count, 100.0)
        state["in_productive"] = np.ones(count)
        state["in_available"] = np.ones(count)
        return state

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        throughput = approach(state["total_throughput"], state["in_throughput"], dt, TAU_THROUGHPUT_S)
        hourly = approach(state["throughput_1h"], state["in_throughput"], dt, TAU_UTILISATION_S)
        return {
            **state,
            "truck_utilisation": approach(
                state["truck_utilisation"], state["in_productive"] * 100.0, dt, TAU_UTILISATION_S
            ),
            "crusher_availability": approach(
                state["crusher_availability"], state["in_available"] * 100.0, dt, TAU_UTILISATION_S
            ),
            "total_throughput": throughput,
            "throughput_1h": hourly,
            "stockpile_inventory": state["in_inventory"].copy(),
            "trucks_down": state["in_down"] * 100.0,
            "ore_crushed": state["ore_crushed"] + state["in_throughput"] * dt / 3600.0,
            "throughput_alarm": as_flag((throughput < 0.25 * hourly) & (hourly > 100.0)),
            "stockpile_low_alarm": as_flag(state["in_inventory"] < 5000.0),
        }

    def outputs(self, state: State) -> Mapping[str, Array]:
        return tag_outputs(self, state)


def _down(states: Array) -> Array:
    return np.isin(states, (mine_truck.BROKEN, mine_truck.DRY)).astype(np.float64)


def mine_coupling() -> PlantCoupling:
    """Trucks -> crushers -> stockpiles, stockpile back-pressure, and the KPI asset's inputs."""
    return PlantCoupling(
        (
            Link("mine_truck", "dumped_t", "crusher", "feed_t", "sum"),
            Link("crusher", "crushed_t", "stockpile", "inflow_t", "sum"),
            Link("stockpile", "full", "crusher", "downstream_blocked", "max"),
            Link("mine_truck", "productive", "mine", "in_productive", "mean"),
            Link("mine_truck", "state", "mine", "in_down", "mean", _down),
            Link("crusher", "available", "mine", "in_available", "mean"),
            Link("crusher", "throughput", "mine", "in_throughput", "sum"),
            Link("stockpile", "level", "mine", "in_inventory", "sum"),
        )
    )
