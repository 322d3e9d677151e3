"""History from VictoriaMetrics (``history: victoriametrics``): samples written through the real Influx sink
(``api: v2``, ``/api/v2/write``) and read back through the real app from a real victoria-metrics, giving what the
InfluxQL reader gives; string tags, an unreachable server and InfluxQL asked of VictoriaMetrics fall back to the
local ring."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from gateway.history import HistoryUnavailable, InfluxHistory, VictoriaMetricsHistory, history_reader
from gateway.history.victoriametrics import Sample, bucket, label_literal, selector
from gateway.readings import Reading
from gateway.sinks.influx import InfluxSinkConfig
from tests.fixtures.servers import VictoriaMetricsServer
from tests.history_support import (
    URL,
    WRITTEN,
    assert_history_of_written,
    belt,
    edge_api,
    history_client,
    ring,
    write_through_sink,
)
from tests.test_api_routes import T0, Api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with edge_api(tmp_path) as built:
        yield built


def vm_config(server: VictoriaMetricsServer) -> InfluxSinkConfig:
    return InfluxSinkConfig(enabled=True, api="v2", url=server.url, token="t", history="victoriametrics")


async def write(server: VictoriaMetricsServer, tmp_path: Path, readings: list[Reading]) -> None:
    """Through the real sink, then flushed so that searches see the samples at once."""
    await write_through_sink(vm_config(server), tmp_path, readings)
    async with httpx.AsyncClient(base_url=server.url) as http:
        (await http.get("/internal/force_flush")).raise_for_status()


def vm_reader(server: VictoriaMetricsServer) -> VictoriaMetricsHistory:
    reader = history_reader(vm_config(server))
    assert isinstance(reader, VictoriaMetricsHistory)
    return reader


async def test_history_from_victoriametrics(api: Api, victoria_metrics_server: VictoriaMetricsServer,
                                            tmp_path: Path) -> None:
    await write(victoria_metrics_server, tmp_path, WRITTEN)
    api.state.history.add([belt(100, 42.0)])  # the ring holds something else: proof of which store answered
    reader = vm_reader(victoria_metrics_server)
    async with history_client(api, reader) as client:
        await assert_history_of_written(client, reader)


async def test_newest_samples_walk_back_through_uneven_density(victoria_metrics_server: VictoriaMetricsServer,
                                                               tmp_path: Path) -> None:
    # Dense early, sparse late: the first export window, sized from the mean density, finds too few.
    seconds = [*range(20), 100, 200, 300]
    await write(victoria_metrics_server, tmp_path, [belt(s, float(s)) for s in seconds])
    reader = vm_reader(victoria_metrics_server)
    try:
        for limit in (1, 5, 22, 23, 100):
            rows = await reader.query("conveyor-01", "belt_speed", None, None, None, limit)
            assert [r.value for r in rows] == [float(s) for s in seconds[-limit:]], limit
        ranged = await reader.query("conveyor-01", "belt_speed", T0 + timedelta(seconds=10),
                                    T0 + timedelta(seconds=250), None, 3)
        assert [r.value for r in ranged] == [19.0, 100.0, 200.0]
        stepped = await reader.query("conveyor-01", "belt_speed", None, T0 + timedelta(seconds=300), 100, 3)
        assert [(r.ts, r.value, r.count) for r in stepped] == [
            (T0 + timedelta(seconds=100), 100.0, 1), (T0 + timedelta(seconds=200), 200.0, 1),
            (T0 + timedelta(seconds=300), 300.0, 1)]
        # No more samples than limit: every non-empty bucket, however sparse.
        fine = await reader.query("conveyor-01", "belt_speed", T0, None, 0.5, 30)
        assert [(r.ts, r.value) for r in fine] == [(T0 + timedelta(seconds=s), float(s)) for s in seconds]
    finally:
        await reader.close()


async def test_recent_buckets_match_the_raw_samples(victoria_metrics_server: VictoriaMetricsServer,
                                                    tmp_path: Path) -> None:
    """Near now query_range rewrites its newest points (-search.latencyOffset); the reader takes those buckets
    from raw samples, so every bucket holds exactly the samples written into it."""
    now = datetime.now(UTC).replace(microsecond=0)
    written = [(now - timedelta(seconds=150 - s), float(s)) for s in range(150)]
    readings = [Reading("plc-shop", "conveyor-01", "belt_speed", v, 0, ts, ts, "factory", "shop", "MTS")
                for ts, v in written]
    await write(victoria_metrics_server, tmp_path, readings)
    samples: list[Sample] = [(int(ts.timestamp() * 1000), v) for ts, v in written]
    reader = vm_reader(victoria_metrics_server)
    try:
        for step_s, limit in ((1, 100), (7, 100), (10, 10), (60, 100), (10, 1000)):
            rows = await reader.query("conveyor-01", "belt_speed", now - timedelta(seconds=150), None, step_s, limit)
            assert rows == bucket(samples, step_s * 1000)[-limit:], (step_s, limit)
        raw = await reader.query("conveyor-01", "belt_speed", None, None, None, 1000)
        assert [r.value for r in raw] == [v for _, v in written]
    finally:
        await reader.close()


async def test_string_tags_come_from_the_local_ring(api: Api, victoria_metrics_server: VictoriaMetricsServer,
                                                    tmp_path: Path) -> None:
    # VictoriaMetrics stores value_str as the number it parses to, else 0: the text is gone.
    material = [Reading("plc-shop", "lathe-01", "material", text, 0, T0 + timedelta(seconds=s),
                        T0 + timedelta(seconds=s), "factory", "shop") for s, text in ((60, "Wood"), (61, "42"))]
    await write(victoria_metrics_server, tmp_path, material)
    api.state.history.add(material)
    reader = vm_reader(victoria_metrics_server)
    with pytest.raises(HistoryUnavailable, match="strings"):
        await reader.query("lathe-01", "material", None, None, None, 10)
    async with history_client(api, reader) as client:
        for step in ({}, {"step": 10}):
            body = (await client.get("/api/v1/assets/lathe-01/history",
                                     params={"tag": "material", "start": T0.isoformat(), **step})).json()
            assert body["store"] == "local"
            assert body["points"][-1]["value"] == "42"


async def test_falls_back_when_victoriametrics_is_down(api: Api, victoria_metrics_server: VictoriaMetricsServer,
                                                       tmp_path: Path) -> None:
    await write(victoria_metrics_server, tmp_path, WRITTEN)
    await asyncio.to_thread(victoria_metrics_server.stop)
    api.state.history.add([belt(1000, 1.0)])
    async with history_client(api, vm_reader(victoria_metrics_server)) as client:
        for step in ({}, {"step": 10}):
            body = (await client.get(URL, params={"tag": "belt_speed", **step})).json()
            assert body["store"] == "local"
    assert ring(api)[-1].value == 1.0


async def test_influxql_asked_of_victoriametrics_falls_back(api: Api, victoria_metrics_server: VictoriaMetricsServer,
                                                            tmp_path: Path) -> None:
    """``history: auto`` with ``api: v2`` means InfluxQL; VictoriaMetrics answers every /query with a canned list
    of databases, which the reader refuses, so the ring answers."""
    await write(victoria_metrics_server, tmp_path, WRITTEN)
    reader = history_reader(vm_config(victoria_metrics_server).model_copy(update={"history": "auto"}))
    assert isinstance(reader, InfluxHistory)
    async with history_client(api, reader) as client:
        body = (await client.get(URL, params={"tag": "belt_speed"})).json()
    assert body["store"] == "local"


def test_selector_escapes_label_values() -> None:
    assert selector("telemetry_value", 'a"b\\c', "t\n") == (
        'telemetry_value{asset="a\\"b\\\\c",tag="t\\n",quality="Good"}')
    assert label_literal("straße") == '"straße"'
