"""Sources: one per PLC endpoint, OPC UA or Modbus TCP, ours or third-party."""

from __future__ import annotations

from gateway.sources.base import Source, SourceError, SourceUnavailable
from gateway.sources.config import ModbusSourceConfig, OpcUaSourceConfig, SourceConfig
from gateway.sources.modbus import ModbusSource
from gateway.sources.opcua import OpcUaSource

__all__ = [
    "ModbusSource",
    "ModbusSourceConfig",
    "OpcUaSource",
    "OpcUaSourceConfig",
    "Source",
    "SourceConfig",
    "SourceError",
    "SourceUnavailable",
    "build_source",
]


def build_source(config: SourceConfig, catalogue: object | None = None) -> Source:
    """The source for a config block (registered by protocol name; no I/O)."""
    from gateway.catalogue import Catalogue

    cat = catalogue if isinstance(catalogue, Catalogue) else None
    if isinstance(config, ModbusSourceConfig):
        return ModbusSource(config, cat)
    return OpcUaSource(config, cat)
