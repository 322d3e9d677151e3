"""Config models, the example file and the catalogue loader: errors name the file and the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.catalogue import CatalogueError, load_catalogue
from gateway.common.configfile import ConfigError, StrictModel, load_config
from gateway.sources import ModbusSource, ModbusSourceConfig, OpcUaSource, OpcUaSourceConfig, build_source
from gateway.sources.config import SourceConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "examples" / "third-party-modbus.yaml"


class SourcesFile(StrictModel):
    sources: list[SourceConfig]


def test_example_third_party_modbus_validates_and_plans_one_request_for_its_block() -> None:
    config = load_config(EXAMPLE, SourcesFile)
    (source_config,) = config.sources
    assert isinstance(source_config, ModbusSourceConfig)
    source = build_source(source_config)  # constructors do no I/O: the host does not exist
    assert isinstance(source, ModbusSource)
    tables = [r.table for r in source.plan]
    assert tables.count("input_register") == 1


def test_unknown_keys_and_bad_values_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "sources:\n"
        "  - {name: m, protocol: modbus, host: h, tags: [{asset: a, key: k, table: coil, address: 0,"
        " datatype: bool}], colour: red}\n"
        "  - {name: o, protocol: opcua, endpoint: 'opc.tcp://x:4840', interval_ms: 1,"
        " tags: [{asset: a, key: k, node_id: 'ns=2;i=5'}]}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, SourcesFile)
    text = str(info.value)
    assert f"{path}: sources[0].modbus.colour" in text
    assert "unknown key" in text
    assert f"{path}: sources[1].opcua.interval_ms = 1" in text


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (ModbusSourceConfig, {"name": "m"}, "either plc"),
        (
            ModbusSourceConfig,
            {
                "name": "m",
                "plc": "p",
                "tags": [{"asset": "a", "key": "k", "table": "coil", "address": 0, "datatype": "bool"}],
            },
            "exclusive",
        ),
        (
            ModbusSourceConfig,
            {
                "name": "m",
                "host": "h",
                "tags": [{"asset": "a", "key": "k", "table": "coil", "address": 0, "datatype": "float32"}],
            },
            "only bool",
        ),
        (
            ModbusSourceConfig,
            {
                "name": "m",
                "host": "h",
                "tags": [
                    {"asset": "a", "key": "k", "table": "input_register", "address": 0, "datatype": "string"}
                ],
            },
            "count",
        ),
        (
            OpcUaSourceConfig,
            {
                "name": "o",
                "endpoint": "opc.tcp://h:1",
                "tags": [{"asset": "a", "key": "k", "browse_path": ["x"]}],
            },
            "namespace_uri",
        ),
        (OpcUaSourceConfig, {"name": "o", "plc": "p", "username": "u"}, "username and password"),
        (
            OpcUaSourceConfig,
            {"name": "o", "plc": "p", "security": {"policy": "Basic256Sha256", "mode": "Sign"}},
            "certificate",
        ),
    ],
)
def test_config_rules(model: Any, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate(data)


def test_opcua_source_from_hand_listed_config() -> None:
    cfg = OpcUaSourceConfig.model_validate(
        {
            "name": "o",
            "endpoint": "opc.tcp://h:4840",
            "tags": [{"asset": "a", "key": "k", "node_id": "ns=2;i=5"}],
        }
    )
    assert isinstance(build_source(cfg), OpcUaSource)
    assert cfg.mode == "subscribe"  # subscriptions by default (issue 6)
    assert cfg.interval_ms == 1000


def _catalogue(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(doc))
    return path


GOOD_DOC: dict[str, Any] = {
    "format": "twinedge-catalogue",
    "version": 1,
    "plant": "p",
    "new_top_level": 1,
    "plcs": [
        {
            "id": "plc1",
            "site": "s",
            "area": "a",
            "extra": "ignored",
            "opcua": {"endpoint": "opc.tcp://h:4840", "namespace_uri": "urn:twinedge:plant"},
            "modbus": {
                "host": "h",
                "port": 5020,
                "unit_id": 1,
                "word_order": "ABCD",
                "heartbeat": {"table": "input_register", "address": 100},
            },
            "assets": [
                {
                    "id": "c1",
                    "type": "conveyor",
                    "unit_id": 1,
                    "status_register": {"table": "input_register", "address": 101},
                    "tags": [
                        {
                            "key": "t",
                            "datatype": "float32",
                            "kind": "analog",
                            "unit": "CEL",
                            "unit_symbol": "°C",
                            "eu_range": [-20, 150],
                            "access": "ro",
                            "description": "",
                            "enum_strings": [],
                            "new_tag_field": [1],
                            "opcua": {"browse_path": ["s", "a", "plc1", "c1", "t"]},
                            "modbus": {
                                "table": "input_register",
                                "address": 0,
                                "count": 2,
                                "scale": 1.0,
                                "offset": 0.0,
                            },
                        }
                    ],
                    "commands": [
                        {
                            "name": "reset",
                            "description": "",
                            "args": [],
                            "modbus": {"table": "coil", "address": 3},
                        }
                    ],
                }
            ],
        }
    ],
}


def test_catalogue_loads_and_ignores_unknown_keys(tmp_path: Path) -> None:
    catalogue = load_catalogue(_catalogue(tmp_path, GOOD_DOC))
    plc = catalogue.plc("plc1")
    assert plc.assets[0].tags[0].eu_range == (-20.0, 150.0)
    assert plc.unit_of(plc.assets[0]) == 1
    source = build_source(ModbusSourceConfig(name="x", plc="plc1"), catalogue)
    assert isinstance(source, ModbusSource)


def test_catalogue_errors_name_file_and_key(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(GOOD_DOC))
    tag = doc["plcs"][0]["assets"][0]["tags"][0]
    tag["modbus"]["count"] = 1
    doc["plcs"][0]["assets"][0]["tags"].append(dict(tag, key="t", datatype="weird"))
    path = _catalogue(tmp_path, doc)
    with pytest.raises(CatalogueError) as info:
        load_catalogue(path)
    assert f"{path}: plcs[0].assets[0].tags[1].datatype = 'weird'" in str(info.value)

    doc["plcs"][0]["assets"][0]["tags"].pop()
    with pytest.raises(CatalogueError, match=r"tags\[0\]\.modbus\.count = 1: float32 needs 2"):
        load_catalogue(_catalogue(tmp_path, doc))

    with pytest.raises(CatalogueError, match="format"):
        load_catalogue(_catalogue(tmp_path, {"format": "other"}))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CatalogueError, match="JSON syntax"):
        load_catalogue(tmp_path / "bad.json")
