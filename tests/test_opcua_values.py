"""Table-driven tests of the pure OPC UA codecs (devices/opcua/values.py)."""

from __future__ import annotations

import pytest
from asyncua import ua

from devices.opcua import values
from devices.tags import Access, ArgSpec, DataType, TagKind, TagSpec


def tag(datatype: DataType, kind: TagKind = TagKind.MEASUREMENT, **kw: object) -> TagSpec:
    if datatype is DataType.ENUM:
        kw.setdefault("enum_strings", ("a", "b"))
    return TagSpec("t", datatype, kind, "test tag", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (tag(DataType.FLOAT32, unit="CEL", eu_range=(0, 80)), values.VariableType.ANALOG_ITEM),
        (tag(DataType.UINT32, TagKind.COUNTER, unit="C62"), values.VariableType.ANALOG_ITEM),
        (
            tag(DataType.FLOAT32, TagKind.SETPOINT, eu_range=(0, 3), access=Access.RW),
            values.VariableType.ANALOG_ITEM,
        ),
        (tag(DataType.BOOL, TagKind.STATE), values.VariableType.TWO_STATE_DISCRETE),
        (tag(DataType.ENUM, TagKind.STATE), values.VariableType.MULTI_STATE_DISCRETE),
        (tag(DataType.INT16, TagKind.STATE), values.VariableType.BASE_DATA_VARIABLE),
        (tag(DataType.STRING, TagKind.STATE, string_length=8), values.VariableType.BASE_DATA_VARIABLE),
    ],
)
def test_variable_type(spec: TagSpec, expected: values.VariableType) -> None:
    assert values.variable_type(spec) is expected


@pytest.mark.parametrize(
    ("spec", "low", "high"),
    [
        (tag(DataType.FLOAT32, eu_range=(-5, 5)), -5.0, 5.0),
        (tag(DataType.UINT32, TagKind.COUNTER), 0.0, 2.0**32 - 1),  # no eu_range: the wire type's range
        (tag(DataType.INT16), -32768.0, 32767.0),
        (tag(DataType.FLOAT32), -values.FLOAT32_MAX, values.FLOAT32_MAX),
    ],
)
def test_eu_range(spec: TagSpec, low: float, high: float) -> None:
    rng = values.eu_range(spec)
    assert (rng.Low, rng.High) == (low, high)


@pytest.mark.parametrize(
    ("code", "unit_id", "symbol"), [("CEL", 4408652, "°C"), ("MTS", 5067859, "m/s"), ("P1", 20529, "%")]
)
def test_eu_information(code: str, unit_id: int, symbol: str) -> None:
    # UnitIds from conventions.md §1.1 (OPC Foundation UNECE_to_OPCUA.csv)
    eu = values.eu_information(code)
    assert (eu.NamespaceUri, eu.UnitId, eu.DisplayName.Text) == (
        "http://www.opcfoundation.org/UA/units/un/cefact",
        unit_id,
        symbol,
    )


@pytest.mark.parametrize(
    ("datatype", "variant", "expected"),
    [
        (DataType.FLOAT32, ua.Variant(1.2, ua.VariantType.Float), pytest.approx(1.2, rel=1e-7)),
        (DataType.UINT16, ua.Variant(7, ua.VariantType.UInt16), 7),
        (DataType.BOOL, ua.Variant(True, ua.VariantType.Boolean), True),
        (DataType.ENUM, ua.Variant(1, ua.VariantType.UInt32), 1),
    ],
)
def test_from_variant(datatype: DataType, variant: ua.Variant, expected: object) -> None:
    assert values.from_variant(datatype, variant) == expected


@pytest.mark.parametrize(
    ("datatype", "variant"),
    [
        (DataType.FLOAT32, ua.Variant(1.2, ua.VariantType.Double)),
        (DataType.FLOAT32, ua.Variant([1.0], ua.VariantType.Float)),
        (DataType.FLOAT32, None),
        (DataType.BOOL, ua.Variant(1, ua.VariantType.Int32)),
        (DataType.ENUM, ua.Variant(1, ua.VariantType.Int32)),
    ],
)
def test_from_variant_rejects_other_types(datatype: DataType, variant: ua.Variant | None) -> None:
    with pytest.raises(TypeError):
        values.from_variant(datatype, variant)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (PermissionError(), ua.StatusCodes.BadNotWritable),
        (TypeError(), ua.StatusCodes.BadTypeMismatch),
        (values.WireTypeError(), ua.StatusCodes.BadTypeMismatch),
        (ValueError(), ua.StatusCodes.BadOutOfRange),
        (KeyError(), ua.StatusCodes.BadNodeIdUnknown),
    ],
)
def test_status_for_error(exc: Exception, code: int) -> None:
    assert values.status_for_error(exc) == code


def test_check_argument_range_and_enum() -> None:
    speed = ArgSpec("speed", DataType.FLOAT32, "speed", eu_range=(0.0, 3.0))
    assert values.check_argument(speed, ua.Variant(3.0, ua.VariantType.Float)) == 3.0
    with pytest.raises(ValueError, match="outside"):
        values.check_argument(speed, ua.Variant(3.5, ua.VariantType.Float))
    direction = ArgSpec("dir", DataType.ENUM, "dir", enum_strings=("f", "r"))
    with pytest.raises(ValueError, match="not one of"):
        values.check_argument(direction, ua.Variant(2, ua.VariantType.UInt32))


def test_integer_conversion_saturates() -> None:
    convert = values.wire_converter(DataType.UINT16)
    assert (convert(-3.0), convert(70000.0), convert(2.6)) == (0, 65535, 3)
