"""History of a tag from InfluxDB, for ``GET /api/v1/assets/{id}/history`` (issue 7).

When ``sinks.influx`` is enabled with ``api: v1`` (InfluxDB 1.x), the history route asks InfluxDB with
InfluxQL over ``GET /query`` instead of the in-memory ring, so history reaches back beyond the ring's
``api.history_per_tag`` samples. The schema is the one the Influx sink writes (``gateway.encoders.
line_protocol``): measurement ``telemetry``, tags ``asset``, ``tag``, ``quality``, ..., fields ``value``
(float), ``value_str`` (strings) and ``status``. Like the local ring, only Good samples are returned.

- Raw (no ``step``): the newest ``limit`` points in the range, ``value`` or else ``value_str``.
- With ``step``: ``GROUP BY time(<step>) fill(none)``, the mean of ``value`` (the last ``value_str``
  for string tags) and ``count("status")`` as the bucket's sample count. InfluxDB aligns buckets on
  multiples of the step since the epoch; the local ring aligns them on the first sample. Without a
  ``start`` the range begins ``limit`` steps before ``end`` (or now), so the query stays bounded.

Any failure (connection refused, timeout, an HTTP or InfluxQL error, an unparsable answer) raises
:class:`HistoryUnavailable`; the route then answers from the local ring and says ``store: "local"``.

``api: v2`` is not read: InfluxDB 2.x answers Flux on ``/api/v2/query`` (and InfluxQL on its v1
compatibility ``/query`` only with a DBRP mapping set up by hand), and VictoriaMetrics, the usual v2
target here, accepts line protocol writes but answers no InfluxQL or Flux, only PromQL/MetricsQL
(``/api/v1/query_range`` on series ``telemetry_value{asset=..., tag=...}``). With v2 the route keeps
answering from the local ring; :func:`history_reader` returns None for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from gateway.encoders.line_protocol import MEASUREMENT, to_ns
from gateway.readings import TagValue
from gateway.sinks.influx import InfluxSinkConfig

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
APP_STATE_KEY = "influx_history"  # where the runtime puts the reader on the FastAPI app's state


class HistoryUnavailable(Exception):
    """InfluxDB could not answer; the caller falls back to the local ring."""


@dataclass(frozen=True, slots=True)
class HistoryRow:
    ts: datetime  # the sample's source timestamp, or the bucket start with a step
    value: TagValue | None
    count: int = 1


def quote_literal(value: str) -> str:
    """An InfluxQL string literal: single quotes, with backslash and quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def duration_literal(step_s: float) -> str:
    """``step_s`` as an InfluxQL duration (whole microseconds, at least 1 us)."""
    micros = max(1, round(step_s * 1_000_000))
    if micros % 1_000_000 == 0:
        return f"{micros // 1_000_000}s"
    if micros % 1000 == 0:
        return f"{micros // 1000}ms"
    return f"{micros}u"


def build_query(asset: str, tag: str, start: datetime | None, end: datetime | None, step_s: float | None,
                limit: int, now: datetime | None = None) -> str:
    where = [f'"asset" = {quote_literal(asset)}', f'"tag" = {quote_literal(tag)}', "\"quality\" = 'Good'"]
    if step_s is not None and start is None:
        start = (end or now or datetime.now(UTC)) - timedelta(seconds=step_s * limit)
    if start is not None:
        where.append(f"time >= {to_ns(start)}")
    if end is not None:
        where.append(f"time <= {to_ns(end)}")
    condition = " AND ".join(where)
    if step_s is None:
        return (f'SELECT "value", "value_str" FROM "{MEASUREMENT}" WHERE {condition} '
                f"ORDER BY time DESC LIMIT {limit}")
    return (f'SELECT mean("value"), last("value_str"), count("status") FROM "{MEASUREMENT}" WHERE {condition} '
            f"GROUP BY time({duration_literal(step_s)}) fill(none) ORDER BY time DESC LIMIT {limit}")


def _ts(micros: Any) -> datetime:
    if not isinstance(micros, int):
        raise HistoryUnavailable(f"unexpected time {micros!r} in the InfluxDB answer")
    return _EPOCH + timedelta(microseconds=micros)


def parse_answer(body: Any, step_s: float | None) -> list[HistoryRow]:
    """Rows of an ``epoch=u`` /query answer, oldest first."""
    try:
        results = body["results"]
        result = results[0]
    except (KeyError, IndexError, TypeError):
        raise HistoryUnavailable("InfluxDB answered without results") from None
    if "error" in result:
        raise HistoryUnavailable(f"InfluxDB: {result['error']}")
    rows: list[HistoryRow] = []
    for series in result.get("series") or []:
        for ts, number, text, *rest in series.get("values") or []:
            value: TagValue | None = number if number is not None else text
            if step_s is None:
                if value is None:
                    continue
                rows.append(HistoryRow(_ts(ts), value))
            else:
                count = rest[0] if rest and isinstance(rest[0], int) else 0
                if count:
                    rows.append(HistoryRow(_ts(ts), value, count))
    rows.sort(key=lambda r: r.ts)
    return rows


class InfluxHistory:
    """Reads a tag's history from InfluxDB 1.x with InfluxQL (``GET /query``)."""

    store = "influx"

    def __init__(self, config: InfluxSinkConfig, timeout_s: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        auth = (config.username, config.password or "") if config.username else None
        self._http = httpx.AsyncClient(base_url=config.url, timeout=min(timeout_s, config.timeout_s), auth=auth,
                                       transport=transport)

    async def query(self, asset: str, tag: str, start: datetime | None, end: datetime | None,
                    step_s: float | None, limit: int) -> list[HistoryRow]:
        q = build_query(asset, tag, start, end, step_s, limit)
        try:
            response = await self._http.get("/query", params={"db": self.config.database, "q": q, "epoch": "u"})
        except httpx.HTTPError as exc:
            raise HistoryUnavailable(f"InfluxDB at {self.config.url}: {exc!r}") from None
        if response.status_code != 200:
            raise HistoryUnavailable(f"InfluxDB answered {response.status_code}: {response.text[:200]}")
        try:
            body = response.json()
        except ValueError:
            raise HistoryUnavailable("InfluxDB answered something that is not JSON") from None
        return parse_answer(body, step_s)

    async def close(self) -> None:
        await self._http.aclose()


def history_reader(config: InfluxSinkConfig) -> InfluxHistory | None:
    """The reader for ``sinks.influx``, or None when history stays local (sink off, or the v2 API)."""
    if not config.enabled or config.api != "v1":
        return None
    return InfluxHistory(config)
