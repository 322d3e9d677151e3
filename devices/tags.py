"""Tag and command declarations: the one source of truth every face of the plant is derived from.

An asset type declares its tags once. The OPC UA address space, the Modbus register map, the tag
catalogue the gateway loads, MQTT topics, InfluxDB series and the REST schema all come from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class DataType(StrEnum):
    FLOAT32 = "float32"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    BOOL = "bool"
    ENUM = "enum"  # an unsigned index into TagSpec.enum_strings
    STRING = "string"  # ASCII, TagSpec.string_length characters at most


class Access(StrEnum):
    RO = "ro"
    RW = "rw"


class TagKind(StrEnum):
    """What a tag means to the process; decides its Modbus table and OPC UA variable type."""

    MEASUREMENT = "measurement"  # sensor value: input register, AnalogItem
    SETPOINT = "setpoint"  # operator-writable target or limit: holding register / coil
    STATE = "state"  # machine state or mode: input register (enum) / discrete input (bool)
    COUNTER = "counter"  # monotonic count: input register
    ALARM = "alarm"  # a boolean condition: discrete input


# Integer ranges of the wire types (Modbus registers, OPC UA Int16/UInt16/...), for range checks.
INTEGER_LIMITS: dict[DataType, tuple[int, int]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.ENUM: (0, 2**16 - 1),
}


@dataclass(frozen=True)
class TagSpec:
    """One tag of an asset type.

    ``eu_range`` is the normal operating range (OPC UA EURange): readings outside it are flagged
    UncertainEngineeringUnitsExceeded, and writes to a setpoint outside it are refused.
    ``scale``/``offset`` apply to integer tags on Modbus only: engineering = raw * scale + offset.
    """

    key: str
    datatype: DataType
    kind: TagKind
    description: str
    unit: str | None = None  # UNECE Rec. 20 common code, e.g. "CEL"
    eu_range: tuple[float, float] | None = None
    access: Access = Access.RO
    enum_strings: tuple[str, ...] = ()
    scale: float = 1.0
    offset: float = 0.0
    string_length: int = 0

    def __post_init__(self) -> None:
        if self.datatype is DataType.ENUM and not self.enum_strings:
            raise ValueError(f"tag {self.key}: an enum tag needs enum_strings")
        if self.datatype is DataType.STRING and self.string_length <= 0:
            raise ValueError(f"tag {self.key}: a string tag needs string_length")
        if self.eu_range is not None and self.eu_range[0] > self.eu_range[1]:
            raise ValueError(f"tag {self.key}: eu_range low > high")

    @property
    def writable(self) -> bool:
        return self.access is Access.RW

    @property
    def is_numeric(self) -> bool:
        return self.datatype not in (DataType.STRING, DataType.BOOL, DataType.ENUM)


@dataclass(frozen=True)
class ArgSpec:
    """A typed input argument of a command (OPC UA method argument, REST body field)."""

    name: str
    datatype: DataType
    description: str
    eu_range: tuple[float, float] | None = None
    enum_strings: tuple[str, ...] = ()


@dataclass(frozen=True)
class CommandSpec:
    """A named command of an asset type: an OPC UA method, a Modbus coil when it takes no arguments."""

    name: str
    description: str
    args: tuple[ArgSpec, ...] = field(default=())

    @property
    def has_coil(self) -> bool:
        return not self.args


class CommandRejected(Exception):
    """A command or write the model refuses, with the reason a client is shown."""
