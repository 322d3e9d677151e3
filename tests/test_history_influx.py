"""History with InfluxQL: InfluxDB 1.x (``api: v1``), and the v2 API's 1.x-compatible ``/query`` with a token,
through the real app against a real influxd; the local ring when nothing is configured or the query fails; the
``history`` key's choice of reader and its validation."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from gateway.common.configfile import ConfigError
from gateway.config import load_gateway_config
from gateway.history import InfluxHistory, VictoriaMetricsHistory, history_reader
from gateway.history.influxql import build_query, duration_literal
from gateway.sinks.influx import InfluxSinkConfig
from tests.fixtures.servers import InfluxDB1Server, free_port
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


async def test_history_from_influxdb_1x(api: Api, influxdb1_server: InfluxDB1Server, tmp_path: Path) -> None:
    v1 = InfluxSinkConfig(enabled=True, api="v1", url=influxdb1_server.url, database=influxdb1_server.database)
    await write_and_check(api, v1, tmp_path)


async def test_history_with_the_v2_api_reads_influxql_with_a_token(api: Api, influxdb1_server: InfluxDB1Server,
                                                                   tmp_path: Path) -> None:
    """``api: v2`` reads ``/query`` with ``db=<bucket>`` and the token. influxd 1.6.7 runs with auth off and ignores
    the header (1.8+ takes ``Token user:password``; 2.x/3.x a token): this proves the query, not the auth, which
    test_influxql_request_carries_the_sinks_credentials checks."""
    v1 = InfluxSinkConfig(enabled=True, api="v1", url=influxdb1_server.url, database=influxdb1_server.database)
    v2 = InfluxSinkConfig(enabled=True, api="v2", url=influxdb1_server.url, bucket=influxdb1_server.database,
                          token="user:password", database="not_this_one")
    await write_and_check(api, v2, tmp_path, writer=v1)


async def write_and_check(api: Api, config: InfluxSinkConfig, tmp_path: Path,
                          writer: InfluxSinkConfig | None = None) -> None:
    await write_through_sink(writer or config, tmp_path, WRITTEN)
    # The ring holds one different sample: proof of which store answered.
    api.state.history.add([belt(100, 42.0)])
    reader = history_reader(config)
    assert isinstance(reader, InfluxHistory)
    async with history_client(api, reader) as client:
        await assert_history_of_written(client, reader)


async def test_falls_back_to_the_local_ring_when_influx_fails(api: Api) -> None:
    api.state.history.add([belt(1000, 1.0), belt(1001, 2.0)])
    # Nothing listens on this port: connection refused, the route answers from the ring.
    reader = InfluxHistory(InfluxSinkConfig(enabled=True, api="v1", url=f"http://127.0.0.1:{free_port()}"))
    async with history_client(api, reader) as client:
        body = (await client.get(URL, params={"tag": "belt_speed"})).json()
    assert body["store"] == "local"
    assert [p["value"] for p in body["points"]] == [s.value for s in ring(api)]
    assert [p["value"] for p in body["points"]][-2:] == [1.0, 2.0]


async def test_influxql_error_falls_back(api: Api, influxdb1_server: InfluxDB1Server) -> None:
    api.state.history.add([belt(1000, 1.0)])
    # A database with no DBRP mapping on 2.x answers the same way: an error, then the ring.
    reader = InfluxHistory(InfluxSinkConfig(enabled=True, api="v1", url=influxdb1_server.url,
                                            database="no_such_database"))
    async with history_client(api, reader) as client:
        body = (await client.get(URL, params={"tag": "belt_speed"})).json()
    assert body["store"] == "local"
    assert [p["value"] for p in body["points"]] == [s.value for s in ring(api)]
    assert body["points"][-1]["value"] == 1.0


async def test_without_a_reader_history_is_local(api: Api) -> None:
    api.state.history.add([belt(1000, 3.0)])
    async with history_client(api, None) as client:
        body = (await client.get(URL, params={"tag": "belt_speed"})).json()
    assert body["store"] == "local"
    assert len(body["points"]) == len(ring(api))
    assert body["points"][-1] == {"ts": "2026-01-01T06:16:40Z", "value": 3.0, "count": 1}


BASIC = "Basic " + base64.b64encode(b"reader:secret").decode()


@pytest.mark.parametrize(
    ("config", "database", "authorization"),
    [
        (InfluxSinkConfig(api="v2", bucket="plant", token="tok-123", database="unused"), "plant", "Token tok-123"),
        (InfluxSinkConfig(api="v2", bucket="plant", token=""), "plant", None),
        (InfluxSinkConfig(api="v1", database="db1", username="reader", password="secret", token="unused"), "db1",
         BASIC),
        (InfluxSinkConfig(api="v1", database="db1"), "db1", None),
    ],
)
async def test_influxql_request_carries_the_sinks_credentials(config: InfluxSinkConfig, database: str,
                                                              authorization: str | None) -> None:
    """A unit test of the request shape (influxd 1.6.7 has no token auth to check it against)."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"results": [{"statement_id": 0, "series": [
            {"name": "telemetry", "columns": ["time", "value", "value_str"], "values": [[1_000_000, 1.5, None]]}]}]})

    reader = InfluxHistory(config, transport=httpx.MockTransport(answer))
    try:
        rows = await reader.query("conveyor-01", "belt_speed", None, None, None, 10)
    finally:
        await reader.close()
    assert [(r.ts.isoformat(), r.value) for r in rows] == [("1970-01-01T00:00:01+00:00", 1.5)]
    (request,) = seen
    assert request.method == "GET"
    assert request.url.path == "/query"
    assert request.url.params["db"] == database
    assert request.url.params["epoch"] == "u"
    assert "rp" not in request.url.params
    assert request.headers.get("Authorization") == authorization


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"enabled": False, "api": "v1"}, None),
        ({"enabled": True, "api": "v1"}, InfluxHistory),
        ({"enabled": True, "api": "v2"}, InfluxHistory),  # auto: InfluxDB 2.x/3.x's /query
        ({"enabled": True, "api": "v2", "history": "influxql"}, InfluxHistory),
        ({"enabled": True, "api": "v2", "history": "victoriametrics"}, VictoriaMetricsHistory),
        ({"enabled": True, "api": "v1", "history": "victoriametrics"}, VictoriaMetricsHistory),
        ({"enabled": True, "api": "v1", "history": "off"}, None),
        ({"enabled": False, "history": "victoriametrics"}, None),
    ],
)
def test_history_key_picks_the_reader(settings: dict[str, object], expected: type | None) -> None:
    reader = history_reader(InfluxSinkConfig.model_validate(settings))
    assert (None if reader is None else type(reader)) is expected


def test_history_key_errors_name_file_key_and_value(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("sinks:\n  influx:\n    enabled: true\n    history: flux\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert any(line.startswith(f"{path}: sinks.influx.history = 'flux': Input should be 'auto', 'influxql', "
                               "'victoriametrics' or 'off'") for line in caught.value.lines), caught.value.lines


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
