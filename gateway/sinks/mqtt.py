"""MQTT sink: forwards the durable outbox to a broker with paho-mqtt 2.x (conventions §3.2-§3.4).

Delivery (conventions §5.1, "gateway -> MQTT"): at-least-once and in order. Records are published
from the outbox in id order and removed only after their PUBACK (QoS 1/2). Paho keeps unacked
messages in memory across a reconnect and resends them first, so order holds through a broker
restart; after a gateway restart the outbox resends whatever was not acked (duplicates possible,
as QoS 1 allows). At most ``batch_max`` records are in flight, which bounds paho's memory queue.

Availability: a retained ``{"online": true}`` is published to ``<prefix>/_gateway/<id>/status``
on every connect, with a retained ``{"online": false}`` Will for unclean loss (§3.2 tree). An
unreachable broker never fails ``start``: paho's loop thread retries with 1 s -> 30 s backoff and
the outage is logged once, as is the recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.encoders.uns_json import PayloadEncoder, UnsJsonEncoder, sanitize_level
from gateway.readings import Reading
from gateway.sinks.base import OutboxForwarding, SinkStats, outbox_path
from gateway.sinks.outbox import AsyncOutbox

log = logging.getLogger(__name__)

# §5.2: paho defaults to 1 s -> 120 s; the gateway caps at 30 s so recovery after an outage is
# noticed within half a minute.
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30


class MqttTlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class MqttSinkConfig(BaseModel):
    """``[sinks.mqtt]``. Unknown keys are errors (ARCHITECTURE.md habit 2)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    url: str = "mqtt://127.0.0.1:1883"  # mqtt:// or mqtts://, optional user:pass@
    protocol: Literal["3.1.1", "5"] = "5"
    qos: Literal[0, 1, 2] = 1  # §3.4: telemetry at QoS 1
    topic_prefix: str = "twinedge"
    layout: Literal["asset", "tag"] = "asset"
    retain: bool = True  # §3.4: latest-value topics are retained
    client_id: str | None = None
    tls: MqttTlsConfig | None = None
    batch_max: int = Field(default=500, ge=1)
    # §3.3: Mosquitto >= 2.0.12 needs a non-zero keep-alive.
    keepalive_s: int = Field(default=30, ge=1, le=65535)
    outbox_max_rows: int = Field(default=100_000, ge=1)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("url must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("url has no host")
        _ = parts.port  # raises ValueError on a malformed port
        return v


def _is_failure(reason_code: Any) -> bool:
    return bool(getattr(reason_code, "is_failure", False))


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

        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: AsyncOutbox | None = None
        self._client: mqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._connected = False
        self._closed = False
        # In-flight bookkeeping, touched only on the event loop thread.
        self._inflight: OrderedDict[int, bool] = OrderedDict()  # outbox id -> PUBACK received
        self._mid_to_id: dict[int, int] = {}
        self._cursor = 0  # highest outbox id handed to paho
        self._ack_upto = 0  # highest id whose whole prefix is acknowledged
        self._published = 0
        self._errors = 0
        self._rejected = 0  # PUBACKs with a failure reason code (MQTT 5), dropped on purpose
        self._outage_since: float | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._outbox = await AsyncOutbox.open(
            outbox_path(self.data_dir, self.name), self.config.outbox_max_rows
        )
        # tls_set reads certificate files: keep that off the loop.
        self._client = await asyncio.to_thread(self._make_client)
        parts = urlsplit(self.config.url)
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._client.connect_async(parts.hostname or "127.0.0.1", port, keepalive=self.config.keepalive_s)
        self._client.loop_start()  # paho's thread retries the first connection too
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol)
        parts = urlsplit(cfg.url)
        if parts.username is not None:
            password = unquote(parts.password) if parts.password is not None else None
            client.username_pw_set(unquote(parts.username), password)
        if parts.scheme == "mqtts":
            tls = cfg.tls or MqttTlsConfig()
            client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file)
        client.will_set(self.status_topic, json.dumps({"online": False}), qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
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
        if self._task is not None:
            await self._drain(self.close_timeout_s, only_while_connected=True)  # nothing drains offline
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        client = self._client
        if client is not None:
            if self._connected:
                # A clean DISCONNECT suppresses the Will, so say "offline" ourselves.
                info = client.publish(self.status_topic, json.dumps({"online": False}), qos=1, retain=True)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(info.wait_for_publish, 2.0)
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        if self._outbox is not None:
            await self._outbox.close()

    def stats(self) -> SinkStats:
        return self._stats(extra_dropped=self._rejected)  # + records the broker refused (MQTT 5 PUBACK)

    # -- publisher task ---------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._outbox is not None
        assert self._client is not None
        outbox, client, cfg = self._outbox, self._client, self.config
        while True:
            self._wake.clear()  # cleared before checking, so no wake-up is lost
            await self._flush_acks()
            room = cfg.batch_max - len(self._inflight)
            if self._connected and room > 0:
                records = await outbox.peek(room, after_id=self._cursor)
                for rec in records:
                    info = client.publish(rec.key, rec.payload, qos=cfg.qos, retain=cfg.retain)
                    if cfg.qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS:
                        break  # QoS 0 is not queued by paho when offline: retry it later
                    # QoS >= 1: paho keeps the message even if the link just dropped, and resends
                    # it after reconnecting, so it is in flight either way.
                    self._inflight[rec.id] = False
                    self._mid_to_id[info.mid] = rec.id
                    self._cursor = rec.id
                if records:
                    continue
            await self._wake.wait()

    async def _flush_acks(self) -> None:
        assert self._outbox is not None
        if self._ack_upto > 0:
            upto, self._ack_upto = self._ack_upto, 0
            await self._outbox.ack(upto)
            self._acked.set()

    # -- paho callbacks (paho's thread) -> event loop ---------------------------------------------

    def _to_loop(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed during shutdown
                loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if _is_failure(reason_code):
            self._to_loop(self._link_down, f"connection refused: {reason_code}")
            return
        client.publish(self.status_topic, json.dumps({"online": True}), qos=1, retain=True)
        self._to_loop(self._link_up)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        self._to_loop(self._link_down, f"disconnected: {reason_code}")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._to_loop(self._link_down, "connection failed")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, props: Any) -> None:
        self._to_loop(self._puback, mid, _is_failure(reason_code), str(reason_code))

    # -- loop-side state changes ------------------------------------------------------------------

    def _link_up(self) -> None:
        outage_s = self._came_up()
        if outage_s is not None:
            log.info("mqtt: connected to %s again after %.1f s", self.config.url, outage_s)
        else:
            log.info("mqtt: connected to %s", self.config.url)
        self._wake.set()

    def _link_down(self, why: str) -> None:
        if self._closed and self._connected:
            self._connected = False
            return  # our own disconnect
        self._errors += 1
        if self._went_down():
            log.warning(
                "mqtt: broker %s unavailable (%s); buffering in the outbox and retrying", self.config.url, why
            )

    def _puback(self, mid: int, failed: bool, reason: str) -> None:
        rec_id = self._mid_to_id.pop(mid, None)
        if rec_id is None:
            return  # the status message, or a message from before a restart
        if failed:
            # An MQTT 5 PUBACK reason >= 0x80 (e.g. not authorized) will not change on retry:
            # drop the record, count it, and keep the stream moving.
            self._rejected += 1
            self._errors += 1
            log.error("mqtt: broker rejected record %d: %s; dropped", rec_id, reason)
        else:
            self._published += 1
        self._inflight[rec_id] = True
        # Ack only the contiguous acknowledged prefix so the outbox stays strictly FIFO.
        while self._inflight:
            first_id, done = next(iter(self._inflight.items()))
            if not done:
                break
            self._inflight.popitem(last=False)
            self._ack_upto = first_id
        self._wake.set()
