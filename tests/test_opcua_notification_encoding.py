"""The direct DataChangeNotification encoder (devices/opcua/notification_encoding.py) and its hook.

asyncua's own serializer is the oracle: for random notifications our bytes must equal its bytes, and
its decoder must give the notification back. Then the hook at the subscription level (flattening
order, client vs server-internal subscriptions, Republish) and over real TCP with an asyncua client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import Node, ua
from asyncua.common.utils import Buffer
from asyncua.server.address_space import AddressSpace
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.subscription_service import SubscriptionService
from asyncua.ua import ua_binary
from asyncua.ua.ua_binary import (
    extensionobject_from_binary,
    extensionobject_to_binary,
    struct_from_binary,
    struct_to_binary,
)
from asyncua.ua.uaerrors import UaError
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.opcua import notification_encoding
from devices.opcua._ua import scalar_variant
from devices.opcua.notification_encoding import (
    PreEncodingSubscription,
    data_change_body,
    install_pre_encoding,
    pre_encoded,
)
from devices.process_image import BAD_SENSOR_FAILURE
from tests.test_opcua_server import DEADLINE_S, Rig, eventually, open_rig

VT = ua.VariantType
DATA_CHANGE_ENCODING = ua.NodeId(ua.ObjectIds.DataChangeNotification_Encoding_DefaultBinary)

# --- random notifications ------------------------------------------------------------------------

UTC_TIMES = st.datetimes(min_value=datetime(1700, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC))
# For byte equality only (asyncua's decoder gives every time back as aware UTC, clamped to 1601..9999).
ODD_TIMES = st.one_of(
    st.datetimes(min_value=datetime(1500, 1, 1)),  # naive; before 1601 encodes as 0
    st.datetimes(
        min_value=datetime(1600, 1, 1),
        timezones=st.builds(timezone, st.timedeltas(-timedelta(hours=14), timedelta(hours=14))),
    ),
    st.just(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),  # at or after the max: Int64 max
)


def variants(exact: bool) -> st.SearchStrategy[ua.Variant]:
    """Scalars of every direct-path type, Null, and Variants only asyncua's fallback encodes.

    ``exact``: only values asyncua decodes back to an equal Variant (no NaN, aware UTC times, str in
    String Variants).
    """
    floats32 = st.floats(width=32, allow_nan=not exact)
    doubles = st.floats(allow_nan=not exact)
    times = UTC_TIMES if exact else st.one_of(UTC_TIMES, ODD_TIMES)
    strings: st.SearchStrategy[Any] = st.none() | st.text(max_size=12)
    if not exact:
        strings |= st.binary(max_size=6)  # asyncua writes bytes in a String Variant as they are
    typed: list[tuple[ua.VariantType, st.SearchStrategy[Any]]] = [
        (VT.Boolean, st.booleans()),
        (VT.SByte, st.integers(-(2**7), 2**7 - 1)),
        (VT.Byte, st.integers(0, 2**8 - 1)),
        (VT.Int16, st.integers(-(2**15), 2**15 - 1)),
        (VT.UInt16, st.integers(0, 2**16 - 1)),
        (VT.Int32, st.integers(-(2**31), 2**31 - 1)),
        (VT.UInt32, st.integers(0, 2**32 - 1)),
        (VT.Int64, st.integers(-(2**63), 2**63 - 1)),
        (VT.UInt64, st.integers(0, 2**64 - 1)),
        (VT.Float, floats32),
        (VT.Double, doubles),
        (VT.String, strings),
        (VT.DateTime, times),
        (VT.ByteString, st.none() | st.binary(max_size=6)),
    ]
    direct = [st.builds(ua.Variant, values, st.just(vtype)) for vtype, values in typed]
    fallback = [
        st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4).map(lambda v: ua.Variant(v, VT.Int32)),
        st.lists(st.lists(doubles, min_size=2, max_size=2), min_size=1, max_size=2).map(
            lambda v: ua.Variant(v, VT.Double)  # a matrix: Dimensions
        ),
        st.text(max_size=5).map(lambda t: ua.Variant(ua.LocalizedText(t, "en"))),
        st.uuids().map(lambda u: ua.Variant(u, VT.Guid)),
        st.integers(0, 2**32 - 1).map(lambda code: ua.Variant(ua.StatusCode(code), VT.StatusCode)),
    ]
    return st.one_of(*direct, st.just(ua.Variant()), *fallback)


VARIANTS = {exact: variants(exact) for exact in (False, True)}
STATUS_CODES = st.sampled_from([0, 0x40000000, 0x408F0000, 0x80000000, BAD_SENSOR_FAILURE, 0x80340000])


@st.composite
def notifications(draw: st.DrawFn, exact: bool) -> ua.DataChangeNotification:
    """Items draw their StatusCodes and timestamps from small shared pools, as a scan's items share
    them (the encoder's identity cache), with some fresh equal objects in between."""
    times = UTC_TIMES if exact else st.one_of(UTC_TIMES, ODD_TIMES)
    statuses: list[ua.StatusCode | None] = [ua.StatusCode(c) for c in draw(st.lists(STATUS_CODES, min_size=1))]
    if not exact:
        statuses.append(None)
    stamps: list[datetime | None] = [None, *draw(st.lists(times, min_size=1, max_size=3))]

    def status() -> ua.StatusCode | None:
        chosen = draw(st.sampled_from(statuses))
        return ua.StatusCode(chosen.value) if chosen is not None and draw(st.booleans()) else chosen

    drawn: list[ua.MonitoredItemNotification] = []
    for _ in range(draw(st.integers(0, 25))):
        datavalue = ua.DataValue(
            Value=draw(VARIANTS[exact]),
            StatusCode=status(),
            SourceTimestamp=draw(st.sampled_from(stamps)),
            ServerTimestamp=draw(st.sampled_from(stamps)),
        )
        if draw(st.integers(0, 9)) == 0:  # picoseconds: asyncua encodes the DataValue
            datavalue.SourcePicoseconds = draw(st.none() | st.integers(0, 9999))
            datavalue.ServerPicoseconds = draw(st.integers(0, 9999))
        drawn.append(ua.MonitoredItemNotification(ClientHandle=draw(st.integers(0, 2**32 - 1)), Value=datavalue))
    items: list[ua.MonitoredItemNotification] | None = drawn
    diagnostics: list[ua.DiagnosticInfo] | None = draw(
        st.just([]) | st.lists(st.builds(ua.DiagnosticInfo, AdditionalInfo=st.text(max_size=5)), max_size=2)
    )
    if not exact and draw(st.integers(0, 9)) == 0:
        items, diagnostics = draw(st.sampled_from([(None, []), (items, None)]))
    return ua.DataChangeNotification(MonitoredItems=items, DiagnosticInfos=diagnostics)


@settings(max_examples=300, deadline=None)
@given(notifications(exact=False))
def test_bytes_equal_asyncuas(notification: ua.DataChangeNotification) -> None:
    assert data_change_body(notification) == struct_to_binary(notification)
    extension = pre_encoded(notification)
    assert extension.TypeId == DATA_CHANGE_ENCODING
    assert struct_to_binary(extension) == extensionobject_to_binary(notification)
    # What UaProcessor.send_response actually writes: the whole PublishResponse.
    ours, theirs = ua.PublishResponse(), ua.PublishResponse()
    theirs.ResponseHeader = ours.ResponseHeader  # the same Timestamp
    publish_time = ours.Parameters.NotificationMessage.PublishTime
    ours.Parameters.NotificationMessage = ua.NotificationMessage(7, publish_time, [extension])
    theirs.Parameters.NotificationMessage = ua.NotificationMessage(7, publish_time, [notification])
    assert struct_to_binary(ours) == struct_to_binary(theirs)


@settings(max_examples=200, deadline=None)
@given(notifications(exact=True))
def test_asyncua_decodes_our_bytes_to_the_notification(notification: ua.DataChangeNotification) -> None:
    decoded = extensionobject_from_binary(Buffer(struct_to_binary(pre_encoded(notification))))
    assert type(decoded) is ua.DataChangeNotification
    assert decoded == notification


def plant_notification() -> ua.DataChangeNotification:
    """The shape the publisher sends: one scan's timestamps and cached StatusCodes on every item."""
    source, server = datetime(2030, 1, 1, 12, tzinfo=UTC), datetime.now(UTC)
    good, uncertain, bad = ua.StatusCode(0), ua.StatusCode(0x408F0000), ua.StatusCode(BAD_SENSOR_FAILURE)
    variants = [
        (scalar_variant(21.5, VT.Float), good),
        (scalar_variant(True, VT.Boolean), good),
        (scalar_variant(7, VT.UInt32), uncertain),
        (scalar_variant(65535, VT.UInt16), good),
        (scalar_variant(-3, VT.Int16), good),
        (scalar_variant(-70000, VT.Int32), good),
        (ua.Variant(), bad),  # a Bad reading is a Null Variant
        (ua.Variant("mode A", VT.String), good),
    ]
    return ua.DataChangeNotification(
        MonitoredItems=[
            ua.MonitoredItemNotification(
                ClientHandle=handle,
                Value=ua.DataValue(Value=variant, StatusCode=code, SourceTimestamp=source, ServerTimestamp=server),
            )
            for handle, (variant, code) in enumerate(variants * 10)
        ]
    )


def test_plant_values_never_take_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    notification = plant_notification()
    expected = struct_to_binary(notification)

    def fallback(value: Any) -> bytes:
        raise AssertionError(f"asyncua's serializer was asked for {value!r}")

    monkeypatch.setattr(ua_binary, "struct_to_binary", fallback)
    monkeypatch.setattr(ua_binary, "variant_to_binary", fallback)
    assert data_change_body(notification) == expected


@pytest.mark.parametrize(
    "variant",
    [ua.Variant(2**31, VT.Int32), ua.Variant(-1, VT.UInt16), ua.Variant(1.5, VT.Int64), ua.Variant(1e300, VT.Float)],
)
def test_a_value_asyncua_cannot_encode_raises_its_error(variant: ua.Variant) -> None:
    notification = ua.DataChangeNotification([ua.MonitoredItemNotification(1, ua.DataValue(variant))])
    with pytest.raises(UaError):
        struct_to_binary(notification)
    with pytest.raises(UaError):
        data_change_body(notification)


@pytest.mark.parametrize(
    ("value", "vtype"),
    [(1.5, VT.Float), (2.0**-149, VT.Double), (True, VT.Boolean), (0, VT.UInt32), (-5, VT.Int16), ("x", VT.String)],
)
def test_scalar_variant_equals_a_checked_variant(value: Any, vtype: ua.VariantType) -> None:
    fast, checked = scalar_variant(value, vtype), ua.Variant(value, vtype)
    assert type(fast) is ua.Variant
    assert (fast.Value, fast.VariantType, fast.Dimensions, fast.is_array) == (
        checked.Value,
        checked.VariantType,
        checked.Dimensions,
        checked.is_array,
    )
    assert ua_binary.variant_to_binary(fast) == ua_binary.variant_to_binary(checked)


# --- the subscription hook -----------------------------------------------------------------------


def subscription(cls: type[InternalSubscription], client: bool) -> InternalSubscription:
    """A subscription that is never started: the test pops its PublishResults itself."""
    data = ua.CreateSubscriptionResult(
        SubscriptionId=5, RevisedPublishingInterval=1000.0, RevisedLifetimeCount=100, RevisedMaxKeepAliveCount=10
    )

    async def callback(*_: Any) -> None:
        raise AssertionError("not published through the callback in this test")

    def no_request(_: int) -> None:
        return None

    return cls(data, AddressSpace(), callback, ua.NodeId(1), request_callback=no_request if client else None)


async def enqueue(sub: InternalSubscription) -> list[int]:
    """Values for three monitored items, interleaved; returns the handles in asyncua's flattening order
    (monitored items in first-queued order, each item's values oldest first)."""
    source = datetime(2030, 1, 1, tzinfo=UTC)
    order = [(12, 0), (10, 1), (12, 2), (11, 3), (10, 4), (12, 5)]  # (monitored item id, value)
    for mid, value in order:
        item = ua.MonitoredItemNotification(
            ClientHandle=100 * mid + value,
            Value=ua.DataValue(scalar_variant(float(value), VT.Double), ua.StatusCode(0), source, source),
        )
        await sub.enqueue_datachange_event(mid, item, 0)
    return [100 * mid + value for queued in (12, 10, 11) for mid, value in order if mid == queued]


async def test_client_subscription_publishes_a_pre_encoded_notification_in_asyncuas_order() -> None:
    plain, ours = subscription(InternalSubscription, client=True), subscription(PreEncodingSubscription, client=True)
    expected_order = await enqueue(plain)
    assert await enqueue(ours) == expected_order
    expected = plain._pop_publish_result().NotificationMessage.NotificationData
    result = ours._pop_publish_result()
    data = result.NotificationMessage.NotificationData
    assert len(data) == len(expected) == 1
    assert type(expected[0]) is ua.DataChangeNotification
    assert [item.ClientHandle for item in expected[0].MonitoredItems] == expected_order
    assert type(data[0]) is ua.ExtensionObject
    assert data[0].TypeId == DATA_CHANGE_ENCODING
    assert struct_to_binary(data[0]) == extensionobject_to_binary(expected[0])
    assert not ours._triggered_datachanges  # the queue was cleared, as asyncua's pop does

    # Republish re-sends the stored message; a client decodes it to the same notification.
    sequence = result.NotificationMessage.SequenceNumber
    message = ours.republish(sequence)
    decoded = struct_from_binary(ua.NotificationMessage, Buffer(struct_to_binary(message)))
    assert decoded.SequenceNumber == sequence
    assert decoded.NotificationData == expected


async def test_server_internal_subscription_keeps_the_notification_object() -> None:
    ours = subscription(PreEncodingSubscription, client=False)
    expected_order = await enqueue(ours)
    queued = [item for items in ours._triggered_datachanges.values() for item in items]
    data = ours._pop_publish_result().NotificationMessage.NotificationData
    assert len(data) == 1
    assert type(data[0]) is ua.DataChangeNotification
    assert [item.ClientHandle for item in data[0].MonitoredItems] == expected_order
    assert all(a is b for a, b in zip(data[0].MonitoredItems, queued, strict=True))


async def test_install_changes_only_the_given_services_subscriptions() -> None:
    hooked, untouched = SubscriptionService(AddressSpace()), SubscriptionService(AddressSpace())
    install_pre_encoding(hooked)
    params = ua.CreateSubscriptionParameters(RequestedPublishingInterval=0.0)  # no publishing task

    async def callback(*_: Any) -> None:
        return None

    def no_request(_: int) -> None:
        return None

    client = await hooked.create_subscription(params, callback, ua.NodeId(1), request_callback=no_request)
    internal = await hooked.create_subscription(params, callback, ua.NodeId(1))
    other = await untouched.create_subscription(params, callback, ua.NodeId(1))
    assert type(hooked.subscriptions[client.SubscriptionId]) is PreEncodingSubscription
    assert type(hooked.subscriptions[internal.SubscriptionId]) is PreEncodingSubscription
    assert hooked.subscriptions[internal.SubscriptionId].pub_request_callback is None
    assert type(untouched.subscriptions[other.SubscriptionId]) is InternalSubscription
    await hooked.delete_subscriptions([client.SubscriptionId, internal.SubscriptionId])
    await untouched.delete_subscriptions([other.SubscriptionId])


# --- end to end over TCP -------------------------------------------------------------------------


def served_values(rig: Rig) -> dict[ua.NodeId, Any]:
    """Every tag variable's AttributeValue, as the publisher keeps it current."""
    return {
        nodeid: attribute
        for group in rig.exposer.nodes.groups
        for slot in group.tags
        for nodeid, attribute in zip(slot.nodeids, slot.values, strict=True)
    }


def as_a_client_decodes(datavalue: ua.DataValue) -> ua.DataValue:
    """The server's DataValue through asyncua's own encoder and decoder: what a client must receive
    (Float values rounded to float32, times to aware UTC microseconds)."""
    return struct_from_binary(ua.DataValue, Buffer(struct_to_binary(datavalue)))


def counting(calls: list[int], encode: Callable[[ua.DataChangeNotification], Any]) -> Callable[..., Any]:
    def spy(notification: ua.DataChangeNotification) -> Any:
        calls.append(len(notification.MonitoredItems))
        return encode(notification)

    return spy


async def test_client_receives_what_the_server_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[int] = []  # items per pre-encoded notification: proves the direct path carried them
    monkeypatch.setattr(notification_encoding, "pre_encoded", counting(encoded, notification_encoding.pre_encoded))
    received: dict[ua.NodeId, ua.DataValue] = {}

    class Handler:
        def datachange_notification(self, node: Node, value: Any, data: Any) -> None:
            received[node.nodeid] = data.monitored_item.Value

    async with open_rig(tmp_path) as rig:
        served = served_values(rig)
        subscription = await rig.client.create_subscription(20, Handler())
        await subscription.subscribe_data_change([rig.client.get_node(nodeid) for nodeid in served])
        server_sub = rig.exposer.server.iserver.subscription_service.subscriptions[subscription.subscription_id]
        assert type(server_sub) is PreEncodingSubscription
        rig.plc.scan()
        rig.plc.set_sensor_fault("conveyor-02", "bearing_temp", -40.0)
        for _ in range(3):
            image = rig.plc.scan()

        def latest(nodeid: ua.NodeId) -> bool:
            got, sent = received.get(nodeid), served[nodeid].value
            return got is not None and (got.SourceTimestamp, got.StatusCode) == (sent.SourceTimestamp, sent.StatusCode)

        async def all_latest() -> bool:
            return all(latest(nodeid) for nodeid in served)

        await eventually(all_latest, "every variable's latest value at the client")
        for nodeid, attribute in served.items():
            assert received[nodeid] == as_a_client_decodes(attribute.value), nodeid
        assert sum(encoded) >= len(served)

        # The same, spelled out for the tags the plant's value types come from.
        belt = await rig.tag("conveyor-01", "belt_speed")
        sent = served[belt.nodeid].value
        got = received[belt.nodeid]
        assert got.Value.VariantType is VT.Float
        assert got.Value.Value == float(np.float32(sent.Value.Value))
        assert got.StatusCode.is_good()
        assert got.SourceTimestamp == image.timestamp == sent.SourceTimestamp
        assert got.ServerTimestamp == sent.ServerTimestamp
        faulted = received[(await rig.tag("conveyor-02", "bearing_temp")).nodeid]
        assert faulted.StatusCode.value == BAD_SENSOR_FAILURE
        assert faulted.Value.VariantType is VT.Null
        assert faulted.Value.Value is None
        running = received[(await rig.tag("conveyor-01", "running")).nodeid]
        assert running.Value.VariantType is VT.Boolean
        count = received[(await rig.tag("conveyor-01", "item_count")).nodeid]
        assert count.Value.VariantType is VT.UInt32
        await subscription.delete()


async def test_server_internal_subscription_still_receives_objects(tmp_path: Path) -> None:
    received: asyncio.Queue[ua.DataValue] = asyncio.Queue()

    class Handler:
        def datachange_notification(self, node: Node, value: Any, data: Any) -> None:
            received.put_nowait(data.monitored_item.Value)

    async with open_rig(tmp_path) as rig:
        server = rig.exposer.server
        subscription = await server.create_subscription(20, Handler())
        internal = server.iserver.subscription_service.subscriptions[subscription.subscription_id]
        assert type(internal) is PreEncodingSubscription
        assert internal.pub_request_callback is None
        belt = await rig.tag("conveyor-02", "belt_speed")
        await subscription.subscribe_data_change(server.get_node(belt.nodeid))
        await asyncio.wait_for(received.get(), DEADLINE_S)  # the initial value
        image = rig.plc.scan()
        while True:
            datavalue = await asyncio.wait_for(received.get(), DEADLINE_S)
            if datavalue.SourceTimestamp == image.timestamp:
                break
        assert datavalue is served_values(rig)[belt.nodeid].value  # the very object, no encoding
        assert datavalue.Value.Value == image.lookup("conveyor-02", "belt_speed")[0]
        await subscription.delete()
