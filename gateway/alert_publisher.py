"""Alert transitions onto MQTT: retained while open, cleared with an empty retained payload.

Topic ``<prefix>/<site>/<area>/<asset>/alerts/<rule>``. The transitions ride a second MqttSink (its own
outbox ``mqtt-alerts``), so they get the durable outbox, ordering and reconnects of the telemetry path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from gateway.alerts.store import AlertRecord
from gateway.api.state import AssetInfo
from gateway.config import GatewayConfig
from gateway.encoders.uns_json import Message, format_ts, json_value, sanitize_level
from gateway.readings import Reading
from gateway.sinks.mqtt import MqttSink

log = logging.getLogger(__name__)

ALERT_QUEUE_MAX = 10_000  # transitions waiting for the outbox; beyond this they are counted as dropped


class AlertTopics:
    """Encoder of alert transitions for MQTT: ``<prefix>/<site>/<area>/<asset>/alerts/<rule>``.

    An open alert (active or acknowledged) is published retained, so a subscriber arriving later
    sees it; a cleared one publishes an empty retained payload, which deletes the retained message
    (MQTT 3.1.1 §3.3.1.3). It rides the MqttSink as a carrier Reading (tag = rule id, value = the
    JSON payload) so alerts get the sink's durable outbox, ordering and reconnects for free.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = "/".join(sanitize_level(p) for p in prefix.split("/") if p.strip())

    def carrier(self, record: AlertRecord, site: str, area: str) -> Reading:
        payload = "" if record.state == "cleared" else json.dumps({
            "id": record.id, "rule": record.rule_id, "asset": record.asset, "tag": record.tag,
            "severity": record.severity, "state": record.state, "message": record.message,
            "value": json_value(record.value), "raised_at": format_ts(record.raised_at),
            "acked_by": record.acked_by, "acked_at": format_ts(record.acked_at) if record.acked_at else None,
            "ack_comment": record.ack_comment,
        }, separators=(",", ":"))
        now = datetime.now(UTC)
        return Reading("alerts", record.asset, record.rule_id, payload, 0, now, now, site, area)

    def encode(self, batch: Sequence[Reading]) -> list[Message]:
        return [Message(f"{self.prefix}/{sanitize_level(r.site)}/{sanitize_level(r.area)}/"
                        f"{sanitize_level(r.asset)}/alerts/{sanitize_level(r.tag)}", str(r.value).encode())
                for r in batch]


class AlertMqttPublisher:
    """Alert transitions onto MQTT through a second MqttSink (own outbox ``mqtt-alerts``, own client,
    always retained). Listeners must not block, so transitions wait in a bounded queue (drops counted)
    for the task that appends them to the durable outbox."""

    def __init__(self, config: GatewayConfig, assets: dict[str, AssetInfo]) -> None:
        mqtt = config.sinks.mqtt
        self.topics = AlertTopics(mqtt.topic_prefix)
        client_id = f"{mqtt.client_id or 'twinedge-' + config.gateway.id + '-mqtt'}-alerts"
        # A few messages a minute: not worth a publisher process of its own.
        self.sink = MqttSink(mqtt.model_copy(update={"retain": True, "client_id": client_id, "publisher": "loop"}),
                             f"{config.gateway.id}-alerts", config.gateway.data_dir, encoder=self.topics,
                             outbox=config.gateway.outbox)
        self.sink.name = "mqtt-alerts"  # its own outbox file, next to the telemetry one
        self.assets = assets
        self.dropped = 0
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(ALERT_QUEUE_MAX)
        self._task: asyncio.Task[None] | None = None

    def on_alert(self, record: AlertRecord) -> None:
        info = self.assets.get(record.asset)
        carrier = self.topics.carrier(record, info.site if info else "", info.area if info else "")
        try:
            self._queue.put_nowait(carrier)
        except asyncio.QueueFull:
            self.dropped += 1

    async def start(self) -> None:
        await self.sink.start()
        self._task = asyncio.create_task(self._forward(), name="alerts-mqtt")

    async def _forward(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self.sink.write(batch)
            except Exception:
                log.exception("alerts: %d transition(s) not written to the MQTT outbox", len(batch))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            # What is still queued goes to the outbox now, so the sink's close can drain it.
            rest = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
            if rest:
                with contextlib.suppress(Exception):
                    await self.sink.write(rest)
        await self.sink.close()
