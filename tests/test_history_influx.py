"""History from InfluxDB 1.x (InfluxQL) when the Influx sink is on with the v1 API, through the real app
against a real influxd; the local ring when it is not configured or the query fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from gateway.api.app import ApiParts, create_app
from gateway.api.state import Sample
from gateway.history import APP_STATE_KEY, InfluxHistory, build_query, duration_literal, history_reader
from gateway.readings import Reading
from gateway.sinks.influx import InfluxSink, InfluxSinkConfig
from tests.fixtures.servers import InfluxDB1Server, free_port
from tests.test_api_routes import T0, Api, start_api

BAD = 0x80310000  # BadNoCommunication
URL = "/api/v1/assets/conveyor-01/history"


def belt(seconds: float, value: float | None, quality: int = 0) -> Reading:
    ts = T0 + timedelta(seconds=seconds)
    return Reading("plc-shop", "conveyor-01", "belt_speed", value, quality, ts, ts, "factory", "shop", "MTS")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    built, _ = await start_api(tmp_path)
    yield built
    await built.client.aclose()
    await built.services.close()


def ring(api: Api) -> list[Sample]:
    return api.state.history.query("conveyor-01", "belt_speed")


async def client_for(api: Api, reader: InfluxHistory | None) -> httpx.AsyncClient:
    """The real app over the same state, with the reader placed where the runtime puts it."""
    app = create_app(api.state, None, ApiParts(api.services, api.hub, api.snapshots))
    if reader is not None:
        setattr(app.state, APP_STATE_KEY, reader)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge",
                             headers=api.auth("viewer"))


async def write_through_sink(server: InfluxDB1Server, tmp_path: Path, readings: list[Reading]) -> None:
    sink = InfluxSink(InfluxSinkConfig(enabled=True, api="v1", url=server.url, database=server.database,
                                       flush_interval_ms=10), "gw-test", tmp_path / "sink")
    await sink.start()
    try:
        await sink.write(readings)
        for _ in range(200):
            if sink.stats().published == len(readings):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the sink did not write the readings")
    finally:
        await sink.close()


async def test_history_from_influxdb_1x(api: Api, influxdb1_server: InfluxDB1Server, tmp_path: Path) -> None:
    # 30 Good samples 1 s apart (value = second), one Bad sample in between, another tag, another asset.
    written = [belt(s, float(s)) for s in range(30)]
    written.append(belt(10.5, None, BAD))
    written.append(Reading("plc-shop", "conveyor-01", "speed_setpoint", 5.0, 0, T0, T0, "factory", "shop"))
    written.append(Reading("plc-shop", "conveyor-02", "belt_speed", 9.0, 0, T0, T0, "factory", "shop"))
    await write_through_sink(influxdb1_server, tmp_path, written)
    # The ring holds one different sample: proof of which store answered.
    api.state.history.add([belt(100, 42.0)])
    config = InfluxSinkConfig(enabled=True, api="v1", url=influxdb1_server.url, database=influxdb1_server.database)
    reader = history_reader(config)
    assert reader is not None
    client = await client_for(api, reader)
    try:
        start, end = T0.isoformat(), (T0 + timedelta(seconds=29)).isoformat()
        raw = (await client.get(URL, params={"tag": "belt_speed", "start": start, "end": end})).json()
        assert raw["store"] == "influx"
        assert [p["value"] for p in raw["points"]] == [float(s) for s in range(30)]
        assert raw["points"][0]["ts"].startswith("2026-01-01T06:00:00")
        assert raw["points"][-1]["ts"].startswith("2026-01-01T06:00:29")

        ranged = (await client.get(URL, params={"tag": "belt_speed", "start": (T0 + timedelta(seconds=5)).isoformat(),
                                                "end": (T0 + timedelta(seconds=7)).isoformat()})).json()
        assert [p["value"] for p in ranged["points"]] == [5.0, 6.0, 7.0]

        stepped = (await client.get(URL, params={"tag": "belt_speed", "start": start, "end": end,
                                                 "step": 10})).json()
        assert stepped["store"] == "influx"
        assert stepped["step_s"] == 10
        # Buckets of 10 s aligned on the epoch: the Bad sample at 10.5 s is not counted.
        assert [(p["value"], p["count"]) for p in stepped["points"]] == [(4.5, 10), (14.5, 10), (24.5, 10)]
        assert stepped["points"][1]["ts"].startswith("2026-01-01T06:00:10")

        # Without a start, the stepped query is bounded to MAX_POINTS steps before end: still all of it.
        open_start = (await client.get(URL, params={"tag": "belt_speed", "end": end, "step": 10})).json()
        assert [p["count"] for p in open_start["points"]] == [10, 10, 10]

        other = (await client.get(URL, params={"tag": "speed_setpoint"})).json()
        assert [p["value"] for p in other["points"]] == [5.0]
        empty = (await client.get(URL, params={"tag": "belt_speed", "end": (T0 - timedelta(days=1)).isoformat()}))
        assert empty.json()["points"] == []
        assert empty.json()["store"] == "influx"
        # Validation is the route's, before any query.
        assert (await client.get(URL, params={"tag": "no_such_tag"})).status_code == 422
    finally:
        await client.aclose()
        await reader.close()


async def test_falls_back_to_the_local_ring_when_influx_fails(api: Api) -> None:
    api.state.history.add([belt(1000, 1.0), belt(1001, 2.0)])
    # Nothing listens on this port: connection refused, the route answers from the ring.
    reader = InfluxHistory(InfluxSinkConfig(enabled=True, api="v1", url=f"http://127.0.0.1:{free_port()}"))
    client = await client_for(api, reader)
    try:
        body = (await client.get(URL, params={"tag": "belt_speed"})).json()
        assert body["store"] == "local"
        assert [p["value"] for p in body["points"]] == [s.value for s in ring(api)]
        assert [p["value"] for p in body["points"]][-2:] == [1.0, 2.0]
    finally:
        await client.aclose()
        await reader.close()


async def test_influxql_error_falls_back(api: Api, influxdb1_server: InfluxDB1Server) -> None:
    api.state.history.add([belt(1000, 1.0)])
    reader = InfluxHistory(InfluxSinkConfig(enabled=True, api="v1", url=influxdb1_server.url,
                                            database="no_such_database"))
    client = await client_for(api, reader)
    try:
        body = (await client.get(URL, params={"tag": "belt_speed"})).json()
        assert body["store"] == "local"
        assert [p["value"] for p in body["points"]] == [s.value for s in ring(api)]
        assert body["points"][-1]["value"] == 1.0
    finally:
        await client.aclose()
        await reader.close()


async def test_without_influx_history_is_local(api: Api) -> None:
    api.state.history.add([belt(1000, 3.0)])
    client = await client_for(api, None)
    try:
        body = (await client.get(URL, params={"tag": "belt_speed"})).json()
        assert body["store"] == "local"
        assert len(body["points"]) == len(ring(api))
        assert body["points"][-1] == {"ts": "2026-01-01T06:16:40Z", "value": 3.0, "count": 1}
    finally:
        await client.aclose()


def test_reader_only_for_the_v1_api() -> None:
    assert history_reader(InfluxSinkConfig(enabled=False, api="v1")) is None
    assert history_reader(InfluxSinkConfig(enabled=True, api="v2")) is None  # Flux / VictoriaMetrics: local


def test_query_text_escapes_and_bounds() -> None:
    q = build_query("a'b", "t\\x", T0, None, None, 10)
    assert "\"asset\" = 'a\\'b'" in q
    assert "\"tag\" = 't\\\\x'" in q
    assert "\"quality\" = 'Good'" in q
    assert "ORDER BY time DESC LIMIT 10" in q
    bounded = build_query("a", "t", None, T0, 2.0, 100)
    assert f"time >= {int((T0 - timedelta(seconds=200)).timestamp()) * 10**9}" in bounded
    assert "GROUP BY time(2s) fill(none)" in bounded
    assert [duration_literal(s) for s in (1, 0.25, 0.0000015, 86400)] == ["1s", "250ms", "2u", "86400s"]

