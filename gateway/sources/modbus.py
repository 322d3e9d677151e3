"""Modbus TCP source: planned batch reads through pymodbus, outcomes mapped onto OPC UA StatusCodes.

pymodbus' own auto-reconnect is switched off (``reconnect_delay=0``): it reconnects in the
background with a 300 s cap (conventions §5.2) and its requests fail while it does, so the source
keeps the one backoff of SourceBase instead and builds a fresh client for every connect attempt.
Requests on one connection are serial (anchors §3 #17), so the planner's job is to make few. A poll's
wall time is then its requests times the round trip, which on a busy host (or a slow link) can exceed
the interval; ``connections: N`` opens N connections to the device and spreads the poll's requests
over them, one lane each, so N requests are in flight at once. Commands use the first connection.
``pipeline: M`` (M > 1) takes the lanes off pymodbus: each connection keeps up to M requests
outstanding, written together and paired with their answers by transaction id (modbus_pipeline.py).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from gateway.common.status import (
    BAD_CONFIGURATION_ERROR,
    BAD_DEVICE_FAILURE,
    BAD_NO_COMMUNICATION,
    BAD_TIMEOUT,
    GOOD,
)
from gateway.readings import Reading, TagValue
from gateway.sources import modbus_codec as codec
from gateway.sources.base import SourceBase, SourceError, SourceUnavailable, TagRef, catalogue_plc, utcnow
from gateway.sources.config import ModbusSourceConfig
from gateway.sources.modbus_decoder import PointLayout, RequestDecoder
from gateway.sources.modbus_pipeline import (
    MALFORMED,
    Exchange,
    ExchangeFailed,
    ModbusTcpConnection,
    read_answer,
    read_pdu,
    write_answer,
    write_coil_pdu,
    write_registers_pdu,
)
from gateway.sources.modbus_planner import BIT_TABLES, PlanItem, ReadRequest, Span, Table, plan_reads

if TYPE_CHECKING:  # the catalogue module imports the codec, so only a type reference here
    from gateway.catalogue import Catalogue

log = logging.getLogger(__name__)

# Modbus exception code -> quality (codes: conventions §2.4). Unlisted codes are device failures.
EXCEPTION_QUALITY: dict[int, int] = {
    0x01: BAD_CONFIGURATION_ERROR,  # illegal function: wrong table for this device
    0x02: BAD_CONFIGURATION_ERROR,  # illegal data address
    0x03: BAD_CONFIGURATION_ERROR,  # illegal data value (bad quantity)
    0x04: BAD_DEVICE_FAILURE,
    0x06: BAD_TIMEOUT,  # busy: no answer in time, worth retrying next poll
    0x0A: BAD_NO_COMMUNICATION,  # gateway path unavailable
    0x0B: BAD_NO_COMMUNICATION,  # gateway target failed to respond
}


@dataclass(frozen=True, slots=True)
class ModbusPoint:
    ref: TagRef
    unit_id: int
    table: Table
    address: int
    count: int
    datatype: codec.Datatype
    word_order: codec.WordOrder
    scale: float = 1.0
    offset: float = 0.0
    writable: bool = False


@dataclass(frozen=True, slots=True)
class ModbusCommand:
    unit_id: int
    table: Table
    address: int


@dataclass(frozen=True, slots=True)
class ModbusMap:
    host: str
    port: int
    points: tuple[ModbusPoint, ...]
    readable: tuple[Span, ...] = ()
    commands: dict[tuple[str, str], ModbusCommand] | None = None


def build_map(config: ModbusSourceConfig, catalogue: Catalogue | None = None) -> ModbusMap:
    """The points of a source, from its catalogue PLC or its hand-listed tags. Raises SourceError."""
    if config.plc is None:
        points = tuple(
            ModbusPoint(
                TagRef(t.asset, t.key, t.unit, config.site, config.area),
                config.unit_id if t.unit_id is None else t.unit_id,
                t.table,
                t.address,
                1 if t.table in BIT_TABLES else (t.count or codec.register_count(t.datatype)),
                t.datatype,
                t.word_order or config.word_order,
                t.scale,
                t.offset,
                t.access == "rw" and t.table in ("coil", "holding_register"),
            )
            for t in config.tags
        )
        blocks = tuple(
            Span(config.unit_id if b.unit_id is None else b.unit_id, b.table, b.address, b.count)
            for b in config.readable_blocks
        )
        assert config.host is not None  # checked by the config model
        return ModbusMap(config.host, config.port or 502, points, blocks, {})
    plc = catalogue_plc(config.name, config.plc, catalogue)
    if plc.modbus is None:
        raise SourceError(f"source {config.name}: plc {config.plc!r} has no Modbus endpoint")
    order = plc.modbus.word_order
    found: list[ModbusPoint] = []
    spans: list[Span] = []
    commands: dict[tuple[str, str], ModbusCommand] = {}
    if plc.modbus.heartbeat is not None:
        hb = plc.modbus.heartbeat
        spans.append(Span(plc.modbus.unit_id, hb.table, hb.address, 1))
    for asset in plc.assets:
        unit = plc.unit_of(asset)
        for tag in asset.tags:
            if tag.modbus is None:
                continue
            m = tag.modbus
            ref = TagRef(asset.id, tag.key, tag.unit, plc.site, plc.area)
            writable = tag.access == "rw" and m.table in ("coil", "holding_register")
            found.append(
                ModbusPoint(
                    ref, unit, m.table, m.address, m.count, tag.datatype, order, m.scale, m.offset, writable
                )
            )
        for cmd in asset.commands:
            if cmd.modbus is not None:
                commands[(asset.id, cmd.name)] = ModbusCommand(unit, cmd.modbus.table, cmd.modbus.address)
                spans.append(Span(unit, cmd.modbus.table, cmd.modbus.address, 1))
    return ModbusMap(
        config.host or plc.modbus.host, config.port or plc.modbus.port, tuple(found), tuple(spans), commands
    )


class ModbusSource(SourceBase):
    """One Modbus TCP endpoint (possibly several unit ids behind it)."""

    def __init__(self, config: ModbusSourceConfig, catalogue: Catalogue | None = None) -> None:
        super().__init__(config.name, config.reconnect_min_s, config.reconnect_max_s)
        self.config = config
        self.map = build_map(config, catalogue)
        items = [PlanItem(p.unit_id, p.table, p.address, p.count, i) for i, p in enumerate(self.map.points)]
        self.plan: list[ReadRequest] = plan_reads(
            items,
            max_gap=config.max_gap,
            readable=self.map.readable,
            max_registers=config.max_registers_per_request,
            max_bits=config.max_bits_per_request,
        )
        self._by_tag = {(p.ref.asset, p.ref.tag): p for p in self.map.points}
        # Per planned request: its points in response order, and their decoder (modbus_decoder.py).
        self._request_points = [tuple(self.map.points[int(str(item.key))] for item in r.items) for r in self.plan]
        self._decoders = [
            RequestDecoder(
                [PointLayout(p.address - r.address, p.count, p.datatype, p.word_order, p.scale, p.offset)
                 for p in points],
                r.table in BIT_TABLES, r.count)
            for r, points in zip(self.plan, self._request_points, strict=True)
        ]
        self._clients: list[AsyncModbusTcpClient] = []  # all connected, or none (pipeline 1)
        self._pipes: list[ModbusTcpConnection] = []  # the same, pipelined (pipeline > 1)
        # Per lane of the pipelined path: its requests' plan indexes and frames, built once.
        lanes = config.connections
        self._lane_requests = [range(lane, len(self.plan), lanes) for lane in range(lanes)]
        self._lane_frames = [
            [(self.plan[n].unit_id, read_pdu(self.plan[n].table, self.plan[n].address, self.plan[n].count))
             for n in indexes]
            for indexes in self._lane_requests
        ] if config.pipeline > 1 else []
        self._lock = asyncio.Lock()  # one poll or command at a time: they share the connections

    async def connect(self) -> None:
        """One connect attempt; failure is logged, not raised (read() keeps retrying)."""
        async with self._lock:
            await self._connect_locked()

    @property
    def _connected(self) -> bool:
        if self.config.pipeline > 1:
            return bool(self._pipes) and all(c.connected for c in self._pipes)
        return bool(self._clients) and all(c.connected for c in self._clients)

    async def _connect_locked(self) -> bool:
        if self._connected:
            return True
        self._drop_clients()
        self._closed = False
        host, port, n = self.map.host, self.map.port, self.config.connections
        if self.config.pipeline > 1:
            opened = await asyncio.gather(
                *(ModbusTcpConnection.open(host, port, self.config.timeout_s) for _ in range(n)),
                return_exceptions=True,
            )
            pipes = [o for o in opened if isinstance(o, ModbusTcpConnection)]
            if len(pipes) < n:
                for pipe in pipes:
                    pipe.close()
                return self._connect_failed(opened)
            self._pipes = pipes
        else:
            clients = [
                AsyncModbusTcpClient(
                    host,
                    port=port,
                    timeout=self.config.timeout_s,
                    retries=self.config.retries,
                    reconnect_delay=0,  # our backoff, not pymodbus' (see module docstring)
                )
                for _ in range(n)
            ]
            outcomes = await asyncio.gather(*(c.connect() for c in clients), return_exceptions=True)
            if not all(o is True for o in outcomes):
                for client in clients:
                    client.close()
                return self._connect_failed(outcomes)
            self._clients = clients
        self._set_available(True, f"{host}:{port}")
        return True

    def _connect_failed(self, outcomes: Sequence[object]) -> bool:
        for outcome in outcomes:  # a bug, not a device problem: let it surface
            if isinstance(outcome, BaseException) and not isinstance(outcome, OSError | ModbusException):
                raise outcome
        errors = [str(o) or type(o).__name__ for o in outcomes if isinstance(o, BaseException)]
        reason = errors[0] if errors else "connect refused or timed out"
        wait = self._backoff.failed()
        self._set_available(False, f"{self.map.host}:{self.map.port}: {reason}; retry in {wait:.1f}s")
        return False

    def _drop_clients(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        pipes, self._pipes = self._pipes, []
        for pipe in pipes:
            pipe.close()

    def _lost(self, reason: str) -> None:
        self._drop_clients()
        wait = self._backoff.failed()
        self._set_available(False, f"{reason}; retry in {wait:.1f}s")

    async def read(self) -> list[Reading]:
        async with self._lock:
            return await self._read_locked()

    async def _read_locked(self) -> list[Reading]:
        refs = [p.ref for p in self.map.points]
        if not self._connected:
            if self._clients or self._pipes:
                self._lost("connection closed by peer")
            if self._closed or not self._backoff.ready() or not await self._connect_locked():
                return self.bad_readings(refs, BAD_NO_COMMUNICATION)
        outcomes: list[list[Reading]] = [[] for _ in self.plan]
        if self._pipes:
            lost = await self._read_pipes(outcomes)
        else:
            lanes = len(self._clients)
            lost = await asyncio.gather(
                *(self._read_lane(client, lane, lanes, outcomes) for lane, client in enumerate(self._clients))
            )
        reason = next((r for r in lost if r is not None), None)
        if reason is not None:
            self._lost(reason)
        return [reading for outcome in outcomes for reading in outcome]

    async def _read_lane(
        self, client: AsyncModbusTcpClient, lane: int, lanes: int, outcomes: list[list[Reading]]
    ) -> str | None:
        """Requests ``lane``, ``lane + lanes``, ... of the plan, one after the other on ``client``;
        their readings go to ``outcomes`` by request index. Returns why the link is lost, if it is."""
        for n in range(lane, len(self.plan), lanes):
            request = self.plan[n]
            now = utcnow()
            try:
                response = await self._execute(client, request)
            except ModbusIOException as exc:
                # pymodbus raises this for no answer after its retries. A late answer would still
                # arrive on this socket and be taken for the next request's (transaction ids only
                # catch some cases), so the connection is dropped, as libmodbus users flush it.
                log.debug("source %s: %s", self.name, exc)
                self._fail_rest(n, lanes, BAD_TIMEOUT, now, outcomes)
                return f"{self._describe(request)}: no response within {self.config.timeout_s}s"
            except (ConnectionException, OSError, TimeoutError) as exc:
                self._fail_rest(n, lanes, BAD_NO_COMMUNICATION, now, outcomes)
                return str(exc) or type(exc).__name__
            if response.isError():
                outcomes[n] = self._refused(request, int(getattr(response, "exception_code", MALFORMED)), now)
                continue
            outcomes[n] = self._decode(n, request, response, now)
        return None

    async def _read_pipes(self, outcomes: list[list[Reading]]) -> list[str | None]:
        """Every lane's requests go out at once, in this step, and the answers are awaited lane after
        lane: no task per lane, so the poll goes on one loop iteration after the last answer rather
        than three (on a busy gateway an iteration is everything else's work too)."""
        now = utcnow()  # the poll's time, for every lane
        started: list[Exchange | ExchangeFailed] = []
        for lane, pipe in enumerate(self._pipes):
            try:
                started.append(
                    pipe.start(self._lane_frames[lane], window=self.config.pipeline, timeout_s=self.config.timeout_s)
                )
            except ExchangeFailed as exc:
                started.append(exc)
        lost: list[str | None] = []
        try:
            for lane, (pipe, exchange) in enumerate(zip(self._pipes, started, strict=True)):
                lost.append(await self._read_pipelined(pipe, lane, exchange, now, outcomes))
        finally:
            for pipe, exchange in zip(self._pipes[len(lost) :], started[len(lost) :], strict=True):
                if isinstance(exchange, Exchange):  # cancelled (or a bug) before its turn
                    pipe.abandon(exchange)
        return lost

    async def _read_pipelined(
        self,
        pipe: ModbusTcpConnection,
        lane: int,
        exchange: Exchange | ExchangeFailed,
        now: datetime,
        outcomes: list[list[Reading]],
    ) -> str | None:
        """The readings of ``lane``'s started exchange (or of its failure to start); as :meth:`_read_lane`."""
        failure: ExchangeFailed | None = None
        answers: list[bytes] | list[bytes | None]
        if isinstance(exchange, ExchangeFailed):  # it could not even start
            failure, answers = exchange, exchange.answers
        else:
            try:
                answers = await pipe.finish(exchange)
            except ExchangeFailed as exc:
                failure, answers = exc, exc.answers
        for n, answer in zip(self._lane_requests[lane], answers, strict=True):
            request = self.plan[n]
            if answer is None:  # unanswered when the exchange failed
                quality = BAD_TIMEOUT if failure is not None and failure.kind == "timeout" else BAD_NO_COMMUNICATION
                outcomes[n] = self._bad_for(request, quality, now)
                continue
            data = read_answer(answer, request.table, request.count)
            if isinstance(data, int):
                outcomes[n] = self._refused(request, data, now)
                continue
            values = self._decoders[n].decode_bytes(data)
            if values is None:
                outcomes[n] = self._decode_points(request, _unpack(data, request), now)
            else:
                outcomes[n] = self._readings(n, values, now)
        if failure is None:
            return None
        answered = sum(a is not None for a in answers)
        if failure.kind == "timeout" and answered:
            # The usual sign of a device that reads one request per TCP segment and drops the rest.
            return (f"{failure} after {answered} of {len(answers)} pipelined requests were answered; "
                    "a device that takes one request at a time needs pipeline: 1")
        return str(failure)

    def _refused(self, request: ReadRequest, code: int, now: datetime) -> list[Reading]:
        """The readings of a request answered with an exception (MALFORMED: an answer not to it)."""
        what = "a malformed answer" if code == MALFORMED else f"exception {code:02X}"
        log.debug("source %s: %s: %s", self.name, self._describe(request), what)
        return self._bad_for(request, EXCEPTION_QUALITY.get(code, BAD_DEVICE_FAILURE), now)

    def _fail_rest(self, first: int, lanes: int, quality: int, now: Any, outcomes: list[list[Reading]]) -> None:
        for n in range(first, len(self.plan), lanes):
            outcomes[n] = self._bad_for(self.plan[n], quality, now)

    @staticmethod
    async def _execute(client: AsyncModbusTcpClient, request: ReadRequest) -> Any:
        readers = {
            "coil": client.read_coils,
            "discrete_input": client.read_discrete_inputs,
            "input_register": client.read_input_registers,
            "holding_register": client.read_holding_registers,
        }
        return await readers[request.table](request.address, count=request.count, device_id=request.unit_id)

    def _describe(self, request: ReadRequest) -> str:
        return f"unit {request.unit_id} {request.table} {request.address}+{request.count}"

    def _bad_for(self, request: ReadRequest, quality: int, now: Any) -> list[Reading]:
        return self.bad_readings([self.map.points[int(str(i.key))].ref for i in request.items], quality, now)

    def _decode(self, n: int, request: ReadRequest, response: Any, now: datetime) -> list[Reading]:
        """Readings of request ``n`` of the plan, every value decoded in one pass when possible."""
        data = response.bits if request.table in BIT_TABLES else response.registers
        values = self._decoders[n].decode(data)
        if values is None:
            return self._decode_points(request, list(data), now)
        return self._readings(n, values, now)

    def _readings(self, n: int, values: list[codec.Value], now: datetime) -> list[Reading]:
        name = self.name
        return [
            Reading(name, p.ref.asset, p.ref.tag, value, GOOD, now, now, p.ref.site, p.ref.area, p.ref.unit)
            for p, value in zip(self._request_points[n], values, strict=True)
        ]

    def _decode_points(self, request: ReadRequest, data: list[Any], now: Any) -> list[Reading]:
        """Point by point (``data``: the registers or bits), so a value that cannot be decoded is Bad
        on its own."""
        words = request.table not in BIT_TABLES
        out: list[Reading] = []
        for item in request.items:
            point = self.map.points[int(str(item.key))]
            chunk = data[request.slice(item)]
            try:
                if words:
                    raw = codec.decode_registers(chunk, point.datatype, point.word_order)
                else:
                    raw = codec.decode_bits(chunk)
                value = codec.scale_value(raw, point.scale, point.offset)
            except codec.CodecError as exc:
                log.debug("source %s: %s/%s: %s", self.name, point.ref.asset, point.ref.tag, exc)
                out.append(self.reading(point.ref, None, BAD_DEVICE_FAILURE, now, now))
                continue
            out.append(self.reading(point.ref, value, GOOD, now, now))
        return out

    async def write(self, asset: str, tag: str, value: TagValue) -> None:
        point = self._by_tag.get((asset, tag))
        if point is None:
            raise SourceError(f"source {self.name}: no tag {asset}/{tag}")
        if not point.writable:
            raise SourceError(f"source {self.name}: {asset}/{tag} is read-only")
        try:
            if point.table == "coil":
                payload: bool | list[int] = codec.encode_bit(value)
            else:
                raw = codec.unscale_value(value, point.datatype, point.scale, point.offset)
                payload = codec.encode_registers(raw, point.datatype, point.word_order, point.count)
        except codec.CodecError as exc:
            raise SourceError(f"source {self.name}: {asset}/{tag}: {exc}") from None
        await self._write_raw(point.unit_id, point.table, point.address, payload, f"{asset}/{tag}")

    async def call(self, asset: str, command: str, args: Sequence[Any] = ()) -> Any:
        """A catalogue command mapped to a coil: writing ON triggers it (the PLC clears it)."""
        target = (self.map.commands or {}).get((asset, command))
        if target is None:
            raise SourceError(f"source {self.name}: no Modbus command {asset}/{command}")
        if args:
            raise SourceError(
                f"source {self.name}: {asset}/{command}: arguments are not supported over Modbus"
            )
        await self._write_raw(target.unit_id, target.table, target.address, True, f"{asset}/{command}")
        return None

    async def _write_raw(
        self, unit: int, table: Table, address: int, payload: bool | list[int], what: str
    ) -> None:
        async with self._lock:
            if not self._connected and not await self._connect_locked():
                raise SourceUnavailable(f"source {self.name}: not connected; {what} not written")
            if self._pipes:
                code = await self._write_pipelined(unit, address, payload, what)
            else:
                code = await self._write_pymodbus(unit, address, payload, what)
        if code is not None:
            refusal = "a malformed answer" if code == MALFORMED else f"exception {code:02X}"
            raise SourceError(f"source {self.name}: {what} ({table} {address}): refused with {refusal}")

    async def _write_pymodbus(self, unit: int, address: int, payload: bool | list[int], what: str) -> int | None:
        """The write on the first connection; its exception code, or None when acknowledged."""
        client = self._clients[0]
        try:
            if isinstance(payload, bool):
                response = await client.write_coil(address, payload, device_id=unit)
            elif len(payload) == 1:
                response = await client.write_register(address, payload[0], device_id=unit)
            else:
                response = await client.write_registers(address, payload, device_id=unit)
        except ModbusIOException as exc:
            raise SourceError(f"source {self.name}: {what}: no response ({exc})") from None
        except (ConnectionException, OSError) as exc:
            self._lost(str(exc))
            raise SourceUnavailable(f"source {self.name}: {what}: connection lost") from None
        return int(getattr(response, "exception_code", MALFORMED)) if response.isError() else None

    async def _write_pipelined(self, unit: int, address: int, payload: bool | list[int], what: str) -> int | None:
        pdu = write_coil_pdu(address, payload) if isinstance(payload, bool) else write_registers_pdu(address, payload)
        try:
            (answer,) = await self._pipes[0].exchange([(unit, pdu)], window=1, timeout_s=self.config.timeout_s)
        except ExchangeFailed as exc:
            self._lost(str(exc))  # the exchange closed the connection
            if exc.kind == "timeout":
                raise SourceError(f"source {self.name}: {what}: no response ({exc})") from None
            raise SourceUnavailable(f"source {self.name}: {what}: connection lost") from None
        return write_answer(pdu, answer)

    async def close(self) -> None:
        self._closed = True
        self._drop_clients()
        self._available = None


def _unpack(data: bytes, request: ReadRequest) -> list[Any]:
    """A read answer's bytes as pymodbus gives them: registers, or ``count`` bits."""
    if request.table in BIT_TABLES:
        return [bool(data[i >> 3] >> (i & 7) & 1) for i in range(request.count)]
    return list(struct.unpack(f">{len(data) // 2}H", data))
