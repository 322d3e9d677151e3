"""The gateway configuration (config/gateway.yaml): sources, sinks, API and storage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field

from gateway.common.configfile import ConfigIssue, EnvOverride, StrictModel, load_config
from gateway.sinks.influx import InfluxSinkConfig
from gateway.sinks.mqtt import MqttSinkConfig
from gateway.sources.config import ModbusSourceConfig, OpcUaSourceConfig

GATEWAY_ENV_OVERRIDES = (
    EnvOverride("TWINEDGE_DATA_DIR", ("gateway", "data_dir")),
    EnvOverride("TWINEDGE_MQTT_URL", ("sinks", "mqtt", "url")),
    EnvOverride("TWINEDGE_INFLUX_URL", ("sinks", "influx", "url")),
    EnvOverride("TWINEDGE_INFLUX_TOKEN", ("sinks", "influx", "token")),
    EnvOverride("TWINEDGE_INFLUX_ORG", ("sinks", "influx", "org")),
    EnvOverride("TWINEDGE_INFLUX_BUCKET", ("sinks", "influx", "bucket")),
    EnvOverride("TWINEDGE_INFLUX_ENABLED", ("sinks", "influx", "enabled")),
    EnvOverride("TWINEDGE_API_HOST", ("api", "host")),
    EnvOverride("TWINEDGE_API_PORT", ("api", "port")),
)

SourceConfig = Annotated[ModbusSourceConfig | OpcUaSourceConfig, Field(discriminator="protocol")]


class GatewaySettings(StrictModel):
    id: str = Field(default="gw01", pattern=r"^[A-Za-z0-9_-]+$")
    data_dir: Path = Path("data")
    # The plant's tag catalogue (`twinedge registers --format json`); relative paths are taken from
    # data_dir, where `twinedge plant` writes it at start.
    catalogue: Path | None = Path("catalogue.json")

    @property
    def catalogue_path(self) -> Path | None:
        if self.catalogue is None:
            return None
        return self.catalogue if self.catalogue.is_absolute() else self.data_dir / self.catalogue


class SinksConfig(StrictModel):
    mqtt: MqttSinkConfig = MqttSinkConfig()
    influx: InfluxSinkConfig = InfluxSinkConfig()


class ApiConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)


class ProcessingConfig(StrictModel):
    """Report by exception (off by default: every polled sample is published)."""

    report_by_exception: bool = False
    deadband_absolute: float | None = Field(default=None, ge=0)
    deadband_percent: float | None = Field(default=None, ge=0, le=100)  # of the EURange span
    max_age_s: float | None = Field(default=60.0, gt=0)  # republish an unchanged value after this


class GatewayConfig(StrictModel):
    gateway: GatewaySettings = GatewaySettings()
    sources: list[SourceConfig] = Field(default_factory=list)
    processing: ProcessingConfig = ProcessingConfig()
    sinks: SinksConfig = SinksConfig()
    api: ApiConfig = ApiConfig()

    def check(self) -> list[ConfigIssue]:
        issues: list[ConfigIssue] = []
        seen: set[str] = set()
        for index, source in enumerate(self.sources):
            if source.name in seen:
                issues.append(ConfigIssue(("sources", index, "name"), source.name, "duplicate source name"))
            seen.add(source.name)
            if source.plc is not None and self.gateway.catalogue is None:
                issues.append(ConfigIssue(("sources", index, "plc"), source.plc,
                                          "refers to a catalogue PLC but gateway.catalogue is not set"))
        return issues


def load_gateway_config(path: Path) -> GatewayConfig:
    return load_config(path, GatewayConfig, os.environ, GATEWAY_ENV_OVERRIDES)
