"""The pipelined Modbus TCP client (gateway/sources/modbus_pipeline.py) over real loopback TCP.

Small asyncio servers written here speak MBAP by hand so that they can misbehave on purpose (answers in
reverse order, a header split across segments, a foreign transaction or unit id, a bad header, silence, a
close). The PDU helpers are checked against the plant's own Modbus server (devices.modbus, with a test asset
type holding runs of bits and word setpoints) and, byte for byte, against the examples of the Modbus
Application Protocol spec (V1.1b3 §6). Every wait is bounded and waits on an event or a future; the one
sleep paces a server's answers in the test where elapsed time is the point (the timeout's deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, cast

import numpy as np
import pytest

from devices.assets.base import Array, AssetModel, State
from devices.assets.registry import ASSET_TYPES
from devices.clock import VirtualClock
from devices.config import PlantSettings, PlcConfig
from devices.modbus import ModbusExposer
from devices.plc import AssetGroup, Plc
from devices.tags import Access, DataType, TagKind, TagSpec
from gateway.sources.modbus_pipeline import (
    MALFORMED,
    MBAP,
    ExchangeFailed,
    ModbusTcpConnection,
    read_answer,
    read_pdu,
    write_answer,
    write_coil_pdu,
    write_registers_pdu,
)
from gateway.sources.modbus_planner import Table
from tests.fixtures.servers import free_port

DEADLINE_S = 5.0  # bound on every wait and exchange: a hang fails the test instead of stalling the suite
UNIT = 1
Frames = list[tuple[int, bytes]]

# -- MBAP by hand -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    tid: int
    unit: int
    pdu: bytes


def adu(tid: int, pdu: bytes, unit: int = UNIT, *, protocol: int = 0, length: int | None = None) -> bytes:
    """One MBAP frame; ``protocol`` and ``length`` can be set wrong on purpose."""
    return MBAP.pack(tid, protocol, len(pdu) + 1 if length is None else length, unit) + pdu


def echo_registers(pdu: bytes) -> bytes:
    """The answer to a register read whose data depends on the request: register i holds address + i."""
    function, address, count = struct.unpack(">BHH", pdu)
    return struct.pack(f">BB{count}H", function, 2 * count, *range(address, address + count))


def reply(request: Request, unit: int | None = None) -> bytes:
    """The ADU answering ``request`` with echo_registers, from its unit unless ``unit`` says otherwise."""
    return adu(request.tid, echo_registers(request.pdu), request.unit if unit is None else unit)


def reads(count: int) -> Frames:
    """``count`` holding-register reads whose answers all differ (address and quantity vary)."""
    return [(UNIT, read_pdu("holding_register", 1000 + 10 * i, 1 + i % 3)) for i in range(count)]


def echoes(frames: Frames) -> list[bytes]:
    """What echo_registers answers to ``frames``, in request order."""
    return [echo_registers(pdu) for _, pdu in frames]


Policy = Callable[["RawConnection", list[Request]], None]


class RawConnection(asyncio.Protocol):
    """Server side of one connection: parses MBAP requests and hands the batch of each data_received to
    ``policy``, which answers (or not) with ``answer``. Counts requests received and answered, so that a
    test sees how many the client kept outstanding."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self.requests: list[Request] = []
        self.answered = 0
        self.batches: list[int] = []  # requests parsed per data_received
        self.outstanding: list[int] = []  # received and not answered, at each data_received
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def received(self) -> int:
        return len(self.requests)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        batch: list[Request] = []
        while len(self._buffer) >= MBAP.size:
            tid, _protocol, length, unit = MBAP.unpack_from(self._buffer)
            if len(self._buffer) < 6 + length:
                break
            batch.append(Request(tid, unit, self._buffer[MBAP.size : 6 + length]))
            self._buffer = self._buffer[6 + length :]
        if batch:
            self.requests += batch
            self.batches.append(len(batch))
            self.outstanding.append(self.received - self.answered)
            self._policy(self, batch)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def answer(self, frames: Sequence[bytes]) -> None:
        """Write ``frames`` in one write, each counted as an answer."""
        assert self.transport is not None
        self.answered += len(frames)
        self.transport.write(b"".join(frames))


@dataclass
class Link:
    client: ModbusTcpConnection
    accepted: list[RawConnection] = field(default_factory=list)

    @property
    def server(self) -> RawConnection:
        """The server side of the client's connection (it exists once the client has sent something)."""
        assert len(self.accepted) == 1
        return self.accepted[0]

    async def exchange(self, frames: Frames, window: int, timeout_s: float = DEADLINE_S) -> list[bytes]:
        return await asyncio.wait_for(
            self.client.exchange(frames, window=window, timeout_s=timeout_s), DEADLINE_S + timeout_s
        )


@contextlib.asynccontextmanager
async def serving(policy: Policy, connection: type[ModbusTcpConnection] = ModbusTcpConnection) -> AsyncIterator[Link]:
    """A raw server answering by ``policy`` on a loopback port, and a client ``connection`` to it."""
    accepted: list[RawConnection] = []

    def accept() -> RawConnection:
        accepted.append(RawConnection(policy))
        return accepted[-1]

    server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
    try:
        client = await connection.open("127.0.0.1", server.sockets[0].getsockname()[1], DEADLINE_S)
        try:
            yield Link(client, accepted)
        finally:
            client.close()
    finally:
        server.close()
        for raw in accepted:
            if raw.transport is not None:
                raw.transport.abort()
        await server.wait_closed()


def answer_all(raw: RawConnection, batch: list[Request]) -> None:
    raw.answer([reply(r) for r in batch])


def answer_reversed(raw: RawConnection, batch: list[Request]) -> None:
    raw.answer([reply(r) for r in reversed(batch)])


def answer_soon(raw: RawConnection, batch: list[Request]) -> None:
    """Answer from a later callback: a client that sends beyond its window meanwhile is caught."""
    asyncio.get_running_loop().call_soon(raw.answer, [reply(r) for r in batch])


def ignore(raw: RawConnection, batch: list[Request]) -> None:
    pass


class RecordingConnection(ModbusTcpConnection):
    """The client, recording the bytes of each data_received and signalling that some arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []
        self.arrived = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.arrived.set()
        super().data_received(data)


# -- pairing and window ------------------------------------------------------------------------------


async def test_answers_in_reverse_order_are_paired_by_transaction_id() -> None:
    frames = reads(20)
    async with serving(answer_reversed) as link:
        assert await link.exchange(frames, window=8) == echoes(frames)
        assert link.server.batches[0] == 8  # a full window arrived together, so its answers really came reversed
        assert link.server.received == 20
        assert link.client.connected


@pytest.mark.parametrize("window", [1, 4, 8])
async def test_at_most_window_requests_are_outstanding(window: int) -> None:
    frames = reads(30)
    async with serving(answer_soon) as link:
        assert await link.exchange(frames, window=window) == echoes(frames)
        assert max(link.server.outstanding) == window
        assert link.server.received == link.server.answered == 30


async def test_a_connection_carries_one_exchange_after_another() -> None:
    async with serving(answer_reversed) as link:
        for count in (5, 1, 12):
            frames = reads(count)
            assert await link.exchange(frames, window=4) == echoes(frames)
        assert link.server.received == 18


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(1, id="in-tid"),
        pytest.param(5, id="in-length"),
        pytest.param(6, id="before-unit"),
        pytest.param(7, id="header-without-pdu"),
        pytest.param(11 + 3, id="frame-and-part-of-a-header"),
        pytest.param(11 + 8, id="frame-and-part-of-a-pdu"),
    ],
)
async def test_answers_split_across_segments_are_reassembled(cut: int) -> None:
    """The two answers (11 and 13 bytes) in two writes cut at ``cut``, the second once the client has read
    the first: the client sees the cut in two data_received calls."""
    frames = reads(2)
    written: list[bytes] = []
    tasks: list[asyncio.Task[None]] = []

    async def in_two_writes(raw: RawConnection, data: bytes) -> None:
        assert raw.transport is not None
        raw.transport.write(data[:cut])
        await asyncio.wait_for(client.arrived.wait(), DEADLINE_S)
        raw.transport.write(data[cut:])

    def split(raw: RawConnection, batch: list[Request]) -> None:
        if raw.received == len(frames):
            written.append(b"".join(reply(r) for r in raw.requests))
            tasks.append(asyncio.create_task(in_two_writes(raw, written[0])))

    async with serving(split, RecordingConnection) as link:
        client = cast(RecordingConnection, link.client)
        assert await link.exchange(frames, window=2) == echoes(frames)
        await tasks[0]
    assert client.chunks == [written[0][:cut], written[0][cut:]]


# -- failures ----------------------------------------------------------------------------------------


def first_two_then(tail: Callable[[list[Request]], bytes] | None = None, *, close: bool = False) -> Policy:
    """Once three requests are in, answer the first two properly and, in the same write, put ``tail(the
    requests)``; then close if ``close``. Nothing else is ever answered."""

    def policy(raw: RawConnection, batch: list[Request]) -> None:
        if raw.received < 3 or raw.answered:
            return
        bad = [tail(raw.requests)] if tail is not None else []
        raw.answer([reply(r) for r in raw.requests[:2]] + bad)
        if close:
            assert raw.transport is not None
            raw.transport.close()

    return policy


@pytest.mark.parametrize(
    ("policy", "kind"),
    [
        pytest.param(first_two_then(), "timeout", id="silence"),
        pytest.param(first_two_then(lambda rs: adu(0x7777, echo_registers(rs[2].pdu))), "lost", id="unknown-tid"),
        pytest.param(first_two_then(lambda rs: reply(rs[0])), "lost", id="tid-answered-twice"),
        pytest.param(first_two_then(lambda rs: reply(rs[2], unit=UNIT + 1)), "lost", id="other-unit"),
        pytest.param(
            first_two_then(lambda rs: adu(rs[2].tid, echo_registers(rs[2].pdu), protocol=1)), "lost", id="protocol-1"
        ),
        *(
            pytest.param(
                first_two_then(lambda rs, n=n: adu(rs[2].tid, echo_registers(rs[2].pdu), length=n)),
                "lost",
                id=f"len-{n}",
            )
            for n in (0, 1, 255, 300)
        ),
        pytest.param(first_two_then(close=True), "lost", id="server-closes"),
    ],
)
async def test_a_failure_ends_the_connection_and_reports_what_arrived(policy: Policy, kind: str) -> None:
    frames = reads(5)
    timeout_s = 0.2 if kind == "timeout" else DEADLINE_S  # a "lost" that is not detected fails as a timeout
    async with serving(policy) as link:
        started = time.monotonic()
        with pytest.raises(ExchangeFailed) as failed:
            await link.exchange(frames, window=5, timeout_s=timeout_s)
        if kind == "timeout":
            assert time.monotonic() - started >= timeout_s
        assert failed.value.kind == kind, str(failed.value)
        assert failed.value.answers == [*echoes(frames)[:2], None, None, None]
        assert not link.client.connected
        await asyncio.wait_for(link.server.closed, DEADLINE_S)  # the TCP connection did end
        with pytest.raises(ExchangeFailed) as again:
            await link.exchange(frames[:2], window=2)
        assert (again.value.kind, again.value.answers) == ("lost", [None, None])


async def test_a_cancelled_exchange_ends_the_connection() -> None:
    """Cancelled with requests outstanding (the command queue's execute timeout cancels a write that way),
    the connection would carry their late answers into the next exchange, which then fails on a transaction
    id it did not send while ``connected`` said all was well. As after a timeout, the connection must end,
    so that the source reconnects before its next poll instead of failing it."""
    arrived = asyncio.Event()
    async with serving(lambda raw, batch: arrived.set()) as link:
        exchange = asyncio.create_task(link.exchange(reads(3), window=3))
        await asyncio.wait_for(arrived.wait(), DEADLINE_S)
        exchange.cancel()
        with pytest.raises(asyncio.CancelledError):
            await exchange
        assert not link.client.connected
        await asyncio.wait_for(link.server.closed, DEADLINE_S)


async def test_the_timeout_runs_from_the_last_answer() -> None:
    """Each answer moves the deadline: an exchange slower in total than timeout_s, but never silent that
    long, succeeds."""
    timeout_s = 0.6
    frames = reads(6)

    async def one_by_one(raw: RawConnection) -> None:
        for request in raw.requests:
            # Wait on a timer shorter than the timeout: the point of the test is the elapsed time.
            await asyncio.sleep(timeout_s / 4)
            raw.answer([reply(request)])

    tasks: list[asyncio.Task[None]] = []

    def slowly(raw: RawConnection, batch: list[Request]) -> None:
        if raw.received == len(frames):
            tasks.append(asyncio.create_task(one_by_one(raw)))

    async with serving(slowly) as link:
        started = time.monotonic()
        assert await link.exchange(frames, window=len(frames), timeout_s=timeout_s) == echoes(frames)
        assert time.monotonic() - started > timeout_s
        await tasks[0]


# -- started and finished apart (a source with several connections) ---------------------------------


async def test_start_sends_the_first_window_before_anyone_awaits() -> None:
    batches: asyncio.Queue[list[Request]] = asyncio.Queue()
    frames = reads(6)
    async with serving(lambda raw, batch: batches.put_nowait(batch)) as link:
        exchange = link.client.start(frames, window=4, timeout_s=DEADLINE_S)
        first = await asyncio.wait_for(batches.get(), DEADLINE_S)  # nobody is in finish() yet
        assert len(first) == 4
        link.server.answer([reply(r) for r in first])
        rest = await asyncio.wait_for(batches.get(), DEADLINE_S)  # the window refilled by the answers
        link.server.answer([reply(r) for r in rest])
        assert await asyncio.wait_for(link.client.finish(exchange), DEADLINE_S) == echoes(frames)
        assert link.client.connected


async def test_abandoning_an_exchange_with_answers_due_ends_the_connection() -> None:
    arrived = asyncio.Event()
    async with serving(lambda raw, batch: arrived.set()) as link:
        exchange = link.client.start(reads(3), window=3, timeout_s=DEADLINE_S)
        await asyncio.wait_for(arrived.wait(), DEADLINE_S)
        link.client.abandon(exchange)
        assert exchange.done.cancelled()
        assert not link.client.connected
        await asyncio.wait_for(link.server.closed, DEADLINE_S)


async def test_abandoning_an_answered_exchange_keeps_the_connection_for_the_next() -> None:
    frames = reads(3)
    async with serving(answer_all) as link:
        exchange = link.client.start(frames, window=3, timeout_s=DEADLINE_S)
        await asyncio.wait_for(asyncio.shield(exchange.done), DEADLINE_S)
        link.client.abandon(exchange)
        assert link.client.connected
        assert await link.exchange(frames, window=3) == echoes(frames)


# -- preconditions -----------------------------------------------------------------------------------


async def test_no_frames_is_no_exchange() -> None:
    async with serving(ignore) as link:
        assert await link.exchange([], window=4) == []
        assert link.client.connected


async def test_exchange_on_a_closed_connection_is_lost() -> None:
    async with serving(answer_all) as link:
        link.client.close()
        assert not link.client.connected
        with pytest.raises(ExchangeFailed) as failed:
            await link.exchange(reads(3), window=2)
        assert (failed.value.kind, failed.value.answers) == ("lost", [None, None, None])


async def test_a_second_concurrent_exchange_is_refused_and_leaves_the_first_alone() -> None:
    arrived = asyncio.Event()
    frames = reads(1)
    async with serving(lambda raw, batch: arrived.set()) as link:
        first = asyncio.create_task(link.exchange(frames, window=1))
        await asyncio.wait_for(arrived.wait(), DEADLINE_S)
        with pytest.raises(RuntimeError):
            await link.exchange(reads(2), window=2)
        link.server.answer([reply(r) for r in link.server.requests])
        assert await first == echoes(frames)


async def test_open_to_a_port_nothing_listens_on_raises_oserror() -> None:
    with pytest.raises(OSError):  # noqa: PT011 - refused: ConnectionRefusedError, whose message is the OS's
        await ModbusTcpConnection.open("127.0.0.1", free_port(), DEADLINE_S)


# -- the PDU helpers against the plant's Modbus server ------------------------------------------------


LAMPS_ON = (0, 3, 8)  # ten lamps read LSB first: 0b00001001, 0b00000001


class Panel(AssetModel):
    """A test asset type with runs of bits (ten lamps: discrete inputs; ten switches: coils) and two word
    setpoints (uint16: FC6; float32: FC16), which the conveyor's map does not have."""

    type_name: ClassVar[str] = "test-panel"
    tags: ClassVar[tuple[TagSpec, ...]] = (
        *(TagSpec(f"lamp{i}", DataType.BOOL, TagKind.STATE, f"Lamp {i}") for i in range(10)),
        *(TagSpec(f"switch{i}", DataType.BOOL, TagKind.SETPOINT, f"Switch {i}", access=Access.RW) for i in range(10)),
        TagSpec("level", DataType.UINT16, TagKind.SETPOINT, "Level", eu_range=(0.0, 5000.0), access=Access.RW),
        TagSpec("limit", DataType.FLOAT32, TagKind.SETPOINT, "Limit", eu_range=(0.0, 100.0), access=Access.RW),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        return {
            **{f"lamp{i}": np.full(count, float(i in LAMPS_ON)) for i in range(10)},
            **{f"switch{i}": np.zeros(count) for i in range(10)},
            "level": np.full(count, 123.0),
            "limit": np.full(count, 80.0),
        }

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        return state

    def outputs(self, state: State) -> Mapping[str, Array]:
        return {spec.key: state[spec.key] for spec in self.tags}


@dataclass
class Plant:
    plc: Plc
    exposer: ModbusExposer

    def address(self, key: str) -> int:
        return self.exposer.register_map.asset("panel").address(key)[1]

    def value(self, key: str) -> float:
        assert self.plc.image is not None
        return float(self.plc.image.lookup("panel", key)[0])


@pytest.fixture
async def plant(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Plant]:
    monkeypatch.setitem(ASSET_TYPES, Panel.type_name, Panel)
    config = PlcConfig.model_validate(
        {
            "id": "plc-test",
            "opcua": {"port": 4840},
            "modbus": {"port": 5020, "unit_id": UNIT},
            "assets": [{"type": Panel.type_name, "id": "panel"}],
        }
    )
    plc = Plc("plc-test", [AssetGroup(Panel(), ("panel",))], VirtualClock())
    async with ModbusExposer(plc, "site", "area", config, PlantSettings(), port=0) as exposer:
        plc.scan()
        yield Plant(plc, exposer)


@contextlib.asynccontextmanager
async def connected_to(plant: Plant) -> AsyncIterator[ModbusTcpConnection]:
    connection = await ModbusTcpConnection.open(*plant.exposer.address, DEADLINE_S)
    try:
        yield connection
    finally:
        connection.close()


async def exchange(connection: ModbusTcpConnection, pdus: Sequence[bytes]) -> list[bytes]:
    frames = [(UNIT, pdu) for pdu in pdus]
    return await asyncio.wait_for(connection.exchange(frames, window=4, timeout_s=DEADLINE_S), DEADLINE_S)


async def test_reads_decode_as_the_plant_serves_them(plant: Plant) -> None:
    lamps, switches, level = plant.address("lamp0"), plant.address("switch0"), plant.address("level")
    assert plant.address("limit") == level + 1  # declaration order: one FC3 reads both setpoints
    requests: list[tuple[Table, int, int, bytes | int]] = [
        ("discrete_input", lamps, 10, bytes([0b00001001, 0b00000001])),  # LSB first
        ("discrete_input", lamps + 3, 6, bytes([0b00100001])),  # lamp3..lamp8: bit 0 is the first asked
        ("coil", switches, 10, bytes(2)),
        ("holding_register", level, 3, struct.pack(">Hf", 123, 80.0)),
        ("input_register", 0, 1, struct.pack(">H", plant.plc.scan_count)),  # the heartbeat
        # Exception 02 for what the map does not hold: decoded as the code, not as data.
        ("holding_register", level + 50, 1, 2),
        ("coil", switches, 11, 2),  # runs past the last switch
        ("input_register", 50, 1, 2),  # a gap in the PLC block
    ]
    async with connected_to(plant) as connection:
        answers = await exchange(connection, [read_pdu(table, address, count) for table, address, count, _ in requests])
    decoded = [
        read_answer(answer, table, count) for answer, (table, _, count, _) in zip(answers, requests, strict=True)
    ]
    assert decoded == [expected for *_, expected in requests]


async def test_writes_are_acknowledged_then_read_back(plant: Plant) -> None:
    level, limit, switches = plant.address("level"), plant.address("limit"), plant.address("switch0")
    writes: list[tuple[bytes, int | None]] = [
        (write_registers_pdu(level, [250]), None),  # FC6
        (write_registers_pdu(limit, struct.unpack(">HH", struct.pack(">f", 42.5))), None),  # FC16
        (write_coil_pdu(switches + 1, True), None),  # FC5
        (write_coil_pdu(switches + 9, True), None),
        (write_coil_pdu(switches, False), None),  # OFF is a write too
        (write_registers_pdu(limit, [0x4120]), 2),  # FC6 on half a float32: not a writable address
        (write_registers_pdu(limit, struct.unpack(">HH", struct.pack(">f", 500.0))), 3),  # outside 0..100
    ]
    async with connected_to(plant) as connection:
        answers = await exchange(connection, [pdu for pdu, _ in writes])
        assert [write_answer(pdu, answer) for (pdu, _), answer in zip(writes, answers, strict=True)] == [
            code for _, code in writes
        ]
        plant.plc.scan()  # accepted writes apply at the next scan
        registers, coils = await exchange(
            connection, [read_pdu("holding_register", level, 3), read_pdu("coil", switches, 10)]
        )
    assert read_answer(registers, "holding_register", 3) == struct.pack(">Hf", 250, 42.5)
    assert read_answer(coils, "coil", 10) == bytes([0b00000010, 0b00000010])  # switch1 and switch9
    assert (plant.value("level"), plant.value("limit"), plant.value("switch9")) == (250.0, 42.5, 1.0)


# -- the PDU helpers byte by byte (Modbus Application Protocol V1.1b3 §6 examples) ---------------------


@pytest.mark.parametrize(
    ("pdu", "spec"),
    [
        (read_pdu("coil", 19, 19), "01 0013 0013"),  # coils 20-38
        (read_pdu("discrete_input", 196, 22), "02 00C4 0016"),  # inputs 197-218
        (read_pdu("holding_register", 107, 3), "03 006B 0003"),  # registers 108-110
        (read_pdu("input_register", 8, 1), "04 0008 0001"),  # register 9
        (write_coil_pdu(172, True), "05 00AC FF00"),  # output 173 ON
        (write_coil_pdu(172, False), "05 00AC 0000"),
        (write_registers_pdu(1, [3]), "06 0001 0003"),  # register 2 = 3: one register is FC6
        (write_registers_pdu(1, [0x000A, 0x0102]), "10 0001 0002 04 000A 0102"),  # registers 2-3
    ],
)
def test_request_pdus(pdu: bytes, spec: str) -> None:
    assert pdu == bytes.fromhex(spec)


@pytest.mark.parametrize(
    ("answer", "table", "count", "expected"),
    [
        ("01 03 CD6B05", "coil", 19, bytes.fromhex("CD6B05")),  # spec: coils 20-38
        ("02 03 ACDB35", "discrete_input", 22, bytes.fromhex("ACDB35")),  # spec: inputs 197-218
        ("03 06 022B 0000 0064", "holding_register", 3, bytes.fromhex("022B00000064")),  # spec: registers 108-110
        ("04 02 000A", "input_register", 1, bytes.fromhex("000A")),  # spec: register 9
        ("01 02 FF03", "coil", 10, bytes.fromhex("FF03")),  # 10 bits: 2 data bytes
        ("02 01 FF", "discrete_input", 8, b"\xff"),  # 8 bits: 1
        ("01 01 FF", "coil", 10, MALFORMED),  # 10 bits in 1 byte
        ("83 02", "holding_register", 3, 2),  # exception: its code
        ("81 04", "coil", 10, 4),
        ("84 02", "holding_register", 1, MALFORMED),  # an exception to another function
        ("04 02 000A", "holding_register", 1, MALFORMED),  # wrong function code
        ("03 04 000A", "holding_register", 1, MALFORMED),  # byte count not the request's
        ("03 02 000A0000", "holding_register", 1, MALFORMED),  # longer than its byte count
        ("03 04 000A", "holding_register", 2, MALFORMED),  # truncated
        ("03 02 00", "holding_register", 1, MALFORMED),
        ("03", "holding_register", 1, MALFORMED),
        ("", "holding_register", 1, MALFORMED),
    ],
)
def test_read_answer(answer: str, table: Table, count: int, expected: bytes | int) -> None:
    assert read_answer(bytes.fromhex(answer), table, count) == expected


@pytest.mark.parametrize(
    ("request_pdu", "answer", "expected"),
    [
        ("05 00AC FF00", "05 00AC FF00", None),  # spec: FC5 echoes the request
        ("06 0001 0003", "06 0001 0003", None),  # spec: FC6 too
        ("10 0001 0002 04 000A 0102", "10 0001 0002", None),  # spec: FC16 echoes address and quantity
        ("06 0001 0003", "86 02", 2),  # exception: its code
        ("10 0001 0002 04 000A 0102", "90 03", 3),
        ("06 0001 0003", "90 02", MALFORMED),  # an exception to another function
        ("06 0001 0003", "06 0001 0004", MALFORMED),  # another value
        ("05 00AC FF00", "05 00AC 0000", MALFORMED),
        ("10 0001 0002 04 000A 0102", "10 0001 0001", MALFORMED),  # another quantity
        ("10 0001 0002 04 000A 0102", "10 0001 0002 04", MALFORMED),  # longer
        ("06 0001 0003", "06 0001 00", MALFORMED),  # truncated
        ("06 0001 0003", "", MALFORMED),
    ],
)
def test_write_answer(request_pdu: str, answer: str, expected: int | None) -> None:
    assert write_answer(bytes.fromhex(request_pdu), bytes.fromhex(answer)) == expected
