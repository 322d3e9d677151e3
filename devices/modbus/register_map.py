"""The Modbus register map of a PLC, derived from its asset types' tag tables (never typed by hand).

Layout rules (also rendered into docs/registers.md by devices/registers_cli.py):

- Every table (coils, discrete inputs, input registers, holding registers) is cut into blocks of
  ``BLOCK_STRIDE`` = 100 addresses. Block 0 (addresses 0-99) belongs to the PLC itself; asset n of
  the unit (0-based, config order) owns block n + 1, i.e. addresses 100 * (n + 1) ... + 99 in each
  table. A block is at most 100 <= 125 registers, so one FC03/FC04 reads a whole asset
  (conventions §2.2, §2.6), and a value never straddles two blocks. Adding a tag to one asset type
  never moves another asset's addresses; appending it at the end of its type's tag table keeps that
  type's existing addresses too.
- Input register 0 is the heartbeat: the PLC's scan count modulo 2**16.
- Input registers 0-3 of each asset block are its status bitfield: bit i (register i // 16,
  bit i % 16, LSB first) is set while tag i of the asset type (declaration order) has Bad quality,
  and all bits are set until the first scan. Hence at most 64 tags per asset type.
- Table of a tag: setpoints (and any rw tag) go to holding registers, or coils when boolean;
  everything else to input registers, or discrete inputs when boolean. Command coils
  (CommandSpec.has_coil) start at coil offset 50 of the block, so bool setpoints added later never
  move them.
- Inside a block, values are packed in declaration order: float32/int32/uint32 take two registers,
  int16/uint16/enum one, strings ceil(length / 2).
- Units: a PLC answers on its ``unit_id``. It holds 654 asset blocks per unit (100 * 655 > 65535);
  asset 654 onwards continues on unit_id + 1 and so on. With ``unit_per_asset`` asset n answers on
  unit_id + n, in block 1. Unit ids stop at 247 (conventions §2.3).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from devices.assets.base import AssetModel
from devices.assets.registry import asset_type
from devices.config import PlcConfig
from devices.modbus.codec import WordOrder, register_count
from devices.modbus.config import ModbusOptions
from devices.tags import CommandSpec, DataType, TagKind, TagSpec

BLOCK_STRIDE = 100
HEARTBEAT_ADDRESS = 0
STATUS_REGISTERS = 4
MAX_TAGS_PER_ASSET = STATUS_REGISTERS * 16
COMMAND_COIL_OFFSET = 50
ADDRESS_SPACE = 65536
ASSETS_PER_UNIT = ADDRESS_SPACE // BLOCK_STRIDE - 1  # 654: block 655 would end past 65535
MAX_UNIT_ID = 247


class Table(StrEnum):
    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    INPUT_REGISTER = "input_register"
    HOLDING_REGISTER = "holding_register"

    @property
    def prefix(self) -> int:
        """The leading digit of the 1-based Modicon number (0xxxx, 1xxxx, 3xxxx, 4xxxx)."""
        return _PREFIX[self]

    @property
    def is_bit(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def writable(self) -> bool:
        return self in (Table.COIL, Table.HOLDING_REGISTER)

    def number(self, address: int) -> str:
        """1-based register number: holding register PDU address 0 is 40001 (conventions §2.1)."""
        one_based = address + 1
        digits = 4 if one_based <= 9999 else 5
        return f"{self.prefix}{one_based:0{digits}d}"


_PREFIX = {Table.COIL: 0, Table.DISCRETE_INPUT: 1, Table.INPUT_REGISTER: 3, Table.HOLDING_REGISTER: 4}
TABLES: tuple[Table, ...] = (Table.COIL, Table.DISCRETE_INPUT, Table.INPUT_REGISTER, Table.HOLDING_REGISTER)


class RegisterMapError(ValueError):
    """An asset type or PLC that does not fit the layout rules."""


def table_for(spec: TagSpec) -> Table:
    writable = spec.kind is TagKind.SETPOINT or spec.writable
    if spec.datatype is DataType.BOOL:
        return Table.COIL if writable else Table.DISCRETE_INPUT
    return Table.HOLDING_REGISTER if writable else Table.INPUT_REGISTER


@dataclass(frozen=True)
class TagSlot:
    """Where a tag of an asset type sits inside the asset's block."""

    spec: TagSpec
    table: Table
    offset: int
    count: int
    status_bit: int

    @property
    def scale(self) -> float:
        # tags.py: scale/offset apply to integer tags only.
        return self.spec.scale if self.spec.datatype in _SCALED else 1.0

    @property
    def offset_eu(self) -> float:
        return self.spec.offset if self.spec.datatype in _SCALED else 0.0


_SCALED = (DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32)


@dataclass(frozen=True)
class CommandSlot:
    spec: CommandSpec
    offset: int | None  # coil offset inside the block, None for commands with arguments


@dataclass(frozen=True)
class TypeLayout:
    """The block layout shared by every instance of one asset type."""

    type_name: str
    tags: tuple[TagSlot, ...]
    commands: tuple[CommandSlot, ...]

    def slot(self, key: str) -> TagSlot:
        for slot in self.tags:
            if slot.spec.key == key:
                return slot
        raise KeyError(f"{self.type_name} has no tag {key!r}")


@cache
def type_layout(model: type[AssetModel]) -> TypeLayout:
    """Lay out one asset type's block; raises RegisterMapError if it does not fit."""
    if len(model.tags) > MAX_TAGS_PER_ASSET:
        raise RegisterMapError(
            f"asset type {model.type_name}: {len(model.tags)} tags, the status bitfield holds "
            f"{MAX_TAGS_PER_ASSET}"
        )
    cursor = {Table.COIL: 0, Table.DISCRETE_INPUT: 0, Table.INPUT_REGISTER: STATUS_REGISTERS,
              Table.HOLDING_REGISTER: 0}
    slots = []
    for bit, spec in enumerate(model.tags):
        table = table_for(spec)
        count = 1 if table.is_bit else register_count(spec.datatype, spec.string_length)
        slots.append(TagSlot(spec, table, cursor[table], count, bit))
        cursor[table] += count
    limits = {**{table: BLOCK_STRIDE for table in TABLES}, Table.COIL: COMMAND_COIL_OFFSET}
    for table, used in cursor.items():
        if used > limits[table]:
            raise RegisterMapError(
                f"asset type {model.type_name}: {used} {table} addresses, a block holds {limits[table]}"
            )
    commands = []
    coil = COMMAND_COIL_OFFSET
    for command in model.commands:
        if command.has_coil:
            commands.append(CommandSlot(command, coil))
            coil += 1
        else:
            commands.append(CommandSlot(command, None))
    if coil > BLOCK_STRIDE:
        raise RegisterMapError(f"asset type {model.type_name}: more than 50 command coils")
    return TypeLayout(model.type_name, tuple(slots), tuple(commands))


@dataclass(frozen=True)
class AssetBlock:
    asset_id: str
    model: type[AssetModel]
    index: int  # position in the PLC, config order
    unit_id: int
    block: int  # block number inside its unit; addresses start at block * BLOCK_STRIDE

    @property
    def layout(self) -> TypeLayout:
        return type_layout(self.model)

    @property
    def base(self) -> int:
        return self.block * BLOCK_STRIDE

    @property
    def status_address(self) -> int:
        return self.base

    def address(self, key: str) -> tuple[Table, int, int]:
        """(table, 0-based address, count) of one tag."""
        slot = self.layout.slot(key)
        return slot.table, self.base + slot.offset, slot.count


@dataclass(frozen=True)
class TagPoint:
    """One tag of one asset, fully addressed: a row of the register map."""

    asset: AssetBlock
    slot: TagSlot

    @property
    def address(self) -> int:
        return self.asset.base + self.slot.offset


@dataclass(frozen=True)
class RegisterMap:
    plc_id: str
    word_order: WordOrder
    unit_id: int  # the PLC's own unit, the heartbeat's; every unit serves the heartbeat
    unit_ids: tuple[int, ...]
    assets: tuple[AssetBlock, ...]

    def asset(self, asset_id: str) -> AssetBlock:
        for block in self.assets:
            if block.asset_id == asset_id:
                return block
        raise KeyError(f"PLC {self.plc_id} has no asset {asset_id!r}")

    def points(self) -> Iterator[TagPoint]:
        for block in self.assets:
            for slot in block.layout.tags:
                yield TagPoint(block, slot)


def build_register_map(
    plc_id: str,
    assets: Sequence[tuple[str, type[AssetModel]]],
    *,
    unit_id: int = 1,
    word_order: WordOrder = "ABCD",
    unit_per_asset: bool = False,
) -> RegisterMap:
    """Place ``assets`` (id, type, in config order) into blocks and units. Pure and deterministic."""
    blocks = []
    seen: set[str] = set()
    for index, (asset_id, model) in enumerate(assets):
        if asset_id in seen:
            raise RegisterMapError(f"PLC {plc_id}: asset id {asset_id!r} appears twice")
        seen.add(asset_id)
        type_layout(model)  # fail early, naming the type
        if unit_per_asset:
            unit, block = unit_id + index, 1
        else:
            unit, block = unit_id + index // ASSETS_PER_UNIT, index % ASSETS_PER_UNIT + 1
        if unit > MAX_UNIT_ID:
            raise RegisterMapError(
                f"PLC {plc_id}: asset {asset_id} would need unit id {unit} (> {MAX_UNIT_ID}); "
                "lower unit_id or split the PLC"
            )
        blocks.append(AssetBlock(asset_id, model, index, unit, block))
    units = sorted({unit_id, *(block.unit_id for block in blocks)})
    return RegisterMap(plc_id, word_order, unit_id, tuple(units), tuple(blocks))


def plc_assets(plc: PlcConfig, scale: int) -> list[tuple[str, type[AssetModel]]]:
    """The PLC's asset instances in config order, each with its asset type."""
    return [
        (instance, asset_type(asset.type)) for asset in plc.assets for instance in asset.instance_ids(scale)
    ]


def register_map_for(plc: PlcConfig, scale: int = 1) -> RegisterMap:
    options = ModbusOptions.from_endpoint(plc.modbus)
    return build_register_map(
        plc.id,
        plc_assets(plc, scale),
        unit_id=options.unit_id,
        word_order=options.word_order,
        unit_per_asset=options.unit_per_asset,
    )
