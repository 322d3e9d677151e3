"""Belt conveyor: drive, belt slip, load from carried items, motor current and bearing heating.

Equations (per instance, plant time t, step dt):
- motor speed follows the commanded speed with a first-order lag: dv_m/dt = (run * v_set - v_m) / tau_drive,
  tau_drive = 2 s.
- items arrive as a Poisson process (rate ``arrival_rate`` per second while running), each of mass
  U(5, 20) kg, and leave after travelling the belt length L: load' = arrivals - load * v_b / L.
- slip grows with load: s = s0 + k_s * load / load_max; belt speed v_b = v_m * (1 - s).
- motor load is the traction force over rated: P = (F_idle + mu * g * load) * v_b / P_rated;
  motor current I = I_0 + (I_rated - I_0) * P (induction motor near rated slip, roughly linear).
- bearing temperature has thermal inertia: dT/dt = (T_amb + k_T * I^2 - T) / tau_th, tau_th = 300 s.
- health falls slowly with load: dh/dt = -k_h * P; a motor at health < 20 % draws 30 % more current.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from devices.assets.base import ArgValue, Array, AssetModel, State
from devices.assets.physics import approach
from devices.tags import Access, CommandRejected, CommandSpec, DataType, TagKind, TagSpec

BELT_LENGTH_M = 20.0
TAU_DRIVE_S = 2.0
TAU_THERMAL_S = 300.0
AMBIENT_C = 22.0
LOAD_MAX_KG = 400.0
FRICTION_COEFF = 0.03
IDLE_FORCE_N = 150.0
RATED_POWER_W = 4000.0
CURRENT_IDLE_A = 3.0
CURRENT_RATED_A = 9.0
HEATING_K_PER_A2 = 0.45
SLIP_BASE = 0.005
SLIP_PER_LOAD = 0.04
HEALTH_WEAR_PER_S = 2e-6
GRAVITY = 9.81


class Conveyor(AssetModel):
    type_name: ClassVar[str] = "conveyor"
    model_name: ClassVar[str] = "TE-BC200 belt conveyor"
    tags: ClassVar[tuple[TagSpec, ...]] = (
        TagSpec("belt_speed", DataType.FLOAT32, TagKind.MEASUREMENT, "Measured belt speed",
                unit="MTS", eu_range=(0.0, 3.0)),
        TagSpec("motor_current", DataType.FLOAT32, TagKind.MEASUREMENT, "Drive motor current",
                unit="AMP", eu_range=(0.0, 12.0)),
        TagSpec("motor_load", DataType.FLOAT32, TagKind.MEASUREMENT, "Drive load in percent of rated power",
                unit="P1", eu_range=(0.0, 100.0)),
        TagSpec("bearing_temp", DataType.FLOAT32, TagKind.MEASUREMENT, "Head pulley bearing temperature",
                unit="CEL", eu_range=(0.0, 80.0)),
        TagSpec("belt_load", DataType.FLOAT32, TagKind.MEASUREMENT, "Mass of items on the belt",
                unit="KGM", eu_range=(0.0, LOAD_MAX_KG)),
        TagSpec("slip", DataType.FLOAT32, TagKind.MEASUREMENT, "Belt slip against the drive pulley",
                unit="P1", eu_range=(0.0, 5.0)),
        TagSpec("motor_health", DataType.FLOAT32, TagKind.MEASUREMENT, "Motor health score",
                unit="P1", eu_range=(20.0, 100.0)),
        TagSpec("item_count", DataType.UINT32, TagKind.COUNTER, "Items carried since the last reset",
                unit="C62"),
        TagSpec("running", DataType.BOOL, TagKind.STATE, "Drive is running"),
        TagSpec("speed_setpoint", DataType.FLOAT32, TagKind.SETPOINT, "Commanded belt speed",
                unit="MTS", eu_range=(0.0, 3.0), access=Access.RW),
        TagSpec("arrival_rate", DataType.FLOAT32, TagKind.SETPOINT, "Items fed onto the belt per second",
                unit="C62", eu_range=(0.0, 5.0), access=Access.RW),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (
        CommandSpec("start", "Start the drive"),
        CommandSpec("stop", "Stop the drive"),
        CommandSpec("reset", "Reset the item counter"),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        zeros = np.zeros(count)
        return {
            "running": np.ones(count),
            "speed_setpoint": np.full(count, 1.5),
            "arrival_rate": np.full(count, 0.5),
            "motor_speed": zeros.copy(),
            "belt_load": zeros.copy(),
            "bearing_temp": np.full(count, AMBIENT_C) + rng.normal(0.0, 0.5, count),
            "motor_health": np.full(count, 100.0),
            "item_count": zeros.copy(),
            "belt_speed": zeros.copy(),
            "slip": np.full(count, SLIP_BASE * 100),
            "motor_current": np.full(count, CURRENT_IDLE_A),
            "motor_load": zeros.copy(),
        }

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        running = state["running"]
        target = running * state["speed_setpoint"]
        motor_speed = approach(state["motor_speed"], target, dt, TAU_DRIVE_S)

        load = state["belt_load"]
        slip = SLIP_BASE + SLIP_PER_LOAD * load / LOAD_MAX_KG
        belt_speed = motor_speed * (1.0 - slip)

        arrivals = rng.poisson(state["arrival_rate"] * running * dt)
        arrived_mass = arrivals * rng.uniform(5.0, 20.0, arrivals.shape)
        leaving = load * np.minimum(belt_speed * dt / BELT_LENGTH_M, 1.0)
        new_load = np.clip(load + arrived_mass - leaving, 0.0, LOAD_MAX_KG)

        force = (IDLE_FORCE_N + FRICTION_COEFF * GRAVITY * new_load) * (motor_speed > 0.01)
        power_ratio = np.clip(force * belt_speed / RATED_POWER_W, 0.0, 1.5)
        health = np.clip(state["motor_health"] - HEALTH_WEAR_PER_S * 100 * power_ratio * dt, 0.0, 100.0)
        weak_motor = np.where(health < 20.0, 1.3, 1.0)
        idle = CURRENT_IDLE_A * (motor_speed > 0.01)
        current = (idle + (CURRENT_RATED_A - CURRENT_IDLE_A) * power_ratio) * weak_motor
        current = current + rng.normal(0.0, 0.02, current.shape) * (current > 0)

        bearing_target = AMBIENT_C + HEATING_K_PER_A2 * current**2
        bearing = approach(state["bearing_temp"], bearing_target, dt, TAU_THERMAL_S)

        return {
            **state,
            "motor_speed": motor_speed,
            "belt_load": new_load,
            "belt_speed": belt_speed,
            "slip": slip * 100.0,
            "motor_current": np.maximum(current, 0.0),
            "motor_load": power_ratio * 100.0,
            "bearing_temp": bearing,
            "motor_health": health,
            "item_count": state["item_count"] + arrivals,
        }

    def outputs(self, state: State) -> Mapping[str, Array]:
        return {spec.key: state[spec.key] for spec in self.tags}

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        if name == "start":
            if state["motor_health"][index] <= 0.0:
                raise CommandRejected("motor failed: health is 0 %, replace the motor before starting")
            state["running"][index] = 1.0
        elif name == "stop":
            state["running"][index] = 0.0
        elif name == "reset":
            state["item_count"][index] = 0.0
        else:
            super().apply_command(state, index, name, args)
