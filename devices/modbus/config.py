"""The Modbus options of one PLC, resolved from its ``ModbusEndpointConfig`` and checked; scheduled faults.

``ModbusFaultConfig`` is the model of one entry of ``modbus.faults`` (devices/config.py uses it), so
this module must not import devices.config at run time: that would be an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from devices.modbus.codec import WORD_ORDERS, WordOrder
from devices.scenarios import parse_plant_time
from gateway.common.configfile import StrictModel

if TYPE_CHECKING:
    from devices.config import ModbusEndpointConfig


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


MAX_FAULT_DELAY_MS = 600_000.0  # ten minutes: longer than any client timeout worth testing


@dataclass(frozen=True)
class ScheduledModbusFault:
    """A Modbus fault at a plant time; ``duration_s`` in plant seconds, None: until cleared."""

    at_s: float
    delay_ms: float = 0.0
    no_response: bool = False
    exception_code: int | None = None
    drop_connections: bool = False
    duration_s: float | None = None


class ModbusFaultConfig(StrictModel):
    """One entry of a PLC's ``modbus.faults``: ``{at: 30min, exception_code: 6, duration: 2min}``.

    ``at`` and ``duration`` are plant time like scenarios (seconds, or '45s', '30min', '6h', '12d');
    without ``duration`` the fault lasts until cleared through the control API.
    """

    at: float | str
    delay_ms: float = Field(default=0.0, ge=0, le=MAX_FAULT_DELAY_MS, allow_inf_nan=False)
    no_response: bool = False
    exception_code: Literal[4, 6] | None = None
    drop_connections: bool = False
    duration: float | str | None = None

    @field_validator("at", "duration")
    @classmethod
    def _plant_time(cls, value: float | str | None) -> float | str | None:
        if value is not None:
            seconds = parse_plant_time(value)
            if not 0 <= seconds < float("inf"):
                raise ValueError(f"plant time must be finite and >= 0, got {value!r}")
        return value

    @model_validator(mode="after")
    def _does_something(self) -> ModbusFaultConfig:
        if not (self.delay_ms or self.no_response or self.exception_code or self.drop_connections):
            raise ValueError("a fault needs delay_ms, no_response, exception_code or drop_connections")
        if self.duration is not None and parse_plant_time(self.duration) <= 0:
            raise ValueError("duration must be > 0")
        return self

    def fault(self) -> ScheduledModbusFault:
        duration = None if self.duration is None else parse_plant_time(self.duration)
        return ScheduledModbusFault(parse_plant_time(self.at), self.delay_ms, self.no_response,
                                    self.exception_code, self.drop_connections, duration)
