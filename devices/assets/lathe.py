"""CNC lathe driven by jobs of material x operation (the 20-lathe fleet of the lathe seed system).

A job (id, material, operation, tool number, start, estimated and actual duration, status) sets the
cutting load L = k_material * k_operation, so a mild-steel threading job (1.0 * 1.4) loads the tool
about 4.4 times as much as an aluminium facing job (0.45 * 0.7) and wears it ~20 times as fast.
Per instance, step dt, while a job runs:
- rpm follows n_material * f_operation (1 s lag); torque M = M_0 + M_c * L * (1 + 0.5 w);
  power P = P_idle + M * 2 pi n / 60 / 1000 (kW).
- tool wear (fraction w, shown in %): dw/dt = L^2 / tool_life * wear_multiplier; it never decreases
  except through ``change_tool``; at w = 1 the tool breaks and the job is aborted.
- temperature: dT/dt = (T_amb + 30 L (1 + w) + k_fault cooling_fault - T) / 300 s.
- vibration = 0.3 + 2.0 L (1 + 3 w^2); failure probability = logistic(10 (w - 0.8) + 0.1 (T - 80)).
- the job's remaining work shrinks at rate 1 / (1 + 0.5 w) (a blunt tool cuts slower), so the actual
  duration exceeds the estimate as the tool wears.
With ``auto_jobs`` set, an idle lathe starts a random job after a one-minute changeover.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from devices.assets.base import ArgValue, Array, AssetModel, State
from devices.assets.physics import approach, tag_outputs
from devices.tags import Access, ArgSpec, CommandRejected, CommandSpec, DataType, TagKind, TagSpec

MATERIALS = ("Mild Steel", "Aluminium", "Wood")
OPERATIONS = ("Turning", "Facing", "Threading", "Drilling", "Boring", "Knurling")
MATERIAL_LOAD = np.array([1.0, 0.45, 0.15])
MATERIAL_RPM = np.array([900.0, 2200.0, 2600.0])
OPERATION_LOAD = np.array([1.0, 0.7, 1.4, 0.9, 0.8, 1.2])
OPERATION_RPM = np.array([1.0, 1.1, 0.3, 0.8, 0.9, 0.4])
TOOL_LIFE_S = 3 * 3600.0  # at unit load
TORQUE_IDLE_NM, TORQUE_CUT_NM = 2.0, 40.0
POWER_IDLE_KW = 0.8
AMBIENT_C = 22.0
TAU_THERMAL_S = 300.0
TAU_SPINDLE_S = 1.0
CHANGEOVER_S = 60.0
JOB_STATUS = ("None", "In Progress", "Completed", "Aborted")
NO_JOB, IN_PROGRESS, COMPLETED, ABORTED = range(4)
STATES = ("Idle", "Running", "Tool broken")
IDLE, RUNNING, BROKEN = range(3)


class Lathe(AssetModel):
    type_name: ClassVar[str] = "lathe"
    model_name: ClassVar[str] = "TE-L400 CNC lathe"
    faults: ClassVar[tuple[str, ...]] = ("tool_wear", "overheating")
    tags: ClassVar[tuple[TagSpec, ...]] = (
        TagSpec("state", DataType.ENUM, TagKind.STATE, "Lathe state", enum_strings=STATES),
        TagSpec(
            "rpm", DataType.FLOAT32, TagKind.MEASUREMENT, "Spindle speed", unit="RPM", eu_range=(0.0, 3000.0)
        ),
        TagSpec(
            "temperature",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Tool holder temperature",
            unit="CEL",
            eu_range=(15.0, 80.0),
        ),
        TagSpec(
            "torque", DataType.FLOAT32, TagKind.MEASUREMENT, "Spindle torque", unit="NU", eu_range=(0.0, 80.0)
        ),
        TagSpec(
            "vibration",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Vibration velocity",
            unit="C16",
            eu_range=(0.0, 4.5),
        ),
        TagSpec(
            "power", DataType.FLOAT32, TagKind.MEASUREMENT, "Spindle power", unit="KWT", eu_range=(0.0, 10.0)
        ),
        TagSpec(
            "tool_wear", DataType.FLOAT32, TagKind.MEASUREMENT, "Tool wear", unit="P1", eu_range=(0.0, 80.0)
        ),
        TagSpec(
            "failure_probability",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Predicted tool failure probability",
            unit="P1",
            eu_range=(0.0, 50.0),
        ),
        TagSpec("job_id", DataType.UINT32, TagKind.STATE, "Current or last job id"),
        TagSpec("job_status", DataType.ENUM, TagKind.STATE, "Job status", enum_strings=JOB_STATUS),
        TagSpec("material", DataType.ENUM, TagKind.STATE, "Job material", enum_strings=MATERIALS),
        TagSpec("operation", DataType.ENUM, TagKind.STATE, "Job operation", enum_strings=OPERATIONS),
        TagSpec("tool_no", DataType.UINT16, TagKind.STATE, "Tool number in the turret"),
        TagSpec(
            "job_start",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Job start in plant seconds",
            unit="SEC",
            eu_range=(0.0, 1e9),
        ),
        TagSpec(
            "estimated_duration",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Estimated job duration",
            unit="MIN",
            eu_range=(0.0, 240.0),
        ),
        TagSpec(
            "actual_duration",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Job duration so far / final",
            unit="MIN",
            eu_range=(0.0, 480.0),
        ),
        TagSpec("jobs_completed", DataType.UINT32, TagKind.COUNTER, "Jobs completed", unit="C62"),
        TagSpec(
            "auto_jobs", DataType.BOOL, TagKind.SETPOINT, "Start random jobs when idle", access=Access.RW
        ),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (
        CommandSpec(
            "start_job",
            "Start a job",
            (
                ArgSpec("material", DataType.ENUM, "Workpiece material", enum_strings=MATERIALS),
                ArgSpec("operation", DataType.ENUM, "Machining operation", enum_strings=OPERATIONS),
                ArgSpec("tool_no", DataType.UINT16, "Turret tool number", eu_range=(1, 12)),
                ArgSpec("estimated_min", DataType.FLOAT32, "Estimated duration", eu_range=(1.0, 240.0)),
            ),
        ),
        CommandSpec("abort_job", "Abort the running job"),
        CommandSpec(
            "change_tool",
            "Fit a new tool (wear back to 0 %)",
            (ArgSpec("tool_no", DataType.UINT16, "Turret tool number", eu_range=(1, 12)),),
        ),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        z = np.zeros(count)
        return {
            "state": z.copy(),
            "rpm": z.copy(),
            "temperature": np.full(count, AMBIENT_C),
            "torque": z.copy(),
            "vibration": z.copy(),
            "power": z.copy(),
            "tool_wear": rng.uniform(0.0, 30.0, count),
            "failure_probability": z.copy(),
            "job_id": (np.arange(count) + 1) * 1e6,
            "job_status": z.copy(),
            "material": z.copy(),
            "operation": z.copy(),
            "tool_no": np.ones(count),
            "job_start": z.copy(),
            "estimated_duration": z.copy(),
            "actual_duration": z.copy(),
            "jobs_completed": z.copy(),
            "auto_jobs": np.ones(count),
            "work_left_s": z.copy(),
            "idle_s": rng.uniform(0.0, CHANGEOVER_S, count),
            "plant_s": z.copy(),
            "wear_multiplier": np.ones(count),
            "cooling_fault": z.copy(),
            "part_supply": np.ones(count),
        }

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        n = len(state["state"])
        plant_s = state["plant_s"] + dt
        pick_m, pick_o = rng.integers(0, 3, n), rng.integers(0, 6, n)
        pick_est = rng.uniform(10.0, 40.0, n)
        idle_s = np.where(state["state"] == IDLE, state["idle_s"] + dt, 0.0)
        # A starved lathe (coupled conveyor stopped) gets no blanks, so it starts no new job.
        start = (
            (state["state"] == IDLE)
            & (state["auto_jobs"] > 0)
            & (idle_s >= CHANGEOVER_S)
            & (state["part_supply"] >= 0.5)
        )
        st = {key: value.copy() for key, value in state.items()}
        st["material"] = np.where(start, pick_m, st["material"])
        st["operation"] = np.where(start, pick_o, st["operation"])
        for key, value in _job_start_values(start, pick_est, state["plant_s"]).items():
            st[key] = np.where(start, value, st[key])
        st["job_id"] = st["job_id"] + start

        running = st["state"] == RUNNING
        mat, op = st["material"].astype(np.int64), st["operation"].astype(np.int64)
        load = MATERIAL_LOAD[mat] * OPERATION_LOAD[op] * running
        wear = st["tool_wear"] / 100.0
        wear = np.minimum(wear + load**2 / TOOL_LIFE_S * st["wear_multiplier"] * dt, 1.0)
        rpm = approach(st["rpm"], MATERIAL_RPM[mat] * OPERATION_RPM[op] * running, dt, TAU_SPINDLE_S)
        torque = (TORQUE_IDLE_NM + TORQUE_CUT_NM * load * (1.0 + 0.5 * wear)) * (rpm > 1.0)
        temp = approach(
            st["temperature"],
            AMBIENT_C + 30.0 * load * (1.0 + wear) + 40.0 * st["cooling_fault"],
            dt,
            TAU_THERMAL_S,
        )
        work_left = st["work_left_s"] - dt / (1.0 + 0.5 * wear) * running
        broke = running & (wear >= 1.0)
        done = running & ~broke & (work_left <= 0.0)

        st["job_status"] = np.where(broke, ABORTED, np.where(done, COMPLETED, st["job_status"])) * 1.0
        st["state"] = np.where(broke, BROKEN, np.where(done, IDLE, st["state"])) * 1.0
        st["actual_duration"] = np.where(running, (plant_s - st["job_start"]) / 60.0, st["actual_duration"])
        st.update(
            {
                "rpm": rpm,
                "torque": torque,
                "temperature": temp,
                "tool_wear": wear * 100.0,
                "work_left_s": work_left,
                "power": (POWER_IDLE_KW + torque * rpm * 2.0 * np.pi / 60.0 / 1000.0) * (rpm > 1.0),
                "vibration": (0.3 + 2.0 * load * (1.0 + 3.0 * wear**2)) * (rpm > 1.0),
                "failure_probability": 100.0 / (1.0 + np.exp(-(10.0 * (wear - 0.8) + 0.1 * (temp - 80.0)))),
                "jobs_completed": st["jobs_completed"] + done,
                "idle_s": np.where(start, 0.0, idle_s),
                "plant_s": plant_s,
            }
        )
        return st

    def outputs(self, state: State) -> Mapping[str, Array]:
        return tag_outputs(self, state)

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        current = int(state["state"][index])
        if name == "start_job":
            if current != IDLE:
                raise CommandRejected(f"lathe is {STATES[current].lower()}: cannot start a job")
            mask = np.zeros(len(state["state"]), dtype=bool)
            mask[index] = True
            values = _job_start_values(
                mask, np.full(len(mask), float(args["estimated_min"])), state["plant_s"]
            )
            for key, value in values.items():
                state[key][index] = value[index]
            state["material"][index] = float(args["material"])
            state["operation"][index] = float(args["operation"])
            state["tool_no"][index] = float(args["tool_no"])
            state["job_id"][index] += 1
        elif name == "abort_job":
            if current != RUNNING:
                raise CommandRejected("no job is running")
            state["state"][index] = IDLE
            state["job_status"][index] = ABORTED
        elif name == "change_tool":
            if current == RUNNING:
                raise CommandRejected("a job is running: abort it before changing the tool")
            state["tool_wear"][index] = 0.0
            state["wear_multiplier"][index] = 1.0
            state["tool_no"][index] = float(args["tool_no"])
            state["state"][index] = IDLE
        else:
            super().apply_command(state, index, name, args)

    def inject_fault(self, state: State, index: int, kind: str, active: bool) -> None:
        """tool_wear: the tool wears 30x fast until it breaks; overheating: coolant lost."""
        if kind == "tool_wear":
            state["wear_multiplier"][index] = 30.0 if active else 1.0
        else:
            state["cooling_fault"][index] = float(active)


def _job_start_values(mask: Array, estimate_min: Array, plant_s: Array) -> dict[str, Array]:
    """State of a job that starts now: the actual work is the estimate give or take a little."""
    est = estimate_min * 60.0
    return {
        "state": np.full(len(mask), float(RUNNING)),
        "job_status": np.full(len(mask), float(IN_PROGRESS)),
        "job_start": plant_s.copy(),
        "estimated_duration": estimate_min.copy(),
        "actual_duration": np.zeros(len(mask)),
        "work_left_s": est * 0.95,
    }
