"""A small asyncio Modbus TCP server: MBAP framing (conventions §2.3) around a RequestHandler.

Why not pymodbus's server: in 3.16 ``ModbusServerContext``/``ModbusDeviceContext`` are deprecated
in favour of SimData/SimDevice (removal announced for v4), a plain device context answers
DEVICE_BUSY from its async getters, and neither offers per-address exception 02 for gaps,
validation before a write is stored, or hooks to delay, swallow or drop requests for fault
injection. MBAP is a 7-byte header, so owning the loop is less code than bending the library, and
pymodbus stays the independent client in the tests.

Robustness: each connection is its own task and every failure ends only that connection. A frame
whose header cannot be trusted (protocol id != 0, length outside 2..254) closes the connection,
since TCP framing cannot be resynchronised after it; a client vanishing mid-request just ends its
task. Connections are bounded and idle ones time out (diagslave's 60 s, conventions §2.7).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct

from devices.modbus.faults import FaultInjector
from devices.modbus.protocol import RequestHandler, exception_pdu

log = logging.getLogger(__name__)

MBAP = struct.Struct(">HHHB")
MAX_PDU = 253  # conventions §2.2: PDU <= 253 bytes, TCP ADU <= 260


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
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
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
            self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self.drop_connections()
        tasks = list(self._connections)
        # Aborted transports end their tasks; only one parked in a fault delay needs a cancel.
        _, stuck = await asyncio.wait(tasks, timeout=1.0) if tasks else (set(), set())
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck)
        await server.wait_closed()

    def drop_connections(self) -> None:
        """Abort every open connection (an RST, as a rebooting PLC's stack would send)."""
        for writer in list(self._connections.values()):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        fault = self.faults.current()
        if (fault is not None and fault.drop_connections) or len(self._connections) >= self._max_connections:
            self.refused_connections += 1
            writer.transport.abort()
            return
        self._connections[task] = writer
        peer = writer.get_extra_info("peername")
        try:
            await self._requests(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the client left, mid-request or between requests, or idled out
        except asyncio.CancelledError:
            # Only close() cancels a connection task, and it is ending anyway; returning normally
            # spares asyncio's stream callback (3.11) from logging the cancellation as an error.
            pass
        except OSError as exc:
            log.debug("%s: connection %s ended: %s", self._name, peer, exc)
        except Exception:
            log.exception("%s: connection %s failed", self._name, peer)
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            async with asyncio.timeout(self._idle_timeout_s):
                header = await reader.readexactly(MBAP.size)
            transaction, protocol, length, unit = MBAP.unpack(header)
            if protocol != 0 or not 2 <= length <= MAX_PDU + 1:
                log.info("%s: malformed MBAP header %s, closing the connection", self._name, header.hex())
                return
            async with asyncio.timeout(self._idle_timeout_s):
                pdu = await reader.readexactly(length - 1)
            self.requests += 1
            response = await self._respond(unit, pdu)
            if response is None:
                continue
            writer.write(MBAP.pack(transaction, 0, len(response) + 1, unit) + response)
            await writer.drain()

    async def _respond(self, unit: int, pdu: bytes) -> bytes | None:
        fault = self.faults.current()
        if fault is None:
            return self._handler.handle(unit, pdu)
        if fault.delay_s > 0:
            await asyncio.sleep(fault.delay_s)
        if fault.drop_connections:
            raise ConnectionAbortedError("dropped by fault injection")
        if fault.no_response:
            return None
        if fault.exception_code is not None:
            return exception_pdu(pdu[0] if pdu else 0, fault.exception_code)
        return self._handler.handle(unit, pdu)
