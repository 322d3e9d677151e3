"""Same seed, same config: the same series bit for bit, couplings and scenarios included."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from devices.assets.coupling import machine_shop_coupling
from devices.assets.mine import mine_coupling
from devices.assets.registry import ASSET_TYPES
from devices.clock import VirtualClock
from devices.plc import AssetGroup, Plc
from devices.scenarios import FaultKind, ScenarioEvent, ScenarioRunner, warehouse_month


def build(seed: int) -> Plc:
    groups = [
        AssetGroup(model(), tuple(f"{name}-{i}" for i in range(3)))
        for name, model in sorted(ASSET_TYPES.items())
    ]
    plc = Plc("plant", groups, VirtualClock(start=datetime(2025, 1, 1, tzinfo=UTC)), 5.0, seed,
              coupling=mine_coupling() + machine_shop_coupling())
    events = [
        *warehouse_month("warehouse-0"),
        ScenarioEvent(300.0, FaultKind.SENSOR_DRIFT, "robot_arm-1", "core_temp", rate=5.0),
        ScenarioEvent(400.0, FaultKind.GHOST_READINGS, "warehouse-2", "light_barrier_in"),
        ScenarioEvent(500.0, FaultKind.TRUCK_BREAKDOWN, "mine_truck-1"),
    ]
    ScenarioRunner(plc, events, seed=seed)
    return plc


def series(seed: int, scans: int = 300) -> list[bytes]:
    plc = build(seed)
    out = []
    for _ in range(scans):
        image = plc.scan()
        for group in image.groups:
            for key in sorted(group.values):
                out.append(np.ascontiguousarray(group.values[key]).tobytes())
                out.append(group.status[key].tobytes())
    return out


def test_same_seed_same_series_bit_for_bit() -> None:
    assert series(11) == series(11)


def test_other_seed_other_series() -> None:
    assert series(11, 20) != series(12, 20)
