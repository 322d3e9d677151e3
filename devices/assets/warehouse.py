"""High-bay warehouse cell: a 3x3 rack, a stacker crane, and the cell conveyor with light barriers.

Orders (store, retrieve, process) run as a program of moves, one action at a time:
  store:    convey in -> crane to I/O -> pick -> crane to slot -> place -> home
  retrieve: crane to slot -> pick -> crane to I/O -> place -> convey out -> home
  process:  retrieve's moves, then the part is processed outside the cell (``PROCESS_S``) and stored
            back into the same slot as Processed.
Impossible orders (store into a full slot, retrieve from an empty one, process a part that is not
raw, any order while busy or with a failed conveyor motor) are rejected with the reason.

Physics (per instance, step dt; at most one action completes per step):
- crane axes move at constant speed towards their target: x' = x + sign * min(v dt, |target - x|);
  axis current I = I_0 + I_move * moving * (1 + 0.3 * carrying).
- conveyor motor: I = running * (I_0 + 0.4 * carrying) * (1 + 0.5 * (1 - health / 100)); a motor
  failure (seed scenario: day 12) jumps the current to 4.5 A and knocks health down to 40 %.
- motor health falls with work: dh/dt = -k_h * current, ten times faster while failed; at 0 the
  conveyor stops and orders that need it are refused until ``replace_motor``.
- light barrier ``in`` is broken during the first half of a convey-in and ``out`` during the second
  half of a convey-out (the part passing the beam).
- with ``order_rate`` > 0 the cell generates its own valid orders (Poisson, per hour).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from devices.assets.base import ArgValue, Array, AssetModel, State
from devices.assets.physics import as_flag, tag_outputs
from devices.tags import Access, ArgSpec, CommandRejected, CommandSpec, DataType, TagKind, TagSpec

SLOTS = 9
CONTENTS = ("Empty", "Raw", "Processed")
EMPTY, RAW, PROCESSED = range(3)
SLOT_X_MM = 100.0 + 100.0 * (np.arange(SLOTS) % 3)
SLOT_Y_MM = 50.0 + 100.0 * (np.arange(SLOTS) // 3)
IO_X_MM, IO_Y_MM = 0.0, 50.0
SPEED_X_MMS, SPEED_Y_MMS = 100.0, 60.0
PICK_S, CONVEY_S, PROCESS_S = 3.0, 5.0, 30.0
AXIS_IDLE_A, AXIS_MOVE_A = 0.1, 0.9
CONVEYOR_A = 1.2
FAILED_MOTOR_A = 4.5
HEALTH_PER_AS = 2e-5  # health % lost per ampere-second of work
# Actions of an order program.
(
    MOVE_IO,
    MOVE_SLOT,
    MOVE_HOME,
    PICK_IO,
    PICK_SLOT,
    PLACE_IO,
    PLACE_SLOT,
    CONVEY_IN,
    CONVEY_OUT,
    PROCESS,
    DONE,
) = range(11)
ORDERS = ("None", "Store", "Retrieve", "Process")
NONE, STORE, RETRIEVE, PROCESS_ORDER = range(4)
_PROGRAM_ROWS = (
    (DONE,),
    (CONVEY_IN, MOVE_IO, PICK_IO, MOVE_SLOT, PLACE_SLOT, MOVE_HOME, DONE),
    (MOVE_SLOT, PICK_SLOT, MOVE_IO, PLACE_IO, CONVEY_OUT, MOVE_HOME, DONE),
    (
        MOVE_SLOT,
        PICK_SLOT,
        MOVE_IO,
        PLACE_IO,
        CONVEY_OUT,
        PROCESS,
        CONVEY_IN,
        PICK_IO,
        MOVE_SLOT,
        PLACE_SLOT,
        MOVE_HOME,
        DONE,
    ),
)
PROGRAMS = np.array([row + (DONE,) * (12 - len(row)) for row in _PROGRAM_ROWS], dtype=np.int64)
ACTION_TIME_S = np.array([0, 0, 0, PICK_S, PICK_S, PICK_S, PICK_S, CONVEY_S, CONVEY_S, PROCESS_S, 0.0])
STATES = ("Idle", "Moving", "Picking", "Placing", "Conveying", "Processing", "Fault")
ACTION_STATE = np.array([1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 0], dtype=np.float64)
FAULT_STATE = 6.0


def _slot_tag(i: int) -> TagSpec:
    return TagSpec(
        f"slot_{i + 1}",
        DataType.ENUM,
        TagKind.STATE,
        f"Content of rack slot {i + 1} (row {i // 3 + 1}, column {i % 3 + 1})",
        enum_strings=CONTENTS,
    )


class Warehouse(AssetModel):
    type_name: ClassVar[str] = "warehouse"
    model_name: ClassVar[str] = "TE-HBW9 high-bay warehouse cell"
    faults: ClassVar[tuple[str, ...]] = ("motor_failure",)
    tags: ClassVar[tuple[TagSpec, ...]] = (
        *(_slot_tag(i) for i in range(SLOTS)),
        TagSpec(
            "crane_x",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Crane horizontal position",
            unit="MMT",
            eu_range=(0.0, 300.0),
        ),
        TagSpec(
            "crane_y",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Crane vertical position",
            unit="MMT",
            eu_range=(0.0, 300.0),
        ),
        TagSpec(
            "crane_x_current",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Horizontal axis motor current",
            unit="AMP",
            eu_range=(0.0, 2.0),
        ),
        TagSpec(
            "crane_y_current",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Vertical axis motor current",
            unit="AMP",
            eu_range=(0.0, 2.0),
        ),
        TagSpec(
            "conveyor_current",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Conveyor motor M1 current",
            unit="AMP",
            eu_range=(0.0, 3.0),
        ),
        TagSpec(
            "conveyor_health",
            DataType.FLOAT32,
            TagKind.MEASUREMENT,
            "Conveyor motor M1 health score",
            unit="P1",
            eu_range=(50.0, 100.0),
        ),
        TagSpec("light_barrier_in", DataType.BOOL, TagKind.STATE, "Inbound light barrier L1 interrupted"),
        TagSpec("light_barrier_out", DataType.BOOL, TagKind.STATE, "Process light barrier L2 interrupted"),
        TagSpec("state", DataType.ENUM, TagKind.STATE, "Cell state", enum_strings=STATES),
        TagSpec("order", DataType.ENUM, TagKind.STATE, "Order being executed", enum_strings=ORDERS),
        TagSpec("orders_completed", DataType.UINT32, TagKind.COUNTER, "Orders completed", unit="C62"),
        TagSpec("motor_fault_alarm", DataType.BOOL, TagKind.ALARM, "Conveyor motor failure"),
        TagSpec(
            "order_rate",
            DataType.FLOAT32,
            TagKind.SETPOINT,
            "Self-generated orders per hour (0 = off)",
            unit="C62",
            eu_range=(0.0, 60.0),
            access=Access.RW,
        ),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (
        CommandSpec(
            "store",
            "Store a raw part into an empty slot",
            (ArgSpec("slot", DataType.UINT16, "Rack slot 1..9", eu_range=(1, SLOTS)),),
        ),
        CommandSpec(
            "retrieve",
            "Retrieve the part of a slot to the conveyor",
            (ArgSpec("slot", DataType.UINT16, "Rack slot 1..9", eu_range=(1, SLOTS)),),
        ),
        CommandSpec(
            "process",
            "Process the raw part of a slot (0 = the first raw slot) and store it back",
            (ArgSpec("slot", DataType.UINT16, "Rack slot 0..9", eu_range=(0, SLOTS)),),
        ),
        CommandSpec("replace_motor", "Fit a new conveyor motor (health back to 100 %)"),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        z = np.zeros(count)
        state: State = {f"slot_{i + 1}": rng.integers(0, 3, count).astype(np.float64) for i in range(SLOTS)}
        state.update(
            {
                "crane_x": z.copy(),
                "crane_y": z.copy(),
                "crane_x_current": np.full(count, AXIS_IDLE_A),
                "crane_y_current": np.full(count, AXIS_IDLE_A),
                "conveyor_current": z.copy(),
                "conveyor_health": np.full(count, 100.0),
                "light_barrier_in": z.copy(),
                "light_barrier_out": z.copy(),
                "state": z.copy(),
                "order": z.copy(),
                "orders_completed": z.copy(),
                "motor_fault_alarm": z.copy(),
                "order_rate": np.full(count, 6.0),
                "phase": z.copy(),
                "timer": z.copy(),
                "order_slot": z.copy(),
                "carried": z.copy(),
                "motor_fault": z.copy(),
            }
        )
        return state

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        st = {key: value.copy() for key, value in state.items()}
        self._auto_orders(st, dt, rng)
        n = len(st["state"])
        rows = np.arange(n)
        slots = np.stack([st[f"slot_{i + 1}"] for i in range(SLOTS)], axis=1)  # (n, 9)
        order = st["order"].astype(np.int64)
        action = PROGRAMS[order, st["phase"].astype(np.int64)]
        slot = st["order_slot"].astype(np.int64)
        failed = st["conveyor_health"] <= 0.0
        conveying = ((action == CONVEY_IN) | (action == CONVEY_OUT)) & ~failed

        target_x = np.select(
            [action == MOVE_IO, action == MOVE_SLOT, action == MOVE_HOME],
            [IO_X_MM, SLOT_X_MM[slot], 0.0],
            st["crane_x"],
        )
        target_y = np.select(
            [action == MOVE_IO, action == MOVE_SLOT, action == MOVE_HOME],
            [IO_Y_MM, SLOT_Y_MM[slot], 0.0],
            st["crane_y"],
        )
        dx, dy = target_x - st["crane_x"], target_y - st["crane_y"]
        x = st["crane_x"] + np.sign(dx) * np.minimum(SPEED_X_MMS * dt, np.abs(dx))
        y = st["crane_y"] + np.sign(dy) * np.minimum(SPEED_Y_MMS * dt, np.abs(dy))
        arrived = (x == target_x) & (y == target_y)

        timer = st["timer"] + dt * (
            (action >= PICK_IO) & (action <= PROCESS) & ~(failed & (action >= CONVEY_IN))
        )
        timed_done = timer >= ACTION_TIME_S[action]
        is_move = action <= MOVE_HOME
        finished = np.where(is_move, arrived, timed_done) & (action != DONE)

        # Completion effects of pick and place on the rack and on what the crane carries.
        picked_slot = finished & (action == PICK_SLOT)
        placed_slot = finished & (action == PLACE_SLOT)
        carried = np.where(picked_slot, slots[rows, slot], st["carried"])
        carried = np.where(finished & (action == PICK_IO) & (carried == EMPTY), RAW, carried)
        carried = np.where(finished & (action == PROCESS), PROCESSED, carried)
        slots[rows[picked_slot], slot[picked_slot]] = EMPTY
        slots[rows[placed_slot], slot[placed_slot]] = carried[placed_slot]
        carried = np.where(
            placed_slot | (finished & (action == CONVEY_OUT) & (order == RETRIEVE)), EMPTY, carried
        )

        phase = st["phase"] + finished
        next_action = PROGRAMS[order, phase.astype(np.int64)]
        complete = (next_action == DONE) & (order != NONE)
        frac = np.clip(timer / CONVEY_S, 0.0, 1.0)
        carrying = carried != EMPTY
        motor_on = conveying * 1.0
        conveyor_current = (
            np.where(
                st["motor_fault"] > 0,
                FAILED_MOTOR_A,
                (CONVEYOR_A + 0.4 * carrying) * (1.0 + 0.5 * (1.0 - st["conveyor_health"] / 100.0)),
            )
            * motor_on
        )
        health = st["conveyor_health"] - HEALTH_PER_AS * conveyor_current * dt * (
            1.0 + 9.0 * st["motor_fault"]
        )
        health = np.clip(health, 0.0, 100.0)

        for i in range(SLOTS):
            st[f"slot_{i + 1}"] = slots[:, i].copy()
        st.update(
            {
                "crane_x": x,
                "crane_y": y,
                "carried": carried,
                "conveyor_current": conveyor_current,
                "conveyor_health": health,
                "motor_fault_alarm": as_flag((st["motor_fault"] > 0) | (health <= 0.0)),
                "crane_x_current": AXIS_IDLE_A + AXIS_MOVE_A * (dx != 0) * (1.0 + 0.3 * carrying),
                "crane_y_current": AXIS_IDLE_A + AXIS_MOVE_A * (dy != 0) * (1.0 + 0.3 * carrying),
                "light_barrier_in": as_flag(conveying & (action == CONVEY_IN) & (frac < 0.5)),
                "light_barrier_out": as_flag(conveying & (action == CONVEY_OUT) & (frac >= 0.5)),
                "timer": np.where(finished, 0.0, timer),
                "phase": np.where(complete, 0.0, phase),
                "order": np.where(complete, float(NONE), st["order"]),
                "orders_completed": st["orders_completed"] + complete,
                "state": np.where(
                    failed & conveying, FAULT_STATE, np.where(complete, 0.0, ACTION_STATE[action])
                ),
            }
        )
        return st

    def _auto_orders(self, st: State, dt: float, rng: np.random.Generator) -> None:
        """Poisson orders: process a raw part, else store into a free slot, else retrieve a processed one."""
        n = len(st["state"])
        due = rng.uniform(0.0, 1.0, n) < -np.expm1(-st["order_rate"] / 3600.0 * dt)
        for index in np.flatnonzero(due & (st["order"] == NONE) & (st["conveyor_health"] > 0)):
            contents = [int(st[f"slot_{i + 1}"][index]) for i in range(SLOTS)]
            for kind, wanted in ((PROCESS_ORDER, RAW), (STORE, EMPTY), (RETRIEVE, PROCESSED)):
                if wanted in contents:
                    _begin(st, int(index), kind, contents.index(wanted))
                    break

    def outputs(self, state: State) -> Mapping[str, Array]:
        return tag_outputs(self, state)

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        if name == "replace_motor":
            if state["order"][index] != NONE:
                raise CommandRejected("an order is running: wait until the cell is idle")
            state["conveyor_health"][index] = 100.0
            state["motor_fault"][index] = 0.0
            return
        kinds = {"store": STORE, "retrieve": RETRIEVE, "process": PROCESS_ORDER}
        if name not in kinds:
            super().apply_command(state, index, name, args)
        if state["order"][index] != NONE:
            raise CommandRejected(f"busy with a {ORDERS[int(state['order'][index])].lower()} order")
        if state["conveyor_health"][index] <= 0.0:
            raise CommandRejected("conveyor motor M1 has failed: replace it first")
        contents = [int(state[f"slot_{i + 1}"][index]) for i in range(SLOTS)]
        slot = int(args["slot"])
        if name == "process" and slot == 0:
            if RAW not in contents:
                raise CommandRejected("no raw part in the rack to process")
            slot = contents.index(RAW) + 1
        if not 1 <= slot <= SLOTS:
            raise CommandRejected(f"slot {slot} does not exist (1..{SLOTS})")
        content = contents[slot - 1]
        if name == "store" and content != EMPTY:
            raise CommandRejected(f"slot {slot} is full ({CONTENTS[content].lower()})")
        if name == "retrieve" and content == EMPTY:
            raise CommandRejected(f"slot {slot} is empty")
        if name == "process" and content != RAW:
            raise CommandRejected(f"slot {slot} holds {CONTENTS[content].lower()}, not a raw part")
        _begin(state, index, kinds[name], slot - 1)

    def inject_fault(self, state: State, index: int, kind: str, active: bool) -> None:
        """motor_failure: current spike to 4.5 A and health down to 40 % (the seed's day-12 event)."""
        state["motor_fault"][index] = float(active)
        if active:
            state["conveyor_health"][index] = min(float(state["conveyor_health"][index]), 40.0)


def _begin(state: State, index: int, kind: int, slot: int) -> None:
    state["order"][index] = kind
    state["order_slot"][index] = slot
    state["phase"][index] = 0.0
    state["timer"][index] = 0.0
