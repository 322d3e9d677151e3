"""Haul trucks, crusher, stockpile and the mine KPIs, alone and coupled."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.assets import mine_truck
from devices.assets.crusher import Crusher
from devices.assets.mine import MineKpis, mine_coupling, mine_kpis
from devices.assets.mine_truck import MineTruck
from devices.assets.stockpile import Stockpile
from devices.clock import VirtualClock
from devices.plc import AssetGroup, Plc


def mine_plc(trucks: int = 6, seed: int = 3, period: float = 10.0) -> Plc:
    groups = [
        AssetGroup(MineTruck(), tuple(f"truck-{i}" for i in range(trucks))),
        AssetGroup(Crusher(), ("crusher",)),
        AssetGroup(Stockpile(), ("pile",)),
        AssetGroup(MineKpis(), ("mine",)),
    ]
    clock = VirtualClock(start=datetime(2025, 1, 1, tzinfo=UTC))
    plc = Plc("mine-plc", groups, clock, period, seed, coupling=mine_coupling())
    return plc


@settings(max_examples=25, deadline=None)
@given(dt=st.floats(0.5, 3600.0), steps=st.integers(1, 60), seed=st.integers(0, 1000))
def test_fuel_never_negative(dt: float, steps: int, seed: int) -> None:
    model, rng = MineTruck(), np.random.default_rng(seed)
    state = model.initial_state(6, rng)
    state["fuel_level"] = rng.uniform(0.0, 5.0, 6)
    for _ in range(steps):
        state = model.step(state, dt, rng)
        assert np.all(state["fuel_level"] >= 0.0)
        assert np.all((state["payload"] >= 0.0) & (state["payload"] <= 240.0))
    dry = state["fuel_level"] <= 0.0
    assert np.all(state["state"][dry] == mine_truck.DRY)


@settings(max_examples=40, deadline=None)
@given(
    inflows=st.lists(st.floats(0.0, 30_000.0), min_size=1, max_size=40),
    reclaim=st.floats(0.0, 3000.0),
    dt=st.floats(1.0, 7200.0),
)
def test_stockpile_mass_balance_closes_and_level_bounded(
    inflows: list[float], reclaim: float, dt: float
) -> None:
    model, rng = Stockpile(), np.random.default_rng(0)
    state = model.initial_state(1, rng)
    state["reclaim_setpoint"][:] = reclaim
    level0 = state["level"].copy()
    for inflow in inflows:
        state = model.step({**state, "inflow_t": np.array([inflow])}, dt, rng)
        assert 0.0 <= state["level"][0] <= state["capacity_t"][0]
        balance = level0 + state["total_in"] - state["total_out"]
        assert np.allclose(state["level"], balance, rtol=1e-9, atol=1e-6)
    assert np.isclose(state["total_in"][0] + state["overflow_total"][0], sum(inflows), rtol=1e-9, atol=1e-6)


def test_loaded_truck_climbs_slower_than_empty_one_returns() -> None:
    model, rng = MineTruck(), np.random.default_rng(0)
    state = model.initial_state(2, rng)
    state["state"][:] = [mine_truck.HAULING, mine_truck.RETURNING]
    state["payload"][:] = [220.0, 0.0]
    state["position_m"][:] = [100.0, 2000.0]
    for _ in range(10):
        state = model.step(state, 5.0, rng)
    loaded, empty = state["speed"]
    assert loaded < 0.6 * empty
    assert state["engine_load"][0] > state["engine_load"][1]


def test_worn_liners_shake_more_and_draw_more_power() -> None:
    model, rng = Crusher(), np.random.default_rng(0)
    state = model.initial_state(2, rng)
    state["liner_wear"][:] = [0.0, 80.0]
    state["hopper_level"][:] = 5000.0
    for _ in range(20):
        state = model.step(state, 10.0, rng)
    assert state["vibration"][1] > state["vibration"][0] + 1.0
    assert state["power"][1] > state["power"][0]
    assert np.allclose(state["throughput"], 2500.0)


def test_parked_trucks_starve_crusher_then_stockpile_falls() -> None:
    plc = mine_plc()
    for _ in range(400):
        image = plc.scan()
    assert image.lookup("crusher", "throughput")[0] > 0.0 or image.lookup("crusher", "hopper_level")[0] > 0.0
    fed_level = image.lookup("pile", "level")[0]
    for i in range(6):
        plc.submit_command(f"truck-{i}", "park", {})
    levels, throughputs = [], []
    for _ in range(720):  # two hours
        image = plc.scan()
        levels.append(image.lookup("pile", "level")[0])
        throughputs.append(image.lookup("crusher", "throughput")[0])
    assert throughputs[-1] == 0.0
    assert image.lookup("crusher", "state")[0] == 1.0  # Starved
    assert levels[-1] < max(levels) - 1000.0
    assert levels[-1] < fed_level + 3 * 2500.0  # no ore arrived after the hopper ran dry
    assert image.lookup("mine", "truck_utilisation")[0] < 50.0


def test_full_stockpile_blocks_the_crusher() -> None:
    plc = mine_plc()
    pile_group, _ = plc.asset("pile")
    pile_group.state["level"][:] = pile_group.state["capacity_t"] - 1.0
    plc.submit_command("pile", "stop_reclaim", {})
    for _ in range(200):
        image = plc.scan()
    assert image.lookup("crusher", "state")[0] == 2.0  # Blocked
    assert image.lookup("pile", "overflow_total")[0] < 200.0


def test_kpi_function_matches_states() -> None:
    kpis = mine_kpis(np.array([0.0, 1.0, 5.0, 6.0]), np.array([1.0, 0.0]), np.array([1000.0, 500.0]))
    assert kpis == {"truck_utilisation": 50.0, "crusher_availability": 50.0, "total_throughput": 1500.0}
