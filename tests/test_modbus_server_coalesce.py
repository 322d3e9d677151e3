"""The Modbus server answers a segment of pipelined requests with one write, in request order.

Over real TCP on loopback with the exposer rig of test_modbus_server.py, and at the protocol level with a
fake transport that records writes (pure framing logic: how many writes one data_received makes).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import pytest

from devices.modbus.faults import Fault, FaultInjector
from devices.modbus.protocol import RequestHandler
from devices.modbus.server import MAX_BATCH, ModbusTcpServer, _Connection
from tests import test_modbus_server
from tests.test_modbus_server import DEADLINE_S, Rig, _answer, _frame, _own_server, _until

rig = test_modbus_server.rig  # the exposer rig fixture, shared rather than copied

UNIT = 1


def _handler(rig: Rig) -> RequestHandler:
    """A handler on the rig's image, as its server's: what the server must answer, request by request."""
    return RequestHandler(lambda: rig.exposer.image, rig.plc)


def _mixed_requests(count: int) -> list[tuple[bytes, int | None]]:
    """``count`` read PDUs, FC03 and FC04, with the exception code each must get (None: a normal answer).

    Addresses and quantities vary so that answers differ in length and content, and a swapped pair shows.
    """
    requests: list[tuple[bytes, int | None]] = []
    for i in range(count):
        block = 100 * (1 + i % 3)  # conveyor-01..03
        if i % 5 == 4:
            # Unmapped: a gap between blocks (FC04) or past the two float32 setpoints (FC03).
            pdu = struct.pack(">BHH", 4, 50 + i, 1) if i % 2 else struct.pack(">BHH", 3, block + 10, 1)
            requests.append((pdu, 0x02))
        elif i % 5 == 2:
            requests.append((struct.pack(">BHH", 3, block, 2 + 2 * (i % 2)), None))  # one or both setpoints
        elif i == 0:
            requests.append((struct.pack(">BHH", 4, 0, 1), None))  # heartbeat
        else:
            requests.append((struct.pack(">BHH", 4, block + i % 8, 1 + i % 5), None))
    return requests


def _check_answer(pdu: bytes, exception: int | None, answer: bytes, expected: bytes) -> None:
    if exception is not None:
        assert answer == bytes((pdu[0] | 0x80, exception))
    else:
        quantity = struct.unpack_from(">H", pdu, 3)[0]
        assert answer[:2] == bytes((pdu[0], 2 * quantity))
        assert len(answer) == 2 + 2 * quantity
    # The server's answer is the handler's, to this request and not a neighbour's.
    assert answer == expected


async def _connect(host: str, port: int) -> tuple[socket.socket, asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw socket (to send a whole segment with one sendall) whose answers are read through a stream."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    return sock, reader, writer


async def _send_segment(sock: socket.socket, data: bytes) -> None:
    # asyncio's stream transport would also do a single send; sock_sendall makes that explicit.
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def test_fifty_pipelined_reads_in_one_segment(rig: Rig) -> None:
    server = rig.exposer.server
    requests = _mixed_requests(50)
    expected = [_handler(rig).handle(UNIT, pdu) for pdu, _ in requests]
    sock, reader, writer = await _connect(rig.host, rig.port)
    try:

        async def registered() -> bool:
            return server.connection_count == 1

        await _until(registered, "the connection to be registered")
        # Spy on the server side of this connection: how many data_received calls, how many writes.
        (connection,) = list(server._connections)
        transport: Any = connection._transport
        received: list[bytes] = []
        written: list[bytes] = []
        data_received, write = connection.data_received, transport.write

        def spy_received(data: bytes) -> None:
            received.append(data)
            data_received(data)

        def spy_write(data: bytes) -> None:
            written.append(data)
            write(data)

        connection.data_received = spy_received  # type: ignore[method-assign]
        transport.write = spy_write

        await _send_segment(sock, b"".join(_frame(1000 + i, pdu) for i, (pdu, _) in enumerate(requests)))
        for i, (pdu, exception) in enumerate(requests):
            tid, answer = await _answer(reader)
            assert tid == 1000 + i
            _check_answer(pdu, exception, answer, expected[i])
        assert requests[0][0] == struct.pack(">BHH", 4, 0, 1)
        assert expected[0] == b"\x04\x02" + struct.pack(">H", rig.plc.scan_count & 0xFFFF)
        # One write per data_received, not one per request (one, unless the kernel split the segment).
        assert len(written) == len(received) < len(requests)
    finally:
        writer.close()


class _DelayOne(FaultInjector):
    """Delays only the answer to the server's ``nth`` request; the public API delays every request."""

    def __init__(self, nth: int, delay_s: float) -> None:
        super().__init__()
        self.server: ModbusTcpServer | None = None
        self._nth = nth
        self._delay_s = delay_s

    def current(self) -> Fault | None:
        if self.server is not None and self.server.requests == self._nth:
            return Fault(delay_s=self._delay_s)
        return super().current()


async def test_a_delay_mid_segment_keeps_order_and_does_not_hold_earlier_answers(rig: Rig) -> None:
    delay_s, delayed = 0.5, 25
    faults = _DelayOne(delayed, delay_s)
    server = await _own_server(rig, faults=faults)
    faults.server = server
    requests = _mixed_requests(50)
    expected = [_handler(rig).handle(UNIT, pdu) for pdu, _ in requests]
    sock, reader, writer = await _connect(*server.address)
    try:
        started = time.monotonic()
        await _send_segment(sock, b"".join(_frame(i, pdu) for i, (pdu, _) in enumerate(requests)))
        for i, (pdu, exception) in enumerate(requests):
            tid, answer = await _answer(reader)
            assert tid == i
            _check_answer(pdu, exception, answer, expected[i])
            if i == delayed - 2:
                # The answers before the delayed one were written when it was parked, not after it.
                assert time.monotonic() - started < delay_s
            elif i == delayed - 1:
                assert time.monotonic() - started >= delay_s
        assert server.requests == len(requests)
    finally:
        writer.close()
        await server.close()


@pytest.mark.parametrize(
    "bad_header",
    [struct.pack(">HHHB", 9, 1, 6, UNIT), struct.pack(">HHHB", 9, 0, 0xFFFF, UNIT)],
    ids=["protocol id 1", "length 65535"],
)
async def test_good_frames_are_answered_before_a_bad_header_closes(rig: Rig, bad_header: bytes) -> None:
    sock, reader, writer = await _connect(rig.host, rig.port)
    try:
        read = struct.pack(">BHH", 4, 0, 1)
        # A good frame after the bad header is not answered: framing cannot be trusted past it.
        await _send_segment(sock, _frame(1) + _frame(2) + _frame(3) + bad_header + read + _frame(4))
        assert [(await _answer(reader))[0] for _ in range(3)] == [1, 2, 3]
        assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
    finally:
        writer.close()


class _FakeTransport(asyncio.Transport):
    """Records what the protocol does; optionally pauses writing after each write (a client not reading)."""

    def __init__(self, protocol: asyncio.Protocol, pause_after_write: bool = False) -> None:
        super().__init__()
        self._protocol = protocol
        self._pause_after_write = pause_after_write
        self.calls: list[tuple[str, bytes]] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.calls.append(("write", bytes(data)))
        if self._pause_after_write:
            self._protocol.pause_writing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None:
        self.calls.append(("pause_reading", b""))

    def resume_reading(self) -> None:
        self.calls.append(("resume_reading", b""))

    def close(self) -> None:
        self.calls.append(("close", b""))

    def abort(self) -> None:
        self.calls.append(("abort", b""))

    @property
    def writes(self) -> list[bytes]:
        return [data for call, data in self.calls if call == "write"]


def _split(data: bytes) -> list[int]:
    """Transaction ids of the answer frames in ``data``, which must be whole frames."""
    tids, offset = [], 0
    while offset < len(data):
        tid, proto, length, _unit = struct.unpack_from(">HHHB", data, offset)
        assert proto == 0
        tids.append(tid)
        offset += 6 + length
    assert offset == len(data)
    return tids


def _connection(rig: Rig, pause_after_write: bool = False) -> tuple[_Connection, _FakeTransport]:
    server = ModbusTcpServer(_handler(rig), "127.0.0.1", 0)
    connection = _Connection(server)
    transport = _FakeTransport(connection, pause_after_write)
    connection.connection_made(transport)
    return connection, transport


@pytest.mark.parametrize("count", [1, 2, 20, 100, MAX_BATCH])
async def test_one_data_received_makes_one_write(rig: Rig, count: int) -> None:
    connection, transport = _connection(rig)
    try:
        # The frames and half of the next one: the partial frame is kept, not answered.
        connection.data_received(b"".join(_frame(tid) for tid in range(count)) + _frame(count)[:9])
        assert len(transport.writes) == 1
        assert _split(transport.writes[0]) == list(range(count))
        connection.data_received(_frame(count)[9:])
        assert len(transport.writes) == 2
        assert _split(transport.writes[1]) == [count]
    finally:
        connection.connection_lost(None)


async def test_answers_before_a_bad_header_are_written_then_the_connection_closes(rig: Rig) -> None:
    connection, transport = _connection(rig)
    try:
        connection.data_received(_frame(1) + _frame(2) + _frame(3) + struct.pack(">HHHB", 4, 1, 6, UNIT) + _frame(5))
        assert [call for call, _ in transport.calls] == ["write", "close"]
        assert _split(transport.writes[0]) == [1, 2, 3]
    finally:
        connection.connection_lost(None)


async def test_eof_flushes_before_closing(rig: Rig) -> None:
    connection, transport = _connection(rig)
    try:
        connection.data_received(_frame(1) + _frame(2)[:4])
        connection.data_received(_frame(2)[4:] + _frame(3))
        assert connection.eof_received() is True
        assert [call for call, _ in transport.calls] == ["write", "write", "close"]
        assert [_split(data) for data in transport.writes] == [[1], [2, 3]]
    finally:
        connection.connection_lost(None)


async def test_a_huge_segment_is_written_in_batches_that_flow_control_can_stop(rig: Rig) -> None:
    count = 2 * MAX_BATCH + 10
    segment = b"".join(_frame(tid) for tid in range(count))
    connection, transport = _connection(rig)
    try:
        connection.data_received(segment)
        assert [len(_split(data)) for data in transport.writes] == [MAX_BATCH, MAX_BATCH, 10]
    finally:
        connection.connection_lost(None)

    # A client that does not read: the transport pauses writing after the first batch, so parsing
    # (and reading) stops there, and resumes with the rest when the transport drains.
    connection, transport = _connection(rig, pause_after_write=True)
    try:
        connection.data_received(segment)
        assert [call for call, _ in transport.calls] == ["write", "pause_reading"]
        assert _split(transport.writes[0]) == list(range(MAX_BATCH))
        transport.calls.clear()
        transport._pause_after_write = False
        connection.resume_writing()
        assert [call for call, _ in transport.calls] == ["resume_reading", "write", "write"]
        assert _split(b"".join(transport.writes)) == list(range(MAX_BATCH, count))
    finally:
        connection.connection_lost(None)
