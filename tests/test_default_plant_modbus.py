"""Every tag of the default plant, read over Modbus through its register map, equals the model's value.

The plant of config/plant.yaml is served in-process (ports replaced by free ones) and scanned by the
test; the gateway's own Modbus source reads each PLC from the generated catalogue, so the register
map, the server's encoding (every PLC's word order) and the gateway's decoding are checked together.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from devices.config import PlantConfig
from devices.plant import Plant
from gateway.catalogue import load_catalogue
from gateway.sources.config import ModbusSourceConfig
from gateway.sources.modbus import ModbusSource
from tests.fixtures.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def _default_plant(data_dir: Path) -> PlantConfig:
    raw: dict[str, Any] = yaml.safe_load((ROOT / "config" / "plant.yaml").read_text(encoding="utf-8"))
    raw["plant"].update({"data_dir": str(data_dir), "api_port": None, "start_time": "2026-01-01T00:00:00Z"})
    for site in raw["sites"]:
        for area in site["areas"]:
            for plc in area["plcs"]:
                plc["opcua"]["enabled"] = False  # this test is about the Modbus face
                plc["modbus"]["port"] = free_port()
    return PlantConfig.model_validate(raw)


async def test_every_tag_of_the_default_plant_reads_the_model_value(tmp_path: Path) -> None:
    plant = Plant(_default_plant(tmp_path), announce=lambda _line: None)
    async with plant.serving():
        for placed in plant.plcs:
            for _ in range(20):
                placed.plc.scan()
        catalogue = load_catalogue(tmp_path / "catalogue.json")
        checked = 0
        for placed in plant.plcs:
            image = placed.plc.image
            assert image is not None
            entry = catalogue.plc(placed.plc.plc_id)
            scales = {(a.id, t.key): t.modbus.scale for a in entry.assets for t in a.tags if t.modbus is not None}
            config = ModbusSourceConfig.model_validate({"name": placed.plc.plc_id, "plc": placed.plc.plc_id})
            async with ModbusSource(config, catalogue) as source:
                readings = await source.read()
            assert {(r.asset, r.tag) for r in readings} == set(scales), placed.plc.plc_id
            for reading in readings:
                expected, status = image.lookup(reading.asset, reading.tag)
                where = f"{placed.plc.plc_id}/{reading.asset}/{reading.tag}"
                assert reading.quality_name != "Bad" or status & 0x80000000, where
                assert isinstance(reading.value, bool | int | float), where
                # float32 on the wire; scaled integers are exact to half their scale step
                tolerance = max(abs(scales[(reading.asset, reading.tag)]) / 2, 1e-9)
                assert math.isclose(float(reading.value), expected, rel_tol=1e-6, abs_tol=tolerance), (
                    where, reading.value, expected)
                checked += 1
    assert checked > 500  # every tag of every asset of the four default PLCs
