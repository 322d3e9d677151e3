"""Pure, numpy-vectorised conversions between engineering values and Modbus registers.

One call encodes a whole column (every instance of one tag of one asset type), so the exposer does a
handful of numpy operations per tag per scan, whatever the number of instances.

Word and byte order follow Telegraf's names (conventions §2.5), worked example float32
123.456 = 0x42F6E979:

    ABCD  [0x42F6, 0xE979]   big-endian, Modbus native
    CDAB  [0xE979, 0x42F6]   word swap
    BADC  [0xF642, 0x79E9]   byte swap inside each register
    DCBA  [0x79E9, 0xF642]   both

As in Telegraf (which reads 16-bit values as AB for ABCD/CDAB and BA for BADC/DCBA), the byte swap of
BADC/DCBA applies to 16-bit registers too. Strings are always packed first character in the high
byte, two characters per register, NUL padded, whatever the word order.

Integer tags on Modbus are scaled (conventions §2.5, Telegraf FIXED/UFIXED): engineering =
raw * scale + offset, so raw = round((engineering - offset) / scale), saturated to the wire type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from devices.tags import INTEGER_LIMITS, DataType

WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
WORD_ORDERS: tuple[WordOrder, ...] = ("ABCD", "CDAB", "BADC", "DCBA")

Registers = npt.NDArray[np.uint16]
Bits = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float64]

_SIGNED_DTYPE: dict[DataType, str] = {
    DataType.INT16: ">i2",
    DataType.UINT16: ">u2",
    DataType.ENUM: ">u2",
    DataType.INT32: ">i4",
    DataType.UINT32: ">u4",
}


def register_count(datatype: DataType, string_length: int = 0) -> int:
    """Registers one value occupies (bits count as one coil/discrete input)."""
    if datatype in (DataType.FLOAT32, DataType.INT32, DataType.UINT32):
        return 2
    if datatype is DataType.STRING:
        return (string_length + 1) // 2
    return 1


def is_bit(datatype: DataType) -> bool:
    return datatype is DataType.BOOL


def _swap_bytes(words: Registers) -> Registers:
    return ((words >> 8) | (words << 8)).astype(np.uint16)


def _order_words(words: Registers, word_order: WordOrder) -> Registers:
    """``words`` is (n, width) in ABCD order; returns the same values in ``word_order``."""
    if word_order in ("BADC", "DCBA"):
        words = _swap_bytes(words)
    if word_order in ("CDAB", "DCBA") and words.shape[1] == 2:
        words = words[:, ::-1]
    return np.ascontiguousarray(words)


def _unorder_words(words: Registers, word_order: WordOrder) -> Registers:
    # Every ordering is an involution (swap bytes, reverse words), so applying it again undoes it.
    return _order_words(words, word_order)


def to_raw(values: npt.ArrayLike, datatype: DataType, scale: float = 1.0, offset: float = 0.0) -> FloatArray:
    """Engineering values -> raw integers (as float64), rounded and saturated to the wire type.

    NaN becomes 0: an integer register has no NaN, and a faulted sensor is flagged by the asset's
    status bits rather than by a magic number.
    """
    low, high = INTEGER_LIMITS[datatype]
    raw = (np.asarray(values, dtype=np.float64) - offset) / scale
    raw = np.nan_to_num(np.rint(raw), nan=0.0, posinf=high, neginf=low)
    return np.clip(raw, low, high)


def encode(
    values: npt.ArrayLike,
    datatype: DataType,
    word_order: WordOrder = "ABCD",
    scale: float = 1.0,
    offset: float = 0.0,
) -> Registers:
    """Encode a column of numeric values into an (n, width) uint16 array of registers."""
    column = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if datatype is DataType.FLOAT32:
        big = column.astype(">f4")
    elif datatype in _SIGNED_DTYPE:
        big = to_raw(column, datatype, scale, offset).astype(_SIGNED_DTYPE[datatype])
    else:
        raise ValueError(f"{datatype} is not a register-encoded numeric type")
    words = big.view(">u2").astype(np.uint16).reshape(len(column), -1)
    return _order_words(words, word_order)


def decode(
    registers: Sequence[int] | Registers,
    datatype: DataType,
    word_order: WordOrder = "ABCD",
    scale: float = 1.0,
    offset: float = 0.0,
) -> float:
    """Decode one value from its registers (the inverse of :func:`encode`), in engineering units."""
    words = np.asarray(registers, dtype=np.uint16).reshape(1, -1)
    if words.shape[1] != register_count(datatype):
        raise ValueError(f"{datatype} takes {register_count(datatype)} registers, got {words.shape[1]}")
    big = _unorder_words(words, word_order).astype(">u2")
    if datatype is DataType.FLOAT32:
        return float(big.view(">f4")[0, 0])
    if datatype in _SIGNED_DTYPE:
        raw = float(big.view(_SIGNED_DTYPE[datatype])[0, 0])
        if scale == 1.0 and offset == 0.0:
            return raw
        return raw * scale + offset
    raise ValueError(f"{datatype} is not a register-encoded numeric type")


def encode_bits(values: npt.ArrayLike) -> Bits:
    """Booleans as coil/discrete-input bits: any finite non-zero value is ON."""
    column = np.atleast_1d(np.asarray(values, dtype=np.float64))
    bits: Bits = (np.nan_to_num(column, nan=0.0) != 0).astype(np.uint8)
    return bits


def encode_strings(values: Sequence[str], string_length: int) -> Registers:
    """ASCII strings, two characters per register (first in the high byte), NUL padded/truncated."""
    width = register_count(DataType.STRING, string_length)
    out = np.zeros((len(values), width * 2), dtype=np.uint8)
    for row, text in enumerate(values):
        data = str(text).encode("ascii", errors="replace")[:string_length]
        out[row, : len(data)] = np.frombuffer(data, dtype=np.uint8)
    return out.view(">u2").astype(np.uint16).reshape(len(values), width)


def decode_string(registers: Sequence[int] | Registers) -> str:
    data = np.asarray(registers, dtype=np.uint16).astype(">u2").tobytes()
    return data.split(b"\0", 1)[0].decode("ascii", errors="replace")
