"""Direct decoding of the two OPC UA responses that carry values at rate: Publish and Read.

Why not asyncua's decoder: it builds every DataValue, Variant and StatusCode through generic
dataclass deserializers, which profiling put at 37% of the gateway's CPU in subscribe mode (Part 6
binary encoding is simple enough that a value costs a few ``struct`` calls instead). Only the shapes
a PLC sends at rate take the direct path: scalar Booleans, integers, floats, strings, and DataValues
with status and timestamps. Anything else is handed to asyncua's own decoder: one Variant at a time
(arrays, structures, LocalizedText...) or, for a structure this module does not follow, the whole
message (:class:`Unsupported`). So correctness never rests on the direct path alone; the tests
compare both decoders on the same bytes.

A decoded value is a :data:`Sample` tuple ``(value, status, timestamp)``: the Python value as the
pipeline carries it (see :func:`~gateway.sources.opcua_points.plain_value`), the StatusCode as an
int, and the SourceTimestamp (else the ServerTimestamp, else None) as an aware UTC datetime.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.ua_binary import variant_from_binary
from asyncua.ua.uaerrors import UaStatusCodeError

from gateway.readings import TagValue
from gateway.sources.opcua_points import plain_value

Sample = tuple[TagValue | None, int, datetime | None]

_PUBLISH_RESPONSE = ObjectIds.PublishResponse_Encoding_DefaultBinary
_READ_RESPONSE = ObjectIds.ReadResponse_Encoding_DefaultBinary
_REPUBLISH_RESPONSE = ObjectIds.RepublishResponse_Encoding_DefaultBinary
_DATA_CHANGE = ObjectIds.DataChangeNotification_Encoding_DefaultBinary
_STATUS_CHANGE = ObjectIds.StatusChangeNotification_Encoding_DefaultBinary

_U8 = struct.Struct("<B").unpack_from
_U16 = struct.Struct("<H").unpack_from
_I32 = struct.Struct("<i").unpack_from
_U32 = struct.Struct("<I").unpack_from
_I64 = struct.Struct("<q").unpack_from

# Built-in type id -> (unpacker, size) for the fixed-size scalars (Part 6 §5.1.2).
_SCALARS: dict[int, tuple[Callable[[bytes, int], tuple[Any, ...]], int]] = {
    1: (struct.Struct("<?").unpack_from, 1),
    2: (struct.Struct("<b").unpack_from, 1),
    3: (_U8, 1),
    4: (struct.Struct("<h").unpack_from, 2),
    5: (_U16, 2),
    6: (_I32, 4),
    7: (_U32, 4),
    8: (_I64, 8),
    9: (struct.Struct("<Q").unpack_from, 8),
    10: (struct.Struct("<f").unpack_from, 4),
    11: (struct.Struct("<d").unpack_from, 8),
}
_STRING = 12
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
_MAX_FILETIME = 2650467743999999999  # 9999-12-31 23:59:59.9999999: asyncua's cap, kept the same


class Unsupported(Exception):
    """The message has a shape this module does not decode; use asyncua's decoder for it."""


@dataclass(slots=True)
class PublishBatch:
    """What one PublishResponse (or RepublishResponse) says, decoded."""

    subscription_id: int
    sequence_number: int
    more: bool = False
    available: list[int] = field(default_factory=list)
    # (ClientHandle, value, status, timestamp) in the order the server sent them
    items: list[tuple[int, TagValue | None, int, datetime | None]] = field(default_factory=list)
    status_change: int | None = None  # StatusChangeNotification: the subscription's new status
    has_data: bool = False  # a NotificationMessage with data (acknowledge it), not a keep-alive


class _Reader:
    """A cursor over one message body; timestamps are cached per message (a PLC stamps every value
    of a scan with the same time, so most conversions are repeats)."""

    __slots__ = ("_stamps", "data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self._stamps: dict[int, datetime | None] = {}

    def u32(self) -> int:
        value: int = _U32(self.data, self.pos)[0]
        self.pos += 4
        return value

    def i32(self) -> int:
        value: int = _I32(self.data, self.pos)[0]
        self.pos += 4
        return value

    def skip_string(self) -> None:
        length = self.i32()
        if length > 0:
            self.pos += length

    def nodeid(self) -> int | None:
        """Skip a (Expanded)NodeId; its numeric identifier in namespace 0, else None."""
        data, pos = self.data, self.pos
        encoding = data[pos]
        kind = encoding & 0x3F
        numeric: int | None = None
        if kind == 0:
            numeric, pos = data[pos + 1], pos + 2
        elif kind == 1:
            numeric = _U16(data, pos + 2)[0] if data[pos + 1] == 0 else None
            pos += 4
        elif kind == 2:
            numeric = _U32(data, pos + 3)[0] if _U16(data, pos + 1)[0] == 0 else None
            pos += 7
        elif kind in (3, 5):
            pos += 3
            length = _I32(data, pos)[0]
            pos += 4 + max(0, length)
        elif kind == 4:
            pos += 19
        else:
            raise Unsupported(f"NodeId encoding {encoding:#x}")
        self.pos = pos
        if encoding & 0x80:  # ExpandedNodeId: NamespaceUri
            self.skip_string()
        if encoding & 0x40:  # ExpandedNodeId: ServerIndex
            self.pos += 4
        return numeric

    def skip_diagnostic(self) -> None:
        mask = self.data[self.pos]
        self.pos += 1
        for bit in (0x01, 0x02, 0x04, 0x08):  # SymbolicId, NamespaceUri, LocalizedText, Locale
            if mask & bit:
                self.pos += 4
        if mask & 0x10:  # AdditionalInfo
            self.skip_string()
        if mask & 0x20:  # InnerStatusCode
            self.pos += 4
        if mask & 0x40:  # InnerDiagnosticInfo
            self.skip_diagnostic()

    def skip_extension_object(self) -> None:
        self.nodeid()
        encoding = self.data[self.pos]
        self.pos += 1
        if encoding in (1, 2):  # ByteString or XmlElement body
            self.skip_string()
        elif encoding != 0:
            raise Unsupported(f"ExtensionObject encoding {encoding:#x}")

    def response_header(self, expected_type: int) -> None:
        """Check the TypeId and skip the ResponseHeader; a Bad ServiceResult raises, as asyncua's check does."""
        if self.nodeid() != expected_type:
            raise Unsupported("unexpected response type")
        self.pos += 12  # Timestamp, RequestHandle
        service_result = self.u32()
        self.skip_diagnostic()
        count = self.i32()
        for _ in range(max(0, count)):  # StringTable
            self.skip_string()
        self.skip_extension_object()  # AdditionalHeader
        if service_result & 0x80000000:
            raise UaStatusCodeError(service_result)  # type: ignore[no-untyped-call]

    def timestamp(self, ticks: int) -> datetime | None:
        stamps = self._stamps
        if ticks in stamps:
            return stamps[ticks]
        stamp = None if ticks <= 0 else _FILETIME_EPOCH + timedelta(microseconds=min(ticks, _MAX_FILETIME) // 10)
        stamps[ticks] = stamp
        return stamp

    def variant(self) -> TagValue | None:
        data, pos = self.data, self.pos
        encoding = data[pos]
        scalar = _SCALARS.get(encoding)
        if scalar is not None:
            unpack, size = scalar
            self.pos = pos + 1 + size
            value: TagValue = unpack(data, pos + 1)[0]
            return value
        if encoding == _STRING:
            length = _I32(data, pos + 1)[0]
            start = pos + 5
            if length < 0:
                self.pos = start
                return None
            self.pos = start + length
            return data[start : self.pos].decode("utf-8", "replace")
        if encoding == 0:  # Null variant
            self.pos = pos + 1
            return None
        # Arrays, structures and the rarer built-in types: asyncua's decoder, for this Variant only.
        buffer = Buffer(data, pos)
        decoded = variant_from_binary(buffer)
        self.pos = len(data) - len(buffer)
        return plain_value(decoded.Value)

    def data_value(self) -> Sample:
        mask = self.data[self.pos]
        self.pos += 1
        value = self.variant() if mask & 0x01 else None
        status = self.u32() if mask & 0x02 else 0
        source = server = None
        if mask & 0x04:
            source = self.timestamp(_I64(self.data, self.pos)[0])
            self.pos += 8
        if mask & 0x10:  # SourcePicoseconds
            self.pos += 2
        if mask & 0x08:
            server = self.timestamp(_I64(self.data, self.pos)[0])
            self.pos += 8
        if mask & 0x20:  # ServerPicoseconds
            self.pos += 2
        return value, status, source or server

    def monitored_items(self, out: list[tuple[int, TagValue | None, int, datetime | None]]) -> None:
        count = self.i32()
        for _ in range(max(0, count)):
            handle = self.u32()
            value, status, stamp = self.data_value()
            out.append((handle, value, status, stamp))

    def notification_message(self, batch: PublishBatch) -> None:
        batch.sequence_number = self.u32()
        self.pos += 8  # PublishTime
        count = self.i32()
        for _ in range(max(0, count)):
            type_id = self.nodeid()
            encoding = self.data[self.pos]
            if encoding != 1:
                raise Unsupported(f"notification encoding {encoding:#x}")
            self.pos += 1
            length = self.i32()
            end = self.pos + length
            if type_id == _DATA_CHANGE:
                self.monitored_items(batch.items)  # the DiagnosticInfos after them are not used
            elif type_id == _STATUS_CHANGE:
                batch.status_change = self.u32()
            # EventNotificationList and anything else: not monitored by this gateway; skipped.
            self.pos = end
            batch.has_data = True


def _body(data: Any) -> bytes:
    return data if isinstance(data, bytes) else bytes(data)


def decode_publish(data: Any) -> PublishBatch:
    """A PublishResponse as returned by asyncua's ``send_request`` (TypeId included)."""
    reader = _Reader(_body(data))
    reader.response_header(_PUBLISH_RESPONSE)
    batch = PublishBatch(reader.u32(), 0)
    count = reader.i32()
    batch.available = [reader.u32() for _ in range(max(0, count))]
    batch.more = bool(reader.data[reader.pos])
    reader.pos += 1
    reader.notification_message(batch)
    return batch  # the acknowledgement Results and DiagnosticInfos that follow are not needed


def decode_republish(data: Any, subscription_id: int) -> PublishBatch:
    """A RepublishResponse: one earlier NotificationMessage of ``subscription_id``."""
    reader = _Reader(_body(data))
    reader.response_header(_REPUBLISH_RESPONSE)
    batch = PublishBatch(subscription_id, 0)
    reader.notification_message(batch)
    return batch


def decode_read(data: Any) -> list[Sample]:
    """The Results of a ReadResponse, in request order."""
    reader = _Reader(_body(data))
    reader.response_header(_READ_RESPONSE)
    count = reader.i32()
    return [reader.data_value() for _ in range(max(0, count))]


def sample_of(dv: ua.DataValue) -> Sample:
    """The same tuple from a DataValue asyncua decoded (method results, the rare slow paths)."""
    value = plain_value(dv.Value.Value) if dv.Value is not None else None
    status = int(dv.StatusCode.value) if dv.StatusCode is not None else 0
    stamp = dv.SourceTimestamp or dv.ServerTimestamp
    if stamp is not None and stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return value, status, stamp


def batch_of(
    subscription_id: int, message: ua.NotificationMessage, result: ua.PublishResult | None = None
) -> PublishBatch:
    """The same batch from a message asyncua decoded (the fallback for :class:`Unsupported`)."""
    batch = PublishBatch(subscription_id, int(message.SequenceNumber))
    if result is not None:
        batch.more = bool(result.MoreNotifications)
        batch.available = [int(n) for n in result.AvailableSequenceNumbers or []]
    for notification in message.NotificationData or []:
        batch.has_data = True
        if isinstance(notification, ua.DataChangeNotification):
            batch.items.extend((int(i.ClientHandle), *sample_of(i.Value)) for i in notification.MonitoredItems)
        elif isinstance(notification, ua.StatusChangeNotification):
            batch.status_change = int(notification.Status.value)
    return batch
