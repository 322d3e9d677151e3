"""Haul truck: a load-haul-dump-return cycle between the loading zone, the crusher and the waste dump.

Cycle (state machine, at most one transition per step so large steps stay consistent):
  Loading -> Hauling -> Dumping -> Returning -> (Refuelling if fuel < 20 %) -> Loading.
A load goes to the crusher with probability ``ore_fraction`` and to the waste dump otherwise; only
ore dumped at the crusher leaves the truck as ``dumped_t``, the mass a coupling hands the crusher.

Equations (per instance):
- speed is rimpull-limited: v = min(v_max, eta * P_engine / (m * g * (grade + C_rr))), with
  m = m_empty + payload; loaded trucks climb out of the pit (+grade), empty ones run back down
  (-grade, capped by the retarder speed). Speed follows that target with a 5 s lag.
- engine load = m * g * max(grade + C_rr, 0) * v / (eta * P_engine), at least 10 % while running.
- fuel: d(fuel)/dt = -SFC * P_engine * load / V_tank; a dry tank stops the truck (Out of fuel) and
  fuel is clipped at 0, so it never goes negative.
- engine temperature: dT/dt = (T_amb + k_load * load + k_fault * cooling_fault - T) / tau, tau = 600 s.
- GPS: linear interpolation between the loading zone and the destination by distance travelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from devices.assets.base import ArgValue, Array, AssetModel, State
from devices.assets.physics import approach, as_flag, tag_outputs
from devices.tags import Access, CommandRejected, CommandSpec, DataType, TagKind, TagSpec

# A 220 t class rigid haul truck (CAT 793 / Komatsu 830E order of magnitude).
EMPTY_MASS_T = 165.0
RATED_PAYLOAD_T = 220.0
ENGINE_KW = 1800.0
DRIVE_EFFICIENCY = 0.75
ROLLING_RESISTANCE = 0.03
HAUL_GRADE = 0.08  # ramp out of the pit, fraction
VMAX_LOADED_MS = 40 / 3.6
VMAX_EMPTY_MS = 50 / 3.6
RETARDER_MS = 30 / 3.6  # downhill speed limit of an empty truck
TAU_SPEED_S = 5.0
LOAD_RATE_TPS = 1.0  # a face shovel fills 220 t in about 4 min
DUMP_RATE_TPS = 4.0
TANK_L = 4000.0
SFC_L_PER_KWH = 0.23
REFUEL_L_PER_S = 10.0
REFUEL_BELOW_PCT = 20.0
IDLE_LOAD = 0.10
AMBIENT_C = 30.0
TAU_ENGINE_S = 600.0
GRAVITY = 9.81
# Route: loading zone, crusher and dump; straight legs from the loading zone, lengths in metres.
LOADING_LAT, LOADING_LON = -23.3600, 119.7300
LEG_M = np.array([3000.0, 2200.0])  # to crusher, to dump
LEG_BEARING_DEG = np.array([45.0, 100.0])
M_PER_DEG_LAT = 111_320.0

STATES = ("Loading", "Hauling", "Dumping", "Returning", "Refuelling", "Broken down", "Parked", "Out of fuel")
LOADING, HAULING, DUMPING, RETURNING, REFUELLING, BROKEN, PARKED, DRY = range(8)
PRODUCTIVE = (LOADING, HAULING, DUMPING, RETURNING)


def _dest_offsets() -> tuple[Array, Array]:
    rad = np.deg2rad(LEG_BEARING_DEG)
    dlat = LEG_M * np.cos(rad) / M_PER_DEG_LAT
    dlon = LEG_M * np.sin(rad) / (M_PER_DEG_LAT * np.cos(np.deg2rad(LOADING_LAT)))
    return dlat, dlon


DEST_DLAT, DEST_DLON = _dest_offsets()


class MineTruck(AssetModel):
    type_name: ClassVar[str] = "mine_truck"
    model_name: ClassVar[str] = "TE-HT220 rigid haul truck"
    faults: ClassVar[tuple[str, ...]] = ("truck_breakdown", "overheating")
    tags: ClassVar[tuple[TagSpec, ...]] = (
        TagSpec("state", DataType.ENUM, TagKind.STATE, "Haul cycle state", enum_strings=STATES),
        TagSpec(
            "destination",
            DataType.ENUM,
            TagKind.STATE,
            "Where the current load goes",
            enum_strings=("Crusher", "Dump"),
        ),
        TagSpec(
            "latitude",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "GPS latitude",
            unit="DD",
            eu_range=(-23.40, -23.30),
        ),
        TagSpec(
            "longitude",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "GPS longitude",
            unit="DD",
            eu_range=(119.70, 119.80),
        ),
        TagSpec(
            "speed", DataType.FLOAT32, TagKind.MEASUREMENT, "Ground speed", unit="KMH", eu_range=(0.0, 50.0)
        ),
        TagSpec(
            "grade",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Road grade in the direction of travel",
            unit="P1",
            eu_range=(-10.0, 10.0),
        ),
        TagSpec(
            "payload",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Payload from the strut pressure sensors",
            unit="TNE",
            eu_range=(0.0, 240.0),
        ),
        TagSpec(
            "fuel_level",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Fuel tank level",
            unit="P1",
            eu_range=(10.0, 100.0),
        ),
        TagSpec(
            "engine_temp",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Engine coolant temperature",
            unit="CEL",
            eu_range=(20.0, 105.0),
        ),
        TagSpec(
            "engine_load",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Engine load",
            unit="P1",
            eu_range=(0.0, 100.0),
        ),
        TagSpec("loads_delivered", DataType.UINT32, TagKind.COUNTER, "Loads dumped", unit="C62"),
        TagSpec(
            "tonnes_hauled",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Tonnes dumped since start",
            unit="TNE",
            eu_range=(0.0, 1e7),
        ),
        TagSpec("breakdown_alarm", DataType.BOOL, TagKind.ALARM, "Truck is broken down"),
        TagSpec("low_fuel_alarm", DataType.BOOL, TagKind.ALARM, "Fuel below 10 %"),
        TagSpec(
            "target_payload",
            DataType.FLOAT32,
            TagKind.SETPOINT,
            "Payload the shovel loads to",
            unit="TNE",
            eu_range=(50.0, 240.0),
            access=Access.RW,
        ),
        TagSpec(
            "ore_fraction",
            DataType.FLOAT32,
            TagKind.SETPOINT,
            "Share of loads sent to the crusher",
            unit="P1",
            eu_range=(0.0, 100.0),
            access=Access.RW,
        ),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (
        CommandSpec("park", "Stop the truck where it is and hold it"),
        CommandSpec("dispatch", "Release a parked truck back into its cycle"),
        CommandSpec("repair", "Clear a breakdown; a dry truck gets 25 % fuel from the service truck"),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        z = np.zeros(count)
        # Spread the fleet over the cycle so dumps do not arrive in lock-step.
        state = rng.integers(0, 4, count).astype(np.float64)
        dest = z.copy()
        pos = np.where((state == HAULING) | (state == RETURNING), rng.uniform(0, 1, count) * LEG_M[0], 0.0)
        pos = np.where(state == DUMPING, LEG_M[0], pos)
        payload = np.where((state == HAULING) | (state == DUMPING), RATED_PAYLOAD_T, 0.0)
        return {
            "state": state,
            "resume_state": state.copy(),
            "destination": dest,
            "position_m": pos,
            "payload": payload,
            "fuel_level": rng.uniform(40.0, 100.0, count),
            "engine_temp": np.full(count, 80.0),
            "engine_load": z.copy(),
            "speed": z.copy(),
            "grade": z.copy(),
            "latitude": np.full(count, LOADING_LAT),
            "longitude": np.full(count, LOADING_LON),
            "loads_delivered": z.copy(),
            "tonnes_hauled": z.copy(),
            "dumped_t": z.copy(),
            "breakdown_alarm": z.copy(),
            "low_fuel_alarm": z.copy(),
            "cooling_fault": z.copy(),
            "productive": as_flag(state < 4),
            "target_payload": np.full(count, RATED_PAYLOAD_T),
            "ore_fraction": np.full(count, 80.0),
        }

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        s = state["state"]
        dest = state["destination"].astype(np.int64)
        leg = LEG_M[dest]
        payload = state["payload"]
        draw = rng.uniform(0.0, 1.0, s.shape)  # drawn every step: the random stream never depends on state

        moving = (s == HAULING) | (s == RETURNING)
        grade = np.where(s == HAULING, HAUL_GRADE, np.where(s == RETURNING, -HAUL_GRADE, 0.0))
        mass_kg = (EMPTY_MASS_T + payload) * 1000.0
        resistance = grade + ROLLING_RESISTANCE
        pull_ms = DRIVE_EFFICIENCY * ENGINE_KW * 1000.0 / (mass_kg * GRAVITY * np.maximum(resistance, 0.01))
        vmax = np.where(payload > 0, VMAX_LOADED_MS, np.where(resistance < 0, RETARDER_MS, VMAX_EMPTY_MS))
        speed = approach(state["speed"] / 3.6, np.minimum(pull_ms, vmax) * moving, dt, TAU_SPEED_S)
        engine_on = s < BROKEN
        load = (
            np.clip(
                mass_kg
                * GRAVITY
                * np.maximum(resistance, 0.0)
                * speed
                / (DRIVE_EFFICIENCY * ENGINE_KW * 1000.0),
                IDLE_LOAD,
                1.0,
            )
            * engine_on
        )

        burn_pct = SFC_L_PER_KWH * ENGINE_KW * load * dt / 3600.0 / TANK_L * 100.0
        refuel_pct = REFUEL_L_PER_S * dt / TANK_L * 100.0 * (s == REFUELLING)
        fuel = np.clip(state["fuel_level"] - burn_pct + refuel_pct, 0.0, 100.0)

        pos = state["position_m"] + speed * dt * np.where(
            s == HAULING, 1.0, np.where(s == RETURNING, -1.0, 0.0)
        )
        pos = np.clip(pos, 0.0, leg)
        loaded = np.where(
            s == LOADING, np.minimum(payload + LOAD_RATE_TPS * dt, state["target_payload"]), payload
        )
        dumped = np.where(s == DUMPING, np.minimum(payload, DUMP_RATE_TPS * dt), 0.0)
        payload = loaded - dumped

        new = s.copy()
        new_dest = np.where(
            (s == LOADING) & (payload >= state["target_payload"]),
            (draw * 100.0 >= state["ore_fraction"]) * 1.0,
            state["destination"],
        )
        new[(s == LOADING) & (payload >= state["target_payload"])] = HAULING
        new[(s == HAULING) & (pos >= leg)] = DUMPING
        finished_dump = (s == DUMPING) & (payload <= 1e-9)
        new[finished_dump] = RETURNING
        home = (s == RETURNING) & (pos <= 0.0)
        new[home] = np.where(fuel[home] < REFUEL_BELOW_PCT, REFUELLING, LOADING)
        new[(s == REFUELLING) & (fuel >= 100.0)] = LOADING
        dry = (fuel <= 0.0) & (new < BROKEN)
        new[dry] = DRY

        to_crusher = dumped * (dest == 0)
        dlat, dlon = DEST_DLAT[dest], DEST_DLON[dest]
        frac = pos / leg
        temp_target = AMBIENT_C + 60.0 * load + 45.0 * state["cooling_fault"] * engine_on
        return {
            **state,
            "state": new,
            "destination": new_dest,
            "position_m": pos,
            "payload": payload,
            "fuel_level": fuel,
            "speed": speed * 3.6,
            "grade": grade * 100.0,
            "engine_load": load * 100.0,
            "engine_temp": approach(state["engine_temp"], temp_target, dt, TAU_ENGINE_S),
            "latitude": LOADING_LAT + frac * dlat,
            "longitude": LOADING_LON + frac * dlon,
            "dumped_t": to_crusher,
            "tonnes_hauled": state["tonnes_hauled"] + dumped,
            "loads_delivered": state["loads_delivered"] + finished_dump,
            "breakdown_alarm": as_flag((new == BROKEN) | (new == DRY)),
            "low_fuel_alarm": as_flag(fuel < 10.0),
            "productive": as_flag(new < REFUELLING),
        }

    def outputs(self, state: State) -> Mapping[str, Array]:
        return tag_outputs(self, state)

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        current = int(state["state"][index])
        if name == "park":
            if current in (BROKEN, DRY):
                raise CommandRejected(f"truck is {STATES[current].lower()}; repair it first")
            if current != PARKED:
                state["resume_state"][index] = current
            state["state"][index] = PARKED
        elif name == "dispatch":
            if current != PARKED:
                raise CommandRejected(f"truck is not parked (it is {STATES[current].lower()})")
            state["state"][index] = state["resume_state"][index]
        elif name == "repair":
            if current not in (BROKEN, DRY):
                raise CommandRejected("truck is not broken down")
            if current == DRY:
                state["fuel_level"][index] = 25.0
            state["state"][index] = state["resume_state"][index]
        else:
            super().apply_command(state, index, name, args)

    def inject_fault(self, state: State, index: int, kind: str, active: bool) -> None:
        """Scenario hook: a breakdown stops the truck until repaired; overheating loses cooling."""
        if kind == "truck_breakdown" and active and state["state"][index] < BROKEN:
            state["resume_state"][index] = state["state"][index]
            state["state"][index] = BROKEN
        elif kind == "overheating":
            state["cooling_fault"][index] = float(active)
