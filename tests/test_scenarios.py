"""Each scenario shows its effect at its scheduled plant time, and not before."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devices.assets import lathe, mine_truck
from devices.assets.cnc_mill import CncMill
from devices.assets.conveyor import Conveyor
from devices.assets.lathe import Lathe
from devices.assets.mine_truck import MineTruck
from devices.assets.robot_arm import RobotArm
from devices.assets.warehouse import Warehouse
from devices.clock import VirtualClock
from devices.plc import AssetGroup, Plc
from devices.process_image import BAD_SENSOR_FAILURE, GOOD
from devices.scenarios import (
    DAY_S,
    FaultKind,
    ScenarioEvent,
    ScenarioRunner,
    events_from_config,
    parse_plant_time,
    warehouse_month,
)


def make_plc(period: float, belt: bool = True) -> Plc:
    # The core conveyor integrates its bearing lag with explicit Euler, unstable at dt > 300 s,
    # so the month-long run (30 min scans) leaves it out.
    groups = [
        AssetGroup(Warehouse(), ("hbw",)),
        AssetGroup(Lathe(), ("lathe",)),
        AssetGroup(MineTruck(), ("truck",)),
        AssetGroup(RobotArm(), ("robot",)),
        AssetGroup(CncMill(), ("mill",)),
    ]
    if belt:
        groups.append(AssetGroup(Conveyor(), ("belt",)))
    return Plc("cell", groups, VirtualClock(start=datetime(2025, 1, 1, tzinfo=UTC)), period, seed=5)


def run_until(plc: Plc, plant_s: float) -> None:
    while plc.scan_count * plc.scan_period_s < plant_s:
        plc.scan()


def test_warehouse_month_motor_failure_day_12_and_ghost_readings_day_25() -> None:
    plc = make_plc(period=1800.0, belt=False)  # half-hour scans: a month is 1 440 scans
    runner = ScenarioRunner(plc, warehouse_month("hbw"), seed=1)
    run_until(plc, 12 * DAY_S - 1)
    assert plc.image is not None
    assert plc.image.lookup("hbw", "motor_fault_alarm")[0] == 0.0
    assert plc.image.lookup("hbw", "conveyor_health")[0] > 90.0
    run_until(plc, 12 * DAY_S + 2 * plc.scan_period_s)
    assert plc.image.lookup("hbw", "motor_fault_alarm")[0] == 1.0
    assert plc.image.lookup("hbw", "conveyor_health")[0] <= 40.0
    qualities = []
    while plc.scan_count * plc.scan_period_s < 25 * DAY_S:
        qualities.append(plc.scan().lookup("hbw", "light_barrier_out")[1])
    assert set(qualities) == {GOOD}
    after = [plc.scan().lookup("hbw", "light_barrier_out") for _ in range(48)]
    ghosts = [value for value, quality in after if quality == BAD_SENSOR_FAILURE]
    assert ghosts
    assert all(value == 1.0 for value in ghosts)
    assert len(ghosts) < len(after)
    assert [text for _, text in runner.fired] == [
        "start motor_failure hbw",
        "start ghost_readings hbw light_barrier_out",
    ]


@pytest.mark.parametrize(
    ("event", "asset", "key", "check"),
    [
        (ScenarioEvent(600.0, FaultKind.TOOL_WEAR, "lathe"), "lathe", "state", lambda v: v == lathe.BROKEN),
        (
            ScenarioEvent(600.0, FaultKind.TRUCK_BREAKDOWN, "truck"),
            "truck",
            "state",
            lambda v: v == mine_truck.BROKEN,
        ),
        (ScenarioEvent(600.0, FaultKind.OVERHEATING, "robot"), "robot", "core_temp", lambda v: v > 55.0),
        (ScenarioEvent(600.0, FaultKind.MOTOR_FAILURE, "belt"), "belt", "motor_health", lambda v: v <= 15.0),
        (
            ScenarioEvent(600.0, FaultKind.NETWORK_CONGESTION, "mill", duration_s=7200.0),
            "mill",
            "network_latency",
            lambda v: v > 100.0,
        ),
    ],
)
def test_fault_shows_at_its_time(event: ScenarioEvent, asset: str, key: str, check: object) -> None:
    plc = make_plc(period=60.0)
    plc.submit_command(
        "lathe", "start_job", {"material": 0, "operation": 2, "tool_no": 1, "estimated_min": 200.0}
    )
    ScenarioRunner(plc, [event])
    run_until(plc, event.at_s)
    assert plc.image is not None
    assert callable(check)
    assert not check(plc.image.lookup(asset, key)[0])
    run_until(plc, event.at_s + 3600.0)
    assert check(plc.image.lookup(asset, key)[0])


def test_timed_fault_ends() -> None:
    plc = make_plc(period=60.0)
    ScenarioRunner(plc, [ScenarioEvent(600.0, FaultKind.NETWORK_CONGESTION, "mill", duration_s=600.0)])
    run_until(plc, 900.0)
    assert plc.image is not None
    assert plc.image.lookup("mill", "network_latency")[0] > 100.0
    run_until(plc, 1500.0)
    assert plc.image.lookup("mill", "network_latency")[0] < 100.0


def test_sensor_drift_grows_with_bad_quality() -> None:
    plc = make_plc(period=60.0)
    ScenarioRunner(plc, [ScenarioEvent(600.0, FaultKind.SENSOR_DRIFT, "robot", "core_temp", rate=10.0)])
    run_until(plc, 600.0)
    assert plc.image is not None
    assert plc.image.lookup("robot", "core_temp")[1] == GOOD
    run_until(plc, 600.0 + 7200.0)
    group, index = plc.asset("robot")
    true_value = group.state["core_temp"][index]
    value, quality = plc.image.lookup("robot", "core_temp")
    assert quality == BAD_SENSOR_FAILURE
    assert value - true_value == pytest.approx(20.0, abs=2.0)  # one scan of lag and of temperature change


def test_plc_offline_and_back() -> None:
    plc = make_plc(period=60.0)
    ScenarioRunner(plc, [ScenarioEvent(600.0, FaultKind.PLC_OFFLINE, duration_s=1200.0)])
    run_until(plc, 600.0)
    assert plc.image is not None
    assert plc.image.lookup("mill", "spindle_speed")[1] == GOOD
    run_until(plc, 1200.0)
    assert plc.image.lookup("mill", "spindle_speed")[1] == BAD_SENSOR_FAILURE
    assert plc.image.lookup("hbw", "slot_1")[1] == BAD_SENSOR_FAILURE
    run_until(plc, 1900.0)
    assert plc.image.lookup("mill", "spindle_speed")[1] == GOOD


def test_events_from_config_and_validation() -> None:
    events = events_from_config(
        [
            {"at": "12d", "kind": "motor_failure", "asset": "hbw"},
            {
                "at": 90,
                "kind": "ghost_readings",
                "asset": "hbw",
                "tag": "light_barrier_out",
                "duration": "2h",
            },
        ]
    )
    assert events[0].at_s == 12 * DAY_S
    assert events[1].duration_s == 7200.0
    assert parse_plant_time("30min") == 1800.0
    with pytest.raises(ValueError, match="extra"):
        events_from_config([{"at": 1, "kind": "overheating", "asset": "robot", "colour": "red"}])
    with pytest.raises(ValueError, match="needs the tag"):
        ScenarioEvent(1.0, FaultKind.SENSOR_DRIFT, "robot")
    plc = make_plc(period=60.0)
    with pytest.raises(ValueError, match="cannot have"):
        ScenarioRunner(plc, [ScenarioEvent(1.0, FaultKind.TRUCK_BREAKDOWN, "lathe")])
    with pytest.raises(KeyError):
        ScenarioRunner(plc, [ScenarioEvent(1.0, FaultKind.OVERHEATING, "nope")])
