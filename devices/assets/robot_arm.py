"""Six-axis robot arm running a pick-and-place cycle.

Kinematics: the cycle phase u in [0, 1) advances by dt / cycle_time. The cycle is five segments
(approach pick, grip, carry to place, release, return home); in each the joints move from one pose to
the next along a smoothstep profile, so joint speed is (q_to - q_from) * 6x(1 - x) / T_segment.

Loads and heat:
- motion intensity M = sum_j |dq_j/dt| / M_ref (M_ref = the busiest segment of a nominal cycle)
- power P = P_idle + P_motion * M * (1 + payload / payload_max) * (1 + 0.5 * wear / 100) (servo
  losses grow with payload; a worn gearbox needs more torque for the same motion)
- core temperature: dT/dt = (T_amb + k_P * P / 1000 + k_fault * cooling_fault - T) / tau, tau = 900 s;
  above 85 degC the controller makes a protective stop (Fault) until reset below 70 degC.
- vibration: v_0 + spike * exp(-t_seg / 0.3 s) at each segment transition + k_w * wear * M
- gearbox wear grows with cycles and payload: dw = k_c * (1 + payload / payload_max) per cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from devices.assets.base import ArgValue, Array, AssetModel, State
from devices.assets.physics import approach, ou_noise, smoothstep, smoothstep_rate, tag_outputs
from devices.tags import Access, CommandRejected, CommandSpec, DataType, TagKind, TagSpec

# Joint poses in degrees: home, above pick, at pick, above place, at place.
HOME = np.array([0.0, -30.0, 60.0, 0.0, 60.0, 0.0])
PICK = np.array([-45.0, 20.0, 40.0, 0.0, 30.0, -45.0])
PLACE = np.array([60.0, 15.0, 45.0, 10.0, 30.0, 60.0])
# Segment boundaries (fractions of the cycle) and the pose at each segment's start and end.
BOUNDS = np.array([0.0, 0.25, 0.35, 0.65, 0.75, 1.0])
FROM_POSE = np.stack([HOME, PICK, PICK, PLACE, PLACE])
TO_POSE = np.stack([PICK, PICK, PLACE, PLACE, HOME])
SEG_LEN = np.diff(BOUNDS)
MOTION_REF = float(np.max(np.abs(TO_POSE - FROM_POSE).sum(axis=1) * 1.5 / SEG_LEN))
PAYLOAD_MAX_KG = 20.0
POWER_IDLE_W = 250.0
POWER_MOTION_W = 1800.0
AMBIENT_C = 25.0
HEAT_K_PER_KW = 18.0
TAU_THERMAL_S = 900.0
TRIP_C, RESET_C = 85.0, 70.0
SPIKE_MMS = 2.5
TAU_SPIKE_S = 0.3
WEAR_PCT_PER_CYCLE = 2e-4

STATES = ("Stopped", "Running", "Fault")
STOPPED, RUNNING, FAULT = range(3)


class RobotArm(AssetModel):
    type_name: ClassVar[str] = "robot_arm"
    model_name: ClassVar[str] = "TE-R6 six-axis arm"
    faults: ClassVar[tuple[str, ...]] = ("overheating", "motor_failure")
    tags: ClassVar[tuple[TagSpec, ...]] = (
        *(
            TagSpec(
                f"joint_{j}",
                DataType.FLOAT32,
                TagKind.MEASUREMENT,
                f"Joint {j} angle",
                unit="DD",
                eu_range=(-180.0, 180.0),
            )
            for j in range(1, 7)
        ),
        TagSpec(
            "core_temp",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Controller core temperature",
            unit="CEL",
            eu_range=(15.0, 80.0),
        ),
        TagSpec(
            "vibration",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Wrist vibration velocity",
            unit="C16",
            eu_range=(0.0, 4.5),
        ),
        TagSpec(
            "power",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Electrical power draw",
            unit="WTT",
            eu_range=(0.0, 5000.0),
        ),
        TagSpec(
            "gearbox_wear",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Gearbox wear estimate",
            unit="P1",
            eu_range=(0.0, 80.0),
        ),
        TagSpec(
            "cycle_count", DataType.UINT32, TagKind.COUNTER, "Completed pick-and-place cycles", unit="C62"
        ),
        TagSpec("state", DataType.ENUM, TagKind.STATE, "Robot state", enum_strings=STATES),
        TagSpec("overheat_alarm", DataType.BOOL, TagKind.ALARM, "Protective stop on temperature"),
        TagSpec(
            "payload",
            DataType.FLOAT32,
            TagKind.SETPOINT,
            "Mass of the part handled",
            unit="KGM",
            eu_range=(0.0, PAYLOAD_MAX_KG),
            access=Access.RW,
        ),
        TagSpec(
            "cycle_time",
            DataType.FLOAT32,
            TagKind.SETPOINT,
            "Pick-and-place cycle time",
            unit="SEC",
            eu_range=(2.0, 60.0),
            access=Access.RW,
        ),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (
        CommandSpec("start", "Start the pick-and-place program"),
        CommandSpec("stop", "Stop at the current position"),
        CommandSpec("reset", "Clear a protective stop once the core is below 70 degC"),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        z = np.zeros(count)
        state: State = {f"joint_{j}": np.full(count, HOME[j - 1]) for j in range(1, 7)}
        state.update(
            {
                "state": np.full(count, float(RUNNING)),
                "phase": rng.uniform(0.0, 1.0, count),
                "core_temp": np.full(count, 35.0),
                "vibration": z.copy(),
                "power": np.full(count, POWER_IDLE_W),
                "gearbox_wear": rng.uniform(0.0, 10.0, count),
                "cycle_count": z.copy(),
                "overheat_alarm": z.copy(),
                "payload": np.full(count, 5.0),
                "cycle_time": np.full(count, 8.0),
                "noise": z.copy(),
                "cooling_fault": z.copy(),
                "motor_fault": z.copy(),
            }
        )
        return state

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        running = state["state"] == RUNNING
        advance = dt / state["cycle_time"] * running
        raw = state["phase"] + advance
        cycles = np.floor(raw)
        phase = raw - cycles
        seg = np.clip(np.searchsorted(BOUNDS, phase, side="right") - 1, 0, len(SEG_LEN) - 1)
        x = (phase - BOUNDS[seg]) / SEG_LEN[seg]
        delta = TO_POSE[seg] - FROM_POSE[seg]  # (n, 6)
        angles = FROM_POSE[seg] + delta * smoothstep(x)[:, None]
        rate = np.abs(delta).sum(axis=1) * smoothstep_rate(x) / SEG_LEN[seg]
        motion = rate / MOTION_REF * running

        wear = state["gearbox_wear"] + WEAR_PCT_PER_CYCLE * cycles * (1.0 + state["payload"] / PAYLOAD_MAX_KG)
        load_factor = (1.0 + state["payload"] / PAYLOAD_MAX_KG) * (1.0 + 0.5 * wear / 100.0)
        power = POWER_IDLE_W + POWER_MOTION_W * motion * load_factor * (1.0 + 0.5 * state["motor_fault"])
        temp_target = AMBIENT_C + HEAT_K_PER_KW * power / 1000.0 + 40.0 * state["cooling_fault"]
        temp = approach(state["core_temp"], temp_target, dt, TAU_THERMAL_S)

        since_transition = x * SEG_LEN[seg] * state["cycle_time"]
        spike = SPIKE_MMS * np.exp(-since_transition / TAU_SPIKE_S) * running
        noise = ou_noise(state["noise"], 0.05, dt, 0.5, rng)
        vibration = 0.3 + spike + (0.02 * wear + 1.5 * state["motor_fault"]) * motion + np.abs(noise)

        trip = running & (temp > TRIP_C)
        new_state = np.where(trip, float(FAULT), state["state"])
        out: State = {
            **state,
            "phase": phase,
            "state": new_state,
            "core_temp": temp,
            "power": power,
            "vibration": vibration,
            "noise": noise,
            "gearbox_wear": np.minimum(wear, 100.0),
            "cycle_count": state["cycle_count"] + cycles,
            "overheat_alarm": (new_state == FAULT) * 1.0,
        }
        for j in range(6):
            # A stopped arm holds its pose: the angles are only recomputed while the program runs.
            out[f"joint_{j + 1}"] = np.where(running, angles[:, j], state[f"joint_{j + 1}"])
        return out

    def outputs(self, state: State) -> Mapping[str, Array]:
        return tag_outputs(self, state)

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        current = int(state["state"][index])
        if name == "start":
            if current == FAULT:
                raise CommandRejected("protective stop active: reset the robot first")
            state["state"][index] = RUNNING
        elif name == "stop":
            if current == RUNNING:
                state["state"][index] = STOPPED
        elif name == "reset":
            if state["core_temp"][index] > RESET_C:
                raise CommandRejected(
                    f"core at {state['core_temp'][index]:.0f} degC; wait below {RESET_C:.0f}"
                )
            state["state"][index] = STOPPED
        else:
            super().apply_command(state, index, name, args)

    def inject_fault(self, state: State, index: int, kind: str, active: bool) -> None:
        key = "cooling_fault" if kind == "overheating" else "motor_fault"
        state[key][index] = float(active)
