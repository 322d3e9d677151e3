"""Modbus PDU handling: one request PDU in, one response PDU out, against a RegisterImage.

No sockets here (server.py does MBAP framing), so every function code and exception path is testable
with bytes. Checks follow the order of the spec's state diagrams (Modbus Application Protocol
V1.1b3 §6): function code (01) -> quantity and byte count (03) -> address range (02) -> value (03)
-> execution (04).

Exception choices (conventions §2.4, documented in docs/registers.md):
- 02 for any address that is not part of the map, including reads that start inside a block and run
  past its last mapped address, writes that cover only part of a 32-bit value or string, and
  writes to a read-only tag (the address is not an allowable *write* address).
- 03 for a bad quantity or byte count, a coil value other than 0xFF00/0x0000, a malformed PDU, and a
  setpoint outside its EURange or of the wrong type (industry practice, conventions §2.4 "Decision").
- 0B for a unit id the PLC does not serve, as pymodbus and Modbus gateways answer.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from devices.assets.base import ArgValue, validate_write
from devices.modbus.codec import decode, decode_string
from devices.modbus.image import RegisterImage
from devices.modbus.register_map import AssetBlock, CommandSlot, Table, TagSlot
from devices.tags import CommandRejected, DataType

log = logging.getLogger(__name__)

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
DEVICE_FAILURE = 0x04
DEVICE_BUSY = 0x06
GATEWAY_NO_RESPONSE = 0x0B

# Quantity limits, conventions §2.2 (Modbus Application Protocol V1.1b3).
MAX_READ_BITS = 2000
MAX_WRITE_BITS = 1968
MAX_READ_REGISTERS = 125
MAX_WRITE_REGISTERS = 123
MAX_RW_WRITE_REGISTERS = 121

COIL_ON = 0xFF00
COIL_OFF = 0x0000
MEI_DEVICE_ID = 0x0E
BROADCAST_UNIT = 0
DIRECT_UNIT = 0xFF  # conventions §2.3: a directly addressed TCP device is commonly reached as 0xFF


class WriteSink(Protocol):
    """Where accepted writes go; Plc satisfies it."""

    def submit_write(self, asset_id: str, key: str, value: ArgValue) -> Future[None]: ...

    def submit_command(self, asset_id: str, name: str, args: Mapping[str, ArgValue]) -> Future[None]: ...


class ModbusException(Exception):
    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(reason or f"exception {code:02X}")
        self.code = code


@dataclass(frozen=True)
class DeviceIdentity:
    """FC43/14 Read Device Identification objects (basic 0x00-0x02, regular 0x03-0x06)."""

    vendor_name: str = "TwinEdge"
    product_code: str = "TE-PLC"
    revision: str = "0.1"
    vendor_url: str = "https://github.com/twinedge"
    product_name: str = "TwinEdge emulated PLC"
    model_name: str = ""
    application_name: str = ""

    def objects(self) -> dict[int, bytes]:
        texts = (self.vendor_name, self.product_code, self.revision, self.vendor_url,
                 self.product_name, self.model_name, self.application_name)
        return {i: text.encode("ascii", errors="replace")[:64] for i, text in enumerate(texts)}


@dataclass(frozen=True)
class _Action:
    asset: AssetBlock
    key: str
    value: ArgValue
    command: bool


def exception_pdu(function: int, code: int) -> bytes:
    return bytes((function | 0x80, code))


class RequestHandler:
    """Turns request PDUs into response PDUs; accepted writes go to ``sink`` (the PLC's queue)."""

    def __init__(
        self,
        image: Callable[[], RegisterImage],
        sink: WriteSink,
        identity: DeviceIdentity | None = None,
    ) -> None:
        self._image = image
        self._sink = sink
        self._identity = (identity or DeviceIdentity()).objects()
        self._functions: dict[int, Callable[[RegisterImage, int, bytes], bytes]] = {
            1: self._read_bits, 2: self._read_bits, 3: self._read_registers, 4: self._read_registers,
            5: self._write_coil, 6: self._write_register, 15: self._write_coils,
            16: self._write_registers, 23: self._read_write_registers, 43: self._device_identification,
        }

    def handle(self, unit_id: int, pdu: bytes) -> bytes:
        """Never raises: every problem becomes an exception response."""
        if not pdu:
            return exception_pdu(0, ILLEGAL_FUNCTION)
        function = pdu[0]
        handler = self._functions.get(function)
        if handler is None:
            return exception_pdu(function, ILLEGAL_FUNCTION)
        image = self._image()
        try:
            unit = self._unit(image, unit_id)
            return handler(image, unit, pdu)
        except ModbusException as exc:
            log.debug("unit %d fc %d: exception %02X: %s", unit_id, function, exc.code, exc)
            return exception_pdu(function, exc.code)
        except (struct.error, IndexError):
            return exception_pdu(function, ILLEGAL_VALUE)
        except Exception:
            log.exception("unit %d fc %d: request failed", unit_id, function)
            return exception_pdu(function, DEVICE_FAILURE)

    @staticmethod
    def _unit(image: RegisterImage, unit_id: int) -> int:
        if unit_id in (BROADCAST_UNIT, DIRECT_UNIT):
            unit_id = image.map.unit_id
        unit = image.unit_index.get(unit_id)
        if unit is None:
            raise ModbusException(GATEWAY_NO_RESPONSE, f"no unit {unit_id}")
        return unit

    # --- reads -----------------------------------------------------------------------------------

    def _read_bits(self, image: RegisterImage, unit: int, pdu: bytes) -> bytes:
        start, count = _fields(pdu, ">HH")
        _check_quantity(count, MAX_READ_BITS)
        table = Table.COIL if pdu[0] == 1 else Table.DISCRETE_INPUT
        _check_mapped(image, unit, table, start, count)
        data = image.read_bits(unit, table, start, count)
        return bytes((pdu[0], len(data))) + data

    def _read_registers(self, image: RegisterImage, unit: int, pdu: bytes) -> bytes:
        start, count = _fields(pdu, ">HH")
        _check_quantity(count, MAX_READ_REGISTERS)
        table = Table.HOLDING_REGISTER if pdu[0] == 3 else Table.INPUT_REGISTER
        _check_mapped(image, unit, table, start, count)
        return bytes((pdu[0], 2 * count)) + image.read_registers(unit, table, start, count)

    # --- writes ----------------------------------------------------------------------------------

    def _write_coil(self, image: RegisterImage, unit: int, pdu: bytes) -> bytes:
        address, value = _fields(pdu, ">HH")
        if value not in (COIL_ON, COIL_OFF):
            raise ModbusException(ILLEGAL_VALUE, f"coil value {value:#06x} is neither 0xFF00 nor 0x0000")
        _check_mapped(image, unit, Table.COIL, address, 1)
        self._submit(self._coil_actions(image, unit, address, [value == COIL_ON]))
        return pdu

    def _write_coils(self, image: RegisterImage, unit: int, pdu: bytes) -> bytes:
        start, count, byte_count = _fields(pdu[:6], ">HHB")
        _check_quantity(count, MAX_WRITE_BITS)
        if byte_count != (count + 7) // 8 or len(pdu) != 6 + byte_count:
            raise ModbusException(ILLEGAL_VALUE, "byte count does not match quantity")
        _check_mapped(image, unit, Table.COIL, start, count)
        bits = np.unpackbits(np.frombuffer(pdu[6:], dtype=np.uint8), bitorder="little")[:count]
        self._submit(self._coil_actions(image, unit, start, [bool(b) for b in bits]))
        return pdu[:5]

    def _write_register(self, image: RegisterImage, unit: int, pdu: bytes) -> bytes:
        address, value = _fields(pdu, ">HH")
        _check_mapped(image, unit, Table.HOLDING_REGISTER, address, 1)
        self._submit(self._register_actions(image, unit, address, [value]))
        return pdu

    def _write_registers(self, image: RegisterImage, unit: int, pdu: bytes) -> bytes:
        start, count, byte_count = _fields(pdu[:6], ">HHB")
        _check_quantity(count, MAX_WRITE_REGISTERS)
        if byte_count != 2 * count or len(pdu) != 6 + byte_count:
            raise ModbusException(ILLEGAL_VALUE, "byte count does not match quantity")
        _check_mapped(image, unit, Table.HOLDING_REGISTER, start, count)
        values = list(struct.unpack(f">{count}H", pdu[6:]))
        self._submit(self._register_actions(image, unit, start, values))
        return pdu[:5]

    def _read_write_registers(self, image: RegisterImage, unit: int, pdu: bytes) -> bytes:
        read_start, read_count, write_start, write_count, byte_count = _fields(pdu[:10], ">HHHHB")
        _check_quantity(read_count, MAX_READ_REGISTERS)
        _check_quantity(write_count, MAX_RW_WRITE_REGISTERS)
        if byte_count != 2 * write_count or len(pdu) != 10 + byte_count:
            raise ModbusException(ILLEGAL_VALUE, "byte count does not match quantity")
        _check_mapped(image, unit, Table.HOLDING_REGISTER, read_start, read_count)
        _check_mapped(image, unit, Table.HOLDING_REGISTER, write_start, write_count)
        values = list(struct.unpack(f">{write_count}H", pdu[10:]))
        self._submit(self._register_actions(image, unit, write_start, values))
        # The spec performs the write before the read; here the write is queued for the next scan,
        # so the read returns the current image (the new value appears after the scan, as on FC03).
        data = image.read_registers(unit, Table.HOLDING_REGISTER, read_start, read_count)
        return bytes((pdu[0], len(data))) + data

    def _coil_actions(self, image: RegisterImage, unit: int, start: int, values: list[bool]) -> list[_Action]:
        actions = []
        for address, on in enumerate(values, start):
            target = image.target(unit, Table.COIL, address)
            if target is None:
                raise ModbusException(ILLEGAL_ADDRESS, f"coil {address} is not mapped")
            block, slot = target
            if isinstance(slot, CommandSlot):
                if on:  # momentary: ON queues the command, OFF is a no-op, the coil reads back 0
                    actions.append(_Action(block, slot.spec.name, 0, command=True))
                continue
            actions.append(_Action(block, slot.spec.key, _validated(slot, on), command=False))
        return actions

    def _register_actions(
        self, image: RegisterImage, unit: int, start: int, values: list[int]
    ) -> list[_Action]:
        actions = []
        address, end = start, start + len(values)
        while address < end:
            target = image.target(unit, Table.HOLDING_REGISTER, address)
            if target is None or not isinstance(target[1], TagSlot):
                raise ModbusException(ILLEGAL_ADDRESS, f"holding register {address} is not mapped")
            block, slot = target[0], target[1]
            first = block.base + slot.offset
            if first != address or address + slot.count > end:
                last = first + slot.count - 1
                reason = f"{slot.spec.key} spans {first}..{last}: write all of it"
                raise ModbusException(ILLEGAL_ADDRESS, reason)
            words = values[address - start : address - start + slot.count]
            value = _validated(slot, _decode(slot, words, image))
            actions.append(_Action(block, slot.spec.key, value, command=False))
            address += slot.count
        return actions

    def _submit(self, actions: list[_Action]) -> None:
        # Every value was validated before the first is queued: a multi-write is all or nothing.
        for action in actions:
            try:
                if action.command:
                    done = self._sink.submit_command(action.asset.asset_id, action.key, {})
                else:
                    done = self._sink.submit_write(action.asset.asset_id, action.key, action.value)
            except (TypeError, ValueError) as exc:
                raise ModbusException(ILLEGAL_VALUE, str(exc)) from exc
            except CommandRejected as exc:
                raise ModbusException(DEVICE_FAILURE, str(exc)) from exc
            done.add_done_callback(_log_rejection(action))

    # --- FC43 / MEI 14 ---------------------------------------------------------------------------

    def _device_identification(self, image: RegisterImage, unit: int, pdu: bytes) -> bytes:
        if len(pdu) < 2 or pdu[1] != MEI_DEVICE_ID:
            raise ModbusException(ILLEGAL_FUNCTION, "only MEI type 0x0E is supported")
        if len(pdu) != 4:
            raise ModbusException(ILLEGAL_VALUE, "MEI 0x0E takes a read code and an object id")
        read_code, object_id = pdu[2], pdu[3]
        objects = self._identity
        if read_code == 4:
            if object_id not in objects:
                raise ModbusException(ILLEGAL_ADDRESS, f"no identification object {object_id:#04x}")
            chosen = [object_id]
        elif read_code in (1, 2, 3):
            last = 0x02 if read_code == 1 else 0x06
            first = object_id if object_id <= last else 0  # spec: an unknown start restarts at 0
            chosen = [i for i in range(first, last + 1) if i in objects]
        else:
            raise ModbusException(ILLEGAL_VALUE, f"read device id code {read_code}")
        # Conformity 0x82: regular identification, stream and individual access.
        body = bytearray((pdu[0], MEI_DEVICE_ID, read_code, 0x82, 0x00, 0x00, len(chosen)))
        for i in chosen:
            body += bytes((i, len(objects[i]))) + objects[i]
        return bytes(body)


def _fields(pdu: bytes, fmt: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if len(pdu) != 1 + size:
        raise ModbusException(ILLEGAL_VALUE, f"PDU of {len(pdu)} bytes, expected {1 + size}")
    return struct.unpack(fmt, pdu[1:])


def _check_quantity(count: int, limit: int) -> None:
    if not 1 <= count <= limit:
        raise ModbusException(ILLEGAL_VALUE, f"quantity {count} outside 1..{limit}")


def _check_mapped(image: RegisterImage, unit: int, table: Table, start: int, count: int) -> None:
    if not image.is_mapped(unit, table, start, count):
        raise ModbusException(ILLEGAL_ADDRESS, f"{table} {start}..{start + count - 1} is not (all) mapped")


def _decode(slot: TagSlot, words: list[int], image: RegisterImage) -> ArgValue:
    spec = slot.spec
    if spec.datatype is DataType.STRING:
        return decode_string(words)
    value = decode(words, spec.datatype, image.map.word_order, slot.scale, slot.offset_eu)
    if spec.datatype is DataType.FLOAT32:
        # The shortest decimal that round-trips the float32, so 0.1 written as float32 is 0.1 and a
        # value at the EURange limit is not refused for float32 rounding.
        return float(str(np.float32(value)))
    rounded = round(value)
    return rounded if abs(value - rounded) < 1e-9 * max(1.0, abs(value)) else value


def _validated(slot: TagSlot, value: ArgValue) -> ArgValue:
    try:
        validate_write(slot.spec, value)
    except PermissionError as exc:
        raise ModbusException(ILLEGAL_ADDRESS, str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise ModbusException(ILLEGAL_VALUE, str(exc)) from exc
    return value


def _log_rejection(action: _Action) -> Callable[[Future[None]], None]:
    def done(future: Future[None]) -> None:
        exc = future.exception()
        if exc is not None:
            # Modbus has answered already; the model's refusal (e.g. starting a failed motor) can
            # only be seen in the state tags on the next read.
            log.warning("%s %s on %s refused at scan: %s",
                        "command" if action.command else "write", action.key, action.asset.asset_id, exc)

    return done
