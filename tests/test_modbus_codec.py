"""Table-driven tests of the pure Modbus codec (conventions §2.5)."""

from __future__ import annotations

import numpy as np
import pytest

from devices.modbus.codec import (
    WORD_ORDERS,
    WordOrder,
    decode,
    decode_string,
    encode,
    encode_bits,
    encode_strings,
    register_count,
)
from devices.tags import DataType

# conventions §2.5: float32 123.456 = 0x42F6E979 in each word order.
WORD_ORDER_TABLE: list[tuple[WordOrder, list[int]]] = [
    ("ABCD", [0x42F6, 0xE979]),
    ("CDAB", [0xE979, 0x42F6]),
    ("BADC", [0xF642, 0x79E9]),
    ("DCBA", [0x79E9, 0xF642]),
]


@pytest.mark.parametrize(("order", "registers"), WORD_ORDER_TABLE)
def test_float32_123_456_in_every_word_order(order: WordOrder, registers: list[int]) -> None:
    assert encode([123.456], DataType.FLOAT32, order).tolist() == [registers]
    assert decode(registers, DataType.FLOAT32, order) == pytest.approx(123.456, rel=1e-7)


@pytest.mark.parametrize("order", WORD_ORDERS)
@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        (DataType.FLOAT32, [0.0, -1.5, 3.25e5, 1e-3]),
        (DataType.INT32, [0, -1, 2**31 - 1, -(2**31), 123456789]),
        (DataType.UINT32, [0, 1, 2**32 - 1, 70000]),
        (DataType.INT16, [0, -1, 32767, -32768]),
        (DataType.UINT16, [0, 1, 65535]),
        (DataType.ENUM, [0, 2]),
    ],
)
def test_round_trip(order: WordOrder, datatype: DataType, values: list[float]) -> None:
    registers = encode(values, datatype, order)
    assert registers.shape == (len(values), register_count(datatype))
    decoded = [decode(row, datatype, order) for row in registers]
    assert decoded == pytest.approx(
        [float(np.float32(v)) if datatype is DataType.FLOAT32 else v for v in values]
    )


@pytest.mark.parametrize(
    ("datatype", "order", "value", "registers"),
    [
        (DataType.UINT32, "ABCD", 0x12345678, [0x1234, 0x5678]),
        (DataType.UINT32, "CDAB", 0x12345678, [0x5678, 0x1234]),
        (DataType.UINT32, "BADC", 0x12345678, [0x3412, 0x7856]),
        (DataType.UINT32, "DCBA", 0x12345678, [0x7856, 0x3412]),
        (DataType.INT32, "ABCD", -2, [0xFFFF, 0xFFFE]),
        (DataType.INT16, "ABCD", -2, [0xFFFE]),
        (DataType.UINT16, "BADC", 0x1234, [0x3412]),  # Telegraf "BA" for 16-bit values
        (DataType.UINT16, "CDAB", 0x1234, [0x1234]),
    ],
)
def test_integer_layouts(datatype: DataType, order: WordOrder, value: int, registers: list[int]) -> None:
    assert encode([value], datatype, order).tolist() == [registers]


def test_scaled_integers_round_and_saturate() -> None:
    # engineering = raw * scale + offset (conventions §2.5, Telegraf FIXED)
    assert encode([23.456], DataType.INT16, scale=0.01).tolist() == [[2346]]
    assert encode([-40.0], DataType.INT16, scale=0.1, offset=-50.0).tolist() == [[100]]
    assert decode([100], DataType.INT16, scale=0.1, offset=-50.0) == pytest.approx(-40.0)
    assert encode([1e9, -1e9, np.nan], DataType.INT16).tolist() == [[32767], [32768], [0]]
    assert encode([-5.0, 70000.0], DataType.UINT16).tolist() == [[0], [65535]]


def test_vectorised_column() -> None:
    values = np.arange(100_000, dtype=np.float64)
    registers = encode(values, DataType.FLOAT32, "CDAB")
    assert registers.shape == (100_000, 2)
    assert decode(registers[12345], DataType.FLOAT32, "CDAB") == 12345.0


def test_bits_and_strings() -> None:
    assert encode_bits([0.0, 1.0, 2.0, np.nan]).tolist() == [0, 1, 1, 0]
    registers = encode_strings(["AB", "hello", ""], 5)
    assert registers.shape == (3, 3)
    assert registers[0].tolist() == [0x4142, 0, 0]
    assert decode_string(registers[1]) == "hello"
    assert decode_string(registers[2]) == ""
    assert decode_string(encode_strings(["truncated"], 4)[0]) == "trun"


def test_decode_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="takes 2 registers"):
        decode([1], DataType.FLOAT32)
