"""MQTT sink: forwards the durable outbox to a broker (conventions §3.2-§3.4).

Delivery (conventions §5.1, "gateway -> MQTT"): at-least-once and in order. Records are handed to the
publisher (:mod:`gateway.sinks.mqtt_publisher`) from the outbox in id order and removed only once it
reports them acknowledged (PUBACK at QoS 1/2, written at QoS 0); after a gateway restart the outbox
resends whatever was not acked (duplicates possible, as QoS 1 allows). At most ``batch_max`` records
(and at QoS 1/2 at most the in-flight window) are outstanding, which bounds paho's memory queue.

Where paho runs is the ``publisher`` key: ``process`` (default) in a worker process of its own
(:mod:`gateway.sinks.mqtt_process`), so its PUBLISH and PUBACK work, a third of the gateway's CPU at
40,000 values/s, runs on another core; ``loop`` on the gateway's event loop, for a one-core host.

Availability: a retained ``{"online": true}`` is published to ``<prefix>/_gateway/<id>/status``
on every connect, with a retained ``{"online": false}`` Will for unclean loss (§3.2 tree). An
unreachable broker never fails ``start``: the link retries with 1 s -> 30 s backoff and the outage
is logged once, as is the recovery.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.encoders.uns_json import PayloadEncoder, UnsJsonEncoder, sanitize_level
from gateway.readings import Reading
from gateway.sinks.base import OutboxForwarding, SinkStats, open_outbox
from gateway.sinks.mqtt_process import ProcessPublisher
from gateway.sinks.mqtt_publisher import LoopPublisher, MqttPublishConfig
from gateway.sinks.outbox_common import OutboxBackend

log = logging.getLogger(__name__)


ACK_FLUSH_IDS = 256  # acknowledged records removed from the outbox together, under load


class MqttSinkConfig(MqttPublishConfig):
    """``[sinks.mqtt]``: the keys of :class:`MqttPublishConfig` plus these."""

    enabled: bool = True
    topic_prefix: str = "twinedge"
    layout: Literal["asset", "tag"] = "asset"
    batch_max: int = Field(default=500, ge=1)
    outbox_max_rows: int = Field(default=100_000, ge=1)
    publisher: Literal["process", "loop"] = "process"


class MqttSink(OutboxForwarding):
    """Publishes readings as UNS JSON (or any :class:`PayloadEncoder`) from a durable outbox."""

    name = "mqtt"

    def __init__(
        self,
        config: MqttSinkConfig,
        gateway_id: str,
        data_dir: str | Path,
        *,
        encoder: PayloadEncoder | None = None,
        close_timeout_s: float = 5.0,
        outbox: OutboxBackend = "sqlite",
    ) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self.data_dir = Path(data_dir)
        self.outbox_backend = outbox  # gateway.outbox: which store holds the outbox
        self.close_timeout_s = close_timeout_s
        self.encoder: PayloadEncoder = encoder or UnsJsonEncoder(config.topic_prefix, config.layout)
        prefix = "/".join(sanitize_level(p) for p in config.topic_prefix.split("/") if p.strip())
        self.status_topic = f"{prefix}/_gateway/{sanitize_level(gateway_id)}/status"
        self.client_id = config.client_id or re.sub(r"[^A-Za-z0-9_-]", "-", f"twinedge-{gateway_id}-mqtt")

        self._init_forwarding()
        self._publisher: LoopPublisher | ProcessPublisher | None = None
        self._cursor = 0  # highest outbox id handed to the publisher
        self._acked_id = 0  # highest id whose whole prefix is acknowledged
        self._flushed_id = 0  # highest id removed from the outbox
        self._rejected = 0  # PUBACKs with a failure reason code (MQTT 5), dropped on purpose

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None or self._closed:
            return
        self._outbox = await open_outbox(self.data_dir, self.name, self.config.outbox_max_rows,
                                         backend=self.outbox_backend)
        if self.config.publisher == "process":
            transport = MqttPublishConfig.model_validate(
                self.config.model_dump(include=set(MqttPublishConfig.model_fields)))
            self._publisher = ProcessPublisher(transport, self.client_id, self.status_topic, self)
        else:
            self._publisher = LoopPublisher(self.config, self.client_id, self.status_topic, self)
        await self._publisher.start()
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    async def write(self, batch: Sequence[Reading]) -> None:
        if self._outbox is None:
            raise RuntimeError("MqttSink.write() before start()")
        if not batch:
            return
        records = [(m.topic, m.payload) for m in self.encoder.encode(batch)]
        await self._outbox.append(records)
        self._wake.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop_forwarding(drain=True)  # nothing drains offline
        if self._publisher is not None:
            await self._publisher.close()
        if self._outbox is not None:
            await self._flush_acks(force=True)
            await self._outbox.close()

    def stats(self) -> SinkStats:
        return self._stats(extra_dropped=self._rejected)  # + records the broker refused (MQTT 5 PUBACK)

    @property
    def inflight_window(self) -> int:
        """QoS 1/2 PUBLISHes that may await their acknowledgement at once on the current connection."""
        return self._publisher.window if self._publisher is not None else 0

    # -- forwarding task --------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._outbox is not None
        assert self._publisher is not None
        outbox, publisher, batch_max = self._outbox, self._publisher, self.config.batch_max
        while True:
            self._wake.clear()  # cleared before checking, so no wake-up is lost
            await self._flush_acks()
            room = publisher.room(batch_max)
            if room > 0:
                after = self._cursor
                records = await outbox.peek(room, after_id=after)
                # Re-checked after the read: the link may have dropped meanwhile (and, at QoS 0, moved
                # the cursor back).
                if records and publisher.connected and self._cursor == after:
                    taken = publisher.publish(records)
                    if taken:
                        self._cursor = records[taken - 1].id
                        continue
            await self._wake.wait()

    async def _flush_acks(self, *, force: bool = False) -> None:
        """Remove the acknowledged prefix from the outbox in one transaction, once at least
        ``ACK_FLUSH_IDS`` records wait for it or nothing handed over is unacknowledged (so an idle sink's
        outbox empties). A transaction per burst of PUBACKs was 6% of the gateway's main thread at 40,000
        values/s with the publisher process, whose bursts are small; acknowledged records left in the
        file by a crash are only sent again (at-least-once)."""
        upto = self._acked_id
        if upto > self._flushed_id and (
                force or upto >= self._cursor or upto - self._flushed_id >= ACK_FLUSH_IDS):
            self._flushed_id = upto
            await self._ack_upto(upto)

    # -- PublisherListener (the publisher's loop thread is ours) ----------------------------------

    def link_up(self, window: int) -> None:
        outage_s = self._came_up()
        if outage_s is not None:
            log.info("mqtt: connected to %s again after %.1f s", self.config.url, outage_s)
        else:
            log.info("mqtt: connected to %s", self.config.url)
        self._wake.set()

    def link_down(self, why: str) -> None:
        self._broker_lost(self.config.url, why)

    def acked(self, upto_id: int, published: int, rejected: int) -> None:
        self._acked_id = max(self._acked_id, upto_id)
        self._published += published
        self._rejected += rejected
        self._errors += rejected
        self._wake.set()

    def resend_after(self, record_id: int) -> None:
        self._cursor = record_id
        self._wake.set()
