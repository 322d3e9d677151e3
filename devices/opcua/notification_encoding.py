"""DataChangeNotifications encoded once, by a direct encoder, when a client subscription publishes them.

Why: with a client subscribed to 25,000 values/s, asyncua's generic serializer encoding the
PublishResponses (``UaProcessor.send_response`` -> ``struct_to_binary`` -> ``extensionobject_to_binary``
of the DataChangeNotification, then per MonitoredItemNotification a DataValue, a Variant and a
StatusCode through dataclass-driven serializers) was ~23% of the plant process's CPU: about 4.2-4.7 us
per item. The items a PLC publishes are all alike (a scalar Variant, a StatusCode, the scan's two
timestamps), so this module writes them with one ``struct`` call per item and the scan's shared
timestamps and status codes encoded once per notification: 0.37 us per item against asyncua's 4.3 us
(timeit, one 1,000-item notification of Float/UInt32/Boolean/Bad-null values sharing a scan's
timestamps).

How it reaches the wire: ``extensionobject_to_binary`` writes a ``ua.ExtensionObject`` instance as just
its TypeId, encoding byte and Body, so an ExtensionObject whose Body is already the encoded
DataChangeNotification costs almost nothing in ``send_response``; Republish re-sends the same stored
NotificationMessage, still correct. :func:`install_pre_encoding` makes the subscriptions of one
server's SubscriptionService build that ExtensionObject instead of a ``ua.DataChangeNotification``
(:class:`PreEncodingSubscription`). Only client subscriptions get it: a server-internal subscription
(no ``pub_request_callback``) hands the PublishResult to Python callbacks, which need the real object.

Correctness never rests on the direct path alone: anything it does not cover (arrays, other Variant
types, picoseconds, values ``struct`` refuses) is encoded by asyncua's own serializer, for that
Variant or that DataValue, and the tests compare the bytes with asyncua's for random notifications.

Binary layout (OPC 10000-6 §5.2.2.17 DataValue, §5.2.2.16 Variant, §5.2.5 arrays), as asyncua 2.1
writes it, which is what the bytes must equal:

- DataChangeNotification: Int32 item count, the items, then DiagnosticInfos (Int32 count + each).
- MonitoredItemNotification: UInt32 ClientHandle, DataValue.
- DataValue: mask byte (0x01 Value, 0x02 StatusCode, 0x04 SourceTimestamp, 0x08 ServerTimestamp), then
  the present fields in that order. asyncua sets 0x02 for any StatusCode that is not None, Good
  included, so a Good status is written (4 zero bytes) where the spec allows leaving it out; it also
  writes both picosecond fields after both timestamps (the spec puts each after its own timestamp), so
  DataValues with picoseconds, which the plant never sets, go to asyncua and the bytes still match it.
- Variant: encoding byte (builtin type id), then the scalar value; a Null Variant is the byte alone.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from asyncua import ua
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.subscription_service import SubscriptionService
from asyncua.ua import ua_binary

from devices.opcua._ua import ObjectIds, extension_object, nodeid

DATA_CHANGE_BINARY_ENCODING = nodeid(ObjectIds.DataChangeNotification_Encoding_DefaultBinary)

_VALUE, _STATUS, _SOURCE_TS, _SERVER_TS = 0x01, 0x02, 0x04, 0x08

_pack_i32 = struct.Struct("<i").pack
_pack_u32 = struct.Struct("<I").pack
_pack_i64 = struct.Struct("<q").pack
# ClientHandle and DataValue mask of an item whose DataValue has no Value.
_pack_no_value = struct.Struct("<IB").pack
# ClientHandle, mask and Variant encoding byte: the head of a Null Variant's item.
_pack_null = struct.Struct("<IBB").pack
# ... followed by the Int32 length of a String/ByteString value (the bytes follow).
_pack_string_head = struct.Struct("<IBBi").pack

_VT = ua.VariantType
_FIXED_FORMATS = {
    _VT.Boolean: "?",
    _VT.SByte: "b",
    _VT.Byte: "B",
    _VT.Int16: "h",
    _VT.UInt16: "H",
    _VT.Int32: "i",
    _VT.UInt32: "I",
    _VT.Int64: "q",
    _VT.UInt64: "Q",
    _VT.Float: "f",
    _VT.Double: "d",
}
# Fixed-size scalars: VariantType -> pack(ClientHandle, mask, encoding byte, value), one struct call per
# item. The "<" formats are the same widths and ranges asyncua packs (ua_binary.Primitives), so a value
# struct refuses here (out of range, wrong type) goes to asyncua, which then raises its own UaError.
_FIXED: dict[ua.VariantType, Callable[..., bytes]] = {
    vtype: struct.Struct("<IBB" + fmt).pack for vtype, fmt in _FIXED_FORMATS.items()
}

_EMPTY_ARRAY = _pack_i32(0)
_NULL_ARRAY = _pack_i32(-1)
_UNSET = object()  # "no previous item" for the identity cache in _encode_items


def data_change_body(notification: ua.DataChangeNotification) -> bytes:
    """The binary encoding of ``notification``: byte for byte what asyncua's ``struct_to_binary`` writes."""
    items = notification.MonitoredItems
    diagnostics = notification.DiagnosticInfos
    if items is None:
        parts = [_NULL_ARRAY]
    else:
        parts = [_pack_i32(len(items))]
        _encode_items(items, parts)
    if diagnostics is None:
        parts.append(_NULL_ARRAY)
    elif not diagnostics:
        parts.append(_EMPTY_ARRAY)
    else:  # asyncua's server never sends any: let asyncua write them, minus the empty item array
        parts.append(ua_binary.struct_to_binary(ua.DataChangeNotification([], diagnostics))[4:])
    return b"".join(parts)


def pre_encoded(notification: ua.DataChangeNotification) -> ua.ExtensionObject:
    """``notification`` as the ExtensionObject asyncua writes for it, its body already encoded."""
    return extension_object(DATA_CHANGE_BINARY_ENCODING, data_change_body(notification))


def _encode_items(items: Sequence[ua.MonitoredItemNotification], parts: list[bytes]) -> None:
    string_encoding = ua_binary.get_string_encoding()
    stamps: dict[datetime, bytes] = {}  # a scan's items share its timestamps: encode each once
    fixed = _FIXED
    # The (StatusCode, SourceTimestamp, ServerTimestamp) objects of the previous item and the mask bits
    # and bytes they encode to. The publisher shares these objects between the items of a scan, so the
    # identity test almost always hits and the item costs one struct call.
    last_status: Any = _UNSET
    last_source: Any = _UNSET
    last_server: Any = _UNSET
    tail_mask = 0
    tail = b""
    for item in items:
        try:
            datavalue = item.Value
            if datavalue.SourcePicoseconds is not None or datavalue.ServerPicoseconds is not None:
                parts.append(_pack_u32(item.ClientHandle) + ua_binary.struct_to_binary(datavalue))
                continue
            status = datavalue.StatusCode
            source = datavalue.SourceTimestamp
            server = datavalue.ServerTimestamp
            if status is not last_status or source is not last_source or server is not last_server:
                tail_mask, tail = _tail(status, source, server, stamps)
                last_status, last_source, last_server = status, source, server
            variant = datavalue.Value
            if variant is None:
                head = _pack_no_value(item.ClientHandle, tail_mask)
            else:
                # The common case inline, a fixed-size scalar (a call per item cost 8%: 0.40 -> 0.37 us/item).
                vtype = variant.VariantType
                value = variant.Value
                pack = fixed.get(vtype)
                if pack is not None and not variant.is_array and not isinstance(value, list | tuple):
                    head = pack(item.ClientHandle, tail_mask | _VALUE, vtype, value)
                else:
                    head = _variant_head(item.ClientHandle, tail_mask | _VALUE, variant, string_encoding, stamps)
        except Exception:
            # Anything the direct path does not follow: asyncua encodes the whole item, or raises the
            # error it always raised for a value it cannot encode.
            parts.append(ua_binary.struct_to_binary(item))
            continue
        parts.append(head)
        parts.append(tail)


def _variant_head(
    handle: int,
    mask: int,
    variant: ua.Variant,
    string_encoding: str,
    stamps: dict[datetime, bytes],
) -> bytes:
    """ClientHandle, DataValue mask and the encoded Variant of an item that is not a fixed-size scalar."""
    value = variant.Value
    vtype = variant.VariantType
    if not variant.is_array and not isinstance(value, list | tuple):  # asyncua's own array test
        if vtype is _VT.Null:  # asyncua writes no value for Null, whatever Value holds
            return _pack_null(handle, mask, 0)
        if vtype is _VT.String or vtype is _VT.ByteString:
            # The value types asyncua writes for these; anything else is left to it (it raises for most).
            if value is None:
                return _pack_string_head(handle, mask, vtype, -1)
            if isinstance(value, str) and vtype is _VT.String:
                data = value.encode(string_encoding, "surrogateescape")
                return _pack_string_head(handle, mask, vtype, len(data)) + data
            if isinstance(value, bytes):
                return _pack_string_head(handle, mask, vtype, len(value)) + value
        if vtype is _VT.DateTime and value is not None:
            stamp = stamps.get(value)
            if stamp is None:
                stamp = stamps[value] = _pack_i64(ua.datetime_to_win_epoch(value))
            return _pack_null(handle, mask, vtype) + stamp
    return _pack_no_value(handle, mask) + ua_binary.variant_to_binary(variant)


def _tail(
    status: ua.StatusCode | None, source: datetime | None, server: datetime | None, stamps: dict[datetime, bytes]
) -> tuple[int, bytes]:
    """DataValue mask bits and bytes of the fields after the Variant."""
    mask = 0
    parts: list[bytes] = []
    if status is not None:
        mask |= _STATUS
        parts.append(_pack_u32(status.value))
    for bit, stamp in ((_SOURCE_TS, source), (_SERVER_TS, server)):
        if stamp is not None:
            mask |= bit
            encoded = stamps.get(stamp)
            if encoded is None:
                encoded = stamps[stamp] = _pack_i64(ua.datetime_to_win_epoch(stamp))
            parts.append(encoded)
    return mask, b"".join(parts)


# --- hooking into asyncua's server -----------------------------------------------------------------


class PreEncodingSubscription(InternalSubscription):
    """asyncua 2.1's InternalSubscription whose client publishes carry pre-encoded DataChangeNotifications.

    ``_pop_triggered_datachanges`` is asyncua's, flattening order included (monitored items in queue
    order, each item's queued values oldest first); only the object appended differs.
    """

    def _pop_triggered_datachanges(self, result: ua.PublishResult) -> None:
        if self.pub_request_callback is None:
            # Server-internal subscription: its PublishResult goes to Python callbacks, not to a socket.
            super()._pop_triggered_datachanges(result)
            return
        if self._triggered_datachanges:
            notification = ua.DataChangeNotification()
            notification.MonitoredItems = [item for sublist in self._triggered_datachanges.values() for item in sublist]
            self._triggered_datachanges = {}
            result.NotificationMessage.NotificationData.append(pre_encoded(notification))


def install_pre_encoding(service: SubscriptionService) -> None:
    """Make the subscriptions ``service`` creates from now on :class:`PreEncodingSubscription`.

    asyncua creates InternalSubscription by name inside ``SubscriptionService.create_subscription``,
    with no factory to override, so this wraps that method on this one service instance and changes
    the class of the subscription it just created (the subclass adds no state). Patching asyncua's
    module instead would change every server in the process, tests' own servers included. The
    subscription's publishing task has not run yet when the class changes (``create_subscription``
    does not yield after starting it), and would only send an unencoded first message if it had.
    """
    create = service.create_subscription

    async def create_subscription(
        params: ua.CreateSubscriptionParameters,
        callback: Callable[..., Any],
        session_id: ua.NodeId,
        request_callback: Callable[..., Any] | None = None,
    ) -> ua.CreateSubscriptionResult:
        result = await create(params, callback, session_id, request_callback)
        subscription = service.subscriptions.get(result.SubscriptionId)
        if type(subscription) is InternalSubscription:
            subscription.__class__ = PreEncodingSubscription
        return result

    service.create_subscription = create_subscription  # type: ignore[method-assign]
