"""The WebSocket fan-out: topics to clients, each client with a bounded queue and its own sender task.

Fan-out (issue 7, "a slow client never slows the pipeline or other clients"): publishing only puts a
message into each client's bounded queue and returns; every client has its own sender task. When a
queue is full the oldest message goes, the loss is counted, and before its next message the client
gets ``{"type": "dropped", "count": n}``, so a dashboard knows it missed something.

Two costs are kept off the event loop's critical path, because the REST routes share that loop:

- Waking senders is paced (:class:`WakePacer`): at most a slice of senders per loop iteration. Waking
  all 1,000 clients of a broadcast at once put 1,000 socket writes (~35 us each, most of it the
  kernel's loopback send) into one iteration, and every REST request that arrived meanwhile waited
  the whole ~35 ms for its turn; REST p99 was 50-60 ms whatever the pipeline load.
- ``publish_readings`` visits only the clients whose asset filter meets the batch (an index by asset),
  not every client for every batch: 1,000 single-asset clients and 90 batches/s were 90,000 filter
  checks a second.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.api.auth import Principal
from gateway.api.visibility import TOPIC_CUTS, Cut
from gateway.common.status import status_name
from gateway.encoders.uns_json import format_ts, json_value
from gateway.readings import Reading

# Senders woken per event-loop iteration. A sender's write costs ~35 us, so a slice holds the loop
# for ~4.5 ms before I/O (a REST request, say) is looked at again. Measured with 1,000 clients at 10 Hz
# (bench/api_bench.py): 128 halved REST p99 and kept fan-out p99 where it was; 64 and 16 stretched each
# broadcast over so many iterations that fan-out p99 grew by half (64) or sixfold (16).
WAKES_PER_ITERATION = 128


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), default=str)


def reading_json(r: Reading) -> dict[str, Any]:
    return {"device": r.device, "asset": r.asset, "tag": r.tag, "value": json_value(r.value),
            "quality": r.quality_name, "status": status_name(r.quality), "unit": r.unit,
            "source_ts": format_ts(r.source_ts)}


class TextSocket(Protocol):
    """What a client needs of its socket (starlette's WebSocket; a stand-in in tests)."""

    async def send_text(self, data: str) -> None: ...


class WakePacer:
    """Wakes sender tasks at most ``per_iteration`` per event-loop iteration, in the order asked.

    asyncio runs every callback that was ready when an iteration began before it polls for I/O again,
    so waking N senders at once makes any request that arrives meanwhile wait for all N writes.
    Here each iteration wakes a slice and schedules the next slice for the following iteration, with
    the loop's I/O polled in between. The slice runs as a timer due at once, which asyncio takes after
    the iteration's I/O callbacks: a request task that a data_received of the same iteration created
    is then ready before the slice's senders, instead of behind them (REST p99 at 1,000 values/s
    with 1,000 clients: 13.8-16.6 ms against 20.7-22.0, BENCHMARKS.md).
    """

    def __init__(self, per_iteration: int = WAKES_PER_ITERATION) -> None:
        self.per_iteration = per_iteration
        self._order: deque[asyncio.Event] = deque()
        self._pending: set[asyncio.Event] = set()
        self._scheduled = False

    def wake(self, event: asyncio.Event) -> None:
        if event in self._pending:
            return
        self._pending.add(event)
        self._order.append(event)
        if not self._scheduled:
            self._scheduled = True
            self._schedule()

    def _schedule(self) -> None:
        # A timer due now, not call_soon: it runs in the next iteration after the I/O callbacks of that
        # iteration, so what a request's data_received schedules gets in front of the next slice.
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time(), self._run)

    def _run(self) -> None:
        order, pending = self._order, self._pending
        for _ in range(min(self.per_iteration, len(order))):
            event = order.popleft()
            pending.discard(event)
            event.set()
        if order:
            self._schedule()
        else:
            self._scheduled = False


@dataclass
class ReadingFilter:
    """Which readings a /ws/stream client wants, and how often per tag."""

    assets: frozenset[str] = frozenset()  # empty: all
    tags: frozenset[str] = frozenset()
    min_interval_s: float = 0.0
    _last: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[frozenset[str], frozenset[str]]:
        return self.assets, self.tags

    def select(self, readings: Sequence[Reading], now: float) -> list[Reading]:
        out = []
        for r in readings:
            if (self.assets and r.asset not in self.assets) or (self.tags and r.tag not in self.tags):
                continue
            if self.min_interval_s > 0:
                key = (r.asset, r.tag)
                last = self._last.get(key)
                if last is not None and now - last < self.min_interval_s:
                    continue
                self._last[key] = now
            out.append(r)
        return out


class WsClient:
    """One connected socket: a bounded queue of serialised messages and the task that sends them."""

    def __init__(self, ws: TextSocket, queue_size: int, principal: Principal,
                 readings: ReadingFilter | None = None, visible: frozenset[str] | None = None,
                 pacer: WakePacer | None = None) -> None:
        self.ws = ws
        self.principal = principal
        self.readings = readings
        self.visible = visible  # the asset ids in the client's scope; None: every asset
        self.queue: deque[str] = deque()
        self.queue_size = queue_size
        self.dropped = 0  # total, for metrics and tests
        self.sent = 0
        self._unreported = 0  # drops the client has not been told about yet
        self._wake = asyncio.Event()
        self._pacer = pacer  # None: woken at once (a client outside any hub)

    def offer(self, text: str) -> None:
        """Never blocks: a full queue loses its oldest message."""
        if len(self.queue) >= self.queue_size:
            self.queue.popleft()
            self.dropped += 1
            self._unreported += 1
        self.queue.append(text)
        if self._pacer is None:
            self._wake.set()
        elif not self._wake.is_set():
            self._pacer.wake(self._wake)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue:
                if self._unreported:
                    count, self._unreported = self._unreported, 0
                    await self.ws.send_text(dumps({"type": "dropped", "count": count}))
                await self.ws.send_text(self.queue.popleft())
                self.sent += 1


FilterKey = tuple[frozenset[str], frozenset[str]]


class _ReadingsIndex:
    """The ``readings`` clients arranged for ``publish_readings``: those without down-sampling grouped
    by filter (a group shares one message) and the groups indexed by asset; the down-sampling ones,
    whose selection is per client, kept apart."""

    def __init__(self) -> None:
        self.groups: dict[FilterKey, set[WsClient]] = {}
        self.by_asset: dict[str, set[FilterKey]] = {}
        self.every_asset: set[FilterKey] = set()  # filters without assets: they see every batch
        self.sampled: set[WsClient] = set()

    def add(self, client: WsClient) -> None:
        wanted = client.readings
        assert wanted is not None, "a readings client has a filter"
        if wanted.min_interval_s > 0:
            self.sampled.add(client)
            return
        key = wanted.key
        self.groups.setdefault(key, set()).add(client)
        if not wanted.assets:
            self.every_asset.add(key)
        for asset in wanted.assets:
            self.by_asset.setdefault(asset, set()).add(key)

    def discard(self, client: WsClient) -> None:
        self.sampled.discard(client)
        wanted = client.readings
        if wanted is None or wanted.min_interval_s > 0:
            return
        key = wanted.key
        group = self.groups.get(key)
        if group is None or client not in group:
            return
        group.discard(client)
        if group:
            return
        del self.groups[key]
        self.every_asset.discard(key)
        for asset in wanted.assets:
            keys = self.by_asset.get(asset)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_asset[asset]


class WsHub:
    """Topics ("readings", "alerts", "commands", "mine", ...) to their clients. Publishing is synchronous
    and cheap, so the pipeline and the services' listeners can call it directly. Clients made for a hub
    take its ``pacer``."""

    def __init__(self, cuts: Mapping[str, Cut] = TOPIC_CUTS, pacer: WakePacer | None = None) -> None:
        self._topics: dict[str, set[WsClient]] = {}
        self._readings = _ReadingsIndex()
        self.cuts = cuts
        self.pacer = pacer or WakePacer()

    def clients(self, topic: str) -> int:
        return len(self._topics.get(topic, ()))

    def add(self, topic: str, client: WsClient) -> Callable[[], None]:
        self._topics.setdefault(topic, set()).add(client)
        if topic == "readings":
            self._readings.add(client)

        def remove() -> None:
            self._topics.get(topic, set()).discard(client)
            if topic == "readings":
                self._readings.discard(client)

        return remove

    def publish(self, topic: str, message: dict[str, Any]) -> None:
        clients = self._topics.get(topic)
        if clients:
            text = dumps(message)  # serialised once for every client
            cut = self.cuts.get(topic)
            scoped: dict[frozenset[str], str | None] = {}  # once per scope, too
            for client in list(clients):
                if client.visible is None:
                    client.offer(text)
                    continue
                if client.visible not in scoped:
                    shown = cut(message, client.visible) if cut is not None else None
                    scoped[client.visible] = dumps(shown) if shown is not None else None
                if (scoped_text := scoped[client.visible]) is not None:
                    client.offer(scoped_text)

    def publish_readings(self, readings: Sequence[Reading]) -> None:
        """One ``readings`` message per client whose filter selects something from the batch.

        Cost stays near O(batch + clients concerned) rather than O(batch x clients): readings are
        grouped by asset once, only the filters naming an asset of the batch (or no asset) are looked
        at, each reading is serialised once, and the clients of one filter share one serialised
        message. ``sent_ts`` (Unix seconds) is when the hub got the batch, so a client can measure
        fan-out latency; ``source_ts`` per reading is the PLC's (or poll) time.
        """
        index = self._readings
        if not readings or not (index.groups or index.sampled):
            return
        now = asyncio.get_running_loop().time()
        head = f'{{"type":"readings","sent_ts":{time.time():.6f},"readings":['
        fragments: dict[int, str] = {}  # id(reading) -> its JSON, for this batch only
        by_asset: dict[str, list[Reading]] = {}
        for r in readings:
            by_asset.setdefault(r.asset, []).append(r)

        def text_of(selected: list[Reading]) -> str:
            parts = []
            for r in selected:
                fragment = fragments.get(id(r))
                if fragment is None:
                    # orjson: the standard encoder was most of the fan-out's cost per reading, and a
                    # fragment holds only strings and numbers (json_value made NaN null): the same JSON values.
                    fragment = fragments[id(r)] = orjson.dumps(reading_json(r)).decode()
                parts.append(fragment)
            return head + ",".join(parts) + "]}"

        def candidates(wanted: ReadingFilter) -> Sequence[Reading]:
            if not wanted.assets:
                return readings
            return [r for a in wanted.assets for r in by_asset.get(a, ())]

        keys = set(index.every_asset)
        for asset in by_asset:
            keys.update(index.by_asset.get(asset, ()))
        for key in keys:
            shared = ReadingFilter(*key)  # stateless without down-sampling
            selected = shared.select(candidates(shared), now)
            if selected:
                text = text_of(selected)
                for client in list(index.groups[key]):
                    client.offer(text)
        by_selection: dict[tuple[int, ...], str] = {}
        for client in list(index.sampled):  # down-sampling state is per client
            wanted = client.readings
            assert wanted is not None
            selected = wanted.select(candidates(wanted), now)
            if selected:
                ids = tuple(id(r) for r in selected)
                client.offer(by_selection.get(ids) or by_selection.setdefault(ids, text_of(selected)))
