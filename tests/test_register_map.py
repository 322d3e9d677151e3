"""The register map is derived from tag tables, deterministically, with stable per-asset blocks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from devices.assets.base import Array, AssetModel, State
from devices.assets.conveyor import Conveyor
from devices.catalogue import build_catalogue
from devices.config import PlantConfig, load_plant_config
from devices.modbus.register_map import (
    ASSETS_PER_UNIT,
    BLOCK_STRIDE,
    STATUS_REGISTERS,
    RegisterMapError,
    Table,
    build_register_map,
    type_layout,
)
from devices.registers_cli import render_registers
from devices.tags import Access, CommandSpec, DataType, TagKind, TagSpec

ROOT = Path(__file__).resolve().parent.parent


class _Base(AssetModel):
    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        return {spec.key: np.zeros(count) for spec in self.tags}

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        return state

    def outputs(self, state: State) -> Mapping[str, Array]:
        return {spec.key: state[spec.key] for spec in self.tags}


class Pump(_Base):
    type_name: ClassVar[str] = "pump"
    tags: ClassVar[tuple[TagSpec, ...]] = (
        TagSpec("flow", DataType.FLOAT32, TagKind.MEASUREMENT, "Flow", unit="L2"),
        TagSpec("speed", DataType.INT16, TagKind.MEASUREMENT, "Speed", unit="RPM", scale=10.0),
        TagSpec("state", DataType.ENUM, TagKind.STATE, "State", enum_strings=("off", "on")),
        TagSpec("dry_run", DataType.BOOL, TagKind.ALARM, "Dry run"),
        TagSpec("enabled", DataType.BOOL, TagKind.SETPOINT, "Enabled", access=Access.RW),
        TagSpec("target", DataType.UINT32, TagKind.SETPOINT, "Target", access=Access.RW),
        TagSpec("serial", DataType.STRING, TagKind.STATE, "Serial number", string_length=11),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (CommandSpec("prime", "Prime the pump"),)


class PumpWithMoreTags(Pump):
    tags: ClassVar[tuple[TagSpec, ...]] = (
        *Pump.tags,
        TagSpec("pressure", DataType.FLOAT32, TagKind.MEASUREMENT, "Pressure", unit="BAR"),
        TagSpec("flush", DataType.BOOL, TagKind.SETPOINT, "Flush valve", access=Access.RW),
    )


def test_layout_follows_the_rules() -> None:
    layout = type_layout(Pump)
    where = {slot.spec.key: (slot.table, slot.offset, slot.count) for slot in layout.tags}
    assert where == {
        "flow": (Table.INPUT_REGISTER, STATUS_REGISTERS, 2),  # after the status bitfield
        "speed": (Table.INPUT_REGISTER, STATUS_REGISTERS + 2, 1),
        "state": (Table.INPUT_REGISTER, STATUS_REGISTERS + 3, 1),
        "dry_run": (Table.DISCRETE_INPUT, 0, 1),
        "enabled": (Table.COIL, 0, 1),
        "target": (Table.HOLDING_REGISTER, 0, 2),
        "serial": (Table.INPUT_REGISTER, STATUS_REGISTERS + 4, 6),  # 11 chars, 2 per register
    }
    assert [(c.spec.name, c.offset) for c in layout.commands] == [("prime", 50)]
    assert [slot.status_bit for slot in layout.tags] == list(range(len(Pump.tags)))


def test_blocks_per_asset_and_the_plc_block() -> None:
    rmap = build_register_map("p", [("c1", Conveyor), ("p1", Pump), ("c2", Conveyor)])
    assert [block.base for block in rmap.assets] == [100, 200, 300]
    assert rmap.asset("p1").address("flow") == (Table.INPUT_REGISTER, 204, 2)
    assert rmap.asset("c2").address("speed_setpoint") == (Table.HOLDING_REGISTER, 300, 2)
    for point in rmap.points():
        # A block fits one 125-register read and no value straddles two blocks.
        block_start = point.asset.base
        assert block_start <= point.address
        assert point.address + point.slot.count <= block_start + BLOCK_STRIDE <= block_start + 125


def test_adding_a_tag_to_a_type_does_not_move_other_assets() -> None:
    before = build_register_map("p", [("c1", Conveyor), ("p1", Pump), ("c2", Conveyor)])
    after = build_register_map("p", [("c1", Conveyor), ("p1", PumpWithMoreTags), ("c2", Conveyor)])
    for asset_id in ("c1", "c2"):
        keys = [spec.key for spec in Conveyor.tags]
        assert [before.asset(asset_id).address(k) for k in keys] == [
            after.asset(asset_id).address(k) for k in keys
        ]
    # Appending keeps the type's own existing addresses, command coils included.
    for spec in Pump.tags:
        assert before.asset("p1").address(spec.key) == after.asset("p1").address(spec.key)
    assert type_layout(PumpWithMoreTags).commands[0].offset == 50


def test_units_overflow_and_unit_per_asset() -> None:
    assets = [(f"c{i}", Conveyor) for i in range(ASSETS_PER_UNIT + 2)]
    rmap = build_register_map("p", assets, unit_id=5)
    assert rmap.unit_ids == (5, 6)
    last_in_unit = rmap.assets[ASSETS_PER_UNIT - 1]
    assert (last_in_unit.unit_id, last_in_unit.base + BLOCK_STRIDE - 1) == (5, 65499)
    assert (rmap.assets[ASSETS_PER_UNIT].unit_id, rmap.assets[ASSETS_PER_UNIT].base) == (6, 100)

    per_asset = build_register_map("p", assets[:3], unit_id=10, unit_per_asset=True)
    assert [(b.unit_id, b.base) for b in per_asset.assets] == [(10, 100), (11, 100), (12, 100)]
    with pytest.raises(RegisterMapError, match="unit id 248"):
        build_register_map("p", assets[:3], unit_id=246, unit_per_asset=True)


def test_types_that_do_not_fit_are_refused() -> None:
    class Huge(_Base):
        type_name: ClassVar[str] = "huge"
        tags: ClassVar[tuple[TagSpec, ...]] = tuple(
            TagSpec(f"t{i}", DataType.FLOAT32, TagKind.MEASUREMENT, "x") for i in range(50)
        )

    with pytest.raises(RegisterMapError, match="huge: 104 input_register addresses"):
        type_layout(Huge)
    with pytest.raises(RegisterMapError, match="twice"):
        build_register_map("p", [("a", Conveyor), ("a", Conveyor)])


def _plant() -> PlantConfig:
    return load_plant_config(ROOT / "config" / "plant.yaml")


def test_catalogue_schema_and_determinism() -> None:
    config = _plant()
    catalogue = build_catalogue(config)
    assert json.dumps(catalogue) == json.dumps(build_catalogue(config))
    assert (catalogue["format"], catalogue["version"]) == ("twinedge-catalogue", 1)
    plc = catalogue["plcs"][0]
    assert set(plc) == {"id", "site", "area", "opcua", "modbus", "assets"}
    assert plc["opcua"] == {
        "endpoint": f"opc.tcp://{config.plant.endpoint_host}:4840",
        "namespace_uri": "urn:twinedge:plant",
    }
    assert plc["modbus"]["heartbeat"] == {"table": "input_register", "address": 0}
    asset = plc["assets"][0]
    assert set(asset) == {"id", "type", "unit_id", "status_register", "tags", "commands"}
    tag = asset["tags"][0]
    assert set(tag) == {
        "key",
        "datatype",
        "kind",
        "unit",
        "unit_symbol",
        "eu_range",
        "access",
        "description",
        "enum_strings",
        "opcua",
        "modbus",
    }
    assert tag["opcua"]["browse_path"] == [
        "factory",
        "machine-shop",
        "plc-shop-1",
        "conveyor-01",
        "belt_speed",
    ]
    assert tag["modbus"] == {
        "table": "input_register",
        "address": 104,
        "count": 2,
        "scale": 1.0,
        "offset": 0.0,
    }
    assert asset["commands"][0] == {
        "name": "start",
        "description": "Start the drive",
        "args": [],
        "modbus": {"table": "coil", "address": 150},
    }
    one_plc = json.loads(render_registers(config, "plc-shop-1", "json"))
    assert one_plc["plcs"] == [plc]


def test_catalogue_nulls_for_disabled_endpoints() -> None:
    data = _plant().model_dump()
    data["sites"][0]["areas"][0]["plcs"][0]["modbus"]["enabled"] = False
    data["sites"][0]["areas"][0]["plcs"][0]["opcua"]["enabled"] = False
    plc = build_catalogue(PlantConfig.model_validate(data))["plcs"][0]
    assert plc["opcua"] is None
    assert plc["modbus"] is None
    assert plc["assets"][0]["tags"][0]["modbus"] is None


def test_csv_has_a_row_per_point() -> None:
    config = _plant()
    lines = render_registers(config, None, "csv").splitlines()
    assert lines[0].startswith("plc,unit_id,asset,name,table,address")
    plcs = build_catalogue(config)["plcs"]
    # per PLC a heartbeat; per asset its status register, its tags and its command coils
    points = sum(
        1 + sum(1 + len(a["tags"]) + sum(c["modbus"] is not None for c in a["commands"]) for a in plc["assets"])
        for plc in plcs
    )
    assert len(lines) == 1 + points
    with pytest.raises(KeyError):
        render_registers(_plant(), "nope", "csv")


def test_docs_registers_md_is_current() -> None:
    expected = render_registers(_plant(), None, "md")
    path = ROOT / "docs" / "registers.md"
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    assert current == expected, "docs/registers.md is stale: regenerate it with `make registers-doc`"


def test_every_registered_asset_type_fits_and_encodes() -> None:
    """Guards asset-type authors: each registered type fits its block and its image encodes."""
    from devices.assets.registry import ASSET_TYPES
    from devices.clock import VirtualClock
    from devices.modbus.image import RegisterImage
    from devices.modbus.protocol import RequestHandler
    from devices.plc import AssetGroup, Plc

    assets = [(f"{name}-1", model) for name, model in sorted(ASSET_TYPES.items())]
    rmap = build_register_map("all", assets)
    groups = [AssetGroup(model(), (asset_id,)) for asset_id, model in assets]
    plc = Plc("all", groups, VirtualClock())
    image = RegisterImage(rmap)
    image.update(plc.scan())
    handler = RequestHandler(lambda: image, plc)
    for block in rmap.assets:
        used = max(s.offset + s.count for s in block.layout.tags if s.table is Table.INPUT_REGISTER)
        response = handler.handle(1, bytes([4]) + block.base.to_bytes(2, "big") + used.to_bytes(2, "big"))
        assert response[0] == 4, (block.model.type_name, response.hex())
