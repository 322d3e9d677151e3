"""ModbusSource against a real pymodbus server on a free loopback port (no fixed sleeps).

Most tests run twice: through pymodbus (``pipeline`` 1) and pipelined (``pipeline`` 8, the source's own
framing, modbus_pipeline.py); the same server answers both."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvloop
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from devices.modbus.protocol import ILLEGAL_ADDRESS, RequestHandler, exception_pdu
from devices.modbus.server import ModbusTcpServer as PlantModbusServer
from gateway.catalogue import parse_catalogue
from gateway.common.status import BAD_DEVICE_FAILURE, BAD_NO_COMMUNICATION, BAD_TIMEOUT, GOOD
from gateway.readings import Reading
from gateway.sources import ModbusSource, ModbusSourceConfig, SourceError
from gateway.sources.modbus import BAD_CONFIGURATION_ERROR
from tests.fixtures.servers import free_port
from tests.source_support import by_key, until

# Input registers: 123.456 in all four word orders (conventions §2.5), then other types.
INPUT_REGISTERS = [
    0x42F6,
    0xE979,  # 0 ABCD
    0xE979,
    0x42F6,  # 2 CDAB
    0xF642,
    0x79E9,  # 4 BADC
    0x79E9,
    0xF642,  # 6 DCBA
    0xFFFF,
    0xFFFE,  # 8 int32 -2 (ABCD)
    0x5678,
    0x1234,  # 10 uint32 0x12345678 (CDAB)
    0xFF85,  # 12 int16 -123
    1234,  # 13 uint16 x 0.1 -> 123.4
    0,  # 14 unmapped
    0x4142,
    0x4344,
    0x4500,  # 15 string "ABCDE"
    2,  # 18 enum
]
HOLDING_REGISTERS = [0, 0, 0, 0, 7]
COILS = [True, False, False]
DISCRETE_INPUTS = [False, True]


class ModbusTestServer:
    """A restartable pymodbus server; ``fail`` maps an address to the exception code to answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.fail: dict[tuple[int, int], ExcCodes] = {}  # (function code, address)
        self.delay_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0  # requests being answered at once, over all connections
        self._server: ModbusTcpServer | None = None

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: Any,
    ) -> ExcCodes | None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        for a in range(address, address + count):
            if (function_code, a) in self.fail:
                return self.fail[(function_code, a)]
        return None

    def delay(self, seconds: float) -> None:
        """Answer every request ``seconds`` late (0: at once)."""
        self.delay_s = seconds

    async def start(self) -> None:
        device = SimDevice(
            id=1,
            simdata=(
                [SimData(0, values=list(COILS), datatype=DataType.BITS)],
                [SimData(0, values=list(DISCRETE_INPUTS), datatype=DataType.BITS)],
                [SimData(0, values=list(HOLDING_REGISTERS), datatype=DataType.REGISTERS)],
                [SimData(0, values=list(INPUT_REGISTERS), datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )
        self._server = ModbusTcpServer([device], address=("127.0.0.1", self.port))
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


class TablesHandler(RequestHandler):
    """The same four tables behind the plant's own Modbus server, which (unlike pymodbus 3.16's, which
    answers only the first request of a TCP segment) answers pipelined requests."""

    def __init__(self, owner: ModbusTestServer) -> None:  # no plant image: tables only
        self.owner = owner  # its ``fail`` is read per request: tests replace it
        self.tables: dict[int, list[int]] = {
            1: [int(b) for b in COILS], 2: [int(b) for b in DISCRETE_INPUTS],
            3: list(HOLDING_REGISTERS), 4: list(INPUT_REGISTERS),
        }

    def handle(self, unit_id: int, pdu: bytes) -> bytes:
        function, address, count = struct.unpack_from(">BHH", pdu)
        table = {5: 1, 6: 3, 16: 3}.get(function, function)
        values = self.tables[table]
        if function == 5:
            values[address] = int(count == 0xFF00)
            return pdu
        if function == 6:
            values[address] = count
            return pdu
        fail = self.owner.fail
        refused = next((fail[(function, a)] for a in range(address, address + count) if (function, a) in fail), None)
        if refused is not None:
            return exception_pdu(function, int(refused))
        if address + count > len(values):
            return exception_pdu(function, ILLEGAL_ADDRESS)
        if function == 16:
            values[address:address + count] = struct.unpack_from(f">{count}H", pdu, 6)
            return pdu[:5]
        chunk = values[address:address + count]
        if function in (1, 2):
            data = bytes(sum(bit << i for i, bit in enumerate(chunk[at:at + 8])) for at in range(0, count, 8))
        else:
            data = struct.pack(f">{count}H", *chunk)
        return bytes((function, len(data))) + data


class PipeliningTestServer(ModbusTestServer):
    """ModbusTestServer's tables, failures and delay on the plant's Modbus server."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self._plant: PlantModbusServer | None = None

    async def start(self) -> None:
        self._plant = PlantModbusServer(TablesHandler(self), "127.0.0.1", self.port)
        await self._plant.start()

    async def stop(self) -> None:
        if self._plant is not None:
            await self._plant.close()
            self._plant = None

    @property
    def requests(self) -> int:
        """Requests the server has received."""
        return self._plant.requests if self._plant is not None else 0

    @property
    def connections(self) -> int:
        return self._plant.connection_count if self._plant is not None else 0

    def mute(self) -> None:
        """Read requests and answer none, until ``delay(0)``."""
        assert self._plant is not None
        self._plant.faults.inject(no_response=True)

    def delay(self, seconds: float) -> None:
        super().delay(seconds)
        if self._plant is not None:
            if seconds:
                self._plant.faults.inject(delay_ms=seconds * 1000)
            else:
                self._plant.faults.clear()


def make_server(pipeline: int) -> ModbusTestServer:
    return ModbusTestServer(free_port()) if pipeline == 1 else PipeliningTestServer(free_port())


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[ModbusTestServer]:
    """pymodbus' server, or the plant's for a test run pipelined (its ``pipeline`` parameter > 1)."""
    srv = make_server(request.node.callspec.params.get("pipeline", 1) if hasattr(request.node, "callspec") else 1)
    await srv.start()
    yield srv
    await srv.stop()


def tag(asset: str, key: str, table: str, address: int, datatype: str, **extra: Any) -> dict[str, Any]:
    return {"asset": asset, "key": key, "table": table, "address": address, "datatype": datatype, **extra}


TAGS = [
    tag("m", "f_abcd", "input_register", 0, "float32", word_order="ABCD"),
    tag("m", "f_cdab", "input_register", 2, "float32", word_order="CDAB"),
    tag("m", "f_badc", "input_register", 4, "float32", word_order="BADC"),
    tag("m", "f_dcba", "input_register", 6, "float32", word_order="DCBA"),
    tag("m", "i32", "input_register", 8, "int32"),
    tag("m", "u32", "input_register", 10, "uint32", word_order="CDAB"),
    tag("m", "i16", "input_register", 12, "int16"),
    tag("m", "u16", "input_register", 13, "uint16", scale=0.1, unit="MTS"),
    tag("m", "name", "input_register", 15, "string", count=3),
    tag("m", "mode", "input_register", 18, "enum"),
    tag("m", "setpoint", "holding_register", 0, "float32", access="rw"),
    tag("m", "limit", "holding_register", 4, "uint16", access="rw", scale=0.5),
    tag("m", "run", "coil", 0, "bool", access="rw"),
    tag("m", "estop", "discrete_input", 1, "bool"),
]
EXPECTED = {
    "f_abcd": 123.456,
    "f_cdab": 123.456,
    "f_badc": 123.456,
    "f_dcba": 123.456,
    "i32": -2,
    "u32": 0x12345678,
    "i16": -123,
    "u16": 123.4,
    "name": "ABCDE",
    "mode": 2,
    "setpoint": 0.0,
    "limit": 3.5,
    "run": True,
    "estop": True,
}


def config(port: int, **extra: Any) -> ModbusSourceConfig:
    base: dict[str, Any] = {
        "name": "meter",
        "host": "127.0.0.1",
        "port": port,
        "timeout_s": 1.0,
        "retries": 0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.3,
        "tags": TAGS,
        "readable_blocks": [{"table": "input_register", "address": 0, "count": 19}],
    }
    return ModbusSourceConfig.model_validate(base | extra)


PIPELINE = pytest.mark.parametrize("pipeline", [1, 8])


@PIPELINE
@pytest.mark.parametrize("connections", [1, 3])
async def test_reads_every_datatype_and_word_order(server: ModbusTestServer, connections: int, pipeline: int) -> None:
    async with ModbusSource(config(server.port, connections=connections, pipeline=pipeline)) as source:
        # IR 0..18 is one declared block, so the gap at IR 14 is bridged (one IR request); HR 2-3 is
        # not declared readable, so HR takes two: coil + DI + 2 HR + 1 IR.
        assert len(source.plan) == 5
        got = by_key(await source.read())
    assert set(got) == set(EXPECTED)
    for key, value in EXPECTED.items():
        assert got[key].quality == GOOD, key
        assert got[key].value == pytest.approx(value), key
    assert got["u16"].unit == "MTS"
    assert got["u16"].device == "meter"


@pytest.mark.parametrize("pipeline", [1, 8])
def test_reads_and_writes_under_uvloop(pipeline: int) -> None:
    """The source works on any asyncio event loop, not only asyncio's own: uvloop (installed with
    uvicorn[standard]) gives transports that do not derive from asyncio's classes."""

    async def scenario() -> dict[str, Reading]:
        srv = make_server(pipeline)
        await srv.start()
        try:
            async with ModbusSource(config(srv.port, connections=2, pipeline=pipeline)) as source:
                await source.write("m", "setpoint", 7.25)
                return by_key(await source.read())
        finally:
            await srv.stop()

    got = uvloop.run(scenario())
    assert all(r.quality == GOOD for r in got.values())
    assert got["f_abcd"].value == pytest.approx(123.456)
    assert got["setpoint"].value == 7.25


@PIPELINE
async def test_write_round_trips_through_the_codec(server: ModbusTestServer, pipeline: int) -> None:
    async with ModbusSource(config(server.port, pipeline=pipeline)) as source:
        await source.write("m", "setpoint", 42.5)
        await source.write("m", "limit", 10.0)  # raw 20 at scale 0.5
        await source.write("m", "run", False)
        got = by_key(await source.read())
        assert (got["setpoint"].value, got["limit"].value, got["run"].value) == (42.5, 10.0, False)
        with pytest.raises(SourceError, match="read-only"):
            await source.write("m", "i16", 1)
        with pytest.raises(SourceError, match="out of range"):
            await source.write("m", "limit", 1e9)


@PIPELINE
@pytest.mark.parametrize("connections", [1, 3])
async def test_device_exceptions_become_bad_quality_for_their_request_only(
    server: ModbusTestServer, connections: int, pipeline: int
) -> None:
    server.fail = {(4, 0): ExcCodes.DEVICE_FAILURE, (3, 4): ExcCodes.ILLEGAL_ADDRESS}
    async with ModbusSource(config(server.port, connections=connections, pipeline=pipeline)) as source:
        got = by_key(await source.read())
        assert source.connected  # exceptions are answers: the link is fine
    assert not source.connected  # closed
    assert got["f_abcd"].quality == BAD_DEVICE_FAILURE  # exception 04
    assert got["f_abcd"].value is None
    assert got["limit"].quality == BAD_CONFIGURATION_ERROR  # exception 02 on HR 4
    assert got["setpoint"].quality == GOOD  # a separate request (HR 2-3 is not declared)
    assert got["run"].quality == GOOD
    assert got["estop"].quality == GOOD


@PIPELINE
@pytest.mark.parametrize("connections", [1, 3])
async def test_timeout_becomes_bad_timeout(server: ModbusTestServer, connections: int, pipeline: int) -> None:
    server.delay(0.5)
    async with ModbusSource(config(server.port, timeout_s=0.1, connections=connections, pipeline=pipeline)) as source:
        got = await source.read()
        assert {r.quality for r in got} == {BAD_TIMEOUT}
        server.delay(0.0)
        await until(lambda: _all_good(source), "recovery after timeouts")


@pytest.mark.parametrize("connections", [1, 3])
async def test_connections_spread_a_poll_over_lanes_in_plan_order(server: ModbusTestServer, connections: int) -> None:
    """With N connections up to N requests are in flight at once; readings keep the plan's order."""
    server.delay(0.05)  # long enough for the lanes' requests to overlap at the server
    async with ModbusSource(config(server.port)) as single:
        expected = [(r.asset, r.tag, r.value) for r in await single.read()]
    server.max_in_flight = 0
    async with ModbusSource(config(server.port, connections=connections)) as source:
        got = [(r.asset, r.tag, r.value) for r in await source.read()]
        await source.write("m", "setpoint", 1.5)  # commands go through the first connection
    assert got == expected
    assert server.max_in_flight == min(connections, len(source.plan))


async def test_pipelining_a_device_that_cannot_gives_bad_timeout_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pymodbus' server answers the first request of a TCP segment and drops the rest: the rest are
    Bad timeout (never another request's data), and the log names the setting to change."""
    srv = ModbusTestServer(free_port())
    await srv.start()
    try:
        async with ModbusSource(config(srv.port, pipeline=8, timeout_s=0.2)) as source:
            got = await source.read()
    finally:
        await srv.stop()
    first = source.plan[0].items  # the coil request, the only one answered
    assert [r.quality for r in got[: len(first)]] == [GOOD] * len(first)
    assert {r.quality for r in got[len(first):]} == {BAD_TIMEOUT}
    assert any("needs pipeline: 1" in r.getMessage() for r in caplog.records)


async def test_a_poll_cancelled_with_every_lane_outstanding_leaves_none_behind() -> None:
    """The pipelined lanes are started together and finished in turn: a poll cancelled while the first
    waits must end the others too, or their connections would refuse the next poll's exchanges."""
    srv = PipeliningTestServer(free_port())
    await srv.start()
    try:
        srv.mute()  # no answer while the poll is cancelled
        async with ModbusSource(config(srv.port, connections=3, pipeline=8)) as source:
            poll = asyncio.create_task(source.read())

            async def every_lane_sent() -> bool:
                return srv.requests == len(source.plan)

            await until(every_lane_sent, "every lane's requests at the device")
            poll.cancel()
            with pytest.raises(asyncio.CancelledError):
                await poll

            async def every_lane_closed() -> bool:
                return srv.connections == 0

            # Before the timeout (1 s) could end them: a connection with answers due is closed at once.
            await until(every_lane_closed, "every connection with answers due closed", deadline_s=0.5)
            srv.delay(0.0)  # clears the fault
            await until(lambda: _all_good(source), "the next polls read again")
    finally:
        await srv.stop()


async def _all_good(source: ModbusSource) -> bool:
    return all(r.quality == GOOD for r in await source.read())


@PIPELINE
async def test_server_down_at_first_then_up(caplog: pytest.LogCaptureFixture, pipeline: int) -> None:
    caplog.set_level(logging.INFO, logger="gateway.sources.base")
    srv = make_server(pipeline)
    async with ModbusSource(config(srv.port, pipeline=pipeline)) as source:  # connect() must not raise
        for _ in range(3):
            got = await source.read()
            assert len(got) == len(TAGS)
            assert {r.quality for r in got} == {BAD_NO_COMMUNICATION}
        assert not source.connected
        await srv.start()
        try:
            await until(lambda: _all_good(source), "source recovers by itself")
            assert source.connected
        finally:
            await srv.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1  # logged once, not once per poll
    assert sum("connected" in m and "meter" in m for m in messages) == 1


@PIPELINE
async def test_server_stopped_mid_run_then_back(
    server: ModbusTestServer, caplog: pytest.LogCaptureFixture, pipeline: int
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.sources.base")
    async with ModbusSource(config(server.port, pipeline=pipeline)) as source:
        assert await _all_good(source)
        await server.stop()

        async def all_bad() -> bool:
            return {r.quality for r in await source.read()} == {BAD_NO_COMMUNICATION}

        await until(all_bad, "bad quality while the server is down")
        assert not source.connected
        for _ in range(3):
            await source.read()
        await server.start()
        await until(lambda: _all_good(source), "recovery after restart")
    lost = [r for r in caplog.records if "connection lost" in r.getMessage()]
    assert len(lost) == 1


def catalogue_doc(port: int) -> dict[str, Any]:
    return {
        "format": "twinedge-catalogue",
        "version": 1,
        "plant": "test",
        "future_field": {"ignored": True},
        "plcs": [
            {
                "id": "plc1",
                "site": "s1",
                "area": "a1",
                "opcua": None,
                "modbus": {
                    "host": "127.0.0.1",
                    "port": port,
                    "unit_id": 1,
                    "word_order": "CDAB",
                    "heartbeat": {"table": "input_register", "address": 17},
                },
                "assets": [
                    {
                        "id": "conv1",
                        "type": "conveyor",
                        "unit_id": 1,
                        "status_register": {"whatever": 1},
                        "tags": [
                            {
                                "key": "speed",
                                "datatype": "float32",
                                "kind": "analog",
                                "unit": "MTS",
                                "access": "ro",
                                "opcua": {"browse_path": ["s1", "a1", "plc1", "conv1", "speed"]},
                                "modbus": {
                                    "table": "input_register",
                                    "address": 2,
                                    "count": 2,
                                    "scale": 1,
                                    "offset": 0,
                                },
                            },
                            {
                                "key": "hours",
                                "datatype": "uint32",
                                "access": "ro",
                                "modbus": {"table": "input_register", "address": 10, "count": 2},
                            },
                            {
                                "key": "running",
                                "datatype": "bool",
                                "access": "rw",
                                "modbus": {"table": "coil", "address": 0, "count": 1},
                            },
                        ],
                        "commands": [
                            {"name": "reset", "args": [], "modbus": {"table": "coil", "address": 2}}
                        ],
                    }
                ],
            }
        ],
    }


@PIPELINE
async def test_catalogue_plc_source_reads_and_calls(server: ModbusTestServer, pipeline: int) -> None:
    catalogue = parse_catalogue(catalogue_doc(server.port))
    cfg = ModbusSourceConfig(name="plc1", plc="plc1", reconnect_min_s=0.05, reconnect_max_s=0.3, pipeline=pipeline)
    async with ModbusSource(cfg, catalogue) as source:
        got = by_key(await source.read())
        assert got["speed"].value == pytest.approx(123.456)  # PLC-wide CDAB
        assert got["hours"].value == 0x12345678
        assert (got["speed"].site, got["speed"].area, got["speed"].asset) == ("s1", "a1", "conv1")
        await source.call("conv1", "reset")
        with pytest.raises(SourceError):
            await source.call("conv1", "nope")
        await source.write("conv1", "running", False)
        assert by_key(await source.read())["running"].value is False


async def test_close_is_idempotent_and_constructor_does_no_io() -> None:
    source = ModbusSource(config(free_port()))  # nothing listens: the constructor must not care
    await source.close()
    await source.close()
