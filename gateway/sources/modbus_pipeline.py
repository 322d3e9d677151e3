"""Pipelined Modbus TCP: a poll's requests written together, each answer paired by transaction id.

Why not pymodbus for this: its client holds a lock around every request, so a poll of N requests
costs N round trips, and N sends on each side of the link. On a busy host each round trip also waits
for two event loops, and a 100 ms poll of a PLC with 38 conveyors (114 requests) overran on 16
connections (BENCHMARKS.md). Modbus TCP does not need the wait: the MBAP header's transaction
identifier (conventions §2.3), which the server echoes, exists so that a client can keep several
requests outstanding on one connection and pair the answers, in whatever order they come.

Not every device takes that: many serve one request at a time and keep the rest in their TCP receive
buffer, which works; some read one request per TCP segment and drop what follows, which does not.
So it is opt-in per source (``pipeline: N``, requests outstanding per connection); with 1 the source
uses pymodbus as before.

The framing is the 7-byte MBAP header and the PDUs of function codes 1-6 and 16: little enough to
own, and it lets a read's answer go to the decoder as the bytes it arrived in. A connection carries
one exchange at a time (the source's lock), writes the frames that fit the window in one ``send``,
and refills the window as answers come. Anything that breaks the pairing (an unknown transaction id,
a header that cannot be trusted, a unit id other than the one asked) ends the connection: a stream
that has lost its framing cannot be trusted for the next answer either.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Literal, cast

from gateway.sources.modbus_planner import Table

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length (unit id + PDU), unit id
MAX_PDU = 253  # conventions §2.2
MAX_TRANSACTION_ID = 0xFFFF
FUNCTION_CODES: dict[Table, int] = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}
MALFORMED = 0  # "exception code" of an answer that is not the one asked for (no Modbus code is 0)

_READ = struct.Struct(">BHH")  # function, address, quantity; also FC5 and FC6 (address, value)
_WRITE_MULTIPLE = struct.Struct(">BHHB")  # FC16: function, address, quantity, byte count

Failure = Literal["timeout", "lost"]


class ExchangeFailed(Exception):
    """The connection failed mid-exchange: no answer in time (``timeout``) or the link ended
    (``lost``). ``answers`` holds what did arrive (None for the rest); the connection is closed."""

    def __init__(self, kind: Failure, reason: str, answers: list[bytes | None]) -> None:
        super().__init__(reason)
        self.kind = kind
        self.answers = answers


def read_pdu(table: Table, address: int, count: int) -> bytes:
    return _READ.pack(FUNCTION_CODES[table], address, count)


def write_coil_pdu(address: int, on: bool) -> bytes:
    return _READ.pack(5, address, 0xFF00 if on else 0x0000)


def write_registers_pdu(address: int, values: Sequence[int]) -> bytes:
    """FC6 for one register (what most devices expect for a single word), FC16 for more."""
    if len(values) == 1:
        return _READ.pack(6, address, values[0])
    return _WRITE_MULTIPLE.pack(16, address, len(values), 2 * len(values)) + struct.pack(f">{len(values)}H", *values)


def read_answer(pdu: bytes, table: Table, count: int) -> bytes | int:
    """The data bytes of a read's answer (registers big-endian, or bits LSB first), or its exception
    code, or MALFORMED when it is neither for this request."""
    function = FUNCTION_CODES[table]
    if len(pdu) == 2 and pdu[0] == function | 0x80:
        return pdu[1]
    size = (count + 7) // 8 if table in ("coil", "discrete_input") else 2 * count
    if len(pdu) != 2 + size or pdu[0] != function or pdu[1] != size:
        return MALFORMED
    return pdu[2:]


def write_answer(request: bytes, pdu: bytes) -> int | None:
    """None when a write's answer acknowledges ``request``; else its exception code or MALFORMED."""
    if len(pdu) == 2 and pdu[0] == request[0] | 0x80:
        return pdu[1]
    # FC5 and FC6 echo the request; FC16 echoes its address and quantity.
    return None if len(pdu) == 5 and pdu == request[:5] else MALFORMED


class Exchange:
    """One started exchange: :meth:`ModbusTcpConnection.start` makes it, ``finish`` or ``abandon`` ends it."""

    __slots__ = ("answers", "done", "frames", "pending", "sent", "window")

    def __init__(self, frames: Sequence[tuple[int, bytes]], window: int, done: asyncio.Future[None]) -> None:
        self.frames = frames
        self.answers: list[bytes | None] = [None] * len(frames)
        self.pending: dict[int, int] = {}  # transaction id -> frame index
        self.sent = 0  # frames written so far
        self.window = window
        self.done = done


class ModbusTcpConnection(asyncio.Protocol):
    """One TCP connection to a Modbus server, carrying pipelined exchanges (see the module docstring)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._tid = 0
        self._exchange: Exchange | None = None
        self._timeout_s = 0.0
        self._deadline = 0.0  # no answer by then: the exchange times out (moved on by every answer)
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float) -> ModbusTcpConnection:
        """Connect (OSError or TimeoutError when that fails within ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(loop.create_connection(cls, host, port), timeout_s)
        return connection

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def exchange(
        self, frames: Sequence[tuple[int, bytes]], *, window: int, timeout_s: float
    ) -> list[bytes]:
        """Send every ``(unit id, PDU)`` with at most ``window`` unanswered at once; the answers'
        PDUs in request order. Raises ExchangeFailed when no answer comes for ``timeout_s`` while
        requests are outstanding, or the connection ends."""
        return await self.finish(self.start(frames, window=window, timeout_s=timeout_s))

    def start(self, frames: Sequence[tuple[int, bytes]], *, window: int, timeout_s: float) -> Exchange:
        """The first half of :meth:`exchange`: the first window goes out now, in the caller's step.
        A caller with several connections starts them all, then :meth:`finish`es each in turn: no
        task per connection, so it resumes one loop iteration after the last answer, not three."""
        if self._exchange is not None:
            raise RuntimeError("one exchange at a time on a connection")
        if frames and (self._transport is None or self._transport.is_closing()):
            raise ExchangeFailed("lost", "not connected", [None] * len(frames))
        exchange = Exchange(frames, max(1, window), self._loop.create_future())
        if not frames:
            exchange.done.set_result(None)
            return exchange
        self._exchange = exchange
        self._timeout_s = timeout_s
        self._deadline = self._loop.time() + timeout_s
        self._timer = self._loop.call_at(self._deadline, self._check_deadline)
        self._send_more(exchange)
        return exchange

    async def finish(self, exchange: Exchange) -> list[bytes]:
        """The second half of :meth:`exchange`: wait for ``exchange``'s answers."""
        try:
            await exchange.done
        except asyncio.CancelledError:
            # E.g. a command's timeout: answers still due would arrive for the next exchange.
            # (Cancelling the caller cancels ``done`` too, so what is owed is told by ``pending``.)
            self.abandon(exchange)
            raise
        finally:
            self._end(exchange)
        return exchange.answers  # type: ignore[return-value]  # all answered once done succeeds

    def abandon(self, exchange: Exchange) -> None:
        """Give up a started exchange nobody will finish; with answers still due the connection ends."""
        if exchange.pending:
            self.close()
        if not exchange.done.done():
            exchange.done.cancel()
        elif not exchange.done.cancelled():
            exchange.done.exception()  # retrieved: nobody will look at its failure
        self._end(exchange)

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport by contract of create_connection; not an isinstance check, which fails
        # under event loops whose transports do not derive from asyncio's classes (uvloop's).
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail("lost", str(exc) if exc is not None else "connection closed by peer")

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        exchange = self._exchange
        pos, end = 0, len(buffer)
        answered = False
        while end - pos >= MBAP.size:
            tid, protocol, length, unit = MBAP.unpack_from(buffer, pos)
            if protocol != 0 or not 2 <= length <= MAX_PDU + 1:
                self._broken(f"bad MBAP header (protocol {protocol}, length {length})")
                return
            stop = pos + 6 + length
            if stop > end:
                break
            index = exchange.pending.pop(tid, None) if exchange is not None else None
            if exchange is None or index is None:
                self._broken(f"answer with unexpected transaction id {tid}")
                return
            if unit != exchange.frames[index][0]:
                self._broken(f"answer from unit {unit} to a request for unit {exchange.frames[index][0]}")
                return
            exchange.answers[index] = buffer[pos + MBAP.size : stop]
            answered = True
            pos = stop
        self._buffer = buffer[pos:] if pos < end else b""
        if exchange is None or not answered:
            return
        self._deadline = self._loop.time() + self._timeout_s
        if exchange.pending or exchange.sent < len(exchange.frames):
            self._send_more(exchange)
        elif not exchange.done.done():
            exchange.done.set_result(None)

    # -- internals --------------------------------------------------------------------------------

    def _end(self, exchange: Exchange) -> None:
        if self._exchange is exchange:
            self._exchange = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _send_more(self, exchange: Exchange) -> None:
        """Fill the window, in one write: one send for the lot."""
        assert self._transport is not None
        frames, pending = exchange.frames, exchange.pending
        room = min(exchange.window - len(pending), len(frames) - exchange.sent)
        if room <= 0:
            return
        chunks: list[bytes] = []
        for index in range(exchange.sent, exchange.sent + room):
            unit, pdu = frames[index]
            tid = self._tid = self._tid % MAX_TRANSACTION_ID + 1  # 1..65535; the window is far smaller
            pending[tid] = index
            chunks.append(MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)
        exchange.sent += room
        self._transport.write(b"".join(chunks))

    def _check_deadline(self) -> None:
        # One timer per exchange, moved forward lazily: answers only push the deadline.
        self._timer = None
        if self._exchange is None:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._fail("timeout", f"no response within {self._timeout_s}s")
        # A late answer would still arrive on this connection; nothing may take it for another.
        self.close()

    def _broken(self, reason: str) -> None:
        self._fail("lost", reason)
        self.close()

    def _fail(self, kind: Failure, reason: str) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.done.done():
            exchange.done.set_exception(ExchangeFailed(kind, reason, exchange.answers))
