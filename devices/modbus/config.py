"""The Modbus options of one PLC, resolved from its ``ModbusEndpointConfig`` and checked."""

from __future__ import annotations

from dataclasses import dataclass

from devices.config import ModbusEndpointConfig
from devices.modbus.codec import WORD_ORDERS, WordOrder


@dataclass(frozen=True)
class ModbusOptions:
    port: int
    unit_id: int = 1
    word_order: WordOrder = "ABCD"
    unit_per_asset: bool = False
    fault_value: float | None = None

    def __post_init__(self) -> None:
        if self.word_order not in WORD_ORDERS:
            raise ValueError(f"word_order must be one of {WORD_ORDERS}, got {self.word_order!r}")
        # conventions §2.3: unit ids 1-247 are valid; 0 is broadcast, 248-255 reserved.
        if not 1 <= self.unit_id <= 247:
            raise ValueError(f"unit_id must be 1..247, got {self.unit_id}")

    @classmethod
    def from_endpoint(cls, endpoint: ModbusEndpointConfig) -> ModbusOptions:
        return cls(
            port=endpoint.port,
            unit_id=endpoint.unit_id,
            word_order=endpoint.word_order,
            unit_per_asset=endpoint.unit_per_asset,
            fault_value=endpoint.fault_value,
        )
