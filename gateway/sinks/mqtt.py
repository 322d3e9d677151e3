"""MQTT sink: forwards the durable outbox to a broker with paho-mqtt 2.x (conventions §3.2-§3.4).

Delivery (conventions §5.1, "gateway -> MQTT"): at-least-once and in order. Records are published
from the outbox in id order and removed only after their PUBACK (QoS 1/2). Paho keeps unacked
messages in memory across ``reconnect()`` and resends them first after the CONNACK, so order holds
through a broker restart; after a gateway restart the outbox resends whatever was not acked
(duplicates possible, as QoS 1 allows). A QoS 0 record counts as sent once written to the socket;
those paho had not written yet when a link dropped are published again from the outbox. At most
``batch_max`` records are in flight, which bounds paho's memory queue.

Paho runs on the event loop, without its network thread (:mod:`gateway.sinks.mqtt_link`): its
callbacks below run on the loop thread and update the in-flight bookkeeping directly, no locks.

Availability: a retained ``{"online": true}`` is published to ``<prefix>/_gateway/<id>/status``
on every connect, with a retained ``{"online": false}`` Will for unclean loss (§3.2 tree). An
unreachable broker never fails ``start``: the link retries with 1 s -> 30 s backoff and the outage
is logged once, as is the recovery.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field

from gateway.encoders.uns_json import PayloadEncoder, UnsJsonEncoder, sanitize_level
from gateway.readings import Reading
from gateway.sinks.base import OutboxForwarding, SinkStats, outbox_path
from gateway.sinks.mqtt_link import (
    MISC_INTERVAL_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    MqttConnectionConfig,
    MqttLink,
    make_client,
)
from gateway.sinks.outbox import AsyncOutbox, OutboxRecord

log = logging.getLogger(__name__)


class MqttSinkConfig(MqttConnectionConfig):
    """``[sinks.mqtt]``: the connection keys of :class:`MqttConnectionConfig` plus these."""

    enabled: bool = True
    qos: Literal[0, 1, 2] = 1  # §3.4: telemetry at QoS 1
    topic_prefix: str = "twinedge"
    layout: Literal["asset", "tag"] = "asset"
    retain: bool = True  # §3.4: latest-value topics are retained
    batch_max: int = Field(default=500, ge=1)
    # QoS 1/2 PUBLISHes awaiting their acknowledgement on the wire (the sink's window: no more are
    # handed to paho). None: as many as the broker accepts, which MQTT 5 states in the
    # CONNACK (Receive Maximum; Mosquitto: max_inflight_messages, 20 by default) and 3.1.1 cannot, so
    # there the window is DEFAULT_INFLIGHT_311: a 3.1.1 client beyond Mosquitto's limit has its QoS 2
    # messages refused and is disconnected, over and over. Throughput is at most a window per round
    # trip, and under load the round trip includes our own event loop: at 33,000 values/s a window of
    # 20 let the outbox grow to 98,000 messages while 100 kept p99 latency at 165 ms (BENCHMARKS.md).
    max_inflight: int | None = Field(default=None, ge=1, le=65535)
    outbox_max_rows: int = Field(default=100_000, ge=1)


DEFAULT_INFLIGHT_311 = 20  # Mosquitto's default max_inflight_messages, and paho's default window


def inflight_window(configured: int | None, receive_maximum: int | None) -> int:
    """The in-flight window for a connection: the configured one within the broker's Receive Maximum
    (MQTT 5 only; absent means 65,535, §3.2.2.3.3), or the broker's own figure when none is configured."""
    if configured is None:
        return receive_maximum if receive_maximum is not None else DEFAULT_INFLIGHT_311
    return configured if receive_maximum is None else min(configured, receive_maximum)


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
    ) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self.data_dir = Path(data_dir)
        self.close_timeout_s = close_timeout_s
        self.encoder: PayloadEncoder = encoder or UnsJsonEncoder(config.topic_prefix, config.layout)
        prefix = "/".join(sanitize_level(p) for p in config.topic_prefix.split("/") if p.strip())
        self.status_topic = f"{prefix}/_gateway/{sanitize_level(gateway_id)}/status"
        self.client_id = config.client_id or re.sub(r"[^A-Za-z0-9_-]", "-", f"twinedge-{gateway_id}-mqtt")

        self._init_forwarding()
        self._client: mqtt.Client | None = None
        self._link: MqttLink | None = None
        # In-flight bookkeeping. Records are acknowledged to the outbox only as a contiguous prefix, so
        # it stays strictly FIFO even if acknowledgements arrive out of order (QoS 2 flows can).
        self._inflight: deque[int] = deque()  # outbox ids handed to paho, oldest first
        self._acked_early: set[int] = set()  # acknowledged ids still behind an unacknowledged one
        self._mid_to_id: dict[int, int] = {}
        self._cursor = 0  # highest outbox id handed to paho
        self._acked_id = 0  # highest id whose whole prefix is acknowledged
        self._flushed_id = 0  # highest id removed from the outbox
        self._rejected = 0  # PUBACKs with a failure reason code (MQTT 5), dropped on purpose
        self._window = DEFAULT_INFLIGHT_311  # QoS 1/2 PUBLISHes unacknowledged at once; set per CONNACK
        self._status_mids: set[int] = set()  # status messages (QoS 1) awaiting their PUBACK

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None or self._closed:
            return
        self._outbox = await AsyncOutbox.open(
            outbox_path(self.data_dir, self.name), self.config.outbox_max_rows
        )
        # tls_set reads certificate files: keep that off the loop.
        self._client = await asyncio.to_thread(self._make_client)
        self._link = MqttLink(
            self._client,
            misc_interval_s=min(MISC_INTERVAL_S, self.config.keepalive_s / 4),
            retry_min_s=RECONNECT_MIN_S,
            retry_max_s=RECONNECT_MAX_S,
            on_connect_error=lambda exc: self._link_down(f"connection failed: {exc}"),
        )
        self._link.start()
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    def _make_client(self) -> mqtt.Client:
        # The sink keeps the window itself (see _room), so paho never queues: with a limit, paho scans
        # every message it holds on each PUBACK looking for a queued one, which at a window of 500 was
        # an eighth of the gateway's CPU at 50,000 values/s.
        client = make_client(
            self.config, self.client_id, clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY, paho_inflight=0
        )
        client.will_set(self.status_topic, json.dumps({"online": False}), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

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
        if self._client is not None and self._connected:
            # A clean DISCONNECT suppresses the Will, so say "offline" ourselves. The broker handles this
            # PUBLISH before the DISCONNECT queued behind it on the same connection; if that DISCONNECT
            # never arrives, the Will says the same.
            self._publish_status(self._client, online=False)
        if self._link is not None:
            await self._link.close()
        if self._outbox is not None:
            await self._outbox.close()

    def stats(self) -> SinkStats:
        return self._stats(extra_dropped=self._rejected)  # + records the broker refused (MQTT 5 PUBACK)

    @property
    def inflight_window(self) -> int:
        """QoS 1/2 PUBLISHes that may await their acknowledgement at once on the current connection."""
        return self._window

    # -- publisher task ---------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._outbox is not None
        outbox, batch_max = self._outbox, self.config.batch_max
        while True:
            self._wake.clear()  # cleared before checking, so no wake-up is lost
            await self._flush_acks()
            room = self._room(batch_max)
            if self._connected and room > 0:
                after = self._cursor
                records = await outbox.peek(room, after_id=after)
                # Re-checked after the read: the link may have dropped meanwhile (and, at QoS 0, moved
                # the cursor back).
                if records and self._connected and self._cursor == after:
                    self._publish(records)
                    continue
            await self._wake.wait()

    def _room(self, batch_max: int) -> int:
        """How many records paho may be handed now. At QoS 1/2 every one is sent at once and stays
        unacknowledged until its PUBACK (PUBCOMP), so status messages count against the window too."""
        if self.config.qos == 0:
            return batch_max - len(self._inflight)
        return min(batch_max, self._window) - len(self._inflight) - len(self._status_mids)

    def _publish_status(self, client: mqtt.Client, *, online: bool) -> None:
        info = client.publish(self.status_topic, json.dumps({"online": online}), qos=1, retain=True)
        self._status_mids.add(info.mid)

    def _publish(self, records: list[OutboxRecord]) -> None:
        assert self._client is not None
        publish, qos, retain = self._client.publish, self.config.qos, self.config.retain
        inflight, mid_to_id = self._inflight, self._mid_to_id
        for rec in records:
            info = publish(rec.key, rec.payload, qos=qos, retain=retain)
            if qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # QoS 0 is not queued by paho when offline: retry it later
            # QoS >= 1: paho keeps the message even if the link just dropped, and resends it after
            # reconnecting, so it is in flight either way.
            inflight.append(rec.id)
            mid_to_id[info.mid] = rec.id
            self._cursor = rec.id

    async def _flush_acks(self) -> None:
        """Remove the acknowledged prefix from the outbox: one transaction per burst of PUBACKs."""
        upto = self._acked_id
        if upto > self._flushed_id:
            self._flushed_id = upto
            await self._ack_upto(upto)

    # -- paho callbacks (event loop thread, from MqttLink) ----------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        props: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._link_down(f"connection refused: {reason_code}")
            return
        assert self._link is not None
        self._link.reset_backoff()
        # MQTT 5 §3.2.2.3.3: never more unacknowledged QoS > 0 PUBLISHes than the broker's Receive Maximum,
        # which only the CONNACK tells.
        receive_maximum = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self._window = inflight_window(self.config.max_inflight, receive_maximum)
        self._publish_status(client, online=True)
        outage_s = self._came_up()
        if outage_s is not None:
            log.info("mqtt: connected to %s again after %.1f s", self.config.url, outage_s)
        else:
            log.info("mqtt: connected to %s", self.config.url)
        self._wake.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        props: Properties | None,
    ) -> None:
        if self.config.qos == 0:
            # Paho drops the QoS 0 packets it had not written yet, without on_publish: forget them and
            # read them from the outbox again (QoS 1/2 messages stay in paho and are resent).
            self._inflight.clear()
            self._acked_early.clear()
            self._mid_to_id.clear()
            self._cursor = self._acked_id
        self._link_down(f"disconnected: {reason_code}")

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, props: Properties
    ) -> None:
        rec_id = self._mid_to_id.pop(mid, None)
        if rec_id is None:  # a status message
            self._status_mids.discard(mid)
            self._wake.set()  # it may have held the window
            return
        if reason_code.is_failure:
            # An MQTT 5 PUBACK reason >= 0x80 (e.g. not authorized) will not change on retry:
            # drop the record, count it, and keep the stream moving.
            self._rejected += 1
            self._errors += 1
            log.error("mqtt: broker rejected record %d: %s; dropped", rec_id, reason_code)
        else:
            self._published += 1
        inflight, early = self._inflight, self._acked_early
        if inflight[0] != rec_id:
            early.add(rec_id)
            return
        inflight.popleft()
        while early and inflight and inflight[0] in early:
            rec_id = inflight.popleft()
            early.remove(rec_id)
        self._acked_id = rec_id
        self._wake.set()

    def _link_down(self, why: str) -> None:
        self._broker_lost(self.config.url, why)
