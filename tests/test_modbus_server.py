"""The Modbus exposer end to end: a Plc with conveyors (and a test asset type) on a free loopback port,
read and written with pymodbus's async client, raw sockets, and mbpoll (an independent libmodbus tool).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import pytest
from pymodbus.client import AsyncModbusTcpClient

from devices.assets.base import ArgValue, Array, AssetModel, State
from devices.assets.conveyor import Conveyor
from devices.assets.registry import ASSET_TYPES
from devices.clock import VirtualClock
from devices.config import PlantSettings, PlcConfig
from devices.modbus import ModbusExposer, Table
from devices.modbus.codec import decode
from devices.modbus.protocol import RequestHandler
from devices.modbus.server import ModbusTcpServer
from devices.plc import AssetGroup, Plc
from devices.tags import Access, CommandSpec, DataType, TagKind, TagSpec

DEADLINE_S = 5.0


class Gadget(AssetModel):
    """A test asset type covering the datatypes and tables conveyors do not use."""

    type_name: ClassVar[str] = "test-gadget"
    tags: ClassVar[tuple[TagSpec, ...]] = (
        TagSpec(
            "pressure",
            DataType.INT16,
            TagKind.MEASUREMENT,
            "Pressure",
            unit="BAR",
            eu_range=(0.0, 10.0),
            scale=0.01,
        ),
        TagSpec("mode", DataType.ENUM, TagKind.STATE, "Mode", enum_strings=("off", "auto", "manual")),
        TagSpec("overheat", DataType.BOOL, TagKind.ALARM, "Overheat"),
        TagSpec("limit", DataType.FLOAT32, TagKind.SETPOINT, "Factory limit", eu_range=(0.0, 100.0)),
        TagSpec(
            "target", DataType.INT32, TagKind.SETPOINT, "Target", eu_range=(-1000.0, 1000.0), access=Access.RW
        ),
        TagSpec("enabled", DataType.BOOL, TagKind.SETPOINT, "Enabled", access=Access.RW),
        TagSpec(
            "level",
            DataType.UINT16,
            TagKind.SETPOINT,
            "Level",
            eu_range=(0.0, 5000.0),
            access=Access.RW,
            scale=10.0,
        ),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (CommandSpec("reset", "Reset"),)

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        return {
            "pressure": np.linspace(1.0, 2.0, count),
            "mode": np.ones(count),
            "overheat": np.zeros(count),
            "limit": np.full(count, 80.0),
            "target": np.full(count, -5.0),
            "enabled": np.ones(count),
            "level": np.full(count, 1230.0),
        }

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        return {**state, "pressure": state["pressure"] + 0.01}

    def outputs(self, state: State) -> Mapping[str, Array]:
        return {spec.key: state[spec.key] for spec in self.tags}

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        state["pressure"][index] = 0.0


class Rig:
    def __init__(self, plc: Plc, exposer: ModbusExposer) -> None:
        self.plc = plc
        self.exposer = exposer
        self.host, self.port = exposer.address

    def client(self) -> AsyncModbusTcpClient:
        return AsyncModbusTcpClient(self.host, port=self.port, timeout=2, retries=0)

    async def raw(self, pdu: bytes, unit: int = 1, transaction: int = 7) -> bytes:
        """Send one request PDU on a fresh connection; return the response PDU."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu)
            await writer.drain()
            header = await asyncio.wait_for(reader.readexactly(7), DEADLINE_S)
            tid, proto, length, echoed_unit = struct.unpack(">HHHB", header)
            assert (tid, proto, echoed_unit) == (transaction, 0, unit)
            return await reader.readexactly(length - 1)
        finally:
            writer.close()


@pytest.fixture
async def rig(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    monkeypatch.setitem(ASSET_TYPES, Gadget.type_name, Gadget)
    config = PlcConfig.model_validate(
        {
            "id": "plc-test",
            "opcua": {"port": 4840},
            "modbus": {"port": 5020, "unit_id": 1},
            "assets": [
                {"type": "conveyor", "id": "conveyor", "count": 3},
                {"type": Gadget.type_name, "id": "gadget"},
            ],
        }
    )
    conveyors = tuple(config.assets[0].instance_ids(1))
    plc = Plc(
        "plc-test", [AssetGroup(Conveyor(), conveyors), AssetGroup(Gadget(), ("gadget",))], VirtualClock()
    )
    exposer = ModbusExposer(plc, "site", "area", config, PlantSettings(), port=0)
    async with exposer:
        plc.scan()
        yield Rig(plc, exposer)


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


def _exception(pdu: bytes) -> int | None:
    return pdu[1] if pdu[0] & 0x80 else None


async def test_every_tag_reads_what_the_process_image_holds(rig: Rig) -> None:
    for _ in range(5):
        rig.plc.scan()
    image = rig.plc.image
    assert image is not None
    rmap = rig.exposer.register_map
    client = rig.client()
    await client.connect()
    try:
        heartbeat = await client.read_input_registers(0, count=1, device_id=1)
        assert heartbeat.registers == [rig.plc.scan_count & 0xFFFF]
        checked = 0
        for point in rmap.points():
            spec, slot, table = point.slot.spec, point.slot, point.slot.table
            expected, _status = image.lookup(point.asset.asset_id, spec.key)
            if table is Table.DISCRETE_INPUT:
                got: Any = (await client.read_discrete_inputs(point.address, count=1, device_id=1)).bits[0]
                assert got == bool(expected), spec.key
            elif table is Table.COIL:
                got = (await client.read_coils(point.address, count=1, device_id=1)).bits[0]
                assert got == bool(expected), spec.key
            else:
                read = (
                    client.read_input_registers
                    if table is Table.INPUT_REGISTER
                    else client.read_holding_registers
                )
                response = await read(point.address, count=slot.count, device_id=1)
                assert not response.isError(), (spec.key, response)
                value = decode(response.registers, spec.datatype, rmap.word_order, slot.scale, slot.offset_eu)
                if spec.datatype is DataType.FLOAT32:
                    assert value == float(np.float32(expected)), spec.key
                else:
                    assert value == pytest.approx(expected, abs=slot.scale / 2), spec.key
            checked += 1
        assert checked == 3 * len(Conveyor.tags) + len(Gadget.tags)
        # A whole asset block in one request; status bits clear (all Good).
        block = await client.read_input_registers(100, count=20, device_id=1)
        assert block.registers[:4] == [0, 0, 0, 0]
    finally:
        client.close()


async def test_status_bits_flag_a_faulted_sensor(rig: Rig) -> None:
    rig.plc.set_sensor_fault("conveyor-02", "bearing_temp", -999.0)
    rig.plc.scan()
    bit = rig.exposer.register_map.asset("conveyor-02").layout.slot("bearing_temp").status_bit
    client = rig.client()
    await client.connect()
    try:
        status = (await client.read_input_registers(200, count=4, device_id=1)).registers
        assert status == [1 << bit, 0, 0, 0]
        temp = await client.read_input_registers(210, count=2, device_id=1)
        assert decode(temp.registers, DataType.FLOAT32) == -999.0
        assert (await client.read_input_registers(100, count=4, device_id=1)).registers == [0, 0, 0, 0]
    finally:
        client.close()


async def test_status_bits_all_set_before_the_first_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    config = PlcConfig.model_validate(
        {"id": "p", "opcua": {"port": 1}, "modbus": {"port": 2}, "assets": [{"type": "conveyor", "id": "c"}]}
    )
    plc = Plc("p", [AssetGroup(Conveyor(), ("c",))], VirtualClock())
    async with ModbusExposer(plc, "s", "a", config, PlantSettings(), port=0) as exposer:
        rig = Rig(plc, exposer)
        response = await rig.raw(bytes.fromhex("04 0064 0004"))
        assert response == bytes.fromhex("04 08 07FF 0000 0000 0000")  # 11 tags -> bits 0..10


async def test_writes_take_effect_at_the_next_scan(rig: Rig) -> None:
    client = rig.client()
    await client.connect()
    try:
        # FC16 float32 setpoint, ABCD
        registers = client.convert_to_registers(2.5, client.DATATYPE.FLOAT32)
        assert not (await client.write_registers(100, registers, device_id=1)).isError()
        # FC05 command coil: stop conveyor-02 (coil 251 = block 2 + command offset 50 + 1)
        assert not (await client.write_coil(251, True, device_id=1)).isError()
        # FC06 scaled uint16 on the gadget (block 4): level = raw 250 * 10
        gadget = rig.exposer.register_map.asset("gadget")
        _, level_address, _ = gadget.address("level")
        assert not (await client.write_register(level_address, 250, device_id=1)).isError()
        # FC15 bool setpoint coil + FC23 int32 write
        _, enabled_address, _ = gadget.address("enabled")
        assert not (await client.write_coils(enabled_address, [False], device_id=1)).isError()
        _, target_address, _ = gadget.address("target")
        rw = await client.readwrite_registers(
            read_address=level_address,
            read_count=1,
            write_address=target_address,
            values=[0xFFFF, 0xFF38],
            device_id=1,
        )  # -200
        assert rw.registers == [123]  # FC23 reads the image as it was before the write is applied
        assert rig.plc.image is not None
        assert rig.plc.image.lookup("conveyor-01", "speed_setpoint")[0] == 1.5

        rig.plc.scan()
        image = rig.plc.image
        assert image.lookup("conveyor-01", "speed_setpoint")[0] == 2.5
        assert image.lookup("conveyor-02", "running")[0] == 0.0
        assert image.lookup("gadget", "level")[0] == 2500.0
        assert image.lookup("gadget", "enabled")[0] == 0.0
        assert image.lookup("gadget", "target")[0] == -200.0
        hr = await client.read_holding_registers(100, count=2, device_id=1)
        assert client.convert_from_registers(hr.registers, client.DATATYPE.FLOAT32) == 2.5
        assert (await client.read_discrete_inputs(200, count=1, device_id=1)).bits[0] is False
        assert (await client.read_coils(251, count=1, device_id=1)).bits[0] is False  # momentary
    finally:
        client.close()


@pytest.mark.parametrize(
    ("pdu_hex", "code", "why"),
    [
        ("07", 0x01, "unsupported function (read exception status)"),
        ("2B 0D 01 00", 0x01, "MEI type other than 14"),
        ("04 0000 0000", 0x03, "zero quantity"),
        ("04 0064 007E", 0x03, "126 registers"),
        ("01 0096 07D1", 0x03, "2001 bits"),
        ("10 0064 007C 02 0000", 0x03, "124 registers written"),
        ("10 0064 0002 03 000000", 0x03, "byte count mismatch"),
        ("03 0064", 0x03, "truncated PDU"),
        ("04 0032 0001", 0x02, "gap in the PLC block"),
        ("04 0064 0015", 0x02, "read starting in a block running past its end (20 mapped)"),
        ("04 0063 0002", 0x02, "read starting before a block"),
        ("04 FFFF 0002", 0x02, "past the address space"),
        ("03 0064 0005", 0x02, "holding registers past the two setpoints"),
        ("01 0096 0004", 0x02, "coils past the three command coils"),
        ("05 0096 1234", 0x03, "coil value neither FF00 nor 0000"),
        ("06 0064 4120", 0x02, "half of a float32 setpoint"),
        ("10 0065 0002 04 00000000", 0x02, "write straddling two float32 setpoints"),
        ("10 0064 0002 04 40A00000", 0x03, "setpoint 5.0 outside 0..3"),
        ("10 0064 0002 04 7FC00000", 0x03, "NaN setpoint"),
        ("2B 0E 04 09", 0x02, "unknown identification object"),
        ("2B 0E 07 00", 0x03, "bad read device id code"),
    ],
)
async def test_exception_codes(rig: Rig, pdu_hex: str, code: int, why: str) -> None:
    pdu = bytes.fromhex(pdu_hex)
    response = await rig.raw(pdu)
    assert response == bytes((pdu[0] | 0x80, code)), why


async def test_exceptions_specific_to_the_gadget(rig: Rig) -> None:
    gadget = rig.exposer.register_map.asset("gadget")
    _, limit, _ = gadget.address("limit")
    _, target, _ = gadget.address("target")
    # read-only setpoint: 02 (the address is not a writable one), documented in docs/registers.md
    assert await rig.raw(struct.pack(">BHHB", 16, limit, 2, 4) + struct.pack(">f", 50.0)) == b"\x90\x02"
    # int32 outside -1000..1000
    assert await rig.raw(struct.pack(">BHHBi", 16, target, 2, 4, 5000)) == b"\x90\x03"
    # unknown unit id: 0B, as pymodbus and Modbus gateways answer (conventions §2.3)
    assert await rig.raw(bytes.fromhex("04 0000 0001"), unit=9) == b"\x84\x0b"
    # 0 and 255 address the PLC itself
    assert await rig.raw(bytes.fromhex("04 0000 0001"), unit=255) == b"\x04\x02" + struct.pack(
        ">H", rig.plc.scan_count
    )
    # A rejected multi-write queues nothing: valid first setpoint, invalid second.
    pdu = struct.pack(">BHHB", 16, 100, 4, 8) + struct.pack(">ff", 1.0, 9.0)
    assert await rig.raw(pdu) == b"\x90\x03"
    rig.plc.scan()
    assert rig.plc.image is not None
    assert rig.plc.image.lookup("conveyor-01", "speed_setpoint")[0] == 1.5


async def test_pymodbus_sees_exceptions(rig: Rig) -> None:
    client = rig.client()
    await client.connect()
    try:
        response = await client.read_input_registers(100, count=21, device_id=1)
        assert response.isError()
        assert response.exception_code == 2
        response = await client.write_register(1, 7, device_id=1)
        assert response.isError()
        assert response.exception_code == 2
    finally:
        client.close()


async def test_device_identification(rig: Rig) -> None:
    client = rig.client()
    await client.connect()
    try:
        basic = await client.read_device_information(read_code=1, device_id=1)
        assert basic.information[0] == b"TwinEdge"
        assert set(basic.information) == {0, 1, 2}
        regular = await client.read_device_information(read_code=2, device_id=1)
        assert regular.information[5] == b"plc-test"
    finally:
        client.close()


async def test_malformed_frames_and_disconnects_do_not_hurt_others(rig: Rig) -> None:
    bystander = rig.client()
    await bystander.connect()
    try:
        # Protocol id 1: the server cannot trust the framing and closes that connection only.
        reader, writer = await asyncio.open_connection(rig.host, rig.port)
        writer.write(bytes.fromhex("0001 0001 0006 01 04 0000 0001"))
        assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
        writer.close()
        # Garbage length field.
        reader, writer = await asyncio.open_connection(rig.host, rig.port)
        writer.write(bytes.fromhex("0001 0000 FFFF 01 04"))
        assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
        writer.close()
        # Mid-request disconnect: header promises 6 bytes, 2 arrive, then the client vanishes.
        for _ in range(3):
            _, writer = await asyncio.open_connection(rig.host, rig.port)
            writer.write(bytes.fromhex("0001 0000 0006 01 04"))
            await writer.drain()
            writer.transport.abort()
        # Partial header then close.
        _, writer = await asyncio.open_connection(rig.host, rig.port)
        writer.write(b"\x00\x01\x00")
        writer.close()

        async def no_connections_left() -> bool:
            return rig.exposer.server.connection_count == 1  # only the bystander

        await _until(no_connections_left, "aborted connections to be cleaned up")
        response = await bystander.read_input_registers(0, count=1, device_id=1)
        assert not response.isError()
        assert (await rig.raw(bytes.fromhex("04 0000 0001")))[0] == 0x04
    finally:
        bystander.close()


async def test_pipelined_requests_on_one_connection(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection(rig.host, rig.port)
    try:
        frames = b"".join(
            struct.pack(">HHHB", tid, 0, 6, 1) + bytes.fromhex("04 0000 0001") for tid in (1, 2, 3)
        )
        writer.write(frames)
        for tid in (1, 2, 3):
            header = await asyncio.wait_for(reader.readexactly(7), DEADLINE_S)
            assert struct.unpack(">H", header[:2])[0] == tid
            await reader.readexactly(struct.unpack(">H", header[4:6])[0] - 1)
    finally:
        writer.close()


async def test_many_concurrent_clients(rig: Rig) -> None:
    clients = [rig.client() for _ in range(25)]
    await asyncio.gather(*(c.connect() for c in clients))
    try:

        async def poll(client: AsyncModbusTcpClient) -> list[int]:
            values = []
            for _ in range(10):
                response = await client.read_input_registers(100, count=20, device_id=1)
                assert not response.isError()
                values.append(len(response.registers))
            return values

        results = await asyncio.gather(*(poll(c) for c in clients))
        assert all(r == [20] * 10 for r in results)
    finally:
        for c in clients:
            c.close()


async def test_fault_injection(rig: Rig) -> None:
    read = bytes.fromhex("04 0000 0001")
    rig.exposer.faults.inject(exception_code=6)
    assert await rig.raw(read) == b"\x84\x06"
    rig.exposer.faults.inject(exception_code=4)
    assert await rig.raw(read) == b"\x84\x04"
    rig.exposer.faults.clear()
    assert (await rig.raw(read))[0] == 0x04

    rig.exposer.faults.inject(delay_ms=150)
    started = time.monotonic()
    assert (await rig.raw(read))[0] == 0x04
    assert time.monotonic() - started >= 0.15
    rig.exposer.faults.clear()

    rig.exposer.faults.inject(no_response=True)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(rig.raw(read), 0.3)
    rig.exposer.faults.clear()

    reader, writer = await asyncio.open_connection(rig.host, rig.port)

    async def connected() -> bool:
        return rig.exposer.server.connection_count >= 1

    await _until(connected, "the connection to be registered")
    rig.exposer.faults.inject(drop_connections=True, duration_s=0.3)
    assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""  # the open connection is reset
    writer.close()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await rig.raw(read)  # a new one is accepted and reset at once

    async def recovered() -> bool:
        try:
            return (await rig.raw(read))[0] == 0x04
        except (ConnectionError, asyncio.IncompleteReadError):
            return False

    await _until(recovered, "the timed fault to expire")


async def test_close_is_idempotent_and_start_rebinds(rig: Rig) -> None:
    await rig.exposer.close()
    await rig.exposer.close()
    with pytest.raises(ConnectionRefusedError):
        await rig.raw(bytes.fromhex("04 0000 0001"))
    await rig.exposer.start()  # port 0 was asked for: a new free port
    rig.host, rig.port = rig.exposer.address
    assert (await rig.raw(bytes.fromhex("04 0000 0001")))[0] == 0x04


MBPOLL = shutil.which("mbpoll")


async def _mbpoll(*args: str) -> str:
    assert MBPOLL is not None
    proc = await asyncio.create_subprocess_exec(
        MBPOLL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def _mbpoll_values(output: str) -> dict[int, str]:
    values = {}
    for line in output.splitlines():
        if line.startswith("["):
            address, _, value = line.partition(":")
            values[int(address.strip("[]"))] = value.strip()
    return values


async def test_interop_with_mbpoll(rig: Rig) -> None:
    # Never skipped: `make test` installs mbpoll (scripts/install-servers.sh).
    assert MBPOLL is not None, "mbpoll not installed: run scripts/install-servers.sh (apt-get install mbpoll)"
    base = ["-m", "tcp", "-p", str(rig.port), "-a", "1", "-0", "-1", "-o", "2"]
    # float32 ABCD: mbpoll needs -B (it assumes CDAB); conventions §2.5, §2.7.
    out = await _mbpoll(*base, "-r", "104", "-c", "7", "-t", "3:float", "-B", rig.host)
    values = _mbpoll_values(out)
    assert rig.plc.image is not None
    for offset, key in enumerate(("belt_speed", "motor_current", "motor_load", "bearing_temp")):
        expected = rig.plc.image.lookup("conveyor-01", key)[0]
        assert float(values[104 + 2 * offset]) == pytest.approx(expected, rel=1e-5, abs=1e-6), key
    heartbeat = _mbpoll_values(await _mbpoll(*base, "-r", "0", "-c", "1", "-t", "3", rig.host))
    assert int(heartbeat[0]) == rig.plc.scan_count
    await _mbpoll(*base, "-r", "100", "-t", "4:float", "-B", rig.host, "--", "2.75")
    await _mbpoll(*base, "-r", "150", "-t", "0", rig.host, "--", "1")  # start command coil
    rig.plc.scan()
    assert rig.plc.image.lookup("conveyor-01", "speed_setpoint")[0] == 2.75
    out = await _mbpoll(*base, "-r", "100", "-c", "1", "-t", "1", rig.host)
    assert _mbpoll_values(out)[100] == "1"


READ_ONE = bytes.fromhex("04 0000 0001")  # heartbeat: one input register


def _frame(tid: int, pdu: bytes = READ_ONE, unit: int = 1) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one response frame; return (transaction id, PDU)."""
    header = await asyncio.wait_for(reader.readexactly(7), DEADLINE_S)
    tid, proto, length, _unit = struct.unpack(">HHHB", header)
    assert proto == 0
    return tid, await asyncio.wait_for(reader.readexactly(length - 1), DEADLINE_S)


async def test_frames_split_across_packets(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection(rig.host, rig.port)
    try:
        # One byte per write, with a pause so each arrives in its own segment (asyncio sets
        # TCP_NODELAY): the header itself, then the PDU, are split across data_received calls.
        for byte in _frame(1):
            writer.write(bytes((byte,)))
            await writer.drain()
            await asyncio.sleep(0.005)
        tid, pdu = await _answer(reader)
        assert (tid, pdu[:2]) == (1, b"\x04\x02")
        # A frame and a half, then the other half with a whole frame behind it.
        first, second, third = _frame(2), _frame(3), _frame(4)
        writer.write(first + second[:5])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(second[5:] + third)
        assert [(await _answer(reader))[0] for _ in range(3)] == [2, 3, 4]
    finally:
        writer.close()


async def test_two_frames_in_one_packet(rig: Rig) -> None:
    reader, writer = await asyncio.open_connection(rig.host, rig.port)
    try:
        writer.write(_frame(10) + _frame(11, bytes.fromhex("04 0032 0001")))  # the second is a gap: 02
        assert await _answer(reader) == (10, b"\x04\x02" + struct.pack(">H", rig.plc.scan_count))
        assert await _answer(reader) == (11, b"\x84\x02")
    finally:
        writer.close()


async def test_half_closed_client_still_gets_its_answers(rig: Rig) -> None:
    rig.exposer.faults.inject(delay_ms=50)
    reader, writer = await asyncio.open_connection(rig.host, rig.port)
    try:
        writer.write(_frame(1) + _frame(2))
        writer.write_eof()
        assert [(await _answer(reader))[0] for _ in range(2)] == [1, 2]
        assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""  # then the server closes
    finally:
        writer.close()


async def test_delay_keeps_order_without_blocking_other_connections(rig: Rig) -> None:
    rig.exposer.faults.inject(delay_ms=200)
    slow_reader, slow_writer = await asyncio.open_connection(rig.host, rig.port)
    other_reader, other_writer = await asyncio.open_connection(rig.host, rig.port)
    done: list[str] = []
    try:

        async def pipelined() -> None:
            slow_writer.write(_frame(1) + _frame(2))
            for tid in (1, 2):
                assert (await _answer(slow_reader))[0] == tid
                done.append(f"slow {tid}")

        async def single() -> None:
            await asyncio.sleep(0.05)  # after the slow connection's first request is parked
            other_writer.write(_frame(9))
            assert (await _answer(other_reader))[0] == 9
            done.append("other")

        started = time.monotonic()
        await asyncio.gather(pipelined(), single())
        # Answers on one connection are serial (two delays); the other connection waits for its own
        # delay only, so it is answered before the slow connection's second answer.
        assert time.monotonic() - started >= 0.4
        assert done.index("other") < done.index("slow 2")
    finally:
        slow_writer.close()
        other_writer.close()


async def test_a_client_that_does_not_read_is_paused_not_buffered(rig: Rig) -> None:
    server = rig.exposer.server
    sock = socket.socket()
    # A small receive window (set before connect) so the answers back up quickly into the server.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (rig.host, rig.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    bystander = rig.client()
    await bystander.connect()
    try:
        # Device identification answers are ~110 bytes: 60,000 of them (6.6 MB) exceed what the
        # kernel buffers (server send buffer autotunes up to 4 MB with tcp_wmem's default maximum).
        count = 60_000
        pdu = bytes.fromhex("2B 0E 02 00")
        writer.write(b"".join(_frame(tid, pdu) for tid in range(count)))
        before = server.requests

        async def stopped() -> bool:
            seen = server.requests
            await asyncio.sleep(0.2)
            return server.requests == seen

        await _until(stopped, "the server to stop reading the client that does not read")
        assert server.requests - before < count
        assert not (await bystander.read_input_registers(0, count=1, device_id=1)).isError()
        for tid in range(count):
            got, answer = await _answer(reader)
            assert got == tid
            assert answer[:2] == b"\x2b\x0e"
        assert server.requests - before == count + 1  # the bystander's read
    finally:
        writer.close()
        bystander.close()


async def _own_server(rig: Rig, **kwargs: Any) -> ModbusTcpServer:
    server = ModbusTcpServer(RequestHandler(lambda: rig.exposer.image, rig.plc), "127.0.0.1", 0, **kwargs)
    await server.start()
    return server


async def test_idle_clients_time_out(rig: Rig) -> None:
    server = await _own_server(rig, idle_timeout_s=0.3)
    host, port = server.address
    try:
        idle_reader, idle_writer = await asyncio.open_connection(host, port)
        busy_reader, busy_writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        for tid in range(6):  # 0.6 s of traffic, every 0.1 s: never idle for 0.3 s
            busy_writer.write(_frame(tid))
            assert (await _answer(busy_reader))[0] == tid
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(idle_reader.read(), DEADLINE_S) == b""
        assert time.monotonic() - started >= 0.3
        busy_writer.write(_frame(99))
        assert (await _answer(busy_reader))[0] == 99
        idle_writer.close()
        busy_writer.close()
    finally:
        await server.close()
    assert server.connection_count == 0


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """EOF or a reset: either way the server would not talk to us."""
    try:
        return await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
    except ConnectionError:
        return True


async def test_connections_over_the_limit_are_refused(rig: Rig) -> None:
    server = await _own_server(rig, max_connections=2)
    host, port = server.address
    writers = []
    try:
        readers = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection(host, port)
            readers.append(reader)
            writers.append(writer)

        async def both_registered() -> bool:
            return server.connection_count == 2

        await _until(both_registered, "two connections")
        reader, writer = await asyncio.open_connection(host, port)
        writers.append(writer)
        assert await _closed_by_server(reader)
        assert server.refused_connections == 1
        for tid, (reader, writer) in enumerate(zip(readers, writers[:2], strict=True)):
            writer.write(_frame(tid))
            assert (await _answer(reader))[0] == tid
    finally:
        for writer in writers:
            writer.close()
        await server.close()


async def test_close_cancels_a_request_parked_in_a_delay(rig: Rig) -> None:
    rig.exposer.faults.inject(delay_ms=300)
    _, level, _ = rig.exposer.register_map.asset("gadget").address("level")
    _, writer = await asyncio.open_connection(rig.host, rig.port)
    writer.write(_frame(1, struct.pack(">BHH", 6, level, 250)))
    await writer.drain()

    async def received() -> bool:
        return rig.exposer.server.requests >= 1

    await _until(received, "the write request to arrive")
    await rig.exposer.close()
    assert rig.exposer.server.connection_count == 0
    await asyncio.sleep(0.4)  # past the delay: a closed server must not have executed it
    rig.plc.scan()
    assert rig.plc.image is not None
    assert rig.plc.image.lookup("gadget", "level")[0] == 1230.0
    writer.close()
