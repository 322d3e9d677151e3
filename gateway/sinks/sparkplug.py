"""Sparkplug B 3.0 edge-node sink: this gateway is the edge node, each asset a device, each tag a
metric (conventions §3.1). Payloads and session rules are in :mod:`gateway.encoders.sparkplug_b` and
:mod:`gateway.sinks.sparkplug_session`; this module owns the MQTT session and the outbox.

Session: every CONNECT carries a clean session and the NDEATH as its Will (QoS 1, retain false) with a
bdSeq one above the previous CONNECT's (wrapping 255 -> 0), persisted in ``<data_dir>/sparkplug/bdseq``
before the CONNECT goes out, so a restart continues the series. An attempt that fails before sending its
CONNECT (TCP or TLS) does not use up its number: the next attempt carries it again. After the CONNACK
the node subscribes to its NCMD topic (and the primary host's STATE), then publishes NBIRTH and the
DBIRTHs. An NCMD ``Node Control/Rebirth = true`` stops DATA and republishes the births with the same
bdSeq. A clean ``close`` publishes the NDEATH itself before DISCONNECT (which suppresses the Will).

Devices: an asset whose batch carries only communication-loss codes is offline: one DDEATH, no DDATA
until a reading of another quality brings it back with a DBIRTH (rules in the session module).

Store and forward: ``write`` appends readings to the durable outbox in a neutral form
(:mod:`gateway.sinks.sparkplug_records`); only a born session turns them into DDATA. Records created
before the current publishing period began (broker unreachable, primary host offline, gateway stopped)
go out first, in order, as DDATA with ``is_historical`` and their original timestamps; then live data
follows. Sparkplug DATA is QoS 0 (§5.1: at most once on the wire), so a record leaves the outbox once
paho has written it to the socket; what a dropped link swallowed is published again after the next
birth, as history.

Primary host: with ``primary_host_id`` set, no births and no DATA go out until the retained
``spBv1.0/STATE/<primary_host_id>`` says ``online: true``; ``online: false`` (with a timestamp not older
than the last seen) stops DATA again. The spec's answer to an offline host is to walk to the next broker;
with one broker there is none, so the node stays connected, buffers, and re-births (same bdSeq) when the
host is back.

Device commands: with ``accept_dcmd``, the node also subscribes to ``DCMD/<edge_node>/+`` and hands each
metric to the gateway's command queue as a tag write (:mod:`gateway.sinks.sparkplug_commands`). Off by
default: whoever may publish to that topic on the broker can then write to PLCs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field, field_validator

from gateway.encoders.sparkplug_b import parse_state, state_topic
from gateway.encoders.uns_json import Message
from gateway.readings import Reading
from gateway.sinks.base import OutboxForwarding, SinkStats, open_outbox
from gateway.sinks.mqtt_link import (
    MISC_INTERVAL_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    MqttConnectionConfig,
    MqttLink,
    make_client,
)
from gateway.sinks.outbox_common import OutboxBackend, OutboxRecord
from gateway.sinks.sparkplug_commands import DeviceCommands, Submit, command_actor
from gateway.sinks.sparkplug_records import decode_record, encode_records
from gateway.sinks.sparkplug_session import EdgeNodeSession, next_bdseq

log = logging.getLogger(__name__)


class SparkplugSinkConfig(MqttConnectionConfig):
    """``sinks.sparkplug``: the connection keys of :class:`MqttConnectionConfig` plus these."""

    enabled: bool = False
    group_id: str = "twinedge"
    edge_node_id: str | None = None  # default: gateway.id
    primary_host_id: str | None = None  # wait for this host's STATE online before publishing
    batch_max: int = Field(default=500, ge=1)  # DATA messages queued in paho at once
    outbox_max_rows: int = Field(default=100_000, ge=1)
    accept_dcmd: bool = False  # DCMD metrics become tag writes through the command queue

    @field_validator("group_id", "edge_node_id", "primary_host_id")
    @classmethod
    def _check_id(cls, v: str | None) -> str | None:
        # §3.1: ids are topic levels; wildcards and the separator would change the topic's meaning.
        if v is not None and (not v.strip() or any(c in v for c in "+#/")):
            raise ValueError("must be non-empty and contain none of + # /")
        return v


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SparkplugSink(OutboxForwarding):
    """Publishes readings as a Sparkplug B edge node from a durable outbox."""

    name = "sparkplug"

    def __init__(
        self, config: SparkplugSinkConfig, gateway_id: str, data_dir: str | Path, *, close_timeout_s: float = 5.0,
        outbox: OutboxBackend = "sqlite",
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.outbox_backend = outbox  # gateway.outbox: which store holds the outbox
        self.close_timeout_s = close_timeout_s
        self.session = EdgeNodeSession(config.group_id, config.edge_node_id or gateway_id)
        self.client_id = config.client_id or re.sub(r"[^A-Za-z0-9_-]", "-", f"twinedge-{gateway_id}-sparkplug")
        self.bdseq_path = self.data_dir / "sparkplug" / "bdseq"
        self._ncmd_topic = self.session.topic("NCMD")
        self._state_topic = state_topic(config.primary_host_id) if config.primary_host_id else None
        self._dcmd_prefix = self.session.topic("DCMD") + "/"
        self._dcmd = DeviceCommands(self.session, command_actor(config.primary_host_id)) if config.accept_dcmd else None

        self._init_forwarding()
        self._client: mqtt.Client | None = None
        self._link: MqttLink | None = None
        self._last_bdseq: int | None = None  # the newest bdSeq stored
        self._unsent_bdseq: int | None = None  # armed in the Will of an attempt that sent no CONNECT
        self._host_online = self._state_topic is None
        self._host_ts = 0  # timestamp of the newest STATE taken into account
        self._born = False  # NBIRTH and DBIRTHs are out in this MQTT session
        self._rebirth = False  # a host asked for the births again
        self._live_since = 0.0  # unix time the current publishing period began; older records are history
        # QoS 0 messages are written in order, so each record completes with its last message: mid -> record id.
        self._mid_to_id: dict[int, int] = {}
        self._last_mid: int | None = None
        self._cursor = 0  # highest outbox id turned into messages
        self._acked_id = 0  # highest outbox id whose messages are all written
        self._flushed_id = 0  # highest outbox id removed from the outbox

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None or self._closed:
            return
        self._outbox = await open_outbox(self.data_dir, self.name, self.config.outbox_max_rows,
                                         backend=self.outbox_backend)
        self._last_bdseq = self._load_bdseq()
        # tls_set reads certificate files: keep that off the loop. Clean Start on every CONNECT (§3.1).
        self._client = client = await asyncio.to_thread(make_client, self.config, self.client_id, clean_start=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._link = MqttLink(
            client,
            misc_interval_s=min(MISC_INTERVAL_S, self.config.keepalive_s / 4),
            retry_min_s=RECONNECT_MIN_S,
            retry_max_s=RECONNECT_MAX_S,
            on_connect_error=self._on_connect_error,
            before_connect=self._arm_will,
        )
        self._link.start()
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    def accept_commands(self, submit: Submit, assets: Iterable[str]) -> None:
        """Where DCMD writes go (the command queue's ``submit``; the queue is built after the sinks), and every
        asset id the gateway reads, to map DCMD device ids back to assets. Without ``accept_dcmd`` this does
        nothing: DCMD is not even subscribed."""
        if self._dcmd is not None:
            self._dcmd.accept(submit, assets)

    async def write(self, batch: Sequence[Reading]) -> None:
        if self._outbox is None:
            raise RuntimeError("SparkplugSink.write() before start()")
        if batch:
            await self._outbox.append(encode_records(batch))
            self._wake.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._dcmd is not None:
            await self._dcmd.close()
        await self._stop_forwarding(drain=self._publishing())  # nothing drains while unborn
        if self._client is not None and self._connected:
            # §3.1: an intentional disconnect publishes the NDEATH first; the DISCONNECT queued behind it
            # suppresses the Will.
            death = self.session.death(_now_ms())
            self._client.publish(death.topic, death.payload, qos=1, retain=False)
        if self._link is not None:
            await self._link.close()
        if self._outbox is not None:
            await self._outbox.close()

    def stats(self) -> SinkStats:
        return self._stats()

    # -- bdSeq --------------------------------------------------------------------------------------

    def _load_bdseq(self) -> int | None:
        """The bdSeq of the last CONNECT of any earlier run; None before the first."""
        try:
            return int(self.bdseq_path.read_text(encoding="ascii")) % 256
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("sparkplug: cannot read %s (%s); bdSeq starts over at 0", self.bdseq_path, exc)
            return None

    def _arm_will(self) -> None:
        """Before each attempt (MqttLink calls it on the loop): the bdSeq of the coming CONNECT, stored first
        so that no restart reuses it, and the NDEATH Will that carries it. OSError fails this attempt; the
        link retries."""
        bdseq = self._unsent_bdseq
        if bdseq is None:
            bdseq = next_bdseq(self._last_bdseq)
            self.bdseq_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.bdseq_path.with_suffix(".tmp")
            tmp.write_text(str(bdseq), encoding="ascii")
            os.replace(tmp, self.bdseq_path)  # atomic: a crash leaves the old or the new number, never half
            self._last_bdseq = self._unsent_bdseq = bdseq
        self.session.bdseq = bdseq
        assert self._client is not None
        death = self.session.death(_now_ms())
        self._client.will_set(death.topic, death.payload, qos=1, retain=False)

    # -- publisher task ---------------------------------------------------------------------------

    def _publishing(self) -> bool:
        return self._connected and self._host_online and self._born and not self._rebirth

    async def _run(self) -> None:
        assert self._outbox is not None
        outbox, batch_max = self._outbox, self.config.batch_max
        while True:
            self._wake.clear()  # cleared before checking, so no wake-up is lost
            await self._flush_acks()
            wants_births = self._connected and self._host_online and (not self._born or self._rebirth)
            if wants_births and self._publish_births():
                continue
            room = batch_max - len(self._mid_to_id)
            if self._publishing() and room > 0:
                after = self._cursor
                records = await outbox.peek(room, after_id=after)
                # Re-checked after the read: the link, the host or a Rebirth request may have changed it.
                if records and self._publishing() and self._cursor == after and self._publish_records(records):
                    continue
            await self._wake.wait()

    def _send(self, messages: list[Message]) -> int | None:
        """Publish at QoS 0, retain false (§3.1); the mid of the last message, or None if the link is gone."""
        assert self._client is not None
        mid = None
        for message in messages:
            info = self._client.publish(message.topic, message.payload, qos=0, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return None
            mid = info.mid
        return mid

    def _publish_births(self) -> bool:
        if not self._born:
            self._live_since = time.time()  # a Rebirth continues the period; a new session starts one
        births = self.session.births(_now_ms())
        if self._send(births) is None:
            return False  # the link dropped: on_disconnect follows
        self._born, self._rebirth = True, False
        log.info("sparkplug: NBIRTH bdSeq %d and %d DBIRTH(s) published", self.session.bdseq, len(births) - 1)
        return True

    def _publish_records(self, records: list[OutboxRecord]) -> bool:
        now = _now_ms()
        for rec in records:
            historical = rec.created < self._live_since
            messages = self.session.data(rec.key, decode_record(rec.payload), historical=historical, now_ms=now)
            mid = self._send(messages) if messages else None
            if messages and mid is None:
                return False  # the link dropped: on_disconnect rewinds the cursor
            if mid is not None:
                self._mid_to_id[mid] = rec.id
                self._last_mid = mid
            elif self._last_mid is not None and self._mid_to_id:
                self._mid_to_id[self._last_mid] = rec.id  # nothing changed: done with the message before it
            else:
                self._acked_id = rec.id
            self._cursor = rec.id
        return True

    async def _flush_acks(self) -> None:
        """Remove the written prefix from the outbox: one transaction per burst."""
        upto = self._acked_id
        if upto > self._flushed_id:
            self._flushed_id = upto
            self._published += await self._ack_upto(upto)

    # -- paho callbacks (event loop thread, from MqttLink) ----------------------------------------

    def _on_connect_error(self, exc: OSError) -> None:
        # No CONNECT went out (refused, unreachable, TLS): the armed bdSeq stays for the next attempt.
        self._link_down(f"connection failed: {exc}")

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: ConnectFlags, reason_code: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._unsent_bdseq = None  # the CONNECT carried it
        if reason_code.is_failure:
            self._link_down(f"connection refused: {reason_code}")
            return
        assert self._link is not None
        self._link.reset_backoff()
        # Subscribed before NBIRTH goes out on the same connection, so no command after it is missed.
        client.subscribe(self._ncmd_topic, qos=0)
        if self._dcmd is not None:
            client.subscribe(self.session.topic("DCMD", "+"), qos=0)
        if self._state_topic is not None:
            self._host_online = False  # until the retained STATE says otherwise
            client.subscribe(self._state_topic, qos=1)
        self._born = False
        outage_s = self._came_up()
        if outage_s is not None:
            log.info("sparkplug: connected to %s again after %.1f s", self.config.url, outage_s)
        else:
            log.info("sparkplug: connected to %s", self.config.url)
        self._wake.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: DisconnectFlags, reason_code: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._unsent_bdseq = None  # a CONNECT went out on this link, even if no CONNACK came back
        # Paho drops the QoS 0 packets it had not written: read those records again after the next birth.
        self._mid_to_id.clear()
        self._last_mid = None
        self._cursor = self._acked_id
        self._link_down(f"disconnected: {reason_code}")

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, props: Properties
    ) -> None:
        rec_id = self._mid_to_id.pop(mid, None)
        if rec_id is not None:  # else a birth or the NDEATH
            self._acked_id = rec_id
            self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: MQTTMessage) -> None:
        if msg.topic == self._ncmd_topic:
            try:
                rebirth = self.session.is_rebirth_command(bytes(msg.payload))
            except ValueError as exc:
                log.warning("sparkplug: ignoring an NCMD that is not Sparkplug B: %s", exc)
                return
            if rebirth:
                log.info("sparkplug: Rebirth requested by NCMD")
                self._rebirth = True
                self._wake.set()
        elif msg.topic == self._state_topic:
            self._on_state(bytes(msg.payload))
        elif self._dcmd is not None and msg.topic.startswith(self._dcmd_prefix) and not self._closed:
            self._dcmd.on_dcmd(msg.topic.removeprefix(self._dcmd_prefix), bytes(msg.payload))

    def _on_state(self, payload: bytes) -> None:
        state = parse_state(payload)
        if state is None:
            log.warning("sparkplug: ignoring a STATE of %s that is not Sparkplug 3.0 JSON", self.config.primary_host_id)
            return
        online, ts = state
        if ts is not None:
            if ts < self._host_ts:  # §3.1: e.g. the late Will of an earlier session of the host
                log.debug("sparkplug: ignoring a STATE older than the last seen (%d < %d)", ts, self._host_ts)
                return
            self._host_ts = ts
        if online == self._host_online:
            return
        self._host_online = online
        if online:
            log.info("sparkplug: primary host %s online", self.config.primary_host_id)
        else:
            self._born = False  # births again, and history from here, when the host is back
            log.warning("sparkplug: primary host %s offline; buffering in the outbox", self.config.primary_host_id)
        self._wake.set()

    def _link_down(self, why: str) -> None:
        self._born = False
        self._broker_lost(self.config.url, why)
