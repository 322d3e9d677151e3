"""Subscriptions of an OpcUaSource (``mode: subscribe``): monitored items in a few batched subscriptions.

A feed outlives a lost link when the server may still hold its subscriptions (Part 4 §5.13.7): the
source suspends it, and after reconnecting to the same server instance (same namespace array and
ServerStatus.StartTime) moves the subscriptions to the new session with TransferSubscriptions and
asks for every NotificationMessage the link lost with Republish. What changed while the link was down
then arrives with its original timestamps, as far as the items' server-side queues held it
(``item_queue_size``). A restarted PLC may hand out new NodeIds and namespace indexes (anchors §3 #1),
so when the server is not the same instance, or the transfer fails, the source builds a new feed
after resolving the browse paths again; the initial notification of each new monitored item then
carries the current value, and changes during the outage are not recovered.

The feed sends the Subscription services itself (CreateSubscription, CreateMonitoredItems, Publish,
Republish) rather than using asyncua's ``Subscription`` class or its publish loop: that class starts
one asyncio task per notification in handler mode, its iterator queue drops without counting, and
asyncua's generic decoding of every PublishResponse was the largest single cost of the gateway.
Here ``PUBLISHERS`` Publish requests are kept outstanding (Part 4 §5.13.5: the server can answer
one subscription while the next request waits), responses are decoded by :mod:`opcua_wire`, and a
notification is one tuple appended to a bounded deque that counts what it drops (ARCHITECTURE.md
habit 5); the Poller drains it at every ``read()``. Sequence numbers are followed per
subscription: a gap is filled with Republish while the server still holds the messages, and
counted (``missed_messages``) when it no longer does.

The ClientHandle of a monitored item is the index of its point in the source, so a notification is
mapped back to its tag without a lookup table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.ua_binary import struct_from_binary
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from gateway.common.status import BAD_NODE_ID_UNKNOWN, BAD_TIMEOUT
from gateway.readings import TagValue
from gateway.sources.opcua_wire import PublishBatch, Unsupported, batch_of, decode_publish, decode_republish

log = logging.getLogger(__name__)

BAD_NODE_ID_INVALID = 0x80330000  # StatusCode.csv

_MAX_ITEMS_PER_CALL_NODE = ua.NodeId(
    cast(Any, ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall)
)
_STALE_FLOOR_S = 1.0  # a very fast publishing interval must not make a scheduling hiccup look stale
_MAX_ITEM_QUEUE = 100  # server-side queue per item: enough to carry every sample between publishes
# Monitored items that failed because the node is gone: the source looks their paths up again.
_UNRESOLVED = frozenset({BAD_NODE_ID_UNKNOWN, BAD_NODE_ID_INVALID})
PUBLISHERS = 2  # Publish requests kept outstanding
_BAD_NO_SUBSCRIPTION = 0x80790000
_BAD_TOO_MANY_PUBLISH_REQUESTS = 0x80780000
_REPUBLISH_MAX = 16  # a longer gap is older than any retransmission queue worth asking
_DECODE_ERRORS = (Unsupported, struct.error, IndexError, ValueError)

Notification = tuple[int, TagValue | None, int, datetime | None]  # (point index, value, status, timestamp)


@dataclass(frozen=True, slots=True)
class FeedSettings:
    publishing_ms: float
    sampling_ms: float
    keepalive_s: float
    max_items_per_call: int
    max_items_per_subscription: int
    queue_max: int
    timeout_s: float
    item_queue_size: int | None = None  # None: one sample per publishing interval
    # point index -> sampling interval of its tag group (tag_groups), where it differs from sampling_ms
    sampling_overrides: Mapping[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Subscription:
    subscription_id: int
    stale_after_s: float
    last_publish: float
    items: int = 0
    next_sequence: int = 0  # the sequence number the next NotificationMessage should carry (0: unknown)


class SubscriptionFeed:
    """Monitored items of one connection, and the notifications received since the last drain."""

    def __init__(self, source_name: str, settings: FeedSettings, on_data: Callable[[], None]) -> None:
        self.source_name = source_name
        self.settings = settings
        self._on_data = on_data  # tells the Poller there is something to read
        self._queue: deque[Notification] = deque()
        self._subs: dict[int, _Subscription] = {}
        self._waiting: set[int] = set()  # handles whose first notification has not arrived yet
        self._initial = asyncio.Event()
        self._building = False
        self._problem: str | None = None
        self._closed = False
        self._overflowing = False
        self.dropped = 0  # notifications dropped because read() fell behind (the oldest go first)
        self.received = 0
        self.missed_messages = 0  # NotificationMessages lost in a gap that Republish could not fill
        self._publishers: set[asyncio.Task[None]] = set()
        self._acks: list[ua.SubscriptionAcknowledgement] = []
        self._deliver = asyncio.Lock()  # a gap's Republish completes before later messages are queued
        self._suspended = False  # link lost, subscriptions possibly still on the server
        # point index -> sampling interval asked for (servers may revise it: asyncua's samples on change)
        self.sampling_ms: dict[int, float] = {}

    @property
    def subscription_count(self) -> int:
        return len(self._subs)

    @property
    def subscription_ids(self) -> list[int]:
        return list(self._subs)

    # --- building ------------------------------------------------------------------------------

    async def add(self, client: Client, items: Sequence[tuple[int, ua.NodeId]]) -> list[int]:
        """Monitor ``items`` (point index, NodeId); returns the indexes whose node is unknown.

        Items the server refuses become one bad-quality notification each, so the refusal reaches
        the pipeline once per connection instead of silently missing."""
        per_call = min(self.settings.max_items_per_call, await self._server_items_per_call(client))
        unresolved: list[int] = []
        pending = list(items)
        self._building = True  # the first batch's values must not count as "every initial value"
        try:
            while pending:
                sub = self._open_subscription()
                if sub is None:
                    sub = await self._create_subscription(client)
                room = self.settings.max_items_per_subscription - sub.items
                chunk, pending = pending[:room], pending[room:]
                for start in range(0, len(chunk), per_call):
                    unresolved += await self._create_items(client, sub, chunk[start : start + per_call])
        finally:
            self._building = False
        if not self._waiting:
            self._initial.set()
        return unresolved

    def _open_subscription(self) -> _Subscription | None:
        for sub in self._subs.values():
            if sub.items < self.settings.max_items_per_subscription:
                return sub
        return None

    async def _server_items_per_call(self, client: Client) -> int:
        # OperationLimits are optional (0 or absent: no limit); never let a missing one fail a connect.
        with contextlib.suppress(UaError, TimeoutError, ConnectionError, OSError, ValueError, TypeError):
            value = await client.get_node(_MAX_ITEMS_PER_CALL_NODE).read_value()
            if isinstance(value, int) and value > 0:
                return value
        return self.settings.max_items_per_call

    async def _create_subscription(self, client: Client) -> _Subscription:
        s = self.settings
        keepalive = max(1, math.ceil(s.keepalive_s * 1000.0 / s.publishing_ms))
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = s.publishing_ms
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = 3 * keepalive  # the minimum Part 4 §5.13.2 allows
        params.MaxNotificationsPerPublish = s.max_items_per_subscription
        params.PublishingEnabled = True
        params.Priority = 0
        request = ua.CreateSubscriptionRequest()
        request.Parameters = params
        response = struct_from_binary(ua.CreateSubscriptionResponse, await client.uaclient._send_request(request))
        response.ResponseHeader.ServiceResult.check()
        result = response.Parameters
        # Stale after the revised lifetime: by then the server has deleted it anyway.
        interval_s = float(result.RevisedPublishingInterval or s.publishing_ms) / 1000.0
        keepalives = max(1, int(result.RevisedMaxKeepAliveCount or keepalive))
        lifetime = max(3 * keepalives, int(result.RevisedLifetimeCount or 0))
        stale_after = max(_STALE_FLOOR_S, interval_s * min(lifetime, 3 * keepalives) + s.timeout_s)
        sub = _Subscription(int(result.SubscriptionId), stale_after, time.monotonic())
        self._subs[sub.subscription_id] = sub
        self._start_publishing(client)
        log.debug(
            "source %s: subscription %d, publishing %.0f ms, keep-alive x%d, stale after %.1fs",
            self.source_name, sub.subscription_id, interval_s * 1000, keepalives, stale_after,
        )
        return sub

    def _start_publishing(self, client: Client) -> None:
        while len(self._publishers) < PUBLISHERS:
            task = asyncio.get_running_loop().create_task(
                self._publish_loop(client), name=f"publish-{self.source_name}")
            self._publishers.add(task)
            task.add_done_callback(self._publishers.discard)

    async def _create_items(
        self, client: Client, sub: _Subscription, batch: Sequence[tuple[int, ua.NodeId]]
    ) -> list[int]:
        s = self.settings
        requests = []
        for index, node in batch:
            sampling_ms = s.sampling_overrides.get(index, s.sampling_ms)
            mparams = ua.MonitoringParameters()
            mparams.ClientHandle = index
            mparams.SamplingInterval = sampling_ms
            self.sampling_ms[index] = sampling_ms
            mparams.QueueSize = self._queue_size(sampling_ms)
            mparams.DiscardOldest = True
            request = ua.MonitoredItemCreateRequest()
            request.ItemToMonitor = ua.ReadValueId(NodeId=node, AttributeId=cast(Any, AttributeIds.Value))
            request.MonitoringMode = ua.MonitoringMode.Reporting
            request.RequestedParameters = mparams
            requests.append(request)
            self._waiting.add(index)  # before the call: the first notification may beat the response
        params = ua.CreateMonitoredItemsParameters()
        params.SubscriptionId = sub.subscription_id
        params.TimestampsToReturn = ua.TimestampsToReturn.Both  # the PLC's SourceTimestamp travels on
        params.ItemsToCreate = requests
        try:
            results = await client.uaclient.create_monitored_items(params)
        except BaseException:
            self._waiting.difference_update(i for i, _ in batch)
            raise
        unresolved = []
        for (index, _), result in zip(batch, results, strict=True):
            if result.StatusCode.is_good():
                sub.items += 1
                continue
            self._waiting.discard(index)
            code = int(result.StatusCode.value)
            if code in _UNRESOLVED:
                unresolved.append(index)
            self.put(index, None, code, None)
        return unresolved

    def _queue_size(self, sampling_ms: float) -> int:
        s = self.settings
        if s.item_queue_size is not None:
            return s.item_queue_size
        if sampling_ms <= 0:
            return 1
        # Sampling faster than publishing: let the server keep every sample between two publishes.
        return min(_MAX_ITEM_QUEUE, max(1, math.ceil(s.publishing_ms / sampling_ms)))

    # --- notifications ---------------------------------------------------------------------------

    async def _publish_loop(self, client: Client) -> None:
        """One outstanding Publish request at a time; ``PUBLISHERS`` of these run per feed."""
        uaclient = client.uaclient
        while not self._closed:
            request = ua.PublishRequest()
            request.Parameters.SubscriptionAcknowledgements, self._acks = self._acks, []
            try:
                # TimeoutHint 0: the server holds the request until it has something to say.
                data = await uaclient._send_request(request, timeout=0)
            except UaStatusCodeError as exc:
                if exc.code == BAD_TIMEOUT:
                    continue
                if exc.code == _BAD_TOO_MANY_PUBLISH_REQUESTS and len(self._publishers) > 1:
                    return  # the server allows fewer outstanding requests: this one steps back
                if exc.code != _BAD_NO_SUBSCRIPTION or self._subs:
                    self._problem = f"publish refused: {exc}"
                return
            except (ConnectionError, OSError, TimeoutError, UaError) as exc:
                if not self._closed:
                    self._problem = f"publish failed: {exc or type(exc).__name__}"
                return
            try:
                batch = decode_publish(data)
            except _DECODE_ERRORS:  # a shape the direct decoder does not follow: asyncua's decoder
                response = struct_from_binary(ua.PublishResponse, data)
                batch = batch_of(response.Parameters.SubscriptionId, response.Parameters.NotificationMessage,
                                 response.Parameters)
            async with self._deliver:
                await self._on_batch(client, batch)

    async def _on_batch(self, client: Client, batch: PublishBatch) -> None:
        """Called for every PublishResponse, keep-alives included, in the order they arrived."""
        if self._closed or self._suspended:
            return
        sub = self._subs.get(batch.subscription_id)
        if sub is not None:
            sub.last_publish = time.monotonic()
        if batch.status_change is not None and batch.status_change & 0x80000000:
            # BadTimeout: the server deleted the subscription (lifetime expired); BadShutdown...
            name = ua.StatusCode(cast(Any, batch.status_change)).name
            self._problem = f"subscription {batch.subscription_id}: {name}"
        if not batch.has_data:
            return  # a keep-alive: only proves the subscription is alive
        self._acks.append(ua.SubscriptionAcknowledgement(
            SubscriptionId=batch.subscription_id, SequenceNumber=batch.sequence_number))
        if sub is not None:
            expected = sub.next_sequence
            if expected and batch.sequence_number > expected:
                await self._fill_gap(client, sub, range(expected, batch.sequence_number), batch.available)
            sub.next_sequence = batch.sequence_number + 1
        for index, value, status, stamp in batch.items:
            self.put(index, value, status, stamp)
        if batch.items:
            self._on_data()

    async def _fill_gap(self, client: Client, sub: _Subscription, missing: range, available: list[int]) -> None:
        """Ask the server again for NotificationMessages that never arrived (Part 4 §5.13.6)."""
        if len(missing) > _REPUBLISH_MAX:
            self.missed_messages += len(missing)
        else:
            await self._recover(client, sub, missing, set(available))
        log.warning("source %s: subscription %d skipped sequence numbers %d-%d (%d not recovered so far)",
                    self.source_name, sub.subscription_id, missing.start, missing.stop - 1, self.missed_messages)

    async def _recover(self, client: Client, sub: _Subscription, numbers: Sequence[int], held: set[int]) -> None:
        """Republish ``numbers`` in order and queue their notifications; count what the server lost."""
        for number in numbers:
            batch = await self._republish(client, sub, number) if number in held else None
            if batch is None:
                self.missed_messages += 1
                continue
            self._acks.append(
                ua.SubscriptionAcknowledgement(SubscriptionId=sub.subscription_id, SequenceNumber=number))
            for index, value, status, stamp in batch.items:
                self.put(index, value, status, stamp)

    async def _republish(self, client: Client, sub: _Subscription, number: int) -> PublishBatch | None:
        request = ua.RepublishRequest()
        request.Parameters.SubscriptionId = sub.subscription_id
        request.Parameters.RetransmitSequenceNumber = number
        try:
            data = await client.uaclient._send_request(request)
            try:
                return decode_republish(data, sub.subscription_id)
            except _DECODE_ERRORS:
                message = struct_from_binary(ua.RepublishResponse, data).NotificationMessage
                return batch_of(sub.subscription_id, message)
        except (UaError, ConnectionError, OSError, TimeoutError):
            return None  # BadMessageNotAvailable or a lost link: the gap stays counted

    def put(self, index: int, value: TagValue | None, status: int, stamp: datetime | None) -> None:
        queue = self._queue
        if len(queue) >= self.settings.queue_max:
            queue.popleft()
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "source %s: more than %d notifications between two reads; dropping the oldest",
                    self.source_name, self.settings.queue_max,
                )
        queue.append((index, value, status, stamp))
        self.received += 1
        if self._waiting:
            self._waiting.discard(index)
            if not self._waiting and not self._building:
                self._initial.set()

    def drain(self) -> list[Notification]:
        """Everything received since the previous drain, oldest first."""
        if not self._queue:
            return []
        items = list(self._queue)
        self._queue.clear()
        if self._overflowing:
            self._overflowing = False
            log.info("source %s: reads keep up with notifications again (%d dropped so far)",
                     self.source_name, self.dropped)
        return items

    async def wait_initial(self, timeout_s: float) -> bool:
        """Wait until every monitored item delivered its first value, so the first read after a
        connect is a complete image (a subscription sends each item's value once at creation)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._initial.wait(), timeout_s)
        return self._initial.is_set()

    def problem(self, client: Client) -> str | None:
        """Why this feed cannot be trusted any more, or None while it is healthy."""
        if self._problem is not None:
            return self._problem
        if client.uaclient.state is not UaClientState.CONNECTED:
            return "connection lost"
        now = time.monotonic()
        for sub in self._subs.values():
            if now - sub.last_publish > sub.stale_after_s:
                return f"subscription {sub.subscription_id} stalled: no publish for {now - sub.last_publish:.1f}s"
        return None

    # --- surviving a lost link ------------------------------------------------------------------

    def suspend(self) -> None:
        """The link is gone; the server may keep the subscriptions for their lifetime. Stop asking
        for publishes, keep the subscriptions, their sequence numbers and unsent acknowledgements."""
        self._suspended = True
        for task in list(self._publishers):
            task.cancel()

    async def transfer(self, client: Client) -> bool:
        """Move the subscriptions to ``client``'s session and recover what the link lost.
        False: the server no longer has them all (the caller starts a new feed)."""
        ids = list(self._subs)
        if not ids:
            return False
        request = ua.TransferSubscriptionsRequest()
        request.Parameters.SubscriptionIds = ids
        request.Parameters.SendInitialValues = False  # Republish brings what changed, in order
        try:
            response = struct_from_binary(
                ua.TransferSubscriptionsResponse, await client.uaclient._send_request(request))
            response.ResponseHeader.ServiceResult.check()
        except UaStatusCodeError:  # e.g. BadServiceUnsupported: a server without the service
            return False
        results = response.Parameters.Results
        moved = [sid for sid, result in zip(ids, results, strict=True) if result.StatusCode.is_good()]
        if len(moved) < len(ids):
            await self._delete(client, moved)  # half a feed would watch only some tags
            return False
        self._suspended = False
        self._problem = None
        now = time.monotonic()
        for sid, result in zip(ids, results, strict=True):
            sub = self._subs[sid]
            sub.last_publish = now
            held = sorted(int(n) for n in result.AvailableSequenceNumbers or [])
            lost = [n for n in held if n >= sub.next_sequence]  # sent on the old link, never received
            # Received before the link broke, but their acknowledgements went down with it.
            self._acks += [ua.SubscriptionAcknowledgement(SubscriptionId=sid, SequenceNumber=n)
                           for n in held if n < sub.next_sequence]
            await self._recover(client, sub, lost, set(held))
            if lost:
                sub.next_sequence = lost[-1] + 1
        self._start_publishing(client)
        return True

    async def _delete(self, client: Client, ids: list[int]) -> None:
        if not ids:
            return
        request = ua.DeleteSubscriptionsRequest()
        request.Parameters.SubscriptionIds = ids
        with contextlib.suppress(UaError, ConnectionError, OSError, TimeoutError):
            await client.uaclient._send_request(request)

    def detach(self) -> None:
        """Ignore anything the (old) connection may still deliver, and stop asking for it."""
        self._closed = True
        for task in list(self._publishers):
            task.cancel()
