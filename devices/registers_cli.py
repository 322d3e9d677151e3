"""``twinedge registers``: the register map / tag catalogue of the plant as Markdown, CSV or JSON.

``docs/registers.md`` is the Markdown form for config/plant.yaml (``make registers-doc``); a test
keeps it current. The JSON form is the catalogue the gateway loads (devices/catalogue.py).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from devices.catalogue import build_catalogue
from devices.config import PlantConfig, PlcConfig
from devices.modbus.config import ModbusOptions
from devices.modbus.register_map import (
    ASSETS_PER_UNIT,
    BLOCK_STRIDE,
    COMMAND_COIL_OFFSET,
    HEARTBEAT_ADDRESS,
    STATUS_REGISTERS,
    Table,
    register_map_for,
)
from devices.tags import DataType

Format = Literal["md", "csv", "json"]


@dataclass(frozen=True)
class Row:
    table: Table
    address: int
    count: int
    unit_id: int
    asset: str
    name: str
    datatype: str
    word_order: str
    scale: str
    offset: str
    unit: str
    range: str
    access: str
    description: str
    status_bit: str = ""

    @property
    def addresses(self) -> str:
        last = self.address + self.count - 1
        return str(self.address) if self.count == 1 else f"{self.address}–{last}"

    @property
    def details(self) -> tuple[str, ...]:
        """The columns every format shows after the address: type, encoding, unit, range, access."""
        return (self.datatype, self.word_order, self.scale, self.offset, self.unit, self.range, self.access,
                self.status_bit, self.description)

    @property
    def numbers(self) -> str:
        first = self.table.number(self.address)
        return first if self.count == 1 else f"{first}–{self.table.number(self.address + self.count - 1)}"


def render_registers(config: PlantConfig, plc_id: str | None, fmt: Format) -> str:
    """Render the map of one PLC (``plc_id``) or of every PLC; raises KeyError for an unknown id."""
    plcs = [plc for _path, _site, _area, plc in config.placed_plcs() if plc_id is None or plc.id == plc_id]
    if plc_id is not None and not plcs:
        raise KeyError(f"no PLC {plc_id!r} in the plant config")
    if fmt == "json":
        catalogue = build_catalogue(config)
        catalogue["plcs"] = [entry for entry in catalogue["plcs"] if plc_id is None or entry["id"] == plc_id]
        return json.dumps(catalogue, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return _csv(config, plcs)
    if fmt == "md":
        return _markdown(config, plcs)
    raise ValueError(f"unknown format {fmt!r} (md, csv, json)")


def rows(plc: PlcConfig, scale: int) -> Iterator[Row]:
    """Every mapped point of one PLC, in address order per asset: heartbeat, status, tags, commands."""
    register_map = register_map_for(plc, scale)
    word_order = register_map.word_order
    swapped = word_order in ("BADC", "DCBA")
    for unit_id in register_map.unit_ids:
        yield Row(
            Table.INPUT_REGISTER,
            HEARTBEAT_ADDRESS,
            1,
            unit_id,
            "",
            "heartbeat",
            "uint16",
            "–",
            "1",
            "0",
            "",
            "0..65535, wraps",
            "ro",
            "Scan counter modulo 65536, +1 per PLC scan",
        )
    for block in register_map.assets:
        yield Row(
            Table.INPUT_REGISTER,
            block.status_address,
            STATUS_REGISTERS,
            block.unit_id,
            block.asset_id,
            "status",
            f"bitfield[{STATUS_REGISTERS * 16}]",
            "–",
            "1",
            "0",
            "",
            "",
            "ro",
            "Bit i set = the tag with status bit i has Bad quality",
        )
        for slot in block.layout.tags:
            spec = slot.spec
            if slot.table.is_bit or spec.datatype is DataType.STRING:
                order = "–"
            elif slot.count == 2:
                order = word_order
            else:
                order = "BA" if swapped else "AB"
            eu = "" if spec.eu_range is None else f"{spec.eu_range[0]:g}..{spec.eu_range[1]:g}"
            if spec.enum_strings:
                eu = ", ".join(f"{i}={text}" for i, text in enumerate(spec.enum_strings))
            datatype = (
                f"string[{spec.string_length}]" if spec.datatype is DataType.STRING else spec.datatype.value
            )
            yield Row(
                slot.table,
                block.base + slot.offset,
                slot.count,
                block.unit_id,
                block.asset_id,
                spec.key,
                datatype,
                order,
                f"{slot.scale:g}",
                f"{slot.offset_eu:g}",
                spec.unit or "",
                eu,
                spec.access.value,
                spec.description,
                str(slot.status_bit),
            )
        for command in block.layout.commands:
            if command.offset is None:
                continue
            yield Row(
                Table.COIL,
                block.base + command.offset,
                1,
                block.unit_id,
                block.asset_id,
                command.spec.name,
                "command",
                "–",
                "",
                "",
                "",
                "",
                "wo",
                f"{command.spec.description}: write ON to run; momentary, reads back 0",
            )


_CSV_HEADER = (
    "plc",
    "unit_id",
    "asset",
    "name",
    "table",
    "address",
    "count",
    "number",
    "datatype",
    "word_order",
    "scale",
    "offset",
    "unit",
    "range",
    "access",
    "status_bit",
    "description",
)


def _csv(config: PlantConfig, plcs: list[PlcConfig]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_HEADER)
    for plc in plcs:
        if not plc.modbus.enabled:
            continue
        for row in rows(plc, config.plant.scale):
            writer.writerow(
                (
                    plc.id,
                    row.unit_id,
                    row.asset,
                    row.name,
                    row.table.value,
                    row.address,
                    row.count,
                    row.table.number(row.address),
                    *row.details,
                )
            )
    return out.getvalue()


_RULES = f"""\
## How the map is built

The map is generated from the asset types' tag tables (`devices/modbus/register_map.py`); nobody
types an address. Addresses below are 0-based PDU addresses; the number column is the 1-based
Modicon number (holding register 0 = 40001). With `mbpoll` use `-0` for PDU addresses, and `-B`
for 32-bit values in ABCD order (mbpoll assumes CDAB).

- **Blocks.** Each table is cut into blocks of {BLOCK_STRIDE} addresses. Block 0 belongs to the PLC;
  asset *n* of a unit (0-based, config order) owns block *n* + 1: addresses
  {BLOCK_STRIDE}·(*n*+1) … {BLOCK_STRIDE}·(*n*+1)+{BLOCK_STRIDE - 1} in every table. One FC03/FC04 of up to
  125 registers reads a whole block, and a 32-bit value never straddles two blocks. Adding a tag to
  one asset type never moves another asset's addresses; tags appended to a type's table keep that
  type's existing addresses.
- **Tables.** Setpoints (and any writable tag) are holding registers, or coils when boolean.
  Measurements, counters, enum states are input registers; boolean states and alarms are discrete
  inputs. Command coils start at coil offset {COMMAND_COIL_OFFSET} of the block: writing ON queues the command
  (momentary, the coil always reads 0; OFF is accepted and does nothing).
- **Types.** float32, int32, uint32: 2 registers in the PLC's word order (ABCD: 123.456 =
  0x42F6 0xE979; CDAB swaps the words; BADC and DCBA also swap the bytes of every register,
  16-bit values included). int16, uint16, enum: 1 register. Strings: 2 ASCII characters per
  register, first in the high byte, NUL padded. Integer tags are scaled: engineering = raw × scale
  + offset.
- **Units.** A PLC answers on its unit id (0 and 255 are accepted as aliases). Each unit holds
  {ASSETS_PER_UNIT} asset blocks; further assets continue on the next unit id. With `unit_per_asset` asset *n*
  answers on unit_id + *n* in block 1. Every unit serves the heartbeat.

## Heartbeat, status bits and fault values

- **Heartbeat**: input register 0 counts PLC scans modulo 65536. A gateway that sees it frozen
  knows the PLC stopped scanning even though it still answers.
- **Status bitfield**: input registers 0–{STATUS_REGISTERS - 1} of each asset block. Bit *i*
  (register *i* div 16, bit *i* mod 16, least significant first) is set while the tag with status
  bit *i* (column Bit; declaration order) has Bad quality (OPC UA
  StatusCode severity Bad, e.g. BadSensorFailure). All bits are set until the first scan
  (BadWaitingForInitialData). Modbus has no status codes, so this is the only quality signal.
- **Fault value**: a faulted sensor reads the fault value given to `Plc.set_sensor_fault`; with
  the endpoint option `fault_value` set, every Bad tag reads that value instead. Integer registers
  saturate at their type's limits and read NaN as 0.

## Exception codes

| Code | When |
|---|---|
| 01 Illegal function | any function code other than 1, 2, 3, 4, 5, 6, 15, 16, 23 and 43/14 |
| 02 Illegal data address | an address outside the map, including a read that starts inside a \
block and runs past its last mapped address; a write covering part of a 32-bit value or string; \
**a write to a read-only tag** |
| 03 Illegal data value | quantity 0 or above the limit (2000 bits read, 1968 written; 125 \
registers read, 123 written, 121 for FC23's write); byte count mismatch; coil value other than \
0xFF00/0x0000; a setpoint outside its range or of the wrong type |
| 04 Server device failure | an internal error; or injected |
| 06 Server device busy | injected only |
| 0B Gateway target failed to respond | a unit id the PLC does not serve |

Accepted writes are queued and applied at the start of the PLC's next scan; read them back after
it (FC23 returns the registers as they were before its write).
"""


def _markdown(config: PlantConfig, plcs: list[PlcConfig]) -> str:
    lines = [
        f"# Modbus register map: plant `{config.plant.name}`",
        "",
        "Generated by `twinedge registers --format md` (`make registers-doc`); do not edit by hand.",
        "",
        _RULES,
    ]
    for plc in plcs:
        lines.append(f"## PLC `{plc.id}`")
        lines.append("")
        if not plc.modbus.enabled:
            lines += ["Modbus is disabled for this PLC.", ""]
            continue
        options = ModbusOptions.from_endpoint(plc.modbus)
        lines.append(f"Port {options.port}, unit id {options.unit_id}, word order {options.word_order}.")
        lines.append("")
        lines.append(
            "| Unit | Table | Address | Number | Asset | Name | Type | Order | Scale | Offset | Unit "
            "| Range | Access | Bit | Description |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for row in rows(plc, config.plant.scale):
            cells = (
                str(row.unit_id),
                row.table.value,
                row.addresses,
                row.numbers,
                row.asset,
                row.name,
                *row.details,
            )
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)
