"""Subscriptions of an OpcUaSource (``mode: subscribe``): monitored items in a few batched subscriptions.

One feed lives exactly as long as one client connection. The source builds a new feed after every
(re)connect, once it has resolved the browse paths again, because a restarted PLC may hand out new
NodeIds and namespace indexes (anchors §3 #1): transferring the old subscription would keep
monitoring NodeIds that no longer mean the same variable. Values that changed while the link was
down are not recovered (conventions §5.1: PLC -> gateway is latest-value sampling); the initial
notification of each new monitored item carries the current value.

The feed uses asyncua's service-level calls (CreateSubscription, CreateMonitoredItems) with its own
publish callback rather than asyncua's ``Subscription`` class: that class starts one asyncio task
per notification in handler mode, far too costly at tens of thousands of values per second, and
its bounded iterator queue drops without counting. Here a notification is one tuple appended to a
bounded deque that counts what it drops (ARCHITECTURE.md habit 5); the Poller drains it at every
``read()``.

The ClientHandle of a monitored item is the index of its point in the source, so a notification is
mapped back to its tag without a lookup table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError

from gateway.common.status import BAD_NODE_ID_UNKNOWN

log = logging.getLogger(__name__)

BAD_NODE_ID_INVALID = 0x80330000  # StatusCode.csv

_MAX_ITEMS_PER_CALL_NODE = ua.NodeId(
    cast(Any, ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall)
)
_STALE_FLOOR_S = 1.0  # a very fast publishing interval must not make a scheduling hiccup look stale
_MAX_ITEM_QUEUE = 100  # server-side queue per item: enough to carry every sample between publishes
# Monitored items that failed because the node is gone: the source looks their paths up again.
_UNRESOLVED = frozenset({BAD_NODE_ID_UNKNOWN, BAD_NODE_ID_INVALID})


@dataclass(frozen=True, slots=True)
class FeedSettings:
    publishing_ms: float
    sampling_ms: float
    keepalive_s: float
    max_items_per_call: int
    max_items_per_subscription: int
    queue_max: int
    timeout_s: float


@dataclass(slots=True)
class _Subscription:
    subscription_id: int
    stale_after_s: float
    last_publish: float
    items: int = 0


def bad_value(code: int) -> ua.DataValue:
    """A DataValue standing for a monitored item the server refused (no value, its StatusCode)."""
    return ua.DataValue(StatusCode=ua.StatusCode(cast(Any, code)))


class SubscriptionFeed:
    """Monitored items of one connection, and the notifications received since the last drain."""

    def __init__(self, source_name: str, settings: FeedSettings) -> None:
        self.source_name = source_name
        self.settings = settings
        self._queue: deque[tuple[int, ua.DataValue]] = deque()
        self._subs: dict[int, _Subscription] = {}
        self._waiting: set[int] = set()  # handles whose first notification has not arrived yet
        self._initial = asyncio.Event()
        self._building = False
        self._problem: str | None = None
        self._closed = False
        self._overflowing = False
        self.dropped = 0  # notifications dropped because read() fell behind (the oldest go first)
        self.received = 0

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
        result = await client.uaclient.create_subscription(params, self._on_publish)
        # Stale after the revised lifetime: by then the server has deleted it anyway.
        interval_s = float(result.RevisedPublishingInterval or s.publishing_ms) / 1000.0
        keepalives = max(1, int(result.RevisedMaxKeepAliveCount or keepalive))
        lifetime = max(3 * keepalives, int(result.RevisedLifetimeCount or 0))
        stale_after = max(_STALE_FLOOR_S, interval_s * min(lifetime, 3 * keepalives) + s.timeout_s)
        sub = _Subscription(int(result.SubscriptionId), stale_after, time.monotonic())
        self._subs[sub.subscription_id] = sub
        log.debug(
            "source %s: subscription %d, publishing %.0f ms, keep-alive x%d, stale after %.1fs",
            self.source_name, sub.subscription_id, interval_s * 1000, keepalives, stale_after,
        )
        return sub

    async def _create_items(
        self, client: Client, sub: _Subscription, batch: Sequence[tuple[int, ua.NodeId]]
    ) -> list[int]:
        s = self.settings
        # Sampling faster than publishing: let the server keep every sample between two publishes.
        queue_size = 1
        if s.sampling_ms > 0:
            queue_size = min(_MAX_ITEM_QUEUE, max(1, math.ceil(s.publishing_ms / s.sampling_ms)))
        requests = []
        for index, node in batch:
            mparams = ua.MonitoringParameters()
            mparams.ClientHandle = index
            mparams.SamplingInterval = s.sampling_ms
            mparams.QueueSize = queue_size
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
            self.put(index, bad_value(code))
        return unresolved

    # --- notifications ---------------------------------------------------------------------------

    def _on_publish(self, result: ua.PublishResult) -> None:
        """Called by asyncua's publish loop for every PublishResponse, keep-alives included."""
        if self._closed:
            return
        sub = self._subs.get(int(result.SubscriptionId))
        if sub is not None:
            sub.last_publish = time.monotonic()
        data = result.NotificationMessage.NotificationData
        if not data:
            return  # a keep-alive: only proves the subscription is alive
        for notification in data:
            if isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    self.put(int(item.ClientHandle), item.Value)
            elif isinstance(notification, ua.StatusChangeNotification) and not notification.Status.is_good():
                # BadTimeout: the server deleted the subscription (lifetime expired); BadShutdown...
                self._problem = f"subscription {result.SubscriptionId}: {notification.Status.name}"

    def put(self, index: int, value: ua.DataValue) -> None:
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
        queue.append((index, value))
        self.received += 1
        if self._waiting:
            self._waiting.discard(index)
            if not self._waiting and not self._building:
                self._initial.set()

    def drain(self) -> list[tuple[int, ua.DataValue]]:
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

    def detach(self) -> None:
        """Ignore anything the (old) connection may still deliver."""
        self._closed = True
