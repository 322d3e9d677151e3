"""Primary crusher: a hopper filled by truck dumps, crushed at up to its capacity onto a stockpile.

Equations (per instance, step dt):
- hopper mass balance: H' = H + feed - crushed, with feed the ore trucks dumped last scan (a
  coupling input, consumed and zeroed here) and crushed = min(capacity * dt, H) while running,
  not faulted and not blocked by a full stockpile downstream. ``crushed_t`` is the mass handed on.
- throughput Q = crushed / dt (t/h). No trucks -> empty hopper -> Q = 0 (the starvation coupling).
- liner wear grows with tonnage: dw = k_w * crushed; worn liners need more energy and shake more.
- power P = P_idle + P_crush * (Q / capacity) * (1 + 0.5 * w / 100).
- vibration v = v_0 + v_load * (Q / capacity) * (1 + 2 * w / 100) (+ noise; + an idle-running term).
- bearing temperature: dT/dt = (T_amb + k_P * P + k_fault * cooling_fault - T) / tau, tau = 1800 s;
  above 95 degC the crusher trips (Fault) until reset.
- availability: exponentially weighted share of time not in Fault or Stopped, tau = 8 h.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from devices.assets.base import ArgValue, Array, AssetModel, State
from devices.assets.physics import approach, as_flag, ou_noise, tag_outputs
from devices.tags import Access, CommandRejected, CommandSpec, DataType, TagKind, TagSpec

CAPACITY_TPH = 2500.0
POWER_IDLE_KW = 150.0
POWER_CRUSH_KW = 450.0
VIBRATION_BASE_MMS = 1.5
VIBRATION_LOAD_MMS = 4.0
LINER_WEAR_PCT_PER_T = 2e-5  # a liner set lasts about 5 Mt
AMBIENT_C = 30.0
BEARING_K_PER_KW = 0.08
TAU_BEARING_S = 1800.0
TRIP_C = 95.0
TAU_AVAILABILITY_S = 8 * 3600.0

STATES = ("Running", "Starved", "Blocked", "Stopped", "Fault")
RUNNING, STARVED, BLOCKED, STOPPED, FAULT = range(5)


class Crusher(AssetModel):
    type_name: ClassVar[str] = "crusher"
    model_name: ClassVar[str] = "TE-GC60 gyratory crusher"
    faults: ClassVar[tuple[str, ...]] = ("overheating", "motor_failure")
    tags: ClassVar[tuple[TagSpec, ...]] = (
        TagSpec("state", DataType.ENUM, TagKind.STATE, "Crusher state", enum_strings=STATES),
        TagSpec("running", DataType.BOOL, TagKind.STATE, "Crusher motor running"),
        TagSpec(
            "throughput",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Crushed ore rate",
            unit="E18",
            eu_range=(0.0, CAPACITY_TPH * 1.2),
        ),
        TagSpec(
            "hopper_level",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Ore in the feed hopper",
            unit="TNE",
            eu_range=(0.0, 1000.0),
        ),
        TagSpec(
            "vibration",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Frame vibration velocity (RMS)",
            unit="C16",
            eu_range=(0.0, 11.0),
        ),
        TagSpec(
            "bearing_temp",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Main shaft bearing temperature",
            unit="CEL",
            eu_range=(10.0, 90.0),
        ),
        TagSpec(
            "power", DataType.FLOAT32, TagKind.MEASUREMENT, "Motor power", unit="KWT", eu_range=(0.0, 800.0)
        ),
        TagSpec(
            "availability",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Share of time available (8 h)",
            unit="P1",
            eu_range=(80.0, 100.0),
        ),
        TagSpec(
            "liner_wear",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Mantle and concave liner wear",
            unit="P1",
            eu_range=(0.0, 90.0),
        ),
        TagSpec(
            "crushed_total",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Ore crushed since start",
            unit="TNE",
            eu_range=(0.0, 1e8),
        ),
        TagSpec("fault_alarm", DataType.BOOL, TagKind.ALARM, "Crusher tripped"),
        TagSpec(
            "capacity",
            DataType.FLOAT32,
            TagKind.SETPOINT,
            "Crushing rate limit",
            unit="E18",
            eu_range=(0.0, CAPACITY_TPH * 1.2),
            access=Access.RW,
        ),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (
        CommandSpec("start", "Start the crusher"),
        CommandSpec("stop", "Stop the crusher"),
        CommandSpec("reset", "Reset a trip once the bearing has cooled below 80 degC"),
        CommandSpec("reline", "Replace the liners (wear back to 0 %)"),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        z = np.zeros(count)
        return {
            "running": np.ones(count),
            "state": np.full(count, float(STARVED)),
            "fault": z.copy(),
            "hopper_level": np.full(count, 200.0),
            "feed_t": z.copy(),
            "crushed_t": z.copy(),
            "throughput": z.copy(),
            "vibration": np.full(count, VIBRATION_BASE_MMS),
            "noise": z.copy(),
            "bearing_temp": np.full(count, 45.0),
            "power": np.full(count, POWER_IDLE_KW),
            "availability": np.full(count, 100.0),
            "available": np.ones(count),
            "liner_wear": rng.uniform(0.0, 20.0, count),
            "crushed_total": z.copy(),
            "fault_alarm": z.copy(),
            "capacity": np.full(count, CAPACITY_TPH),
            "downstream_blocked": z.copy(),
            "cooling_fault": z.copy(),
            "motor_fault": z.copy(),
        }

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        hopper = state["hopper_level"] + state["feed_t"]
        fault = state["fault"]
        can_run = (state["running"] > 0) & (fault == 0)
        blocked = state["downstream_blocked"] > 0
        crushing = can_run & ~blocked
        crushed = np.where(crushing, np.minimum(state["capacity"] * dt / 3600.0, hopper), 0.0)
        hopper = hopper - crushed
        load = crushed / dt * 3600.0 / CAPACITY_TPH
        wear = np.minimum(state["liner_wear"] + LINER_WEAR_PCT_PER_T * crushed, 100.0)

        motor_on = can_run * 1.0
        # A failing motor draws more for the same work (winding or bearing damage).
        power = (POWER_IDLE_KW + POWER_CRUSH_KW * load * (1.0 + 0.5 * wear / 100.0)) * motor_on
        power = power * (1.0 + 0.4 * state["motor_fault"])
        noise = ou_noise(state["noise"], 0.3, dt, 2.0, rng)
        vibration = motor_on * (
            VIBRATION_BASE_MMS
            + VIBRATION_LOAD_MMS * load * (1.0 + 2.0 * wear / 100.0)
            + 3.0 * state["motor_fault"]
            + np.abs(noise)
        )
        temp_target = AMBIENT_C + BEARING_K_PER_KW * power + 50.0 * state["cooling_fault"] * motor_on
        bearing = approach(state["bearing_temp"], temp_target, dt, TAU_BEARING_S)
        fault = np.maximum(fault, as_flag(bearing > TRIP_C))

        new_state = np.select(
            [fault > 0, state["running"] == 0, blocked, crushed < state["capacity"] * dt / 3600.0 * 0.5],
            [float(FAULT), float(STOPPED), float(BLOCKED), float(STARVED)],
            float(RUNNING),
        )
        available = as_flag((fault == 0) & (state["running"] > 0))
        return {
            **state,
            "state": new_state,
            "fault": fault,
            "hopper_level": hopper,
            "feed_t": np.zeros_like(hopper),
            "crushed_t": crushed,
            "throughput": crushed / dt * 3600.0,
            "liner_wear": wear,
            "power": power,
            "vibration": vibration,
            "noise": noise,
            "bearing_temp": bearing,
            "available": available,
            "availability": approach(state["availability"], available * 100.0, dt, TAU_AVAILABILITY_S),
            "crushed_total": state["crushed_total"] + crushed,
            "fault_alarm": fault.copy(),
        }

    def outputs(self, state: State) -> Mapping[str, Array]:
        return tag_outputs(self, state)

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        if name == "start":
            if state["fault"][index]:
                raise CommandRejected("crusher tripped: reset it first")
            state["running"][index] = 1.0
        elif name == "stop":
            state["running"][index] = 0.0
        elif name == "reset":
            if state["bearing_temp"][index] > 80.0:
                raise CommandRejected(
                    f"bearing still at {state['bearing_temp'][index]:.0f} degC; wait below 80"
                )
            state["fault"][index] = 0.0
        elif name == "reline":
            if state["running"][index]:
                raise CommandRejected("stop the crusher before relining")
            state["liner_wear"][index] = 0.0
        else:
            super().apply_command(state, index, name, args)

    def inject_fault(self, state: State, index: int, kind: str, active: bool) -> None:
        key = "cooling_fault" if kind == "overheating" else "motor_fault"
        state[key][index] = float(active)
