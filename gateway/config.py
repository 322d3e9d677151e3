"""The gateway configuration (config/gateway.yaml): sources, sinks, API and storage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field

from gateway.alerts.service import AlertsConfig
from gateway.api.auth import AuthConfig
from gateway.commands.queue import CommandQueueConfig
from gateway.common.configfile import ConfigIssue, EnvOverride, StrictModel, load_config
from gateway.sinks.influx import InfluxSinkConfig
from gateway.sinks.mqtt import MqttSinkConfig
from gateway.sinks.outbox_common import OutboxBackend
from gateway.sinks.sparkplug import SparkplugSinkConfig
from gateway.sources.config import ModbusSourceConfig, OpcUaSourceConfig
from gateway.storage.db import StorageConfig

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
    # Where every sink's durable outbox lives: "sqlite" (one SQLite file per sink) or "log"
    # (append-only segment files per sink, a fraction of SQLite's CPU per record; BENCHMARKS.md).
    outbox: OutboxBackend = "sqlite"

    @property
    def catalogue_path(self) -> Path | None:
        if self.catalogue is None:
            return None
        return self.catalogue if self.catalogue.is_absolute() else self.data_dir / self.catalogue


class SinksConfig(StrictModel):
    mqtt: MqttSinkConfig = MqttSinkConfig()
    influx: InfluxSinkConfig = InfluxSinkConfig()
    sparkplug: SparkplugSinkConfig = SparkplugSinkConfig()


class WebSocketConfig(StrictModel):
    """``api.websocket``: per-client queues and the fixed-period streams."""

    # Messages a client may have waiting; beyond it the oldest go (counted, and the client is told).
    queue_size: int = Field(default=256, ge=1, le=100_000)
    snapshot_period_s: float = Field(default=5.0, gt=0, le=3600)  # the mine snapshot stream
    machine_period_s: float = Field(default=0.1, gt=0, le=60)  # /ws/machines/{id}: about 10 Hz
    # The token may come as a ?token= query parameter when a client cannot set
    # Sec-WebSocket-Protocol; URLs end up in proxy and access logs, so it can be switched off.
    allow_query_token: bool = True


class ApiConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    auth: AuthConfig = AuthConfig()
    websocket: WebSocketConfig = WebSocketConfig()
    # The local history ring behind /api/v1/assets/{id}/history: readings kept per tag.
    history_per_tag: int = Field(default=3600, ge=1, le=1_000_000)
    snapshots_kept: int = Field(default=720, ge=1, le=100_000)  # /api/historical-data ring (1 h at 5 s)


class CommandsConfig(CommandQueueConfig):
    """``commands:``: the queue's settings plus how the runtime executes a command."""

    # asset or PLC id -> source name, for a PLC read by several sources (say OPC UA and Modbus);
    # default: the first source in ``sources:`` that reads the asset.
    route: dict[str, str] = Field(default_factory=dict)
    # Floats travel as float32: a read-back within this relative tolerance counts as equal.
    readback_rel_tol: float = Field(default=1e-6, ge=0, le=0.01)


class ProcessingConfig(StrictModel):
    """Report by exception (off by default: every polled sample is published). An unchanged Bad
    state (a PLC unreachable) is published once and then at each ``max_age_s`` heartbeat, unless
    ``repeat_bad`` asks for it at every poll."""

    report_by_exception: bool = False
    repeat_bad: bool = False
    deadband_absolute: float | None = Field(default=None, ge=0)
    deadband_percent: float | None = Field(default=None, ge=0, le=100)  # of the EURange span
    max_age_s: float | None = Field(default=60.0, gt=0)  # republish an unchanged value after this


class GatewayConfig(StrictModel):
    gateway: GatewaySettings = GatewaySettings()
    sources: list[SourceConfig] = Field(default_factory=list)
    processing: ProcessingConfig = ProcessingConfig()
    sinks: SinksConfig = SinksConfig()
    api: ApiConfig = ApiConfig()
    storage: StorageConfig = StorageConfig()
    alerts: AlertsConfig = AlertsConfig()
    commands: CommandsConfig = CommandsConfig()

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
        for key, name in self.commands.route.items():
            if name not in seen:
                issues.append(ConfigIssue(("commands", "route", key), name, "no source of that name"))
        return issues


def load_gateway_config(path: Path) -> GatewayConfig:
    return load_config(path, GatewayConfig, os.environ, GATEWAY_ENV_OVERRIDES)
