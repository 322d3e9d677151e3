"""Reliability with the real broker and database (issue 6, conventions §5.5).

The plant runs in-process and is scanned by a task of the test (10 scans/s of plant time), so load
is steady. What the gateway read is known exactly: in-process gateways get a tap on the poller's
batches; the SIGKILLed subprocess gateway is checked against its outbox file. Every wait is a
condition with a deadline; nothing sleeps and hopes.

Outage length: the issue asks for 60 s. ``TWINEDGE_OUTAGE_S`` shortens it for a quick local run.
With 60 s, each outage test takes 70-100 s: paho and the Influx sink back off up to 30 s, so the
first retry after the restart may come up to 30 s later (their schedules are 1, 2, 4 ... 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devices.config import PlantConfig
from devices.modbus.exposer import ModbusExposer
from devices.opcua._ua import Server
from devices.opcua.exposer import OpcUaExposer
from devices.plant import Plant, write_catalogue
from gateway.catalogue import load_catalogue
from gateway.common.status import BAD_DEVICE_FAILURE, BAD_NO_COMMUNICATION, BAD_TIMEOUT, GOOD
from gateway.config import GatewayConfig
from gateway.encoders.uns_json import format_ts
from gateway.readings import Reading
from gateway.runtime import build_gateway, run_gateway
from gateway.sinks.base import outbox_path
from gateway.sinks.outbox_log import read_live_records
from gateway.sources import ModbusSource, ModbusSourceConfig, OpcUaSource, OpcUaSourceConfig
from tests.fixtures.plant import small_plant_config
from tests.fixtures.servers import MosquittoServer, VictoriaMetricsServer, run_mosquitto
from tests.test_mqtt_sink import Subscriber

OUTAGE_S = float(os.environ.get("TWINEDGE_OUTAGE_S", "60"))
RECOVERY_S = 120.0  # a deadline, not a wait: the 30 s backoff cap of both sinks plus the drain, on a loaded CI machine
PREFIX = "rel"
SCAN_S = 0.1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def until(check: Callable[[], bool], what: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within_s}s: {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def scanning(plant: Plant) -> AsyncIterator[None]:
    """Scan every PLC every SCAN_S of wall time, so values change under the gateway's feet."""

    async def scan() -> None:
        while True:
            for placed in plant.plcs:
                placed.plc.scan()
            await asyncio.sleep(SCAN_S)  # the load's pacing, not a wait for a result

    task = asyncio.create_task(scan())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def plant_config(tmp_path: Path) -> PlantConfig:
    config = small_plant_config(tmp_path / "plant", assets=[{"type": "conveyor", "id": "conveyor", "count": 4}])
    # Plant time starts now: VictoriaMetrics silently drops samples older than its retention (one
    # month by default), and the fixture's fixed start date would make every OPC UA point "old".
    plant = config.plant.model_copy(update={"start_time": datetime.now(UTC).replace(microsecond=0)})
    return config.model_copy(update={"plant": plant})


def gateway_doc(tmp_path: Path, mqtt_url: str, influx_url: str | None, outbox: str = "sqlite") -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-rel", "data_dir": str(tmp_path / "gateway"),
                    "catalogue": str(tmp_path / "plant" / "catalogue.json"), "outbox": outbox},
        "sources": [
            {"name": "plc-1-opcua", "protocol": "opcua", "plc": "plc-1", "interval_ms": 100},
            {"name": "plc-1-modbus", "protocol": "modbus", "plc": "plc-1", "interval_ms": 200},
        ],
        # Per-tag topics and no retain: per-topic order is checkable, and a resubscribe after the
        # broker restart gets no retained copies that would look like duplicates.
        "sinks": {
            "mqtt": {"url": mqtt_url, "topic_prefix": PREFIX, "layout": "tag", "retain": False},
            "influx": ({"enabled": True, "api": "v2", "url": influx_url, "token": "t", "flush_interval_ms": 100}
                       if influx_url else {"enabled": False}),
        },
        "api": {"enabled": False},
    }


def topic_of(r: Reading) -> str:
    return f"{PREFIX}/factory/line-1/{r.asset}/{r.tag}"


def samples_by_topic(messages: list[tuple[str, bytes, bool]]) -> dict[str, list[tuple[str, Any]]]:
    out: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for topic, payload, _ in messages:
        body = json.loads(payload) if payload else {}
        if "signal" in body:
            out[topic].append((body["ts"], body["value"]))
    return out


def first_seen(samples: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    seen: set[tuple[str, Any]] = set()
    ordered = []
    for s in samples:
        if s not in seen:
            seen.add(s)
            ordered.append(s)
    return ordered


@pytest.mark.parametrize("outage", ["broker", "database"])
async def test_outage_under_load_loses_nothing(
    outage: str, tmp_path: Path, victoria_metrics_server: VictoriaMetricsServer,
    record_property: Callable[[str, object], None],
) -> None:
    with run_mosquitto(tmp_path / "broker", persistence=True) as broker:
        sub = await asyncio.to_thread(Subscriber, broker, f"{PREFIX}/#", client_id="rel-checker", persistent=True)
        await until(sub.subscribed.is_set, "subscription", 10)
        plant = Plant(plant_config(tmp_path), announce=lambda _line: None)
        async with plant.serving(), scanning(plant):
            gateway = build_gateway(GatewayConfig.model_validate(
                gateway_doc(tmp_path, broker.url, victoria_metrics_server.url)))
            tapped: list[Reading] = []
            on_batch = gateway.poller._on_batch

            async def tap(batch: list[Reading]) -> None:
                tapped.extend(batch)
                await on_batch(batch)

            gateway.poller._on_batch = tap
            stop = asyncio.Event()
            runner = asyncio.create_task(run_gateway(gateway, stop, announce=False))
            try:
                await until(lambda: len(sub.snapshot()) > 200, "data flowing before the outage", 30)
                server: MosquittoServer | VictoriaMetricsServer = (
                    broker if outage == "broker" else victoria_metrics_server)
                await asyncio.to_thread(server.stop)
                during_from = len(tapped)
                await asyncio.sleep(OUTAGE_S)  # the outage itself: the load keeps running meanwhile
                during = len(tapped) - during_from
                await asyncio.to_thread(server.start)
                expected = list(tapped)
                assert during > 0
                assert all(r.quality == GOOD for r in expected)
                want: dict[str, list[tuple[str, Any]]] = defaultdict(list)
                for r in expected:
                    want[topic_of(r)].append((format_ts(r.source_ts), r.value))

                def mqtt_complete() -> bool:
                    got = samples_by_topic(sub.snapshot())
                    return all(set(v) <= set(got.get(t, ())) for t, v in want.items())

                await until(mqtt_complete, "every sample on MQTT after the restart", RECOVERY_S)
                got = samples_by_topic(sub.snapshot())
                for topic, samples in want.items():
                    # In order per topic (first delivery of each), with the PLC's timestamps.
                    assert first_seen(got[topic])[: len(first_seen(samples))] == first_seen(samples), topic
                duplicates = sum(len(v) - len(set(v)) for v in got.values())

                want_points: dict[tuple[str, str, str], set[int]] = defaultdict(set)
                for r in expected:
                    # Floor to ms, as the database stores the nanosecond line-protocol time.
                    want_points[(r.device, r.asset, r.tag)].add((r.source_ts - EPOCH) // timedelta(milliseconds=1))
                points: dict[tuple[str, str, str], list[int]] = {}

                def db_complete() -> bool:
                    points.clear()
                    for s in victoria_metrics_server.export('{__name__="telemetry_value"}'):
                        m: Any = s["metric"]
                        key = (m["device"], m["asset"], m["tag"])
                        points[key] = points.get(key, []) + list(s["timestamps"])  # type: ignore[call-overload]
                    return all(v <= set(points.get(k, ())) for k, v in want_points.items())

                deadline = time.monotonic() + RECOVERY_S
                while not await asyncio.to_thread(db_complete):
                    if time.monotonic() > deadline:
                        missing = {k: sorted(v - set(points.get(k, ())))[:3] for k, v in want_points.items()
                                   if not v <= set(points.get(k, ()))}
                        pytest.fail(f"not every point reached VictoriaMetrics after the restart: {missing}")
                    await asyncio.sleep(0.5)
                db_duplicates = sum(len(v) - len(set(v)) for v in points.values())
                record_property("samples", len(expected))
                record_property("samples_during_outage", during)
                record_property("mqtt_duplicates", duplicates)
                record_property("db_duplicates", db_duplicates)
                print(f"{outage} outage {OUTAGE_S:.0f}s: {len(expected)} samples ({during} during the outage), "
                      f"{duplicates} MQTT duplicates, {db_duplicates} database duplicates")
                assert all(s.dropped == 0 for s in (sink.stats() for sink in gateway.sinks))
            finally:
                stop.set()
                await asyncio.wait_for(runner, 60)
                sub.close()


def stored_records(path: Path, backend: str) -> list[tuple[str, bytes]]:
    """(topic, payload) of every record an outbox holds, read from another process than its writer's."""
    if backend == "log":
        return [(r.key, r.payload) for r in read_live_records(path)]
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        return [(k, bytes(p)) for k, p in db.execute("SELECT key, payload FROM records ORDER BY id")]


@pytest.mark.parametrize("backend", ["sqlite", "log"])
async def test_sigkill_gateway_loses_nothing_from_its_outbox(tmp_path: Path, backend: str) -> None:
    """The broker goes away so the outbox fills, the gateway is SIGKILLed, both come back: every
    record in the outbox at the kill (what the gateway had read and not yet delivered) arrives."""
    with run_mosquitto(tmp_path / "broker", persistence=True) as broker:
        sub = await asyncio.to_thread(Subscriber, broker, f"{PREFIX}/#", client_id="kill-checker", persistent=True)
        await until(sub.subscribed.is_set, "subscription", 10)
        plant = Plant(plant_config(tmp_path), announce=lambda _line: None)
        config_file = tmp_path / "gateway.json"
        config_file.write_text(json.dumps(gateway_doc(tmp_path, broker.url, None, backend)))
        outbox = outbox_path(tmp_path / "gateway", "mqtt", backend)  # type: ignore[arg-type]
        argv = [sys.executable, "-m", "gateway", "--config", str(config_file)]
        log = (tmp_path / "gateway.log").open("ab")
        procs: list[subprocess.Popen[bytes]] = []

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=Path.cwd())

        try:
            async with plant.serving(), scanning(plant):
                procs.append(await asyncio.to_thread(spawn))
                await until(lambda: len(sub.snapshot()) > 200, "data flowing from the subprocess gateway", 30)
                await asyncio.to_thread(broker.stop)

                def depth() -> int:
                    return len(stored_records(outbox, backend)) if outbox.exists() else 0

                deadline = time.monotonic() + 20
                while await asyncio.to_thread(depth) < 200:
                    if time.monotonic() > deadline:
                        pytest.fail("the outbox did not fill while the broker was down")
                    await asyncio.sleep(0.1)
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(10)
                pending = stored_records(outbox, backend)
                assert len(pending) >= 200
                await asyncio.to_thread(broker.start)
                procs.append(await asyncio.to_thread(spawn))

                def all_arrived() -> bool:
                    got = {(t, p) for t, p, _ in sub.snapshot()}
                    return all(rec in got for rec in pending)

                await until(all_arrived, "every record of the killed gateway's outbox", RECOVERY_S)
                # In order per topic, as the outbox holds them.
                got = sub.snapshot()
                for topic in {k for k, _ in pending}:
                    order = [p for t, p, _ in got if t == topic]
                    mine = [p for k, p in pending if k == topic]
                    positions = [order.index(p) for p in mine]
                    assert positions == sorted(positions), topic
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
            log.close()
            sub.close()


class RenumberedExposer(OpcUaExposer):
    """The same PLC after a restart whose server registered another namespace first: the
    instance namespace index, hence every NodeId, differs (a PLC after a firmware change)."""

    async def _build(self, server: Server) -> None:
        await server.register_namespace("urn:someone:else:first")
        await super()._build(server)


async def test_plc_restart_with_new_node_ids_followed_within_10s(tmp_path: Path) -> None:
    config = plant_config(tmp_path)
    plant = Plant(config, announce=lambda _line: None)
    placed = plant.plcs[0]
    write_catalogue(config)
    catalogue = load_catalogue(tmp_path / "plant" / "catalogue.json")
    source_config = OpcUaSourceConfig.model_validate(
        {"name": "plc-1-opcua", "plc": "plc-1", "interval_ms": 100, "reconnect_min_s": 0.1, "reconnect_max_s": 2})
    first = OpcUaExposer(placed.plc, placed.site, placed.area, placed.config, config.plant)
    await first.start()
    old_ns = first.nodes.namespace_index
    async with scanning(plant), OpcUaSource(source_config, catalogue) as source:
        try:
            assert all(r.quality == GOOD for r in await source.read())
        finally:
            await first.close()
        second = RenumberedExposer(placed.plc, placed.site, placed.area, placed.config, config.plant)
        await second.start()
        restarted = time.monotonic()
        try:
            assert second.nodes.namespace_index != old_ns  # the test really renumbers
            good: list[Reading] = []

            async def follows() -> bool:
                good.extend(r for r in await source.read() if r.quality == GOOD and r.tag == "belt_speed")
                return len({r.asset for r in good}) == 4

            deadline = restarted + 10.0
            while not await follows():
                if time.monotonic() > deadline:
                    pytest.fail("the gateway did not follow the restarted PLC within 10 s")
                await asyncio.sleep(0.1)  # the Poller's pace
            print(f"followed the renumbered PLC after {time.monotonic() - restarted:.2f}s")
        finally:
            await second.close()


@pytest.mark.parametrize(
    ("fault", "qualities"),
    [
        ({"no_response": True}, {BAD_TIMEOUT, BAD_NO_COMMUNICATION}),
        ({"delay_ms": 1000}, {BAD_TIMEOUT, BAD_NO_COMMUNICATION}),
        ({"exception_code": 4}, {BAD_DEVICE_FAILURE}),
        ({"exception_code": 6}, {BAD_TIMEOUT}),
        ({"drop_connections": True}, {BAD_NO_COMMUNICATION, BAD_TIMEOUT}),
    ],
    ids=["timeout", "slow", "exception-04", "exception-06", "drop-connections"],
)
@pytest.mark.parametrize("pipeline", [1, 8], ids=["pymodbus", "pipelined"])
async def test_modbus_faults_give_bad_quality_and_recover(
    fault: dict[str, Any], qualities: set[int], pipeline: int, tmp_path: Path
) -> None:
    config = plant_config(tmp_path)
    plant = Plant(config, announce=lambda _line: None)
    placed = plant.plcs[0]
    write_catalogue(config)
    catalogue = load_catalogue(tmp_path / "plant" / "catalogue.json")
    source_config = ModbusSourceConfig.model_validate(
        {"name": "plc-1-modbus", "plc": "plc-1", "timeout_s": 0.3, "retries": 0, "pipeline": pipeline,
         "reconnect_min_s": 0.05, "reconnect_max_s": 0.5})
    exposer = ModbusExposer(placed.plc, placed.site.id, placed.area.id, placed.config, config.plant)
    async with exposer, scanning(plant), ModbusSource(source_config, catalogue) as source:
        seen: list[set[int]] = []

        async def read_until(check: Callable[[set[int]], bool], what: str) -> None:
            deadline = time.monotonic() + 10
            while True:
                got = {r.quality for r in await source.read() if r.tag == "belt_speed"}
                seen.append(got)
                if check(got):
                    return
                if time.monotonic() > deadline:
                    pytest.fail(f"not within 10s: {what}; qualities seen {seen[-5:]}")
                await asyncio.sleep(0.1)  # the Poller's pace

        await read_until(lambda q: q == {GOOD}, "good before the fault")
        exposer.faults.inject(duration_s=2.0, **fault)
        await read_until(lambda q: bool(q) and q <= qualities, f"bad quality {sorted(map(hex, qualities))}")
        await read_until(lambda q: q == {GOOD}, "recovery by itself after the fault ends")
