"""Helpers of the history tests: readings of conveyor-01, the real edge app with a history reader placed where the
runtime puts it, writes through the real Influx sink, and the results every database-backed store must give."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.app import ApiParts, create_app
from gateway.api.state import Sample
from gateway.history import APP_STATE_KEY, HistoryReader
from gateway.readings import Reading, TagValue
from gateway.sinks.influx import InfluxSink, InfluxSinkConfig
from tests.test_api_routes import T0, Api, start_api

BAD = 0x80310000  # BadNoCommunication
URL = "/api/v1/assets/conveyor-01/history"


def belt(seconds: float, value: TagValue | None, quality: int = 0) -> Reading:
    ts = T0 + timedelta(seconds=seconds)
    return Reading("plc-shop", "conveyor-01", "belt_speed", value, quality, ts, ts, "factory", "shop", "MTS")


# 30 Good samples 1 s apart (value = second), one Bad sample in between, another tag, another asset.
WRITTEN = [belt(s, float(s)) for s in range(30)] + [
    belt(10.5, None, BAD),
    Reading("plc-shop", "conveyor-01", "speed_setpoint", 5.0, 0, T0, T0, "factory", "shop"),
    Reading("plc-shop", "conveyor-02", "belt_speed", 9.0, 0, T0, T0, "factory", "shop"),
]


@contextlib.asynccontextmanager
async def edge_api(tmp_path: Path) -> AsyncIterator[Api]:
    built, _ = await start_api(tmp_path)
    try:
        yield built
    finally:
        await built.client.aclose()
        await built.services.close()


def ring(api: Api) -> list[Sample]:
    return api.state.history.query("conveyor-01", "belt_speed")


@contextlib.asynccontextmanager
async def history_client(api: Api, reader: HistoryReader | None) -> AsyncIterator[httpx.AsyncClient]:
    """The real app over the same state, with ``reader`` where the runtime puts it; closes both."""
    app = create_app(api.state, None, ApiParts(api.services, api.hub, api.snapshots))
    if reader is not None:
        setattr(app.state, APP_STATE_KEY, reader)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge", headers=api.auth("viewer"))
    try:
        yield client
    finally:
        await client.aclose()
        if reader is not None:
            await reader.close()


async def write_through_sink(config: InfluxSinkConfig, tmp_path: Path, readings: list[Reading]) -> None:
    sink = InfluxSink(config.model_copy(update={"flush_interval_ms": 10}), "gw-test", tmp_path / "sink")
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


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


async def assert_history_of_written(client: httpx.AsyncClient, reader: HistoryReader) -> None:
    """What a database store answers for WRITTEN: the same for InfluxQL and VictoriaMetrics."""
    async def get(**params: str | float) -> list[dict[str, Any]]:
        response = await client.get(URL, params={"tag": "belt_speed", **params})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["store"] == reader.store
        assert body["step_s"] == params.get("step")
        points: list[dict[str, Any]] = body["points"]
        return points

    def values(points: list[dict[str, Any]]) -> list[Any]:
        return [p["value"] for p in points]

    def buckets(points: list[dict[str, Any]]) -> list[tuple[str, float, int]]:
        return [(p["ts"][11:19], p["value"], p["count"]) for p in points]

    raw = await get(start=at(0), end=at(29))
    assert values(raw) == [float(s) for s in range(30)]
    assert raw[0]["ts"].startswith("2026-01-01T06:00:00")
    assert raw[-1]["ts"].startswith("2026-01-01T06:00:29")
    # Both ends are inclusive.
    assert values(await get(start=at(5), end=at(7))) == [5.0, 6.0, 7.0]
    assert values(await get(start=at(5.001), end=at(6.999))) == [6.0]

    # Buckets of 10 s aligned on the epoch: the Bad sample at 10.5 s is not counted.
    stepped = await get(start=at(0), end=at(29), step=10)
    assert buckets(stepped) == [("06:00:00", 4.5, 10), ("06:00:10", 14.5, 10), ("06:00:20", 24.5, 10)]
    # A range cutting buckets: they keep their aligned start and count only the samples inside the range.
    cut = await get(start=at(5), end=at(24.5), step=10)
    assert buckets(cut) == [("06:00:00", 7.0, 5), ("06:00:10", 14.5, 10), ("06:00:20", 22.0, 5)]
    # Without a start, the stepped query is bounded to MAX_POINTS steps before end: still all of it.
    assert [p["count"] for p in await get(end=at(29), step=10)] == [10, 10, 10]

    assert [r.value for r in await reader.query("conveyor-01", "speed_setpoint", None, None, None, 100)] == [5.0]
    assert await get(end=(T0 - timedelta(days=1)).isoformat()) == []
    # limit: the newest samples, the newest buckets.
    newest = await reader.query("conveyor-01", "belt_speed", None, None, None, 5)
    assert [r.value for r in newest] == [25.0, 26.0, 27.0, 28.0, 29.0]
    two = await reader.query("conveyor-01", "belt_speed", None, T0 + timedelta(seconds=29), 10, 2)
    assert [(r.value, r.count) for r in two] == [(14.5, 10), (24.5, 10)]
    cut_of_three = await reader.query("conveyor-01", "belt_speed", T0 + timedelta(seconds=5),
                                      T0 + timedelta(seconds=24.5), 10, 3)
    assert [(r.ts, r.value, r.count) for r in cut_of_three] == [
        (T0, 7.0, 5), (T0 + timedelta(seconds=10), 14.5, 10), (T0 + timedelta(seconds=20), 22.0, 5)]
    # Validation is the route's, before any query.
    assert (await client.get(URL, params={"tag": "no_such_tag"})).status_code == 422
