"""Publishing outbox records with paho-mqtt 2.x on an event loop: the MQTT sink's transport.

Delivery (conventions §5.1, "gateway -> MQTT"): records are handed over in outbox id order and reported
acknowledged only as a contiguous prefix, after their PUBACK (QoS 1/2), so the outbox stays strictly
FIFO even if acknowledgements arrive out of order (QoS 2 flows can). Paho keeps unacked messages in
memory across ``reconnect()`` and resends them first after the CONNACK, so order holds through a broker
restart. A QoS 0 record counts as sent once written to the socket; those paho had not written yet when
a link dropped are reported with :meth:`PublisherListener.resend_after`, for the sink to hand over again.

Paho runs on the event loop, without its network thread (:mod:`gateway.sinks.mqtt_link`): its
callbacks below run on the loop thread and update the bookkeeping directly, no locks. The sink runs a
:class:`LoopPublisher` on its own loop, or in a worker process (:mod:`gateway.sinks.mqtt_process`).

Availability: a retained ``{"online": true}`` is published to the status topic on every connect, with a
retained ``{"online": false}`` Will for unclean loss (§3.2 tree).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field

from gateway.sinks.mqtt_link import (
    MISC_INTERVAL_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    BufferedReadClient,
    MqttConnectionConfig,
    MqttLink,
    make_client,
)
from gateway.sinks.outbox_common import OutboxRecord

log = logging.getLogger(__name__)


class MqttPublishConfig(MqttConnectionConfig):
    """The keys the transport needs: the connection ones plus how records are published."""

    qos: Literal[0, 1, 2] = 1  # §3.4: telemetry at QoS 1
    retain: bool = True  # §3.4: latest-value topics are retained
    # QoS 1/2 PUBLISHes awaiting their acknowledgement on the wire (the sink's window: no more are
    # handed to paho). None: as many as the broker accepts, which MQTT 5 states in the
    # CONNACK (Receive Maximum; Mosquitto: max_inflight_messages, 20 by default) and 3.1.1 cannot, so
    # there the window is DEFAULT_INFLIGHT_311: a 3.1.1 client beyond Mosquitto's limit has its QoS 2
    # messages refused and is disconnected, over and over. Throughput is at most a window per round
    # trip, and under load the round trip includes our own event loop: at 33,000 values/s a window of
    # 20 let the outbox grow to 98,000 messages while 100 kept p99 latency at 165 ms (BENCHMARKS.md).
    max_inflight: int | None = Field(default=None, ge=1, le=65535)


DEFAULT_INFLIGHT_311 = 20  # Mosquitto's default max_inflight_messages, and paho's default window


def inflight_window(configured: int | None, receive_maximum: int | None) -> int:
    """The in-flight window for a connection: the configured one within the broker's Receive Maximum
    (MQTT 5 only; absent means 65,535, §3.2.2.3.3), or the broker's own figure when none is configured."""
    if configured is None:
        return receive_maximum if receive_maximum is not None else DEFAULT_INFLIGHT_311
    return configured if receive_maximum is None else min(configured, receive_maximum)


class PublisherListener(Protocol):
    """What a publisher tells its sink. Called on the publisher's loop thread, never blocking."""

    def link_up(self, window: int) -> None:
        """Connected (CONNACK accepted); ``window`` records may be unacknowledged at once."""

    def link_down(self, why: str) -> None:
        """A connection attempt failed or the link dropped; the publisher keeps retrying."""

    def acked(self, upto_id: int, published: int, rejected: int) -> None:
        """Every record up to ``upto_id`` is done: ``published`` more were acknowledged, ``rejected``
        more refused for good by the broker (MQTT 5 PUBACK reason >= 0x80), since the last call."""

    def resend_after(self, record_id: int) -> None:
        """Records after ``record_id`` that were handed over never left (QoS 0 on a lost link): hand
        them over again, from the outbox."""


def status_payload(online: bool) -> str:
    return json.dumps({"online": online})


class LinkState:
    """What a sink reads off either publisher: the link is up, and the window it has."""

    _connected: bool
    _window: int

    @property
    def window(self) -> int:
        return self._window

    @property
    def connected(self) -> bool:
        return self._connected


class LoopPublisher(LinkState):
    """Publishes outbox records through one paho client driven by the running event loop."""

    def __init__(
        self, config: MqttPublishConfig, client_id: str, status_topic: str, listener: PublisherListener
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.status_topic = status_topic
        self._listener = listener
        self._client: BufferedReadClient | None = None
        self._link: MqttLink | None = None
        self._connected = False
        self._inflight: deque[int] = deque()  # outbox ids handed to paho, oldest first
        self._acked_early: set[int] = set()  # acknowledged ids still behind an unacknowledged one
        self._mid_to_id: dict[int, int] = {}
        self._acked_id = 0  # highest id whose whole prefix is acknowledged
        self._window = DEFAULT_INFLIGHT_311  # QoS 1/2 PUBLISHes unacknowledged at once; set per CONNACK
        self._status_mids: set[int] = set()  # status messages (QoS 1) awaiting their PUBACK

    async def start(self) -> None:
        # tls_set reads certificate files: keep that off the loop.
        self._client = await asyncio.to_thread(self._make_client)
        self._link = MqttLink(
            self._client,
            misc_interval_s=min(MISC_INTERVAL_S, self.config.keepalive_s / 4),
            retry_min_s=RECONNECT_MIN_S,
            retry_max_s=RECONNECT_MAX_S,
            on_connect_error=lambda exc: self._listener.link_down(f"connection failed: {exc}"),
        )
        self._link.start()

    def _make_client(self) -> BufferedReadClient:
        # The publisher keeps the window itself (see room), so paho never queues: with a limit, paho
        # scans every message it holds on each PUBACK looking for a queued one, which at a window of
        # 500 was an eighth of the gateway's CPU at 50,000 values/s.
        client = make_client(
            self.config, self.client_id, clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY, paho_inflight=0
        )
        client.will_set(self.status_topic, status_payload(False), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    async def close(self) -> None:
        """Say "offline" (a clean DISCONNECT suppresses the Will) and disconnect. The broker handles this
        PUBLISH before the DISCONNECT queued behind it on the same connection; if that DISCONNECT never
        arrives, the Will says the same."""
        if self._client is not None and self._connected:
            self._publish_status(self._client, online=False)
        self._connected = False
        if self._link is not None:
            await self._link.close()

    def room(self, batch_max: int) -> int:
        """How many records may be handed over now. At QoS 1/2 every one is sent at once and stays
        unacknowledged until its PUBACK (PUBCOMP), so status messages count against the window too."""
        if not self._connected:
            return 0
        if self.config.qos == 0:
            return batch_max - len(self._inflight)
        return min(batch_max, self._window) - len(self._inflight) - len(self._status_mids)

    def publish(self, records: Sequence[OutboxRecord]) -> int:
        """Hand ``records`` to paho, oldest first; how many it took (at QoS 0 it refuses the rest when
        the link has just dropped)."""
        assert self._client is not None
        publish, qos, retain = self._client.publish, self.config.qos, self.config.retain
        inflight, mid_to_id = self._inflight, self._mid_to_id
        taken = 0
        for rec in records:
            info = publish(rec.key, rec.payload, qos=qos, retain=retain)
            if qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # QoS 0 is not queued by paho when offline: retry it later
            # QoS >= 1: paho keeps the message even if the link just dropped, and resends it after
            # reconnecting, so it is in flight either way.
            inflight.append(rec.id)
            mid_to_id[info.mid] = rec.id
            taken += 1
        return taken

    def _publish_status(self, client: mqtt.Client, *, online: bool) -> None:
        info = client.publish(self.status_topic, status_payload(online), qos=1, retain=True)
        self._status_mids.add(info.mid)

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
            self._listener.link_down(f"connection refused: {reason_code}")
            return
        assert self._link is not None
        self._link.reset_backoff()
        # MQTT 5 §3.2.2.3.3: never more unacknowledged QoS > 0 PUBLISHes than the broker's Receive Maximum,
        # which only the CONNACK tells.
        receive_maximum = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self._window = inflight_window(self.config.max_inflight, receive_maximum)
        self._connected = True
        self._publish_status(client, online=True)
        self._listener.link_up(self._window)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._connected = False
        if self.config.qos == 0 and self._inflight:
            # Paho drops the QoS 0 packets it had not written yet, without on_publish: forget them and
            # have them read from the outbox again (QoS 1/2 messages stay in paho and are resent).
            self._inflight.clear()
            self._acked_early.clear()
            self._mid_to_id.clear()
            self._listener.resend_after(self._acked_id)
        self._listener.link_down(f"disconnected: {reason_code}")

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, props: Properties
    ) -> None:
        rec_id = self._mid_to_id.pop(mid, None)
        if rec_id is None:  # a status message
            self._status_mids.discard(mid)
            self._listener.acked(self._acked_id, 0, 0)  # it may have held the window
            return
        rejected = reason_code.is_failure
        if rejected:
            # An MQTT 5 PUBACK reason >= 0x80 (e.g. not authorized) will not change on retry:
            # drop the record, count it, and keep the stream moving.
            log.error("mqtt: broker rejected record %d: %s; dropped", rec_id, reason_code)
        inflight, early = self._inflight, self._acked_early
        if inflight[0] != rec_id:
            early.add(rec_id)
            self._listener.acked(self._acked_id, int(not rejected), int(rejected))
            return
        inflight.popleft()
        while early and inflight and inflight[0] in early:
            rec_id = inflight.popleft()
            early.remove(rec_id)
        self._acked_id = rec_id
        self._listener.acked(rec_id, int(not rejected), int(rejected))
