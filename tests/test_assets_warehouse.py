"""High-bay warehouse orders and conveyor motor; vacuum gripper seal wear; CSV replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devices.assets import warehouse as hbw
from devices.assets.gripper import VacuumGripper
from devices.assets.replay import CncReplay, replay_type
from devices.assets.warehouse import Warehouse
from devices.tags import CommandRejected, DataType, TagKind, TagSpec


def cell(contents: list[int]) -> tuple[Warehouse, dict[str, np.ndarray], np.random.Generator]:
    model, rng = Warehouse(), np.random.default_rng(0)
    state = model.initial_state(1, rng)
    state["order_rate"][:] = 0.0
    for i, content in enumerate(contents):
        state[f"slot_{i + 1}"][:] = content
    return model, state, rng


def run(
    model: Warehouse, state: dict[str, np.ndarray], rng: np.random.Generator, seconds: float, dt: float = 0.5
) -> dict[str, np.ndarray]:
    for _ in range(int(seconds / dt)):
        state = model.step(state, dt, rng)
    return state


@pytest.mark.parametrize(
    ("name", "slot", "reason"),
    [
        ("store", 1, "slot 1 is full"),
        ("retrieve", 2, "slot 2 is empty"),
        ("process", 3, "not a raw part"),
        ("retrieve", 10, "does not exist"),
    ],
)
def test_impossible_orders_are_rejected_with_a_reason(name: str, slot: int, reason: str) -> None:
    model, state, _ = cell([1, 0, 2, 0, 0, 0, 0, 0, 0])
    with pytest.raises(CommandRejected, match=reason):
        model.apply_command(state, 0, name, {"slot": slot})


def test_store_then_process_then_retrieve_as_sequences_of_moves() -> None:
    model, state, rng = cell([0] * 9)
    model.apply_command(state, 0, "store", {"slot": 9})
    with pytest.raises(CommandRejected, match="busy"):
        model.apply_command(state, 0, "retrieve", {"slot": 9})
    seen_barrier, states = False, set()
    for _ in range(200):
        state = model.step(state, 0.5, rng)
        seen_barrier |= bool(state["light_barrier_in"][0])
        states.add(int(state["state"][0]))
    assert state["slot_9"][0] == hbw.RAW
    assert state["order"][0] == hbw.NONE
    assert seen_barrier
    assert {1, 2, 3, 4} <= states
    model.apply_command(state, 0, "process", {"slot": 0})
    state = run(model, state, rng, 30.0)
    assert state["state"][0] == 5.0  # processing outside the cell
    state = run(model, state, rng, 80.0)
    assert state["slot_9"][0] == hbw.PROCESSED
    model.apply_command(state, 0, "retrieve", {"slot": 9})
    state = run(model, state, rng, 60.0)
    assert state["slot_9"][0] == hbw.EMPTY
    assert state["orders_completed"][0] == 3


def test_motor_failure_spikes_current_and_wears_health() -> None:
    model, state, rng = cell([0] * 9)
    model.inject_fault(state, 0, "motor_failure", True)
    assert state["conveyor_health"][0] == 40.0
    model.apply_command(state, 0, "store", {"slot": 1})
    state = model.step(state, 1.0, rng)
    assert state["conveyor_current"][0] == pytest.approx(4.5)
    assert state["motor_fault_alarm"][0] == 1.0
    state["conveyor_health"][:] = 0.0
    state = run(model, state, rng, 30.0)
    with pytest.raises(CommandRejected, match="motor"):
        model.apply_command({**state, "order": np.zeros(1)}, 0, "store", {"slot": 2})


def test_conveyor_health_degrades_with_load() -> None:
    model, state, rng = cell([0] * 9)
    state["order_rate"][:] = 60.0
    state = run(model, state, rng, 4 * 3600.0, dt=6.0)
    assert 0.0 < state["conveyor_health"][0] < 100.0
    assert state["orders_completed"][0] > 20


def test_leaky_seal_weakens_vacuum_and_loads_the_pump() -> None:
    model, rng = VacuumGripper(), np.random.default_rng(0)
    state = model.initial_state(2, rng)
    state["seal_wear"][:] = [0.0, 45.0]
    state["phase"][:] = 0.0
    peak_vacuum, peak_pump = np.zeros(2), np.zeros(2)
    for _ in range(120):
        state = model.step(state, 0.2, rng)
        peak_vacuum = np.minimum(peak_vacuum, state["vacuum"])
        peak_pump = np.maximum(peak_pump, state["pump_current"])
    assert peak_vacuum[0] < -75.0
    assert peak_vacuum[1] > -50.0
    assert peak_pump[1] > peak_pump[0]
    assert state["transfers"][0] >= 1
    assert state["transfers"][1] == 0


def test_replay_streams_rows_at_recorded_rate_and_loops() -> None:
    model, rng = CncReplay(), np.random.default_rng(0)
    state = model.initial_state(1, rng)
    assert state["row"][0] == 0
    state = model.step(state, 10.0, rng)
    assert state["row"][0] == 5  # rows are 2 s apart
    state = model.step(state, 1440.0, rng)  # the recording is 720 rows x 2 s long
    assert state["loops"][0] == 1
    assert state["row"][0] == 5
    assert set(np.unique(model.step(state, 1.0, rng)["efficiency_status"])) <= {0.0, 1.0, 2.0}


def test_replay_at_chosen_rate_without_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("speed,mode\n1.5,Off\n2.5,On\n3.5,On\n")
    columns = (
        TagSpec("speed", DataType.FLOAT32, TagKind.MEASUREMENT, "speed", unit="MTS", eu_range=(0, 5)),
        TagSpec("mode", DataType.ENUM, TagKind.STATE, "mode", enum_strings=("Off", "On")),
    )
    model_type = replay_type("belt_replay", path, columns)
    model, rng = model_type(), np.random.default_rng(0)
    state = model.initial_state(1, rng)
    state["rate"][:] = 4.0
    state = model.step(state, 0.5, rng)  # 2 rows on
    assert state["speed"][0] == 3.5
    assert state["mode"][0] == 1.0
    state = model.step(state, 0.25, rng)
    assert state["speed"][0] == 1.5
    assert state["loops"][0] == 1
