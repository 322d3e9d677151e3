"""The four Modbus tables of a PLC as numpy arrays, refreshed from the process image after each scan.

Each table is an (units, 65536) array; a scan encodes every tag column of every asset group with a
few numpy operations (see codec.py) and scatters it through precomputed flat indices, so the cost per
scan grows with the number of tag *columns*, not with the number of instances. The arrays are
rebuilt and then swapped in by reference, so a request being answered never sees half a scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from devices.modbus.codec import Bits, Registers, encode, encode_bits, encode_strings
from devices.modbus.register_map import (
    ADDRESS_SPACE,
    BLOCK_STRIDE,
    HEARTBEAT_ADDRESS,
    STATUS_REGISTERS,
    TABLES,
    AssetBlock,
    CommandSlot,
    RegisterMap,
    Table,
    TagSlot,
    type_layout,
)
from devices.process_image import GroupImage, ProcessImage
from devices.tags import DataType

IntArray = npt.NDArray[np.int64]

# OPC UA StatusCode severity: the top two bits are 10 for Bad (OPC 10000-4 §7.39).
_SEVERITY_MASK = 0xC0000000
_SEVERITY_BAD = 0x80000000


@dataclass(frozen=True)
class _ColumnPlan:
    slot: TagSlot
    flat: IntArray  # (m, count) flat indices into the table, one row per mapped instance


@dataclass(frozen=True)
class _GroupPlan:
    asset_ids: tuple[str, ...]
    rows: IntArray  # instances of the group that have a block in the map
    columns: tuple[_ColumnPlan, ...]
    status_flat: IntArray  # (m, STATUS_REGISTERS)


class RegisterImage:
    """Register and bit tables of one PLC, all units; answers reads, locates write targets."""

    def __init__(self, register_map: RegisterMap, fault_value: float | None = None) -> None:
        self.map = register_map
        self.fault_value = fault_value
        self.unit_index = {unit: i for i, unit in enumerate(register_map.unit_ids)}
        units = len(register_map.unit_ids)
        self.words: dict[Table, Registers] = {
            table: np.zeros((units, ADDRESS_SPACE), dtype=np.uint16)
            for table in (Table.INPUT_REGISTER, Table.HOLDING_REGISTER)
        }
        self.bits: dict[Table, Bits] = {
            table: np.zeros((units, ADDRESS_SPACE), dtype=np.uint8)
            for table in (Table.COIL, Table.DISCRETE_INPUT)
        }
        self._blocks: list[list[AssetBlock | None]] = [
            [None] * (ADDRESS_SPACE // BLOCK_STRIDE + 1) for _ in range(units)
        ]
        self._by_id: dict[str, AssetBlock] = {}
        mapped = {table: np.zeros((units, ADDRESS_SPACE), dtype=bool) for table in TABLES}
        mapped[Table.INPUT_REGISTER][:, HEARTBEAT_ADDRESS] = True
        for block in register_map.assets:
            unit = self.unit_index[block.unit_id]
            self._blocks[unit][block.block] = block
            self._by_id[block.asset_id] = block
            base = block.base
            mapped[Table.INPUT_REGISTER][unit, base : base + STATUS_REGISTERS] = True
            # Until the first scan every tag is flagged bad (BadWaitingForInitialData).
            for bit in range(len(block.layout.tags)):
                self.words[Table.INPUT_REGISTER][unit, base + bit // 16] |= np.uint16(1 << (bit % 16))
            for slot in block.layout.tags:
                mapped[slot.table][unit, base + slot.offset : base + slot.offset + slot.count] = True
            for command in block.layout.commands:
                if command.offset is not None:
                    mapped[Table.COIL][unit, base + command.offset] = True
        # Prefix sums of unmapped addresses make "is [start, start+count) fully mapped" O(1).
        self._holes = {
            table: np.concatenate(
                [np.zeros((units, 1), dtype=np.int64), np.cumsum(~mask, axis=1, dtype=np.int64)], axis=1
            )
            for table, mask in mapped.items()
        }
        self._plans: list[_GroupPlan | None] = []
        self.scan_count = 0

    # --- reads -----------------------------------------------------------------------------------

    def is_mapped(self, unit: int, table: Table, start: int, count: int) -> bool:
        if start < 0 or count <= 0 or start + count > ADDRESS_SPACE:
            return False
        holes = self._holes[table][unit]
        return bool(holes[start + count] == holes[start])

    def read_registers(self, unit: int, table: Table, start: int, count: int) -> bytes:
        return self.words[table][unit, start : start + count].astype(">u2").tobytes()

    def read_bits(self, unit: int, table: Table, start: int, count: int) -> bytes:
        # Modbus packs bits LSB first: the first coil is bit 0 of the first byte.
        return np.packbits(self.bits[table][unit, start : start + count], bitorder="little").tobytes()

    def register_values(self, unit_id: int, table: Table, start: int, count: int) -> list[int]:
        """Plain ints, for tests and tools."""
        return [int(v) for v in self.words[table][self.unit_index[unit_id], start : start + count]]

    # --- write targets ---------------------------------------------------------------------------

    def target(
        self, unit: int, table: Table, address: int
    ) -> tuple[AssetBlock, TagSlot | CommandSlot] | None:
        """The tag or command coil occupying ``address`` (any of its registers), if any."""
        block = self._blocks[unit][address // BLOCK_STRIDE]
        if block is None:
            return None
        offset = address - block.base
        for slot in block.layout.tags:
            if slot.table is table and slot.offset <= offset < slot.offset + slot.count:
                return block, slot
        if table is Table.COIL:
            for command in block.layout.commands:
                if command.offset == offset:
                    return block, command
        return None

    # --- scan update -----------------------------------------------------------------------------

    def update(self, image: ProcessImage) -> None:
        words = {table: array.copy() for table, array in self.words.items()}
        bits = {table: array.copy() for table, array in self.bits.items()}
        flat_words = {table: array.reshape(-1) for table, array in words.items()}
        flat_bits = {table: array.reshape(-1) for table, array in bits.items()}
        for index, group in enumerate(image.groups):
            plan = self._plan(index, group)
            if len(plan.rows) == 0:
                continue
            status = np.zeros((len(plan.rows), STATUS_REGISTERS), dtype=np.uint16)
            for column in plan.columns:
                slot = column.slot
                key = slot.spec.key
                bad = (group.status[key][plan.rows] & _SEVERITY_MASK) == _SEVERITY_BAD
                bit = slot.status_bit
                status[:, bit // 16] |= bad.astype(np.uint16) << np.uint16(bit % 16)
                raw = group.values[key]
                if slot.spec.datatype is DataType.STRING:
                    if raw.dtype.kind in "OUS":
                        texts = [str(raw[i]) for i in plan.rows]
                        flat_words[slot.table][column.flat] = encode_strings(texts, slot.spec.string_length)
                    continue
                values = raw[plan.rows]
                if self.fault_value is not None:
                    values = np.where(bad, self.fault_value, values)
                if slot.table.is_bit:
                    flat_bits[slot.table][column.flat[:, 0]] = encode_bits(values)
                else:
                    flat_words[slot.table][column.flat] = encode(
                        values, slot.spec.datatype, self.map.word_order, slot.scale, slot.offset_eu
                    )
            flat_words[Table.INPUT_REGISTER][plan.status_flat] = status
        words[Table.INPUT_REGISTER][:, HEARTBEAT_ADDRESS] = image.scan_count & 0xFFFF
        # Reference swaps are atomic for readers on other threads or in between awaits.
        self.words, self.bits = words, bits
        self.scan_count = image.scan_count

    def _plan(self, index: int, group: GroupImage) -> _GroupPlan:
        while len(self._plans) <= index:
            self._plans.append(None)
        plan = self._plans[index]
        if plan is not None and (plan.asset_ids is group.asset_ids or plan.asset_ids == group.asset_ids):
            return plan
        plan = self._build_plan(group)
        self._plans[index] = plan
        return plan

    def _build_plan(self, group: GroupImage) -> _GroupPlan:
        rows: list[int] = []
        flat_base: list[int] = []
        for row, asset_id in enumerate(group.asset_ids):
            block = self._by_id.get(asset_id)
            if block is None:
                continue  # an asset the config does not place on this PLC: not served
            if block.model.type_name != group.model.type_name:
                raise ValueError(
                    f"asset {asset_id} is a {group.model.type_name} on the PLC but a "
                    f"{block.model.type_name} in the register map"
                )
            rows.append(row)
            flat_base.append(self.unit_index[block.unit_id] * ADDRESS_SPACE + block.base)
        base = np.asarray(flat_base, dtype=np.int64).reshape(-1, 1)
        columns = tuple(
            _ColumnPlan(slot, base + slot.offset + np.arange(slot.count, dtype=np.int64))
            for slot in type_layout(type(group.model)).tags
        )
        status_flat = base + np.arange(STATUS_REGISTERS, dtype=np.int64)
        return _GroupPlan(group.asset_ids, np.asarray(rows, dtype=np.int64), columns, status_flat)

