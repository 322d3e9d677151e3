"""InfluxSink: v1 against a real influxd 1.6.7, v2 against VictoriaMetrics (conventions §4.3),
retry and dead-letter rules against a scripted fake server (fault matrix §5.5 #2)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.common.status import BAD_NO_COMMUNICATION, GOOD
from gateway.readings import Reading
from gateway.sinks.influx import InfluxSink, InfluxSinkConfig, classify, parse_retry_after
from gateway.sinks.outbox_common import OutboxBackend
from tests.fixtures.servers import InfluxDB1Server, VictoriaMetricsServer

BASE_TS = datetime(2026, 11, 21, 13, 55, 1, 0, tzinfo=UTC)
BASE_NS = 1795269301_000_000_000


def reading(i: int, tag: str = "seq", value: object = None, quality: int = GOOD) -> Reading:
    ts = BASE_TS + timedelta(milliseconds=i)
    v = float(i) if value is None and quality == GOOD else value
    return Reading("plc1", "conveyor-01", tag, v, quality, ts, ts, "mine-a", "level-3", "MTS")  # type: ignore[arg-type]


async def wait_for(cond: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.02)


def make_sink(tmp_path: Path, outbox: OutboxBackend = "sqlite", **cfg: Any) -> InfluxSink:
    sink = InfluxSink(InfluxSinkConfig(enabled=True, flush_interval_ms=50, **cfg), "gw1", tmp_path / "data",
                      outbox=outbox)
    sink.backoff_min_s = 0.2  # keep the outage tests short; the production default is 1 s
    return sink


def test_config_forbids_unknown_keys() -> None:
    with pytest.raises(ValueError, match="extra"):
        InfluxSinkConfig.model_validate({"bucket": "b", "buckett": "x"})


@pytest.mark.parametrize(
    ("status", "retry_after", "outcome", "delay"),
    [
        (204, None, "ok", None),
        (429, "2", "retry", 2.0),
        (503, "1", "retry", 1.0),
        (503, None, "retry", None),
        (500, None, "retry", None),
        (400, None, "poison", None),
        (401, None, "poison", None),
        (404, None, "poison", None),
        (413, None, "poison", None),
    ],
)
def test_classify(status: int, retry_after: str | None, outcome: str, delay: float | None) -> None:
    result = classify(status, "msg", retry_after)
    assert result.outcome == outcome
    assert result.delay_s == delay


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("100000") == 300.0  # capped


async def test_v1_writes_to_influxdb_1x(influxdb1_server: InfluxDB1Server, tmp_path: Path) -> None:
    sink = make_sink(tmp_path, api="v1", url=influxdb1_server.url, database=influxdb1_server.database)
    await sink.start()
    try:
        await sink.write(
            [
                reading(0, "speed", 3.5),
                reading(1, "running", True),
                reading(2, "state", 'Run "auto"'),
                reading(3, "temp", None, BAD_NO_COMMUNICATION),
            ]
        )
        await wait_for(lambda: sink.stats().published == 4, 10, "4 lines written")
    finally:
        await sink.close()
    q = urllib.parse.urlencode(
        {"db": influxdb1_server.database, "q": "SELECT * FROM telemetry ORDER BY time", "epoch": "ns"}
    )
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{influxdb1_server.url}/query?{q}").read())
    series = json.loads(body)["results"][0]["series"][0]
    rows = [dict(zip(series["columns"], v, strict=True)) for v in series["values"]]
    assert [(r["time"], r["tag"], r["value"], r["value_str"], r["status"], r["quality"]) for r in rows] == [
        (BASE_NS, "speed", 3.5, None, 0, "Good"),
        (BASE_NS + 1_000_000, "running", 1.0, None, 0, "Good"),
        (BASE_NS + 2_000_000, "state", None, 'Run "auto"', 0, "Good"),
        (BASE_NS + 3_000_000, "temp", None, None, BAD_NO_COMMUNICATION, "Bad"),
    ]
    assert {r["site"] for r in rows} == {"mine-a"}
    assert {r["unit"] for r in rows} == {"MTS"}


def vm_samples(server: VictoriaMetricsServer) -> dict[int, float]:
    """timestamp (ms) -> value of telemetry_value{tag="seq"}."""
    out: dict[int, float] = {}
    for series in server.export('{__name__="telemetry_value",tag="seq"}'):
        out.update(zip(series["timestamps"], series["values"], strict=True))  # type: ignore[arg-type]
    return out


async def test_v2_writes_through_influxdb_client(
    victoria_metrics_server: VictoriaMetricsServer, tmp_path: Path
) -> None:
    sink = make_sink(tmp_path, api="v2", url=victoria_metrics_server.url, token="t")
    await sink.start()
    try:
        await sink.write([reading(i) for i in range(20)])
        await wait_for(lambda: sink.stats().published == 20, 10, "20 lines written")
    finally:
        await sink.close()
    samples = await asyncio.to_thread(vm_samples, victoria_metrics_server)
    assert samples == {BASE_NS // 1_000_000 + i: float(i) for i in range(20)}


@pytest.mark.parametrize("outbox", ["sqlite", "log"])
async def test_v2_outage_and_recovery_delivers_everything(
    victoria_metrics_server: VictoriaMetricsServer, tmp_path: Path, outbox: OutboxBackend
) -> None:
    n = 300
    sink = make_sink(tmp_path, outbox, api="v2", url=victoria_metrics_server.url, batch_size=50)
    await sink.start()
    try:
        await sink.write([reading(i) for i in range(100)])
        await wait_for(lambda: sink.stats().published == 100, 10, "first 100 written")
        await asyncio.to_thread(victoria_metrics_server.stop)
        await sink.write([reading(i) for i in range(100, 200)])
        await wait_for(lambda: sink.stats().errors >= 1 and not sink.stats().connected, 10, "outage seen")
        assert sink.stats().outbox_depth == 100
        await asyncio.to_thread(victoria_metrics_server.start)
        await sink.write([reading(i) for i in range(200, n)])
        await wait_for(lambda: sink.stats().outbox_depth == 0, 15, "outbox drained")
        assert sink.stats().connected
        assert sink.stats().dropped == 0
    finally:
        await sink.close()
    samples = await asyncio.to_thread(vm_samples, victoria_metrics_server)
    assert samples == {BASE_NS // 1_000_000 + i: float(i) for i in range(n)}


# -- scripted fake server: Retry-After and poison batches ----------------------------------------


@dataclass
class FakeInflux:
    """Answers each write with the next scripted (status, headers, body); 204 when exhausted."""

    script: list[tuple[int, dict[str, str], str]]
    requests: list[tuple[float, str, bytes]] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((time.monotonic(), lines[0], body))
        status, extra, text = self.script.pop(0) if self.script else (204, {}, "")
        hdrs = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(text)}\r\nConnection: close\r\n"
            f"{hdrs}\r\n{text}".encode()
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def fake_influx() -> AsyncIterator[FakeInflux]:
    fake = FakeInflux([])
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    async with server:
        yield fake


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_retry_after_is_honoured_then_poison_is_dead_lettered(
    fake_influx: FakeInflux, tmp_path: Path, api: str
) -> None:
    fake_influx.script = [
        (503, {"Retry-After": "1"}, ""),
        (204, {}, ""),
        (400, {"Content-Type": "application/json"}, '{"error":"unable to parse line"}'),
    ]
    sink = make_sink(tmp_path, api=api, url=f"http://127.0.0.1:{fake_influx.port}")
    await sink.start()
    try:
        await sink.write([reading(0)])
        await wait_for(lambda: sink.stats().published == 1, 10, "write after Retry-After")
        (t0, line0, body0), (t1, _, body1) = fake_influx.requests[:2]
        assert t1 - t0 >= 0.95  # honoured Retry-After: 1 (not the 0.2 s backoff)
        assert body0 == body1  # the same batch was retried
        assert ("/api/v2/write" if api == "v2" else "/write?db=twinedge") in line0
        await sink.write([reading(1)])
        await wait_for(lambda: sink.stats().dropped == 1, 10, "poison batch dead-lettered")
        assert sink.stats().outbox_depth == 0
        await sink.write([reading(2)])  # the stream keeps moving
        await wait_for(lambda: sink.stats().published == 2, 10, "next batch written")
        assert len(fake_influx.requests) == 4  # no retry of the poison batch
    finally:
        await sink.close()


async def test_batches_hold_at_most_batch_size_lines_in_order(fake_influx: FakeInflux, tmp_path: Path) -> None:
    """One pipeline batch larger than batch_size goes out in several writes, each within the size,
    every line once and in order; published counts lines."""
    sink = make_sink(tmp_path, api="v1", url=f"http://127.0.0.1:{fake_influx.port}", batch_size=50)
    await sink.start()
    try:
        await sink.write([reading(i) for i in range(120)])
        await sink.write([reading(i) for i in range(120, 130)])
        await wait_for(lambda: sink.stats().published == 130, 10, "130 lines written")
    finally:
        await sink.close()
    bodies = [body.decode().split("\n") for _, _, body in fake_influx.requests]
    assert all(len(lines) <= 50 for lines in bodies)
    stamps = [int(line.rsplit(" ", 1)[1]) for lines in bodies for line in lines]
    assert stamps == [BASE_NS + i * 1_000_000 for i in range(130)]


async def test_outbox_bound_counts_lines(tmp_path: Path) -> None:
    """outbox_max_rows bounds lines, not writes: with the database unreachable the outbox keeps at
    most that many lines, drops the oldest whole chunks, and counts every line dropped."""
    sink = make_sink(tmp_path, api="v1", url="http://127.0.0.1:9", batch_size=50, outbox_max_rows=100)
    await sink.start()
    try:
        for start in range(0, 180, 60):
            await sink.write([reading(i) for i in range(start, start + 60)])
        stats = sink.stats()
        assert stats.outbox_depth <= 100
        assert stats.outbox_depth + stats.dropped == 180
        assert stats.dropped >= 80
    finally:
        await sink.close()
