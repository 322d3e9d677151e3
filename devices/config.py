"""The plant configuration (config/plant.yaml): sites, areas, PLCs with their endpoints, assets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from devices.assets.registry import ASSET_TYPES
from devices.opcua.config import OpcUaServerConfig
from devices.scenarios import ScenarioConfig
from gateway.common.configfile import ConfigIssue, EnvOverride, KeyPath, StrictModel, load_config

IDENT = r"^[a-z0-9][a-z0-9_-]*$"
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

PLANT_ENV_OVERRIDES = (
    EnvOverride("TWINEDGE_DATA_DIR", ("plant", "data_dir")),
    EnvOverride("TWINEDGE_BIND_HOST", ("plant", "bind_host")),
    EnvOverride("TWINEDGE_ADVERTISE_HOST", ("plant", "advertise_host")),
    EnvOverride("TWINEDGE_SPEED", ("plant", "speed")),
)


class ModbusEndpointConfig(StrictModel):
    enabled: bool = True
    port: int = Field(ge=1, le=65535)
    unit_id: int = Field(default=1, ge=1, le=247)
    word_order: WordOrder = "ABCD"
    unit_per_asset: bool = False  # give asset n its own unit id (unit_id + n), like a serial gateway
    fault_value: float | None = None  # what a Bad-quality tag reads; None keeps the sensor's fault value
    # Misbehaviour scheduled in plant time, e.g. {at: 30min, exception_code: 6, duration: 2min}.
    faults: list[ModbusFaultConfig] = Field(default_factory=list)


class AssetConfig(StrictModel):
    type: str
    id: str = Field(pattern=IDENT)
    count: int = Field(default=1, ge=1, le=100_000)
    name: str | None = None

    def instance_ids(self, scale: int) -> list[str]:
        """``count`` x plant scale instances: the id itself for one, ``<id>-01``.. for several."""
        total = self.count * scale
        if total == 1:
            return [self.id]
        width = max(2, len(str(total)))
        return [f"{self.id}-{n:0{width}d}" for n in range(1, total + 1)]


CouplingName = Literal["machine_shop", "mine"]


class PlcConfig(StrictModel):
    id: str = Field(pattern=IDENT)
    scan_period_ms: int = Field(default=100, ge=10, le=60_000)
    opcua: OpcUaServerConfig
    modbus: ModbusEndpointConfig
    assets: list[AssetConfig] = Field(min_length=1)
    # Flows between the PLC's asset types: machine_shop (a stopped conveyor starves mills and
    # lathes), mine (trucks -> crusher -> stockpile -> KPIs). See devices/assets/coupling.py.
    couplings: list[CouplingName] = Field(default_factory=list)
    # Faults scheduled in plant time, e.g. {at: 12d, kind: motor_failure, asset: hbw}.
    scenarios: list[ScenarioConfig] = Field(default_factory=list)


class AreaConfig(StrictModel):
    id: str = Field(pattern=IDENT)
    name: str | None = None
    plcs: list[PlcConfig] = Field(min_length=1)


class SiteConfig(StrictModel):
    id: str = Field(pattern=IDENT)
    name: str | None = None
    areas: list[AreaConfig] = Field(min_length=1)


class PlantSettings(StrictModel):
    name: str = "twinedge"
    seed: int = 42
    speed: float = Field(default=1.0, gt=0, le=10_000)
    start_time: datetime | None = None
    scale: int = Field(default=1, ge=1, le=10_000)
    data_dir: Path = Path("data")
    bind_host: str = "127.0.0.1"
    advertise_host: str | None = None
    # The plant control API (faults, scenarios, clock, forced tags: devices/control_api.py); None: off.
    api_port: int | None = Field(default=8090, ge=1, le=65535)

    @property
    def endpoint_host(self) -> str:
        """The host clients should use: ``advertise_host``, else the bind host (loopback for 0.0.0.0)."""
        if self.advertise_host:
            return self.advertise_host
        return "127.0.0.1" if self.bind_host in ("0.0.0.0", "::", "") else self.bind_host


class PlantConfig(StrictModel):
    plant: PlantSettings = PlantSettings()
    sites: list[SiteConfig] = Field(min_length=1)

    def placed_plcs(self) -> Iterator[tuple[KeyPath, SiteConfig, AreaConfig, PlcConfig]]:
        for s, site in enumerate(self.sites):
            for a, area in enumerate(site.areas):
                for p, plc in enumerate(area.plcs):
                    yield ("sites", s, "areas", a, "plcs", p), site, area, plc

    def check(self) -> list[ConfigIssue]:
        """Cross-field rules pydantic cannot see: unique ids and ports, known asset types."""
        issues: list[ConfigIssue] = []
        plc_ids: set[str] = set()
        asset_ids: set[str] = set()
        ports: dict[int, str] = {}
        for path, _site, _area, plc in self.placed_plcs():
            if plc.id in plc_ids:
                issues.append(ConfigIssue((*path, "id"), plc.id, "duplicate PLC id"))
            plc_ids.add(plc.id)
            for proto, endpoint in (("opcua", plc.opcua), ("modbus", plc.modbus)):
                if not endpoint.enabled:
                    continue
                if endpoint.port in ports:
                    issues.append(ConfigIssue((*path, proto, "port"), endpoint.port,
                                              f"port already used by {ports[endpoint.port]}"))
                ports[endpoint.port] = f"{plc.id} {proto}"
            plc_assets = {i for a in plc.assets for i in a.instance_ids(self.plant.scale)}
            for n, scenario in enumerate(plc.scenarios):
                if scenario.asset and scenario.asset not in plc_assets:
                    issues.append(ConfigIssue((*path, "scenarios", n, "asset"), scenario.asset,
                                              f"no such asset on PLC {plc.id}"))
            for i, asset in enumerate(plc.assets):
                if asset.type not in ASSET_TYPES:
                    known = ", ".join(sorted(ASSET_TYPES))
                    issues.append(ConfigIssue((*path, "assets", i, "type"), asset.type,
                                              f"unknown asset type (known: {known})"))
                for instance in asset.instance_ids(self.plant.scale):
                    if instance in asset_ids:
                        issues.append(ConfigIssue((*path, "assets", i, "id"), instance, "duplicate asset id"))
                    asset_ids.add(instance)
        return issues


def load_plant_config(path: Path) -> PlantConfig:
    return load_config(path, PlantConfig, os.environ, PLANT_ENV_OVERRIDES)


# At the end: importing devices.modbus runs its package, whose exposer imports this module's models
# above; the annotation of ModbusEndpointConfig.faults resolves once the name exists.
from devices.modbus.config import ModbusFaultConfig  # noqa: E402

for _model in (ModbusEndpointConfig, PlcConfig, AreaConfig, SiteConfig, PlantConfig):
    _model.model_rebuild()
