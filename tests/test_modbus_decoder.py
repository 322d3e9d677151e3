"""RequestDecoder gives exactly the per-point codec's values, or hands the response back to it."""

from __future__ import annotations

import math
import struct

from hypothesis import given
from hypothesis import strategies as st

from gateway.sources import modbus_codec as codec
from gateway.sources.modbus_decoder import PointLayout, RequestDecoder

_DATATYPES: list[codec.Datatype] = ["float32", "int16", "uint16", "int32", "uint32", "bool", "enum", "string"]


@st.composite
def register_request(draw: st.DrawFn) -> tuple[list[PointLayout], list[int]]:
    """Points laid out one after the other with small gaps (some overlapping), and a response."""
    points: list[PointLayout] = []
    at = 0
    for _ in range(draw(st.integers(1, 8))):
        datatype = draw(st.sampled_from(_DATATYPES))
        count = draw(st.integers(1, 4)) if datatype == "string" else codec.register_count(datatype)
        at = max(0, at - draw(st.integers(0, 1)) + draw(st.integers(0, 3)))
        scaled = draw(st.booleans())
        points.append(PointLayout(at, count, datatype, draw(st.sampled_from(codec.WORD_ORDERS)),
                                  0.1 if scaled else 1.0, -5.0 if scaled else 0.0))
        at += count
    size = max(p.start + p.count for p in points)
    registers = draw(st.lists(st.integers(0, 0xFFFF), min_size=size, max_size=size))
    return points, registers


def _per_point(points: list[PointLayout], registers: list[int]) -> list[codec.Value]:
    return [codec.scale_value(codec.decode_registers(registers[p.start : p.start + p.count], p.datatype,
                                                     p.word_order), p.scale, p.offset) for p in points]


def _same(a: codec.Value, b: codec.Value) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


@given(register_request())
def test_registers_decode_like_the_codec(request: tuple[list[PointLayout], list[int]]) -> None:
    points, registers = request
    decoder = RequestDecoder(points, bits=False, size=len(registers))
    decoded = decoder.decode(registers)
    assert decoded is not None
    expected = _per_point(points, registers)
    assert all(_same(a, b) for a, b in zip(decoded, expected, strict=True)), (decoded, expected)
    # The pipelined path hands over the answer's bytes as they arrived (big-endian registers).
    from_bytes = decoder.decode_bytes(struct.pack(f">{len(registers)}H", *registers))
    assert from_bytes is not None
    assert all(_same(a, b) for a, b in zip(from_bytes, expected, strict=True)), (from_bytes, expected)


@given(st.lists(st.booleans(), min_size=1, max_size=40), st.data())
def test_bits_decode_like_the_codec(bits: list[bool], data: st.DataObject) -> None:
    starts = data.draw(st.lists(st.integers(0, len(bits) - 1), min_size=1, max_size=10))
    points = [PointLayout(s, 1, "bool") for s in starts]
    padded = bits + [False] * (-len(bits) % 8)  # pymodbus pads bits to whole bytes
    decoder = RequestDecoder(points, bits=True, size=len(bits))
    expected = [codec.decode_bits(bits[s : s + 1]) for s in starts]
    assert decoder.decode(padded) == expected
    # As they arrive on the wire: eight bits a byte, the first in the least significant bit.
    wire = bytes(sum(int(b) << i for i, b in enumerate(padded[at : at + 8])) for at in range(0, len(padded), 8))
    assert decoder.decode_bytes(wire) == expected
    assert decoder.decode_bytes(wire[:-1]) is None  # a byte short


def test_responses_it_cannot_take_whole_go_back_point_by_point() -> None:
    registers = RequestDecoder([PointLayout(0, 2, "float32")], bits=False, size=2)
    assert registers.decode([0x1_0000, 0]) is None  # not a 16-bit register: the codec names the point
    assert registers.decode([0x42F6]) is None  # a short response
    assert registers.decode([0x42F6, 0xE979]) == [struct_float(0x42F6E979)]
    assert registers.decode_bytes(bytes.fromhex("42f6")) is None  # a short answer
    assert registers.decode_bytes(bytes.fromhex("42f6e979")) == [struct_float(0x42F6E979)]
    wrong_width = RequestDecoder([PointLayout(0, 1, "float32")], bits=False, size=1)
    assert wrong_width.decode([1]) is None  # the codec raises for a 1-register float32
    assert RequestDecoder([PointLayout(0, 2, "bool")], bits=True, size=2).decode([True, False]) is None
    assert RequestDecoder([PointLayout(3, 1, "bool")], bits=True, size=4).decode([True, True]) is None


def struct_float(word: int) -> float:
    return codec.decode_registers([word >> 16, word & 0xFFFF], "float32")  # type: ignore[return-value]
