"""A small asyncio Modbus TCP server: MBAP framing (conventions §2.3) around a RequestHandler.

Why not pymodbus's server: in 3.16 ``ModbusServerContext``/``ModbusDeviceContext`` are deprecated
in favour of SimData/SimDevice (removal announced for v4), a plain device context answers
DEVICE_BUSY from its async getters, and neither offers per-address exception 02 for gaps,
validation before a write is stored, or hooks to delay, swallow or drop requests for fault
injection. MBAP is a 7-byte header, so owning the loop is less code than bending the library, and
pymodbus stays the independent client in the tests.

Why an ``asyncio.Protocol`` and not streams: a Modbus request is a few dozen bytes and the handler
answers it in microseconds, so per-request stream machinery (two ``readexactly`` awaits, a timer
armed and cancelled around each, a ``drain()``) cost more than the handler and kept us at a third of
the libmodbus server's rate (BENCHMARKS.md, issue 5). ``data_received`` parses every complete frame
in the bytes it gets, answers each synchronously and keeps a partial frame for the next call. The
answers of one pass are joined and written with a single ``transport.write``: a pipelining client
sends dozens of requests in one segment, and on loopback each write is a ``send`` syscall costing
more than the handler, so one send per segment instead of one per request (at most ``MAX_BATCH``
answers are held, so backpressure still stops a client that does not read). Everything that
defers or ends the connection flushes the held answers first, so nothing is reordered or lost.
Only a fault-injected delay leaves that fast path: reading pauses until the delayed answer is
written, so one connection's answers stay in request order while other connections go on being served.

Robustness: every failure ends only its own connection. A frame whose header cannot be trusted
(protocol id != 0, length outside 2..254) closes the connection, since TCP framing cannot be
resynchronised after it; a client vanishing mid-request just drops its partial frame. Connections
are bounded, idle ones time out (diagslave's 60 s, conventions §2.7), and a client that does not read
its answers stops being read (transport flow control) instead of growing our buffers.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import cast

from devices.modbus.faults import Fault, FaultInjector
from devices.modbus.protocol import RequestHandler, exception_pdu

log = logging.getLogger(__name__)

MBAP = struct.Struct(">HHHB")
MAX_PDU = 253  # conventions §2.2: PDU <= 253 bytes, TCP ADU <= 260
# Answers held before a write mid-pass. 256 ADUs of <= 260 bytes are <= 65 KiB, about the transport's
# default high-water mark (64 KiB): a client that does not read is still paused after about as many
# answers as with a write per answer, instead of one data_received (up to 256 KiB of requests, whose
# answers can be 20 times larger) building megabytes of answers before flow control can see them.
MAX_BATCH = 256


class ModbusTcpServer:
    def __init__(
        self,
        handler: RequestHandler,
        host: str,
        port: int,
        faults: FaultInjector | None = None,
        *,
        max_connections: int = 256,
        idle_timeout_s: float = 60.0,
        name: str = "modbus",
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self.faults = faults or FaultInjector()
        self.faults.on_drop = self.drop_connections
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._name = name
        self._server: asyncio.Server | None = None
        # Insertion-ordered set of the accepted (not refused) connections still open.
        self._connections: dict[_Connection, None] = {}
        # Connections owing a fault-delayed answer, open or not: close() must cancel those timers too.
        self._owing: set[_Connection] = set()
        self.requests = 0
        self.refused_connections = 0  # over max_connections or dropped by a fault

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            return self._host, self._port
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        if self._server is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(lambda: _Connection(self), self._host, self._port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        connections = list(self._connections)
        for connection in list(self._owing):
            # A closed server must not answer (or execute) a request parked in a fault delay.
            connection.cancel_delayed()
        self.drop_connections()
        # connection_lost runs one loop iteration after abort(); wait for it so that a closed server
        # has no connections left, as close() promised when each connection was a task.
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=1.0)
        await server.wait_closed()

    def drop_connections(self) -> None:
        """Abort every open connection (an RST, as a rebooting PLC's stack would send)."""
        for connection in list(self._connections):
            connection.abort()


class _Connection(asyncio.Protocol):
    """One client connection: MBAP frames in, answers out, in request order."""

    def __init__(self, server: ModbusTcpServer) -> None:
        self._server = server
        self._handler = server._handler
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peer: object = None
        # Unparsed bytes: at most a partial frame, unless parsing is stalled (see _stalled).
        self._buffer = b""
        # Answers produced in this _process pass, not yet written: one transport.write (one send) for
        # all of them. Empty between passes; every path that defers or ends the connection flushes it.
        self._out: list[bytes] = []
        self._open = False
        self._eof = False
        self._delayed: asyncio.TimerHandle | None = None  # a fault-delayed answer not yet written
        self._write_paused = False  # the transport's write buffer is over its high-water mark
        # True while frames must not be parsed: a delayed answer is owed (order), the client is not
        # reading its answers (backpressure), or the connection is closing. Kept as one flag because
        # the parse loop tests it once per frame.
        self._stalled = True
        self._reading = True
        self._last_activity = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        server = self._server
        fault = server.faults.current()
        if (fault is not None and fault.drop_connections) or len(server._connections) >= server._max_connections:
            server.refused_connections += 1
            transport.abort()
            return
        server._connections[self] = None
        self._peer = transport.get_extra_info("peername")
        self._open = True
        self._update_flow()
        # One timer per idle period, not one per read: data_received only stamps the time and the
        # timer re-arms itself for what is left (cheaper than resetting a TimerHandle per packet).
        self._idle_timer = self._loop.call_later(server._idle_timeout_s, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        # The usual case is an empty buffer and exactly one frame: parse `data` itself, no copy.
        self._buffer = self._buffer + data if self._buffer else data
        self._process()

    def eof_received(self) -> bool:
        # Keep the half-open connection until the requests already received are answered (a
        # delayed one included), as the stream server did; _process closes once nothing is owed.
        self._eof = True
        self._process()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_flow()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._last_activity = self._loop.time()  # the client is reading: not idle
        self._update_flow()
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        self._stalled = True
        self._buffer = b""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        # A delayed request the client no longer waits for still executes when its timer fires,
        # as a real PLC processes a request it has received; only its answer is discarded.
        self._server._connections.pop(self, None)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- used by ModbusTcpServer -----------------------------------------------------------------

    def abort(self) -> None:
        self._flush()  # answers produced before the abort go out first, as when each was written at once
        self._stalled = True
        self._open = False
        if self._transport is not None:
            self._transport.abort()

    def cancel_delayed(self) -> None:
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        self._server._owing.discard(self)

    # -- framing ---------------------------------------------------------------------------------

    def _process(self) -> None:
        """Answer every complete frame in the buffer, in order, until stalled or out of frames."""
        buffer = self._buffer
        size = len(buffer)
        offset = 0
        out = self._out
        try:
            while not self._stalled and size - offset >= 7:
                transaction, protocol, length, unit = MBAP.unpack_from(buffer, offset)
                if protocol != 0 or not 2 <= length <= MAX_PDU + 1:
                    log.info(
                        "%s: malformed MBAP header %s from %s, closing the connection",
                        self._server._name, buffer[offset:offset + 7].hex(), self._peer,
                    )
                    self._close()  # flushes the answers to the good frames before this one
                    return
                end = offset + 6 + length  # the length field counts the unit id and the PDU
                if end > size:
                    break  # partial frame: wait for the rest
                pdu = buffer[offset + 7:end]
                offset = end
                self._server.requests += 1
                self._request(transaction, unit, pdu)
                if len(out) >= MAX_BATCH:
                    self._flush()  # may pause writing (flow control), which stalls this loop
        except Exception:
            # RequestHandler.handle never raises by contract; if it ever does, end this connection
            # only, as the per-connection task did.
            log.exception("%s: connection %s failed", self._server._name, self._peer)
            self.abort()
            return
        self._buffer = buffer[offset:] if offset else buffer
        self._flush()
        if self._eof and self._open and self._delayed is None and not self._write_paused:
            self._close()  # the client half-closed and every complete request is answered

    def _request(self, transaction: int, unit: int, pdu: bytes) -> None:
        fault = self._server.faults.current()
        if fault is None:
            response: bytes | None = self._handler.handle(unit, pdu)
        elif fault.delay_s > 0:
            # A slow PLC: answer later from a timer, not by sleeping, so other connections are not
            # held up; this one stops parsing (and reading) until the answer is out, keeping order.
            self._delayed = self._loop.call_later(
                fault.delay_s, self._answer_delayed, fault, transaction, unit, pdu
            )
            self._server._owing.add(self)
            self._update_flow()
            return  # _process stops at the stall and flushes the answers before this one
        else:
            response = self._faulty(fault, unit, pdu)
        if response is not None and self._open:
            self._out.append(MBAP.pack(transaction, 0, len(response) + 1, unit) + response)

    def _answer_delayed(self, fault: Fault, transaction: int, unit: int, pdu: bytes) -> None:
        self._delayed = None
        self._server._owing.discard(self)
        self._last_activity = self._loop.time()
        try:
            response = self._faulty(fault, unit, pdu)
        except Exception:
            log.exception("%s: connection %s failed", self._server._name, self._peer)
            self.abort()
            return
        if not self._open:
            return
        if response is not None:
            self._out.append(MBAP.pack(transaction, 0, len(response) + 1, unit) + response)
        self._update_flow()
        # Frames that arrived with or after the delayed one; the pass writes the delayed answer first,
        # in the same send as theirs.
        self._process()

    def _faulty(self, fault: Fault, unit: int, pdu: bytes) -> bytes | None:
        """The answer under ``fault`` (its delay already served); None means no answer."""
        if fault.drop_connections:
            self.abort()
            return None
        if fault.no_response:
            return None
        if fault.exception_code is not None:
            return exception_pdu(pdu[0] if pdu else 0, fault.exception_code)
        return self._handler.handle(unit, pdu)

    # -- flow control and lifetime ---------------------------------------------------------------

    def _update_flow(self) -> None:
        stalled = not self._open or self._delayed is not None or self._write_paused
        self._stalled = stalled
        if not self._open or self._transport is None:
            return
        # Stop reading while stalled so the kernel's receive window, not our buffer, absorbs a
        # client that pipelines requests faster than we may answer them.
        if stalled and self._reading:
            self._transport.pause_reading()
            self._reading = False
        elif not stalled and not self._reading:
            self._transport.resume_reading()
            self._reading = True

    def _flush(self) -> None:
        """Write the answers held by this pass, joined, with one transport.write."""
        out = self._out
        if not out:
            return
        data = b"".join(out)  # a single answer is returned as is, not copied
        out.clear()  # before the write: if it raises, abort()'s flush must not write these again
        if self._open and self._transport is not None:
            # Joined here rather than transport.writelines: in 3.11 that only joins and writes too, and an
            # explicit join keeps it one write (one send while the socket buffer has room) on any version.
            self._transport.write(data)

    def _close(self) -> None:
        """Graceful close: answers held or already written are flushed first."""
        self._flush()
        self._open = False
        self._stalled = True
        self._buffer = b""
        if self._transport is not None:
            self._transport.close()

    def _check_idle(self) -> None:
        self._idle_timer = None
        if not self._open:
            return
        timeout = self._server._idle_timeout_s
        remaining = self._last_activity + timeout - self._loop.time()
        if self._delayed is not None:
            remaining = timeout  # we owe this client an answer: it is waiting on us, not idle
        if remaining <= 0:
            log.debug("%s: connection %s idle for %.0f s, closing", self._server._name, self._peer, timeout)
            if self._write_paused:
                self.abort()  # a graceful close would wait forever to flush to a client that stopped reading
            else:
                self._close()
            return
        self._idle_timer = self._loop.call_later(remaining, self._check_idle)
