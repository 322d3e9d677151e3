"""AlertMqttPublisher against a real Mosquitto: an open alert is retained on
``<prefix>/<site>/<area>/<asset>/alerts/<rule>``; clearing it removes the retained message."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.alert_publisher import AlertMqttPublisher
from gateway.alerts.store import AlertRecord
from gateway.api.state import AssetInfo
from gateway.config import GatewayConfig
from tests.fixtures.servers import MosquittoServer

WAIT_S = 10.0
RAISED_AT = datetime(2026, 11, 21, 13, 55, 1, 123000, tzinfo=UTC)
TOPIC = "plant-a/factory/shop/conveyor-01/alerts/motor-hot"
ASSETS = {"conveyor-01": AssetInfo("conveyor-01", "conveyor", "plc-1", "factory", "shop")}
ACTIVE = AlertRecord(
    id=7, rule_id="motor-hot", asset="conveyor-01", tag="motor_temp", severity="high", state="active",
    message="Motor temperature above 90 CEL", value=97.5, raised_at=RAISED_AT, acked_by=None, acked_at=None,
    ack_comment=None, cleared_at=None,
)


def wait_until(cond: Callable[[], bool], what: str, within_s: float = WAIT_S) -> None:
    """Poll a condition until a deadline: the test waits on facts, never on fixed sleeps."""
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        time.sleep(0.02)


class Subscriber:
    """A paho client on its own thread recording (topic, payload, retain) of one topic filter.

    ``sync()`` is a barrier: it publishes to a private topic and waits for the echo. The broker
    queues the retained messages of a subscription when it handles the SUBSCRIBE, so once the echo
    (published after the SUBACK) is back, every retained message for the filter has arrived too.
    """

    def __init__(self, server: MosquittoServer, topic: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._topic = topic
        self._echo = f"test/echo/{uuid.uuid4().hex}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(server.host, server.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(WAIT_S):
            self.close()
            raise AssertionError(f"no SUBACK for {topic} within {WAIT_S}s")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(self._topic, 1), (self._echo, 1)])

    def _on_subscribe(self, *_: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[tuple[bytes, bool]]:
        with self._lock:
            return [(payload, retain) for t, payload, retain in self.messages if t == topic]

    def sync(self) -> None:
        marker = uuid.uuid4().hex.encode()
        self.client.publish(self._echo, marker, qos=1)
        wait_until(lambda: any(payload == marker for payload, _ in self.on(self._echo)), "the echo barrier")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_now(server: MosquittoServer, topic: str) -> list[tuple[bytes, bool]]:
    """What a subscriber arriving now gets on ``topic``: only the retained message, if any."""
    late = Subscriber(server, topic)
    try:
        late.sync()
        return late.on(topic)
    finally:
        late.close()


@pytest.fixture
async def publisher(mosquitto_server: MosquittoServer, tmp_path: Path) -> AsyncIterator[AlertMqttPublisher]:
    config = GatewayConfig.model_validate({
        "gateway": {"id": "gw-alerts-test", "data_dir": str(tmp_path)},
        "sinks": {"mqtt": {"url": mosquitto_server.url, "topic_prefix": "plant-a"}},
    })
    pub = AlertMqttPublisher(config, ASSETS)
    await pub.start()
    try:
        yield pub
    finally:
        await pub.close()


async def test_open_alert_is_retained_and_clearing_removes_it(
    mosquitto_server: MosquittoServer, publisher: AlertMqttPublisher
) -> None:
    live = await asyncio.to_thread(Subscriber, mosquitto_server, "plant-a/+/+/+/alerts/#")
    try:
        publisher.on_alert(ACTIVE)
        await asyncio.to_thread(wait_until, lambda: len(live.on(TOPIC)) == 1, "the raised alert")

        retained = await asyncio.to_thread(retained_now, mosquitto_server, TOPIC)
        assert len(retained) == 1, retained
        payload, retain = retained[0]
        assert retain, "an open alert must be published retained"
        assert json.loads(payload) == {
            "id": 7, "rule": "motor-hot", "asset": "conveyor-01", "tag": "motor_temp", "severity": "high",
            "state": "active", "message": "Motor temperature above 90 CEL", "value": 97.5,
            "raised_at": "2026-11-21T13:55:01.123Z", "acked_by": None, "acked_at": None, "ack_comment": None,
        }

        publisher.on_alert(replace(ACTIVE, state="cleared", cleared_at=datetime.now(UTC)))
        await asyncio.to_thread(wait_until, lambda: len(live.on(TOPIC)) == 2, "the clearing message")
        assert live.on(TOPIC)[1][0] == b"", "a cleared alert is an empty payload"

        assert await asyncio.to_thread(retained_now, mosquitto_server, TOPIC) == []
    finally:
        await asyncio.to_thread(live.close)
    assert publisher.dropped == 0
