"""The direct Publish/Read decoder agrees with asyncua's decoder on the same bytes.

Responses are encoded by asyncua (as a server would send them), then decoded both ways: the direct
path of gateway.sources.opcua_wire and asyncua's struct_from_binary followed by the fallback
converters. Hypothesis draws the values, status codes and timestamp masks.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from asyncua.ua.uaerrors import UaStatusCodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sources.opcua_wire import (
    Unsupported,
    batch_of,
    decode_publish,
    decode_read,
    decode_republish,
    sample_of,
)

_STAMP = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda d: d.replace(microsecond=d.microsecond // 10 * 10, tzinfo=UTC)
)


def _variants() -> st.SearchStrategy[ua.Variant]:
    vt = ua.VariantType
    ints = [
        (vt.SByte, -(2**7), 2**7 - 1), (vt.Byte, 0, 2**8 - 1), (vt.Int16, -(2**15), 2**15 - 1),
        (vt.UInt16, 0, 2**16 - 1), (vt.Int32, -(2**31), 2**31 - 1), (vt.UInt32, 0, 2**32 - 1),
        (vt.Int64, -(2**63), 2**63 - 1), (vt.UInt64, 0, 2**64 - 1),
    ]
    options: list[st.SearchStrategy[ua.Variant]] = [
        st.builds(lambda v: ua.Variant(v, vt.Boolean), st.booleans()),
        st.builds(lambda v: ua.Variant(v, vt.Double), st.floats(allow_nan=False)),
        st.builds(lambda v: ua.Variant(v, vt.Float), st.floats(width=32, allow_nan=False)),
        st.builds(lambda v: ua.Variant(v, vt.String), st.text(max_size=40)),
        st.just(ua.Variant(None, vt.String)),
        st.just(ua.Variant()),  # Null
        st.builds(lambda v: ua.Variant(ua.LocalizedText(v), vt.LocalizedText), st.text(max_size=10)),
        st.builds(lambda v: ua.Variant(v, vt.DateTime), _STAMP),
        st.builds(lambda v: ua.Variant(v, vt.Int32), st.lists(st.integers(-5, 5), max_size=4)),  # array
    ]
    options += [st.builds(lambda v, t=t: ua.Variant(v, t), st.integers(lo, hi)) for t, lo, hi in ints]
    return st.one_of(options)


@st.composite
def _data_values(draw: st.DrawFn) -> ua.DataValue:
    dv = ua.DataValue()
    if draw(st.booleans()):
        dv.Value = draw(_variants())
    if draw(st.booleans()):
        dv.StatusCode = ua.StatusCode(draw(st.sampled_from([0, 0x80310000, 0x40000000, 0x808D0000])))
    if draw(st.booleans()):
        dv.SourceTimestamp = draw(_STAMP)
        dv.SourcePicoseconds = draw(st.one_of(st.none(), st.integers(0, 9999)))
    if draw(st.booleans()):
        dv.ServerTimestamp = draw(_STAMP)
        dv.ServerPicoseconds = draw(st.one_of(st.none(), st.integers(0, 9999)))
    return dv


def _same(direct: tuple[Any, ...], reference: tuple[Any, ...]) -> None:
    assert len(direct) == len(reference)
    for a, b in zip(direct, reference, strict=True):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
            assert math.isnan(b)
        else:
            assert a == b, (direct, reference)
            assert type(a) is type(b), (direct, reference)


def _publish_bytes(message: ua.NotificationMessage, available: list[int], more: bool = False) -> bytes:
    response = ua.PublishResponse()
    response.Parameters.SubscriptionId = 7
    response.Parameters.AvailableSequenceNumbers = available
    response.Parameters.MoreNotifications = more
    response.Parameters.NotificationMessage = message
    response.Parameters.Results = [ua.StatusCode(0)]
    return struct_to_binary(response)


@settings(max_examples=150, deadline=None)
@given(st.lists(_data_values(), max_size=30))
def test_read_response_matches_asyncua(values: list[ua.DataValue]) -> None:
    response = ua.ReadResponse()
    response.Results = values
    data = struct_to_binary(response)
    reference = [sample_of(dv) for dv in struct_from_binary(ua.ReadResponse, ua.utils.Buffer(data)).Results]
    direct = decode_read(data)
    assert len(direct) == len(reference)
    for d, r in zip(direct, reference, strict=True):
        _same(d, r)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), _data_values()), max_size=30), st.booleans(),
       st.lists(st.integers(1, 2**32 - 1), max_size=4))
def test_publish_response_matches_asyncua(items: list[tuple[int, ua.DataValue]], more: bool,
                                          available: list[int]) -> None:
    change = ua.DataChangeNotification()
    change.MonitoredItems = [ua.MonitoredItemNotification(ClientHandle=h, Value=dv) for h, dv in items]
    message = ua.NotificationMessage(SequenceNumber=42, PublishTime=datetime.now(UTC),
                                     NotificationData=[change] if items else [])
    data = _publish_bytes(message, available, more)
    parsed = struct_from_binary(ua.PublishResponse, ua.utils.Buffer(data)).Parameters
    reference = batch_of(parsed.SubscriptionId, parsed.NotificationMessage, parsed)
    direct = decode_publish(data)
    assert (direct.subscription_id, direct.sequence_number, direct.more, direct.available, direct.has_data) == (
        reference.subscription_id, reference.sequence_number, reference.more, reference.available,
        reference.has_data)
    assert direct.status_change is None
    assert len(direct.items) == len(reference.items) == len(items)
    for d, r in zip(direct.items, reference.items, strict=True):
        _same(d, r)


def test_status_change_and_events_in_one_message() -> None:
    """A StatusChangeNotification is reported; an EventNotificationList is skipped, not misread."""
    events = ua.EventNotificationList()
    events.Events = [ua.EventFieldList(ClientHandle=3, EventFields=[ua.Variant(1.5)])]
    status = ua.StatusChangeNotification(Status=ua.StatusCode(ua.StatusCodes.BadTimeout))
    change = ua.DataChangeNotification()
    change.MonitoredItems = [ua.MonitoredItemNotification(ClientHandle=9, Value=ua.DataValue(ua.Variant(2.5)))]
    message = ua.NotificationMessage(SequenceNumber=5, NotificationData=[events, status, change])
    batch = decode_publish(_publish_bytes(message, [5]))
    assert batch.status_change == ua.StatusCodes.BadTimeout
    assert batch.has_data
    assert [(h, v, s) for h, v, s, _ in batch.items] == [(9, 2.5, 0)]


def test_keep_alive_has_no_data() -> None:
    batch = decode_publish(_publish_bytes(ua.NotificationMessage(SequenceNumber=3), []))
    assert (batch.sequence_number, batch.has_data, batch.items) == (3, False, [])


def test_republish_response() -> None:
    change = ua.DataChangeNotification()
    change.MonitoredItems = [ua.MonitoredItemNotification(ClientHandle=1, Value=ua.DataValue(ua.Variant(True)))]
    response = ua.RepublishResponse()
    response.NotificationMessage = ua.NotificationMessage(SequenceNumber=11, NotificationData=[change])
    batch = decode_republish(struct_to_binary(response), 4)
    assert (batch.subscription_id, batch.sequence_number) == (4, 11)
    assert [(h, v) for h, v, _, _ in batch.items] == [(1, True)]


def test_timestamps_are_utc_and_shared_within_a_message() -> None:
    stamp = datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)
    values = [ua.DataValue(ua.Variant(float(i)), SourceTimestamp=stamp) for i in range(3)]
    values.append(ua.DataValue(ua.Variant(1.0), ServerTimestamp=stamp + timedelta(seconds=1)))
    response = ua.ReadResponse()
    response.Results = values
    samples = decode_read(struct_to_binary(response))
    assert [s[2] for s in samples] == [stamp, stamp, stamp, stamp + timedelta(seconds=1)]
    assert samples[0][2] is samples[1][2]  # converted once per message
    assert samples[0][2].tzinfo is UTC


def test_bad_service_result_raises_like_asyncua() -> None:
    response = ua.ReadResponse()
    response.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadTooManyOperations)
    with pytest.raises(UaStatusCodeError):
        decode_read(struct_to_binary(response))


def test_wrong_message_type_is_unsupported() -> None:
    with pytest.raises(Unsupported):
        decode_publish(struct_to_binary(ua.ReadResponse()))
