"""One planned Modbus read's response -> its points' values, prepared once per request.

``modbus_codec.decode_registers`` checks and converts one value at a time (a bytes join per value, a
format lookup, the word-order rule); with several values per request and thousands of requests per
second that was 17% of the gateway's CPU on a Modbus-only load. A :class:`RequestDecoder` does that
work once per planned request: it knows where each point sits, which ``struct`` format reads it and
whether it needs reordering or scaling, so a response costs one ``pack`` of its registers and one
``unpack_from`` per point. The values are exactly ``modbus_codec``'s (a property test compares them);
a response it cannot take whole (a register outside 0..65535) returns None, and the caller falls
back to the per-point codec, which reports the point at fault.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.sources import modbus_codec as codec


@dataclass(frozen=True, slots=True)
class PointLayout:
    """Where one point sits in a response (registers or bits from the request's first address)."""

    start: int
    count: int
    datatype: codec.Datatype
    word_order: codec.WordOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0


_Reader = Callable[[bytes], codec.Value]


def _register_reader(point: PointLayout) -> _Reader:
    """How one point's value comes out of the response's big-endian bytes."""
    at = point.start * 2
    if point.datatype == "string":
        size = point.count * 2
        return lambda raw: raw[at : at + size].split(b"\x00", 1)[0].decode("ascii", errors="replace")
    if point.datatype == "bool":
        word = struct.Struct(">H")
        return lambda raw: word.unpack_from(raw, at)[0] != 0
    if point.word_order != "ABCD" and not (point.count == 1 and point.word_order == "CDAB"):
        # Reordered bytes: the codec's own rule, on this point's registers only (rare in practice).
        registers = struct.Struct(f">{point.count}H")
        datatype, order = point.datatype, point.word_order
        return lambda raw: codec.decode_registers(registers.unpack_from(raw, at), datatype, order)
    plain = struct.Struct(codec.STRUCT_FORMATS[point.datatype])
    return lambda raw: plain.unpack_from(raw, at)[0]


def _decodable(point: PointLayout, bits: bool) -> bool:
    """Whether the point's width is one the codec accepts (else the codec's error must be reported)."""
    if bits:  # every bit-table point is one bit, read as a bool whatever its datatype
        return point.count == 1
    return point.datatype == "string" or point.count == codec.register_count(point.datatype)


class RequestDecoder:
    """Decodes the responses of one planned request (register or bit table)."""

    def __init__(self, points: Sequence[PointLayout], bits: bool, size: int) -> None:
        self._points = tuple(points)
        self._bits = bits
        self._size = size
        # A point of a width the codec refuses: every response goes point by point, so its error is reported.
        self._usable = all(_decodable(p, bits) for p in points)
        self._pack = struct.Struct(f">{size}H").pack
        self._readers = () if bits else tuple(_register_reader(p) for p in points)
        # Scaling as modbus_codec.scale_value: only numbers, only when not the identity.
        self._scaled = () if bits else tuple(
            (i, p.scale, p.offset) for i, p in enumerate(points)
            if p.datatype not in ("bool", "string") and (p.scale != 1.0 or p.offset != 0.0)
        )

    def decode(self, data: Sequence[int] | Sequence[bool]) -> list[codec.Value] | None:
        """Every point's engineering value, in ``points`` order; None when the response cannot be
        decoded whole (the caller decodes point by point to say which point is at fault)."""
        if not self._usable:
            return None
        if self._bits:
            if len(data) < self._size:
                return None
            return [bool(data[p.start]) for p in self._points]
        try:
            raw = self._pack(*data)
        except struct.error:  # too few or too many registers, or one outside 0..65535
            return None
        return self._from_registers(raw)

    def decode_bytes(self, raw: bytes) -> list[codec.Value] | None:
        """As :meth:`decode`, from an answer's data bytes as they arrived: registers big-endian, bits
        least significant first (modbus_pipeline.py)."""
        if not self._usable:
            return None
        if self._bits:
            if len(raw) * 8 < self._size:
                return None
            return [bool(raw[p.start >> 3] >> (p.start & 7) & 1) for p in self._points]
        if len(raw) != 2 * self._size:
            return None
        return self._from_registers(raw)

    def _from_registers(self, raw: bytes) -> list[codec.Value]:
        values: list[codec.Value] = [read(raw) for read in self._readers]
        for i, scale, offset in self._scaled:
            values[i] = values[i] * scale + offset  # type: ignore[operator]
        return values
