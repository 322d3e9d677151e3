"""The tag catalogue: every PLC, asset, tag and command of the plant with its OPC UA browse path and
Modbus address, derived from the config and the asset types' tag tables.

It is the one file the gateway loads (``twinedge registers --format json``); the gateway never
imports ``devices``. Deterministic: the same config gives the same bytes (no timestamps, config
order throughout), so generated docs can be checked current by a test.
"""

from __future__ import annotations

from typing import Any

from devices.config import PlantConfig, PlcConfig
from devices.modbus.config import ModbusOptions
from devices.modbus.register_map import STATUS_REGISTERS, AssetBlock, Table, register_map_for
from devices.tags import ArgSpec, TagSpec
from devices.units import unit_for

CATALOGUE_FORMAT = "twinedge-catalogue"
CATALOGUE_VERSION = 1
NAMESPACE_URI = "urn:twinedge:plant"

Json = dict[str, Any]


def build_catalogue(config: PlantConfig) -> Json:
    """The catalogue as a JSON-ready dict (schema: version 1, see docs/registers.md)."""
    plcs = [_plc(config, site.id, area.id, plc) for _path, site, area, plc in config.placed_plcs()]
    return {
        "format": CATALOGUE_FORMAT,
        "version": CATALOGUE_VERSION,
        "plant": config.plant.name,
        "plcs": plcs,
    }


def _plc(config: PlantConfig, site: str, area: str, plc: PlcConfig) -> Json:
    host = config.plant.endpoint_host
    register_map = register_map_for(plc, config.plant.scale)
    modbus_on = plc.modbus.enabled
    options = ModbusOptions.from_endpoint(plc.modbus)
    opcua = (
        {"endpoint": f"opc.tcp://{host}:{plc.opcua.port}", "namespace_uri": NAMESPACE_URI}
        if plc.opcua.enabled
        else None
    )
    modbus = (
        {
            "host": host,
            "port": options.port,
            "unit_id": options.unit_id,
            "word_order": options.word_order,
            "heartbeat": {"table": Table.INPUT_REGISTER.value, "address": 0},
        }
        if modbus_on
        else None
    )
    return {
        "id": plc.id,
        "site": site,
        "area": area,
        "opcua": opcua,
        "modbus": modbus,
        "assets": [_asset(block, (site, area, plc.id), modbus_on) for block in register_map.assets],
    }


def _asset(block: AssetBlock, path: tuple[str, str, str], modbus_on: bool) -> Json:
    layout = block.layout
    status = {
        "table": Table.INPUT_REGISTER.value,
        "address": block.status_address,
        "count": STATUS_REGISTERS,
        # bit i of the bitfield = register address + i // 16, bit i % 16 (LSB first); set = Bad.
        "bits": {slot.spec.key: slot.status_bit for slot in layout.tags},
    }
    tags = []
    for slot in layout.tags:
        entry = _tag(slot.spec)
        entry["opcua"] = {"browse_path": [*path, block.asset_id, slot.spec.key]}
        entry["modbus"] = (
            {
                "table": slot.table.value,
                "address": block.base + slot.offset,
                "count": slot.count,
                "scale": float(slot.scale),
                "offset": float(slot.offset_eu),
            }
            if modbus_on
            else None
        )
        tags.append(entry)
    commands = [
        {
            "name": command.spec.name,
            "description": command.spec.description,
            "args": [_arg(arg) for arg in command.spec.args],
            "modbus": (
                {"table": Table.COIL.value, "address": block.base + command.offset}
                if modbus_on and command.offset is not None
                else None
            ),
        }
        for command in layout.commands
    ]
    return {
        "id": block.asset_id,
        "type": block.model.type_name,
        "unit_id": block.unit_id if modbus_on else None,
        "status_register": status if modbus_on else None,
        "tags": tags,
        "commands": commands,
    }


def _tag(spec: TagSpec) -> Json:
    return {
        "key": spec.key,
        "datatype": spec.datatype.value,
        "kind": spec.kind.value,
        "unit": spec.unit,
        "unit_symbol": unit_for(spec.unit).symbol if spec.unit else None,
        "eu_range": _range(spec.eu_range),
        "access": spec.access.value,
        "description": spec.description,
        "enum_strings": list(spec.enum_strings),
    }


def _arg(arg: ArgSpec) -> Json:
    return {
        "name": arg.name,
        "datatype": arg.datatype.value,
        "description": arg.description,
        "eu_range": _range(arg.eu_range),
        "enum_strings": list(arg.enum_strings),
    }


def _range(eu_range: tuple[float, float] | None) -> list[float] | None:
    return None if eu_range is None else [float(eu_range[0]), float(eu_range[1])]
