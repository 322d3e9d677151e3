"""Pure codecs between the tag table and OPC UA: datatypes, units, ranges, status codes, client values.

No I/O and no server state here, so every mapping has a table-driven test
(tests/test_opcua_values.py) and the exposer's I/O code stays free of conversions (ARCHITECTURE.md,
habit 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import numpy as np
from asyncua import ua

from devices.assets.base import ArgValue
from devices.opcua._ua import StatusCodes, nodeid
from devices.tags import INTEGER_LIMITS, ArgSpec, DataType, TagKind, TagSpec
from devices.units import UNECE_NAMESPACE_URI, unit_for

# Variant (and so DataType, ns=0 i=<builtin id>) per tag datatype. ENUM is UInt32: Part 8 §5.3.3.3
# gives MultiStateDiscreteType an unsigned-integer DataType; UInt32 is what generic clients write.
VARIANT_TYPES: dict[DataType, ua.VariantType] = {
    DataType.FLOAT32: ua.VariantType.Float,
    DataType.INT16: ua.VariantType.Int16,
    DataType.UINT16: ua.VariantType.UInt16,
    DataType.INT32: ua.VariantType.Int32,
    DataType.UINT32: ua.VariantType.UInt32,
    DataType.BOOL: ua.VariantType.Boolean,
    DataType.ENUM: ua.VariantType.UInt32,
    DataType.STRING: ua.VariantType.String,
}

# Largest finite float32: the EURange of a float tag declared without one.
FLOAT32_MAX = float(np.finfo(np.float32).max)


class VariableType(IntEnum):
    """VariableType NodeIds in namespace 0 (OPC 10000-8 §5.3; Schema/NodeIds.csv, conventions.md §1.1)."""

    BASE_DATA_VARIABLE = 63
    PROPERTY = 68
    ANALOG_ITEM = 2368
    TWO_STATE_DISCRETE = 2373
    MULTI_STATE_DISCRETE = 2376


class ObjectType(IntEnum):
    BASE_OBJECT = 58
    FOLDER = 61


# DataType NodeIds in namespace 0 that are not builtin types (Schema/NodeIds.csv).
RANGE_DATATYPE = 884
EU_INFORMATION_DATATYPE = 887
ARGUMENT_DATATYPE = 296

# AccessLevel bits (OPC 10000-3 §8.57).
ACCESS_READ = 0x01
ACCESS_WRITE = 0x02
ACCESS_HISTORY_READ = 0x04


def variant_type(datatype: DataType) -> ua.VariantType:
    return VARIANT_TYPES[datatype]


def data_type_id(datatype: DataType) -> ua.NodeId:
    """The DataType NodeId: builtin types have NodeId i=<VariantType number> (OPC 10000-6 §5.1.2)."""
    return nodeid(VARIANT_TYPES[datatype].value, 0)


def variable_type(spec: TagSpec) -> VariableType:
    """The type definition of a tag's variable; Analog items need a numeric datatype."""
    if spec.datatype is DataType.BOOL:
        return VariableType.TWO_STATE_DISCRETE
    if spec.datatype is DataType.ENUM:
        return VariableType.MULTI_STATE_DISCRETE
    if spec.is_numeric and (
        spec.kind in (TagKind.MEASUREMENT, TagKind.COUNTER, TagKind.SETPOINT)
        or spec.unit is not None
        or spec.eu_range is not None
    ):
        return VariableType.ANALOG_ITEM
    return VariableType.BASE_DATA_VARIABLE


def access_level(spec: TagSpec, historizing: bool = False) -> int:
    level = ACCESS_READ | (ACCESS_WRITE if spec.writable else 0)
    return level | (ACCESS_HISTORY_READ if historizing else 0)


def eu_range(spec: TagSpec) -> ua.Range:
    """EURange is mandatory on AnalogItemType (OPC 10000-8 §5.3.2.2); a tag declared without one gets
    its wire type's limits, the range a client can actually receive."""
    if spec.eu_range is not None:
        low, high = spec.eu_range
    elif spec.datatype in INTEGER_LIMITS:
        low, high = INTEGER_LIMITS[spec.datatype]
    else:
        low, high = -FLOAT32_MAX, FLOAT32_MAX
    return ua.Range(Low=float(low), High=float(high))


def eu_information(code: str) -> ua.EUInformation:
    """EngineeringUnits for a UNECE Rec. 20 code (OPC 10000-8 §5.6.4.4, conventions.md §1.1)."""
    unit = unit_for(code)
    return ua.EUInformation(
        NamespaceUri=UNECE_NAMESPACE_URI,
        UnitId=unit.unit_id,
        DisplayName=ua.LocalizedText(unit.symbol, "en"),
        Description=ua.LocalizedText(unit.name, "en"),
    )


def two_state_texts(spec: TagSpec) -> tuple[str, str]:
    """TrueState/FalseState texts (mandatory on TwoStateDiscreteType, OPC 10000-8 §5.3.3.2)."""
    if spec.kind is TagKind.ALARM:
        return "Active", "Inactive"
    if spec.kind is TagKind.STATE:
        return "On", "Off"
    return "True", "False"


# --- values from the process image ------------------------------------------------------------


def wire_converter(datatype: DataType) -> Callable[[float], Any]:
    """Process-image float -> the Python value the Variant of ``datatype`` encodes."""
    if datatype is DataType.FLOAT32:
        return float
    if datatype is DataType.BOOL:
        return lambda value: value != 0.0
    if datatype is DataType.STRING:
        raise ValueError("string tags have no numeric process-image value")
    low, high = INTEGER_LIMITS[datatype]

    def to_int(value: float) -> int:
        # Clamp so a model glitch shows as a saturated reading, not an encoding error in the server.
        if math.isnan(value):
            return 0
        return int(min(max(round(value), low), high))

    return to_int


def comparable(datatype: DataType, values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The values as the client will see them, so changes below the wire resolution are not
    notified: float32 for Float variables, rounded integers for the integer types."""
    if datatype is DataType.FLOAT32:
        return np.asarray(values, dtype=np.float32)
    if datatype is DataType.BOOL:
        return np.asarray(values != 0.0, dtype=np.bool_)
    return np.asarray(np.round(np.nan_to_num(values)), dtype=np.float64)


# --- values from clients -----------------------------------------------------------------------


class WireTypeError(TypeError):
    """A client value whose Variant type differs from the node's DataType (-> BadTypeMismatch)."""


def from_variant(datatype: DataType, variant: ua.Variant | None) -> ArgValue:
    """A client's scalar Variant as the value ``validate_write`` / ``apply_command`` take.

    The Variant type must equal the node's DataType exactly, as OPC 10000-4 §5.10.4 requires a
    server to reject with BadTypeMismatch (no implicit Double -> Float conversion).
    """
    expected = VARIANT_TYPES[datatype]
    if variant is None or variant.VariantType != expected or variant.is_array or variant.Value is None:
        got = "null" if variant is None else variant.VariantType.name
        raise WireTypeError(f"expected a scalar {expected.name}, got {got}")
    value = variant.Value
    if datatype is DataType.BOOL:
        return bool(value)
    if datatype is DataType.STRING:
        return str(value)
    if datatype is DataType.FLOAT32:
        # Round-trip through float32 so 1.2f (1.2000000476837158) compares as the client meant it.
        return float(np.float32(value)) if math.isfinite(value) else float(value)
    return int(value)


def status_for_error(exc: BaseException) -> int:
    """OPC UA StatusCode for a refused write (validate_write contract; conventions.md §1.1 table)."""
    if isinstance(exc, PermissionError):
        return int(StatusCodes.BadNotWritable)
    if isinstance(exc, TypeError):
        return int(StatusCodes.BadTypeMismatch)
    if isinstance(exc, ValueError):
        return int(StatusCodes.BadOutOfRange)
    if isinstance(exc, KeyError):
        return int(StatusCodes.BadNodeIdUnknown)
    return int(StatusCodes.BadInternalError)


def check_argument(arg: ArgSpec, variant: ua.Variant | None) -> ArgValue:
    """Decode and range-check one method input argument; TypeError / ValueError say why not."""
    value = from_variant(arg.datatype, variant)
    if arg.datatype is DataType.ENUM and arg.enum_strings and not 0 <= int(value) < len(arg.enum_strings):
        raise ValueError(f"{arg.name}: {value!r} is not one of 0..{len(arg.enum_strings) - 1}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{arg.name}: {value!r} is not a finite number")
    if arg.eu_range is not None and not isinstance(value, str | bool):
        low, high = arg.eu_range
        if not low <= value <= high:
            raise ValueError(f"{arg.name}: {value!r} is outside {low:g}..{high:g}")
    return value


def argument(arg: ArgSpec) -> ua.Argument:
    """The InputArguments entry of one ArgSpec (OPC 10000-3 §8.6)."""
    text = arg.description
    if arg.enum_strings:
        text += " (" + ", ".join(f"{i}={name}" for i, name in enumerate(arg.enum_strings)) + ")"
    if arg.eu_range is not None:
        text += f" [{arg.eu_range[0]:g}..{arg.eu_range[1]:g}]"
    return ua.Argument(
        Name=arg.name,
        DataType=data_type_id(arg.datatype),
        ValueRank=-1,
        ArrayDimensions=[],
        Description=ua.LocalizedText(text, "en"),
    )
