"""Vacuum gripper robot (VGR) moving parts between the warehouse conveyor and the processing station.

Cycle phase u advances by dt / cycle_time through five segments: to pick (0-0.3), lower and suck
(0.3-0.45), lift and carry (0.45-0.75), lower and release (0.75-0.9), return (0.9-1). Axes follow
smoothstep profiles, so axis speed (and the axis motor current I = I_0 + I_v * |v| / v_max) is zero
at segment ends and peaks mid-move.
Vacuum (gauge pressure p, kPa):
- with the valve open p approaches p_max * (1 - leak) with tau = 0.3 s; closed it returns to 0.
- seal leak grows with use: d(leak)/d(cycle) = k_seal; a leaky seal makes the pump work harder:
  I_pump = I_0 + I_p * valve * (1 + 2 * leak).
- a part is held while |p| >= 50 kPa; losing grip while carrying drops the part (``drops``); a
  cycle counts as a transfer only if the part was still held when lowered at the drop point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from devices.assets.base import ArgValue, Array, AssetModel, State
from devices.assets.physics import approach, as_flag, smoothstep, smoothstep_rate, tag_outputs
from devices.tags import Access, CommandRejected, CommandSpec, DataType, TagKind, TagSpec

PICK_POS = np.array([0.0, 150.0, 0.0])  # x, y, z in mm at the conveyor end
DROP_POS = np.array([250.0, 50.0, 0.0])  # at the processing station
HIGH_Z = 120.0
BOUNDS = np.array([0.0, 0.3, 0.45, 0.75, 0.9, 1.0])
_ABOVE_PICK = PICK_POS + np.array([0.0, 0.0, HIGH_Z])
_ABOVE_DROP = DROP_POS + np.array([0.0, 0.0, HIGH_Z])
_HOME = np.array([100.0, 100.0, HIGH_Z])
FROM_POSE = np.stack([_HOME, _ABOVE_PICK, PICK_POS, _ABOVE_DROP, DROP_POS])
TO_POSE = np.stack([_ABOVE_PICK, PICK_POS, _ABOVE_DROP, DROP_POS, _HOME])
# The valve opens once the cup reaches the part and closes when it is set down.
VALVE_OPEN = np.array([0.0, 1.0, 1.0, 1.0, 0.0])
SEG_LEN = np.diff(BOUNDS)
VACUUM_MAX_KPA = -80.0
HOLD_KPA = 50.0
TAU_VACUUM_S = 0.3
SEAL_LEAK_PER_CYCLE = 5e-5
AXIS_IDLE_A, AXIS_MOVE_A, V_REF_MMS = 0.1, 0.8, 400.0
PUMP_IDLE_A, PUMP_A = 0.05, 0.6
STATES = ("Stopped", "Running", "Fault")
STOPPED, RUNNING, FAULT = range(3)


class VacuumGripper(AssetModel):
    type_name: ClassVar[str] = "gripper"
    model_name: ClassVar[str] = "TE-VGR3 vacuum gripper robot"
    faults: ClassVar[tuple[str, ...]] = ("motor_failure",)
    tags: ClassVar[tuple[TagSpec, ...]] = (
        *(
            TagSpec(
                f"pos_{axis}",
                DataType.FLOAT32,
                TagKind.MEASUREMENT,
                f"{axis.upper()} axis position",
                unit="MMT",
                eu_range=(0.0, 300.0),
            )
            for axis in "xyz"
        ),
        *(
            TagSpec(
                f"current_{axis}",
                DataType.FLOAT32,
                TagKind.MEASUREMENT,
                f"{axis.upper()} axis motor current",
                unit="AMP",
                eu_range=(0.0, 1.5),
            )
            for axis in "xyz"
        ),
        TagSpec(
            "vacuum",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Suction cup gauge pressure",
            unit="KPA",
            eu_range=(-90.0, 0.0),
        ),
        TagSpec(
            "pump_current",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Vacuum pump current",
            unit="AMP",
            eu_range=(0.0, 1.5),
        ),
        TagSpec(
            "seal_wear",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Suction cup seal leak",
            unit="P1",
            eu_range=(0.0, 30.0),
        ),
        TagSpec("holding", DataType.BOOL, TagKind.STATE, "A part is held by vacuum"),
        TagSpec("state", DataType.ENUM, TagKind.STATE, "Gripper state", enum_strings=STATES),
        TagSpec("transfers", DataType.UINT32, TagKind.COUNTER, "Parts transferred", unit="C62"),
        TagSpec("drops", DataType.UINT32, TagKind.COUNTER, "Parts dropped for lost vacuum", unit="C62"),
        TagSpec(
            "cycle_time",
            DataType.FLOAT32,
            TagKind.SETPOINT,
            "Transfer cycle time",
            unit="SEC",
            eu_range=(4.0, 60.0),
            access=Access.RW,
        ),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (
        CommandSpec("start", "Start transferring parts"),
        CommandSpec("stop", "Stop"),
        CommandSpec("replace_seal", "Fit a new suction cup (leak back to 0 %)"),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        z = np.zeros(count)
        state: State = {f"pos_{a}": np.full(count, _HOME[i]) for i, a in enumerate("xyz")}
        state.update({f"current_{a}": np.full(count, AXIS_IDLE_A) for a in "xyz"})
        state.update(
            {
                "vacuum": z.copy(),
                "pump_current": np.full(count, PUMP_IDLE_A),
                "seal_wear": rng.uniform(0, 5, count),
                "holding": z.copy(),
                "state": np.full(count, float(RUNNING)),
                "transfers": z.copy(),
                "drops": z.copy(),
                "cycle_time": np.full(count, 12.0),
                "phase": rng.uniform(0, 1, count),
                "motor_fault": z.copy(),
                "at_drop": z.copy(),
            }
        )
        return state

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        running = state["state"] == RUNNING
        raw = state["phase"] + dt / state["cycle_time"] * running
        cycles = np.floor(raw)
        phase = raw - cycles
        seg = np.clip(np.searchsorted(BOUNDS, phase, side="right") - 1, 0, len(SEG_LEN) - 1)
        x = (phase - BOUNDS[seg]) / SEG_LEN[seg]
        delta = TO_POSE[seg] - FROM_POSE[seg]
        pos = FROM_POSE[seg] + delta * smoothstep(x)[:, None]
        speed = np.abs(delta) * (smoothstep_rate(x) / (SEG_LEN[seg] * state["cycle_time"]))[:, None]

        leak = np.minimum(state["seal_wear"] / 100.0 + SEAL_LEAK_PER_CYCLE * cycles, 1.0)
        valve = VALVE_OPEN[seg] * running
        vacuum = approach(state["vacuum"], VACUUM_MAX_KPA * (1.0 - leak) * valve, dt, TAU_VACUUM_S)
        gripping = valve * (np.abs(vacuum) >= HOLD_KPA)
        carrying_seg = (seg == 2) | (seg == 3)
        dropped = carrying_seg & (state["holding"] > 0) & (gripping == 0)
        # A part counts as transferred when the cycle that carried it wraps without a drop.
        holding = np.where(seg == 1, gripping, np.where(carrying_seg, state["holding"] * gripping, 0.0))
        # A cycle delivers a part when the part was still held as it was lowered at the drop point.
        at_drop = np.maximum(state["at_drop"], as_flag((seg == 3) & (holding > 0)))
        delivered = (cycles > 0) * at_drop
        out: State = {
            **state,
            "phase": phase,
            "vacuum": vacuum,
            "seal_wear": leak * 100.0,
            "holding": holding,
            "pump_current": PUMP_IDLE_A + PUMP_A * valve * (1.0 + 2.0 * leak),
            "drops": state["drops"] + dropped,
            "transfers": state["transfers"] + delivered,
            "at_drop": np.where(cycles > 0, 0.0, at_drop),
        }
        fault_boost = 1.0 + 2.0 * state["motor_fault"]
        for i, axis in enumerate("xyz"):
            out[f"pos_{axis}"] = np.where(running, pos[:, i], state[f"pos_{axis}"])
            out[f"current_{axis}"] = (
                AXIS_IDLE_A + AXIS_MOVE_A * speed[:, i] / V_REF_MMS * running
            ) * fault_boost
        out["holding"] = as_flag(holding > 0)
        return out

    def outputs(self, state: State) -> Mapping[str, Array]:
        return tag_outputs(self, state)

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        if name == "start":
            if state["state"][index] == FAULT:
                raise CommandRejected("gripper in fault")
            state["state"][index] = RUNNING
        elif name == "stop":
            state["state"][index] = STOPPED
        elif name == "replace_seal":
            if state["state"][index] == RUNNING:
                raise CommandRejected("stop the gripper before replacing the suction cup")
            state["seal_wear"][index] = 0.0
        else:
            super().apply_command(state, index, name, args)

    def inject_fault(self, state: State, index: int, kind: str, active: bool) -> None:
        state["motor_fault"][index] = float(active)
