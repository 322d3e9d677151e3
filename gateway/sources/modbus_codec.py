"""Pure conversions between Modbus registers/bits and tag values (no I/O).

Word and byte order follow the Telegraf naming in ../shared/reference/conventions.md §2.5, with the
worked example float32 123.456 = 0x42F6E979:

    ABCD [0x42F6, 0xE979]   CDAB [0xE979, 0x42F6]   BADC [0xF642, 0x79E9]   DCBA [0x79E9, 0xF642]

One rule covers every width: the orders whose name starts with the byte pair swapped (BADC, DCBA)
swap the two bytes inside each register, and the orders that start with the low half (CDAB, DCBA)
reverse the register sequence. So a 16-bit value is byte-swapped under BADC and DCBA (as Telegraf's
INT16 "BA" order) and unaffected by CDAB. Strings ignore the order: the catalogue defines them as
2 ASCII characters per register, high byte first, padded with NULs.

Scaling is ``value = raw * scale + offset`` (Telegraf's ``scale``); an unscaled integer stays an int
so counters and enums are not turned into floats.
"""

from __future__ import annotations

import math
import struct
from typing import Final, Literal

Datatype = Literal["float32", "int16", "uint16", "int32", "uint32", "bool", "enum", "string"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Value = float | int | bool | str

WORD_ORDERS: Final[tuple[WordOrder, ...]] = ("ABCD", "CDAB", "BADC", "DCBA")

# struct format of the big-endian (ABCD) byte string of each fixed-width numeric type.
STRUCT_FORMATS: Final[dict[str, str]] = {
    "float32": ">f",
    "int16": ">h",
    "uint16": ">H",
    "enum": ">H",
    "int32": ">i",
    "uint32": ">I",
}
_INTEGER_TYPES: Final = frozenset({"int16", "uint16", "enum", "int32", "uint32"})


class CodecError(ValueError):
    """A value cannot be encoded (out of range, wrong type) or registers cannot be decoded."""


def register_count(datatype: Datatype, string_registers: int = 1) -> int:
    """Registers one value occupies; ``bool`` in a register table uses one register."""
    if datatype == "string":
        return string_registers
    if datatype in ("float32", "int32", "uint32"):
        return 2
    return 1


def _swap_bytes(raw: bytes) -> bytes:
    return b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))


def _reverse_words(raw: bytes) -> bytes:
    return b"".join(raw[i : i + 2] for i in reversed(range(0, len(raw), 2)))


def _reorder(raw: bytes, order: WordOrder) -> bytes:
    """Convert between wire order and ABCD. Every permutation here is its own inverse."""
    if order in ("BADC", "DCBA"):
        raw = _swap_bytes(raw)
    if order in ("CDAB", "DCBA"):
        raw = _reverse_words(raw)
    return raw


def _to_bytes(registers: list[int] | tuple[int, ...]) -> bytes:
    for reg in registers:
        if not 0 <= reg <= 0xFFFF:
            raise CodecError(f"register value {reg} is not a 16-bit unsigned integer")
    return b"".join(reg.to_bytes(2, "big") for reg in registers)


def _to_registers(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def decode_registers(
    registers: list[int] | tuple[int, ...], datatype: Datatype, word_order: WordOrder = "ABCD"
) -> Value:
    """Raw registers (as read) to the unscaled value."""
    expected = register_count(datatype, len(registers))
    if len(registers) != expected:
        raise CodecError(f"{datatype} needs {expected} register(s), got {len(registers)}")
    raw = _to_bytes(registers)
    if datatype == "string":
        return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace")
    if datatype == "bool":
        return registers[0] != 0
    value: float | int = struct.unpack(STRUCT_FORMATS[datatype], _reorder(raw, word_order))[0]
    return value


def encode_registers(
    value: Value, datatype: Datatype, word_order: WordOrder = "ABCD", string_registers: int = 1
) -> list[int]:
    """Unscaled value to the registers to write."""
    if datatype == "string":
        if not isinstance(value, str):
            raise CodecError(f"string expected, got {type(value).__name__}")
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            raise CodecError(f"{value!r} is not ASCII") from None
        if len(raw) > 2 * string_registers:
            raise CodecError(f"{value!r} longer than {2 * string_registers} characters")
        return _to_registers(raw.ljust(2 * string_registers, b"\x00"))
    if datatype == "bool":
        return [1 if _as_bool(value) else 0]
    if isinstance(value, str):
        raise CodecError(f"number expected for {datatype}, got {value!r}")
    fmt = STRUCT_FORMATS[datatype]
    try:
        if datatype in _INTEGER_TYPES:
            if isinstance(value, float) and not value.is_integer():
                raise CodecError(f"{value!r} is not an integer")
            raw = struct.pack(fmt, int(value))
        else:
            raw = struct.pack(fmt, float(value))
    except (struct.error, OverflowError):
        raise CodecError(f"{value!r} out of range for {datatype}") from None
    return _to_registers(_reorder(raw, word_order))


def _as_bool(value: Value) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "on"):
            return True
        if lowered in ("0", "false", "off"):
            return False
        raise CodecError(f"{value!r} is not a boolean")
    return bool(value)


def decode_bits(bits: list[bool] | tuple[bool, ...]) -> bool:
    """A coil or discrete input; multi-bit tags are not part of the catalogue format."""
    if len(bits) != 1:
        raise CodecError(f"bool needs 1 bit, got {len(bits)}")
    return bool(bits[0])


def encode_bit(value: Value) -> bool:
    return _as_bool(value)


def scale_value(raw: Value, scale: float = 1.0, offset: float = 0.0) -> Value:
    """Engineering value from the raw one; bools and strings pass through unscaled."""
    if isinstance(raw, bool | str) or (scale == 1.0 and offset == 0.0):
        return raw
    return raw * scale + offset


def unscale_value(value: Value, datatype: Datatype, scale: float = 1.0, offset: float = 0.0) -> Value:
    """Raw value to write for an engineering value; integers are rounded to the nearest step."""
    if isinstance(value, bool | str) or (scale == 1.0 and offset == 0.0):
        return value
    if scale == 0.0:
        raise CodecError("scale 0 cannot be inverted")
    raw = (value - offset) / scale
    if not math.isfinite(raw):
        raise CodecError(f"{value!r} gives a non-finite raw value")
    if datatype in _INTEGER_TYPES:
        return round(raw)
    return raw
