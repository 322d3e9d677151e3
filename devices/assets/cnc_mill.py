"""Network-connected CNC milling machine: spindle, tool path, tool heating and wear, and its network side.

Machining (per instance, step dt):
- the part program is a raster pocket: path phase u advances by dt / program_time; X sweeps 10
  passes of 0..200 mm, Y feeds 0..150 mm, Z is at cutting depth between u = 0.05 and 0.95.
- cutting load L = L_nom * (1 + OU noise) while cutting (material hardness varies along the part).
- spindle speed follows the setpoint minus a load droop: n = n_set * (1 - 0.08 * L), 1 s lag.
- tool temperature warms exponentially: dT/dt = (T_amb + k * L * n / n_max * (1 + w) - T) / 120 s.
- tool wear: dw/dt = k_w * L * (n / n_max) * wear_multiplier; 100 % breaks the tool (Tool broken).
- vibration v = v_0 + v_L * L * (1 + 3 * w / 100); power P = P_0 + P_c * L * n / n_max * (1 + 0.5 w / 100).
- supply: ``part_supply`` (coupling input, 1 = upstream conveyor delivering) fills a 60 s part
  buffer; an empty buffer starves the mill (spindle stops, no cutting load, idle power).
Network: latency is OU noise around 20 ms with congestion bursts; error rate grows with latency and
with tool temperature above 60 degC; efficiency status derives from both (``efficiency_status``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from devices.assets.base import ArgValue, Array, AssetModel, State
from devices.assets.physics import approach, ou_noise, tag_outputs
from devices.tags import Access, CommandRejected, CommandSpec, DataType, TagKind, TagSpec

SPINDLE_MAX_RPM = 12000.0
PROGRAM_TIME_S = 120.0
PASSES = 10
TRAVEL_X_MM, TRAVEL_Y_MM, CUT_Z_MM, SAFE_Z_MM = 200.0, 150.0, -5.0, 50.0
LOAD_NOMINAL = 0.6
AMBIENT_C = 22.0
TAU_TOOL_S = 120.0
TAU_SPINDLE_S = 1.0
WEAR_PCT_PER_S = 100.0 / (4 * 3600.0)  # a tool lasts about four hours of full-load cutting
POWER_IDLE_KW, POWER_CUT_KW = 1.5, 12.0
BUFFER_S = 60.0
LATENCY_BASE_MS = 20.0
EFFICIENCY = ("Low", "Medium", "High")
STATES = ("Stopped", "Cutting", "Starved", "Tool broken")
STOPPED, CUTTING, STARVED, BROKEN = range(4)


def efficiency_status(latency_ms: Array, error_rate_pct: Array, temperature_c: Array) -> Array:
    """0 Low / 1 Medium / 2 High: slow links, errors and heat all cost efficiency (shared with the CSV)."""
    high = (latency_ms < 40.0) & (error_rate_pct < 1.5) & (temperature_c < 70.0)
    low = (latency_ms > 120.0) | (error_rate_pct > 4.0) | (temperature_c > 85.0)
    return np.where(low, 0.0, np.where(high, 2.0, 1.0))


def error_rate(latency_ms: Array, temperature_c: Array) -> Array:
    """Packet/command error rate in % from link latency and machine heat (capped at 20 %)."""
    rate = (
        0.3
        + 0.02 * np.maximum(latency_ms - LATENCY_BASE_MS, 0.0)
        + 0.15 * np.maximum(temperature_c - 60.0, 0.0)
    )
    out: Array = np.minimum(rate, 20.0)
    return out


class CncMill(AssetModel):
    type_name: ClassVar[str] = "cnc_mill"
    model_name: ClassVar[str] = "TE-VM5 vertical machining centre"
    faults: ClassVar[tuple[str, ...]] = ("tool_wear", "overheating", "network_congestion")
    tags: ClassVar[tuple[TagSpec, ...]] = (
        TagSpec("state", DataType.ENUM, TagKind.STATE, "Machine state", enum_strings=STATES),
        TagSpec(
            "spindle_speed",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Spindle speed",
            unit="RPM",
            eu_range=(0.0, SPINDLE_MAX_RPM),
        ),
        TagSpec(
            "tool_temp",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Tool temperature",
            unit="CEL",
            eu_range=(15.0, 90.0),
        ),
        TagSpec(
            "axis_x",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "X axis position",
            unit="MMT",
            eu_range=(0.0, TRAVEL_X_MM),
        ),
        TagSpec(
            "axis_y",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Y axis position",
            unit="MMT",
            eu_range=(0.0, TRAVEL_Y_MM),
        ),
        TagSpec(
            "axis_z",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Z axis position",
            unit="MMT",
            eu_range=(CUT_Z_MM, SAFE_Z_MM),
        ),
        TagSpec(
            "vibration",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Spindle vibration velocity",
            unit="C16",
            eu_range=(0.0, 7.1),
        ),
        TagSpec(
            "power",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Spindle drive power",
            unit="KWT",
            eu_range=(0.0, 20.0),
        ),
        TagSpec(
            "cutting_load",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Spindle load",
            unit="P1",
            eu_range=(0.0, 100.0),
        ),
        TagSpec(
            "tool_wear", DataType.FLOAT32, TagKind.MEASUREMENT, "Tool wear", unit="P1", eu_range=(0.0, 80.0)
        ),
        TagSpec("parts_made", DataType.UINT32, TagKind.COUNTER, "Parts finished", unit="C62"),
        TagSpec(
            "network_latency",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Controller network latency",
            unit="C26",
            eu_range=(0.0, 150.0),
        ),
        TagSpec(
            "error_rate",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Communication error rate",
            unit="P1",
            eu_range=(0.0, 5.0),
        ),
        TagSpec(
            "efficiency_status",
            DataType.ENUM,
            TagKind.STATE,
            "Efficiency class from network and heat",
            enum_strings=EFFICIENCY,
        ),
        TagSpec("tool_broken_alarm", DataType.BOOL, TagKind.ALARM, "Tool broken"),
        TagSpec(
            "spindle_setpoint",
            DataType.FLOAT32,
            TagKind.SETPOINT,
            "Commanded spindle speed",
            unit="RPM",
            eu_range=(0.0, SPINDLE_MAX_RPM),
            access=Access.RW,
        ),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (
        CommandSpec("start", "Start the part program"),
        CommandSpec("stop", "Stop after retracting the tool"),
        CommandSpec("change_tool", "Replace the tool (wear back to 0 %)"),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        z = np.zeros(count)
        return {
            "state": np.full(count, float(CUTTING)),
            "running": np.ones(count),
            "phase": rng.uniform(0, 1, count),
            "spindle_speed": z.copy(),
            "spindle_setpoint": np.full(count, 8000.0),
            "tool_temp": np.full(count, AMBIENT_C),
            "axis_x": z.copy(),
            "axis_y": z.copy(),
            "axis_z": np.full(count, SAFE_Z_MM),
            "vibration": z.copy(),
            "power": z.copy(),
            "cutting_load": z.copy(),
            "tool_wear": rng.uniform(0.0, 20.0, count),
            "parts_made": z.copy(),
            "network_latency": np.full(count, LATENCY_BASE_MS),
            "error_rate": z.copy(),
            "efficiency_status": np.full(count, 2.0),
            "tool_broken_alarm": z.copy(),
            "load_noise": z.copy(),
            "latency_noise": z.copy(),
            "part_supply": np.ones(count),
            "buffer_s": np.full(count, BUFFER_S),
            "wear_multiplier": np.ones(count),
            "cooling_fault": z.copy(),
            "congestion": z.copy(),
        }

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        supplied = state["part_supply"] >= 0.5
        buffer_s = np.clip(state["buffer_s"] + np.where(supplied, dt, -dt), 0.0, BUFFER_S)
        broken = state["tool_wear"] >= 100.0
        working = (state["running"] > 0) & ~broken & (buffer_s > 0)

        raw = state["phase"] + dt / PROGRAM_TIME_S * working
        parts = np.floor(raw)
        phase = raw - parts
        sweep = (phase * PASSES) % 1.0
        pass_no = np.floor(phase * PASSES)
        x = np.where(pass_no % 2 == 0, sweep, 1.0 - sweep) * TRAVEL_X_MM
        cutting = working & (phase > 0.05) & (phase < 0.95)
        z = np.where(cutting, CUT_Z_MM, SAFE_Z_MM)

        load_noise = ou_noise(state["load_noise"], 0.15, dt, 3.0, rng)
        load = np.clip(LOAD_NOMINAL * (1.0 + load_noise), 0.0, 1.0) * cutting
        speed = approach(
            state["spindle_speed"],
            state["spindle_setpoint"] * (1.0 - 0.08 * load) * working,
            dt,
            TAU_SPINDLE_S,
        )
        speed_frac = speed / SPINDLE_MAX_RPM
        wear_frac = state["tool_wear"] / 100.0
        wear = state["tool_wear"] + WEAR_PCT_PER_S * load * speed_frac / 0.66 * state["wear_multiplier"] * dt
        temp_target = AMBIENT_C + 55.0 * load * speed_frac * (1.0 + wear_frac) + 35.0 * state["cooling_fault"]
        tool_temp = approach(state["tool_temp"], temp_target, dt, TAU_TOOL_S)
        vibration = (0.4 + 2.0 * load * (1.0 + 3.0 * wear_frac)) * (speed > 10.0) + 0.05 * np.abs(load_noise)
        power = (POWER_IDLE_KW + POWER_CUT_KW * load * speed_frac * (1.0 + 0.5 * wear_frac)) * (speed > 10.0)

        latency_noise = ou_noise(state["latency_noise"], 0.3, dt, 30.0, rng)
        latency = LATENCY_BASE_MS * np.exp(latency_noise) + 120.0 * state["congestion"]
        errors = error_rate(latency, tool_temp)
        broken_now = wear >= 100.0
        new_state = (
            np.select([broken_now, state["running"] == 0, buffer_s <= 0], [BROKEN, STOPPED, STARVED], CUTTING)
            * 1.0
        )
        return {
            **state,
            "state": new_state,
            "phase": phase,
            "buffer_s": buffer_s,
            "axis_x": x,
            "axis_y": phase * TRAVEL_Y_MM,
            "axis_z": z,
            "load_noise": load_noise,
            "cutting_load": load * 100.0,
            "spindle_speed": speed,
            "tool_wear": np.minimum(wear, 100.0),
            "tool_temp": tool_temp,
            "vibration": vibration,
            "power": power,
            "parts_made": state["parts_made"] + parts,
            "latency_noise": latency_noise,
            "network_latency": latency,
            "error_rate": errors,
            "efficiency_status": efficiency_status(latency, errors, tool_temp),
            "tool_broken_alarm": broken_now * 1.0,
        }

    def outputs(self, state: State) -> Mapping[str, Array]:
        return tag_outputs(self, state)

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        if name == "start":
            if state["tool_wear"][index] >= 100.0:
                raise CommandRejected("tool broken: change the tool before starting")
            state["running"][index] = 1.0
        elif name == "stop":
            state["running"][index] = 0.0
        elif name == "change_tool":
            if state["running"][index] and state["state"][index] == CUTTING:
                raise CommandRejected("stop the program before changing the tool")
            state["tool_wear"][index] = 0.0
            state["wear_multiplier"][index] = 1.0
        else:
            super().apply_command(state, index, name, args)

    def inject_fault(self, state: State, index: int, kind: str, active: bool) -> None:
        """tool_wear: wear runs 50x fast towards breakage; overheating: coolant lost; congestion: +120 ms."""
        if kind == "tool_wear":
            state["wear_multiplier"][index] = 50.0 if active else 1.0
        elif kind == "overheating":
            state["cooling_fault"][index] = float(active)
        else:
            state["congestion"][index] = float(active)
