"""Load the plant's tag catalogue (``twinedge registers --format json``) into typed models.

The catalogue is the only thing the gateway shares with the plant (ARCHITECTURE.md: "gateway never
imports devices"), so these models are the gateway's own reading of the format, not an import.
Unknown keys are ignored, unlike config files: the format may grow fields a given gateway does not
use yet, and an older gateway must keep loading a newer catalogue of the same major version.
Every error names the file and the key path, e.g.
``plant.json: plcs[0].assets[1].tags[2].modbus.count = 1: float32 needs 2 register(s)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.common.configfile import ConfigError, format_path, read_text, validation_lines
from gateway.sources.modbus_codec import Datatype, WordOrder, register_count
from gateway.sources.modbus_planner import BIT_TABLES, Table

FORMAT = "twinedge-catalogue"
SUPPORTED_VERSION = 1


class CatalogueModel(BaseModel):
    """Base: unknown keys are dropped (forward compatibility), instances are immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class OpcUaTagAddress(CatalogueModel):
    browse_path: tuple[str, ...] = Field(min_length=1)


class ModbusTagAddress(CatalogueModel):
    table: Table
    address: int = Field(ge=0, le=0xFFFF)
    count: int = Field(default=1, ge=1, le=125)
    scale: float = 1.0
    offset: float = 0.0


class CatalogueTag(CatalogueModel):
    key: str = Field(min_length=1)
    datatype: Datatype
    kind: str = ""
    unit: str | None = None
    unit_symbol: str | None = None
    eu_range: tuple[float, float] | None = None
    access: Literal["ro", "rw"] = "ro"
    description: str = ""
    enum_strings: tuple[str, ...] = ()
    opcua: OpcUaTagAddress | None = None
    modbus: ModbusTagAddress | None = None


class CommandModbus(CatalogueModel):
    table: Table = "coil"
    address: int = Field(ge=0, le=0xFFFF)


class CatalogueCommand(CatalogueModel):
    name: str
    description: str = ""
    args: tuple[Any, ...] = ()
    modbus: CommandModbus | None = None


class CatalogueAsset(CatalogueModel):
    id: str = Field(min_length=1)
    type: str = ""
    # The Modbus unit the asset's registers answer on; None means the PLC's own unit id.
    unit_id: int | None = Field(default=None, ge=0, le=255)
    status_register: dict[str, Any] | None = None  # opaque: shape owned by the plant
    tags: tuple[CatalogueTag, ...] = ()
    commands: tuple[CatalogueCommand, ...] = ()


class PlcOpcUa(CatalogueModel):
    endpoint: str = Field(pattern=r"^opc\.tcp://")
    namespace_uri: str = Field(min_length=1)


class Heartbeat(CatalogueModel):
    table: Table = "input_register"
    address: int = Field(ge=0, le=0xFFFF)


class PlcModbus(CatalogueModel):
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    word_order: WordOrder = "ABCD"
    heartbeat: Heartbeat | None = None


class CataloguePlc(CatalogueModel):
    id: str = Field(min_length=1)
    site: str = ""
    area: str = ""
    opcua: PlcOpcUa | None = None
    modbus: PlcModbus | None = None
    assets: tuple[CatalogueAsset, ...] = ()

    def unit_of(self, asset: CatalogueAsset) -> int:
        if asset.unit_id is not None:
            return asset.unit_id
        return self.modbus.unit_id if self.modbus is not None else 1


class Catalogue(CatalogueModel):
    format: Literal["twinedge-catalogue"]
    version: int
    plant: str = ""
    plcs: tuple[CataloguePlc, ...] = ()

    def plc(self, plc_id: str) -> CataloguePlc:
        for plc in self.plcs:
            if plc.id == plc_id:
                return plc
        raise KeyError(plc_id)


class CatalogueError(ConfigError):
    """Every problem found in one catalogue file, one line each."""


def _check(catalogue: Catalogue) -> Iterator[tuple[tuple[str | int, ...], Any, str]]:
    """Cross-field rules pydantic cannot express per field."""
    if catalogue.version != SUPPORTED_VERSION:
        yield ("version",), catalogue.version, f"unsupported version (this gateway reads {SUPPORTED_VERSION})"
    seen_plcs: set[str] = set()
    for p, plc in enumerate(catalogue.plcs):
        if plc.id in seen_plcs:
            yield ("plcs", p, "id"), plc.id, "duplicate PLC id"
        seen_plcs.add(plc.id)
        seen_assets: set[str] = set()
        for a, asset in enumerate(plc.assets):
            if asset.id in seen_assets:
                yield ("plcs", p, "assets", a, "id"), asset.id, "duplicate asset id"
            seen_assets.add(asset.id)
            seen_tags: set[str] = set()
            for t, tag in enumerate(asset.tags):
                where: tuple[str | int, ...] = ("plcs", p, "assets", a, "tags", t)
                if tag.key in seen_tags:
                    yield (*where, "key"), tag.key, "duplicate tag key"
                seen_tags.add(tag.key)
                if tag.modbus is None:
                    continue
                if plc.modbus is None:
                    yield (*where, "modbus"), "...", "tag has a Modbus address but the PLC has no modbus"
                bits = tag.modbus.table in BIT_TABLES
                if bits and tag.datatype != "bool":
                    yield (*where, "datatype"), tag.datatype, f"a {tag.modbus.table} holds only bool"
                elif bits and tag.modbus.count != 1:
                    yield (*where, "modbus", "count"), tag.modbus.count, "bool needs 1 bit"
                elif not bits and tag.modbus.count != register_count(tag.datatype, tag.modbus.count):
                    need = register_count(tag.datatype)
                    yield (
                        (*where, "modbus", "count"),
                        tag.modbus.count,
                        f"{tag.datatype} needs {need} register(s)",
                    )
                if tag.modbus.address + tag.modbus.count > 0x10000:
                    yield (*where, "modbus", "address"), tag.modbus.address, "runs past address 65535"


def parse_catalogue(data: Any, name: str = "<catalogue>") -> Catalogue:
    """Validate already-parsed JSON; ``name`` prefixes every error line."""
    try:
        catalogue = Catalogue.model_validate(data)
    except ValidationError as exc:
        raise CatalogueError(validation_lines(exc, lambda loc: f"{name}: {format_path(loc)}")) from None
    problems = [f"{name}: {format_path(path)} = {value!r}: {msg}" for path, value, msg in _check(catalogue)]
    if problems:
        raise CatalogueError(problems)
    return catalogue


def load_catalogue(path: Path | str) -> Catalogue:
    """Read and validate a catalogue file; raise CatalogueError naming the file and key."""
    path = Path(path)
    try:
        data = json.loads(read_text(path, CatalogueError))
    except json.JSONDecodeError as exc:
        raise CatalogueError([f"{path}:{exc.lineno}:{exc.colno}: JSON syntax error: {exc.msg}"]) from None
    if isinstance(data, dict) and data.get("format") != FORMAT:
        raise CatalogueError([f"{path}: format = {data.get('format')!r}: expected {FORMAT!r}"])
    return parse_catalogue(data, str(path))
