"""MqttSink against a real Mosquitto: payloads, retained status, Will, outage and recovery."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.common.status import GOOD
from gateway.readings import Reading
from gateway.sinks.mqtt import MqttSink, MqttSinkConfig
from tests.fixtures.servers import MosquittoServer, free_port, run_mosquitto

BASE_TS = datetime(2026, 11, 21, 13, 55, 1, 0, tzinfo=UTC)
STATUS_TOPIC = "twinedge/_gateway/gw1/status"


def reading(i: int, tag: str = "seq", asset: str = "conveyor-01") -> Reading:
    ts = BASE_TS + timedelta(milliseconds=i)
    return Reading("plc1", asset, tag, float(i), GOOD, ts, ts, "mine-a", "level-3", "MTS")


async def wait_for(cond: Callable[[], bool], within_s: float, what: str) -> None:
    """Poll a condition until a deadline: the tests wait on facts, never on fixed sleeps."""
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.02)


class Subscriber:
    """A paho client on its own thread recording (topic, payload, retain) for a filter."""

    def __init__(self, server: MosquittoServer, topic: str, *, client_id: str = "", persistent: bool = False):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._topic = topic
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(server.host, server.port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self._topic, qos=1)
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def payloads(self, topic: str) -> list[Any]:
        return [json.loads(p) for t, p, _ in self.snapshot() if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_sink(url: str, tmp_path: Path, **cfg: Any) -> MqttSink:
    return MqttSink(MqttSinkConfig(url=url, **cfg), "gw1", tmp_path / "data")


async def test_config_rejects_unknown_keys_and_bad_url() -> None:
    with pytest.raises(ValueError, match="extra"):
        MqttSinkConfig.model_validate({"urll": "mqtt://x"})
    with pytest.raises(ValueError, match="mqtt://"):
        MqttSinkConfig(url="http://x:1883")
    assert MqttSinkConfig(url="mqtts://u:p@broker:8883").qos == 1


async def test_publishes_asset_messages_and_retained_status(
    mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    sub = await asyncio.to_thread(Subscriber, mosquitto_server, "twinedge/#")
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(sub.subscribed.is_set, 5, "subscription")
        await sink.write([reading(1, "belt_speed"), reading(2, "motor_current", asset="Pump 2")])
        topic = "twinedge/mine-a/level-3/conveyor-01"
        await wait_for(lambda: bool(sub.payloads(topic)), 10, "asset message")
        msg = sub.payloads(topic)[0]
        assert msg["asset"] == "conveyor-01"
        assert msg["device"] == "plc1"
        assert msg["ts"] == "2026-11-21T13:55:01.001Z"
        assert msg["values"]["belt_speed"] == {
            "value": 1.0,
            "unit": "MTS",
            "quality": "Good",
            "status_code": 0,
            "source_ts": "2026-11-21T13:55:01.001Z",
        }
        await wait_for(lambda: bool(sub.payloads("twinedge/mine-a/level-3/pump-2")), 5, "second asset")
        await wait_for(lambda: sink.stats().outbox_depth == 0, 5, "outbox drained")
        stats = sink.stats()
        assert stats.connected
        assert stats.published == 2
        assert stats.dropped == 0
    finally:
        await sink.close()
        await sink.close()  # idempotent
        sub.close()
    # A late subscriber sees the retained telemetry and the retained "offline" from close().
    late = await asyncio.to_thread(Subscriber, mosquitto_server, "twinedge/#")
    try:
        await wait_for(lambda: bool(late.payloads(STATUS_TOPIC)), 5, "retained status")
        assert late.payloads(STATUS_TOPIC) == [{"online": False}]
        retained = {t for t, _, r in late.snapshot() if r}
        assert {"twinedge/mine-a/level-3/conveyor-01", STATUS_TOPIC} <= retained
    finally:
        late.close()


async def test_online_status_then_last_will_on_crash(
    mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    """SIGKILL the gateway process: the broker publishes the retained Will {"online": false}."""
    sub = await asyncio.to_thread(Subscriber, mosquitto_server, STATUS_TOPIC)
    await wait_for(sub.subscribed.is_set, 5, "subscription")
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        from gateway.sinks.mqtt import MqttSink, MqttSinkConfig
        async def main():
            cfg = MqttSinkConfig(url={mosquitto_server.url!r}, keepalive_s=2)
            sink = MqttSink(cfg, "gw1", {str(tmp_path)!r})
            await sink.start()
            while not sink.stats().connected:
                await asyncio.sleep(0.02)
            print("connected", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, cwd=os.getcwd()
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.strip() == b"connected"
        await wait_for(lambda: {"online": True} in sub.payloads(STATUS_TOPIC), 5, "online status")
        proc.send_signal(signal.SIGKILL)
        await wait_for(lambda: sub.payloads(STATUS_TOPIC)[-1] == {"online": False}, 10, "last will")
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 5)
        sub.close()


async def test_outbox_full_drops_oldest_and_counts(tmp_path: Path) -> None:
    sink = make_sink(f"mqtt://127.0.0.1:{free_port()}", tmp_path, layout="tag", outbox_max_rows=5)
    await sink.start()
    try:
        await sink.write([reading(i) for i in range(8)])
        stats = sink.stats()
        assert stats.outbox_depth == 5
        assert stats.dropped == 3
        assert not stats.connected
    finally:
        await sink.close()


async def test_broker_down_at_start_logs_once_then_recovers(
    mosquitto_server: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.sinks.mqtt")
    await asyncio.to_thread(mosquitto_server.stop)
    sink = make_sink(mosquitto_server.url, tmp_path, layout="tag")
    await sink.start()  # must not raise
    try:
        await sink.write([reading(i) for i in range(3)])
        await wait_for(lambda: sink.stats().errors >= 2, 10, "two failed connection attempts")
        assert sink.stats().outbox_depth == 3
        await asyncio.to_thread(mosquitto_server.start)
        sub = await asyncio.to_thread(Subscriber, mosquitto_server, "twinedge/mine-a/#")
        try:
            await wait_for(lambda: sink.stats().outbox_depth == 0, 15, "outbox drained after recovery")
        finally:
            sub.close()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        recoveries = [r for r in caplog.records if "again after" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert len(recoveries) == 1
    finally:
        await sink.close()


async def test_broker_restart_mid_stream_delivers_everything_in_order(tmp_path: Path) -> None:
    """Fault matrix §5.5 #1: stop Mosquitto while writing, restart on the same port; every record
    arrives afterwards, in order, with its original timestamp (duplicates allowed: QoS 1).

    The broker persists sessions so the test's own persistent subscriber misses nothing while
    the broker is down; the sink under test has only its outbox."""
    n, per_batch = 200, 10
    with run_mosquitto(tmp_path / "broker", persistence=True) as server:
        sub = await asyncio.to_thread(
            Subscriber,
            server,
            "twinedge/mine-a/level-3/conveyor-01/seq",
            client_id="checker",
            persistent=True,
        )
        await wait_for(sub.subscribed.is_set, 5, "subscription")
        sink = make_sink(server.url, tmp_path, layout="tag")
        await sink.start()
        try:
            await wait_for(lambda: sink.stats().connected, 5, "sink connected")
            for b in range(n // per_batch):
                await sink.write([reading(i) for i in range(b * per_batch, (b + 1) * per_batch)])
                if b == 5:
                    await asyncio.to_thread(server.stop)
                    assert sub.snapshot(), "some records were delivered before the outage"
                if b == 15:
                    await asyncio.to_thread(server.start)
                await asyncio.sleep(0.05)  # pacing of the producer, not a wait for a result
            await wait_for(lambda: sink.stats().outbox_depth == 0, 20, "outbox drained")
            await wait_for(
                lambda: len({p["value"] for p in sub.payloads(sub._topic)}) == n, 10, "all records"
            )
        finally:
            await sink.close()
            sub.close()
    received = sub.payloads("twinedge/mine-a/level-3/conveyor-01/seq")
    first_seen: list[float] = []
    for p in received:
        if p["value"] not in first_seen:
            first_seen.append(p["value"])
    assert first_seen == [float(i) for i in range(n)]
    for p in received:
        ts = BASE_TS + timedelta(milliseconds=int(p["value"]))
        assert p["ts"] == ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    assert sink.stats().dropped == 0
