"""The thin real path through every layer: plant -> OPC UA and Modbus -> gateway -> MQTT, InfluxDB, REST.

The plant is served in-process but scanned by the test, so the values the gateway must deliver are
known exactly: every tag of both conveyors, over both protocols, must arrive at a real mosquitto
subscriber, in a real VictoriaMetrics (through influxdb-client's v2 write API), and on the REST API.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.plant import Plant, write_catalogue
from devices.process_image import ProcessImage
from gateway.config import GatewayConfig
from gateway.runtime import build_gateway, run_gateway
from tests.fixtures.plant import small_plant_config
from tests.fixtures.servers import MosquittoServer, VictoriaMetricsServer, free_port

TAGS = ("belt_speed", "motor_current", "motor_load", "bearing_temp", "belt_load", "slip", "motor_health",
        "item_count", "running", "speed_setpoint", "arrival_rate")
ASSETS = ("conveyor-01", "conveyor-02")
SOURCES = ("plc-1-opcua", "plc-1-modbus")
DEADLINE_S = 30.0


@dataclass
class Subscriber:
    """Collects every JSON message under a topic filter on a real broker."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.payload:
            self.messages.append((message.topic, json.loads(message.payload)))


@pytest.fixture
async def subscriber(mosquitto_server: MosquittoServer) -> AsyncIterator[Subscriber]:
    collected = Subscriber()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="e2e-subscriber")
    client.on_message = collected.on_message
    subscribed = asyncio.Event()
    loop = asyncio.get_running_loop()
    client.on_subscribe = lambda *_args: loop.call_soon_threadsafe(subscribed.set)
    client.connect(mosquitto_server.host, mosquitto_server.port)
    client.subscribe("e2e/#", qos=1)
    client.loop_start()
    await asyncio.wait_for(subscribed.wait(), 10)
    yield collected
    client.loop_stop()
    client.disconnect()


def _expected(image: ProcessImage, asset: str, tag: str) -> float:
    return image.lookup(asset, tag)[0]


def _close(actual: object, expected: float) -> bool:
    if isinstance(actual, bool):
        return float(actual) == expected
    assert isinstance(actual, int | float), actual
    # Both protocols carry float32: compare at float32 precision.
    return math.isclose(float(actual), expected, rel_tol=1e-6, abs_tol=1e-6)


def _complete(messages: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The latest values per (source, asset) once every tag arrived."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for _topic, payload in messages:
        if "values" in payload:
            seen.setdefault((payload["device"], payload["asset"]), {}).update(payload["values"])
    return seen


async def _until(predicate: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not await predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_thin_path_end_to_end(
    tmp_path: Path, mosquitto_server: MosquittoServer, victoria_metrics_server: VictoriaMetricsServer,
    subscriber: Subscriber,
) -> None:
    plant = Plant(small_plant_config(tmp_path / "plant"), announce=lambda _line: None)
    api_port = free_port()
    gateway_config = GatewayConfig.model_validate({
        "gateway": {"id": "gw-e2e", "data_dir": str(tmp_path / "gateway"),
                    "catalogue": str(tmp_path / "plant" / "catalogue.json")},
        "sources": [
            {"name": "plc-1-opcua", "protocol": "opcua", "plc": "plc-1", "interval_ms": 200},
            {"name": "plc-1-modbus", "protocol": "modbus", "plc": "plc-1", "interval_ms": 200},
        ],
        "sinks": {
            "mqtt": {"url": mosquitto_server.url, "topic_prefix": "e2e"},
            "influx": {"enabled": True, "api": "v2", "url": victoria_metrics_server.url, "token": "t",
                       "flush_interval_ms": 100},
        },
        "api": {"port": api_port},
    })
    async with plant.serving():
        plc = plant.plcs[0].plc
        for _ in range(50):  # five seconds of plant time: belts up to speed, items on them
            plc.scan()
        image = plc.image
        assert image is not None
        gateway = build_gateway(gateway_config)
        stop = asyncio.Event()
        runner = asyncio.create_task(run_gateway(gateway, stop, announce=False))
        try:
            async def mqtt_complete() -> bool:
                seen = _complete(subscriber.messages)
                return all(len(seen.get((s, a), {})) == len(TAGS) for s in SOURCES for a in ASSETS)

            await _until(mqtt_complete, "every tag of both conveyors over both protocols on MQTT")
            seen = _complete(subscriber.messages)
            for source in SOURCES:
                for asset in ASSETS:
                    for tag in TAGS:
                        sample = seen[(source, asset)][tag]
                        assert sample["quality"] == "Good", (source, asset, tag, sample)
                        assert _close(sample["value"], _expected(image, asset, tag)), (source, asset, tag, sample)
            # OPC UA carries the plant's own source timestamp of the scan.
            opcua_ts = datetime.fromisoformat(seen[("plc-1-opcua", "conveyor-01")]["belt_speed"]["source_ts"])
            assert opcua_ts == image.timestamp
            topics = {topic for topic, _ in subscriber.messages}
            assert "e2e/factory/line-1/conveyor-01" in topics

            async def in_database() -> bool:
                series = await asyncio.to_thread(
                    victoria_metrics_server.export, '{__name__="telemetry_value",asset="conveyor-01"}')
                return {s["metric"].get("tag") for s in series} >= set(TAGS)

            await _until(in_database, "conveyor-01 series in VictoriaMetrics")
            series = await asyncio.to_thread(
                victoria_metrics_server.export, '{__name__="telemetry_value",asset="conveyor-01",tag="belt_speed"}')
            assert series, "belt_speed of conveyor-01 reached the database"
            for one in series:
                assert all(_close(v, _expected(image, "conveyor-01", "belt_speed")) for v in one["values"])

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
                response = await http.get("/api/v1/devices/conveyor-01")
                assert response.status_code == 200
                body = response.json()
                assert (body["type"], body["plc"], body["site"]) == ("conveyor", "plc-1", "factory")
                assert set(body["values"]) == set(TAGS)
                for tag in TAGS:
                    value = body["values"][tag]
                    assert value["quality"] == "Good"
                    assert _close(value["value"], _expected(image, "conveyor-01", tag))
                assert body["values"]["belt_speed"]["unit"] == "MTS"
                missing = await http.get("/api/v1/devices/no-such-device")
                assert missing.status_code == 404
                assert missing.headers["content-type"].startswith("application/problem+json")
                health = (await http.get("/api/v1/health")).json()
                assert health["status"] == "ok"
                metrics = (await http.get("/metrics")).text
                assert 'twinedge_source_connected{source="plc-1-modbus"} 1.0' in metrics
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)


@pytest.mark.parametrize("repeat_bad", [False, True])
async def test_unreachable_plc_bad_state_is_published_once_by_default(
    tmp_path: Path, mosquitto_server: MosquittoServer, subscriber: Subscriber, repeat_bad: bool,
) -> None:
    """A PLC nobody answers for: every poll yields Bad readings, but MQTT gets the Bad state of each
    asset once (repeat_bad: false, the default) or at every poll (repeat_bad: true); REST shows it."""
    config = small_plant_config(tmp_path / "plant")
    write_catalogue(config)  # the plant is never started: its ports refuse connections
    api_port = free_port()
    gateway_config = GatewayConfig.model_validate({
        "gateway": {"id": "gw-bad", "data_dir": str(tmp_path / "gateway"),
                    "catalogue": str(tmp_path / "plant" / "catalogue.json")},
        "sources": [{"name": "plc-1-modbus", "protocol": "modbus", "plc": "plc-1", "interval_ms": 100,
                     "reconnect_min_s": 0.05, "reconnect_max_s": 0.1}],
        "processing": {"repeat_bad": repeat_bad},
        "sinks": {"mqtt": {"url": mosquitto_server.url, "topic_prefix": "e2e"}},
        "api": {"port": api_port},
    })
    gateway = build_gateway(gateway_config)
    stop = asyncio.Event()
    runner = asyncio.create_task(run_gateway(gateway, stop, announce=False))
    try:
        async def polled_ten_times() -> bool:
            return sum(stats.reads for stats in gateway.poller.stats().values()) >= 10

        await _until(polled_ten_times, "ten polls of the unreachable PLC")
        async def every_asset_bad() -> bool:
            assets = {payload["asset"] for _topic, payload in subscriber.messages if "values" in payload}
            return assets >= set(ASSETS)

        await _until(every_asset_bad, "the Bad state of both conveyors on MQTT")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
            body = (await http.get("/api/v1/devices/conveyor-01")).json()
        assert {v["quality"] for v in body["values"].values()} == {"Bad"}
        polls = sum(stats.reads for stats in gateway.poller.stats().values())
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)
    per_asset = {a: [p for _t, p in subscriber.messages if p.get("asset") == a] for a in ASSETS}
    for asset, payloads in per_asset.items():
        assert all(v["quality"] == "Bad" and v["value"] is None for p in payloads for v in p["values"].values())
        if repeat_bad:
            assert len(payloads) >= polls - 2, (asset, len(payloads), polls)
        else:
            assert len(payloads) == 1, (asset, len(payloads), polls)
