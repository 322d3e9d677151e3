"""Machine shop: lathe jobs and wear, CNC mill, robot arm, and the conveyor -> machine coupling."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.assets import cnc_mill, lathe
from devices.assets.cnc_mill import CncMill
from devices.assets.conveyor import Conveyor
from devices.assets.coupling import machine_shop_coupling
from devices.assets.lathe import Lathe
from devices.assets.robot_arm import RobotArm
from devices.clock import VirtualClock
from devices.plc import AssetGroup, Plc
from devices.tags import CommandRejected


def start(model: Lathe, state: dict[str, np.ndarray], index: int, material: int, operation: int) -> None:
    model.apply_command(
        state,
        index,
        "start_job",
        {"material": material, "operation": operation, "tool_no": 3, "estimated_min": 60.0},
    )


@settings(max_examples=25, deadline=None)
@given(
    actions=st.lists(st.sampled_from(["step", "step", "step", "change", "start", "abort"]), max_size=40),
    dt=st.sampled_from([1.0, 60.0, 900.0]),
)
def test_tool_wear_never_decreases_without_tool_change(actions: list[str], dt: float) -> None:
    model, rng = Lathe(), np.random.default_rng(1)
    state = model.initial_state(3, rng)
    for action in actions:
        before = state["tool_wear"].copy()
        changed = False
        try:
            if action == "step":
                state = model.step(state, dt, rng)
            elif action == "change":
                model.apply_command(state, 0, "change_tool", {"tool_no": 2})
                changed = True
            elif action == "start":
                start(model, state, 0, 0, 2)
            else:
                model.apply_command(state, 0, "abort_job", {})
        except CommandRejected:
            pass
        grew = state["tool_wear"] >= before
        if changed:
            grew[0] = True
        assert np.all(grew)
        assert np.all(state["tool_wear"] <= 100.0)


def test_steel_threading_heats_and_wears_faster_than_aluminium_facing() -> None:
    model, rng = Lathe(), np.random.default_rng(0)
    state = model.initial_state(2, rng)
    state["tool_wear"][:] = 0.0
    state["auto_jobs"][:] = 0.0
    start(model, state, 0, lathe.MATERIALS.index("Mild Steel"), lathe.OPERATIONS.index("Threading"))
    start(model, state, 1, lathe.MATERIALS.index("Aluminium"), lathe.OPERATIONS.index("Facing"))
    for _ in range(20):
        state = model.step(state, 60.0, rng)
    assert state["tool_wear"][0] > 5 * state["tool_wear"][1]
    assert state["temperature"][0] > state["temperature"][1] + 10.0
    assert state["vibration"][0] > state["vibration"][1]
    assert state["failure_probability"][0] >= state["failure_probability"][1]


def test_worn_lathe_tool_breaks_and_aborts_the_job() -> None:
    model, rng = Lathe(), np.random.default_rng(0)
    state = model.initial_state(1, rng)
    start(model, state, 0, 0, 2)
    model.inject_fault(state, 0, "tool_wear", True)
    for _ in range(60):
        state = model.step(state, 60.0, rng)
    assert state["state"][0] == lathe.BROKEN
    assert state["job_status"][0] == lathe.ABORTED
    model.apply_command(state, 0, "change_tool", {"tool_no": 4})
    assert state["tool_wear"][0] == 0.0
    assert state["state"][0] == lathe.IDLE


def test_mill_wear_raises_vibration_temperature_and_power() -> None:
    model, rng = CncMill(), np.random.default_rng(0)
    state = model.initial_state(2, rng)
    state["tool_wear"][:] = [5.0, 90.0]
    state["phase"][:] = 0.2
    vib, power = [], []
    for _ in range(100):
        state = model.step({**state, "load_noise": np.zeros(2)}, 0.5, rng)
        vib.append(state["vibration"].copy())
        power.append(state["power"].copy())
    assert np.mean(vib, axis=0)[1] > 1.5 * np.mean(vib, axis=0)[0]
    assert np.mean(power, axis=0)[1] > np.mean(power, axis=0)[0]
    assert state["tool_temp"][1] > state["tool_temp"][0]


def test_mill_efficiency_follows_network() -> None:
    status = cnc_mill.efficiency_status(
        np.array([20.0, 80.0, 200.0]), np.array([0.5, 2.0, 0.5]), np.array([40.0, 40.0, 40.0])
    )
    assert status.tolist() == [2.0, 1.0, 0.0]


def test_robot_payload_raises_power_and_heat() -> None:
    model, rng = RobotArm(), np.random.default_rng(0)
    state = model.initial_state(2, rng)
    state["payload"][:] = [0.0, 20.0]
    state["phase"][:] = 0.0
    energy = np.zeros(2)
    for _ in range(400):
        state = model.step(state, 0.5, rng)
        energy += state["power"]
    assert energy[1] > 1.3 * energy[0]
    assert state["core_temp"][1] > state["core_temp"][0]
    assert state["cycle_count"][0] == state["cycle_count"][1] > 0


def test_stopped_conveyor_starves_the_mill() -> None:
    groups = [
        AssetGroup(Conveyor(), ("belt",)),
        AssetGroup(CncMill(), ("mill",)),
        AssetGroup(Lathe(), ("lathe",)),
    ]
    clock = VirtualClock(start=datetime(2025, 1, 1, tzinfo=UTC))
    plc = Plc("shop", groups, clock, 1.0, 7, coupling=machine_shop_coupling())
    for _ in range(30):
        image = plc.scan()
    assert image.lookup("mill", "state")[0] == cnc_mill.CUTTING
    plc.submit_command("belt", "stop", {})
    for _ in range(90):  # longer than the mill's 60 s part buffer
        image = plc.scan()
    assert image.lookup("mill", "state")[0] == cnc_mill.STARVED
    assert image.lookup("mill", "spindle_speed")[0] < 100.0
    plc.submit_command("belt", "start", {})
    for _ in range(30):
        image = plc.scan()
    assert image.lookup("mill", "state")[0] == cnc_mill.CUTTING
