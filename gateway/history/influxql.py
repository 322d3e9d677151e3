"""History with InfluxQL over ``GET /query``: InfluxDB 1.x, and InfluxDB 2.x/3.x through their 1.x-compatible
endpoint (``gateway.history`` says when).

The schema is the one the Influx sink writes (``gateway.encoders.line_protocol``): measurement ``telemetry``, tags
``asset``, ``tag``, ``quality``, ..., fields ``value`` (float), ``value_str`` (strings) and ``status``. Like the
local ring, only Good samples are returned.

- Raw (no ``step``): the newest ``limit`` points in the range, ``value`` or else ``value_str``.
- With ``step``: ``GROUP BY time(<step>) fill(none)``, the mean of ``value`` (the last ``value_str`` for string
  tags) and ``count("status")`` as the bucket's sample count. InfluxDB aligns buckets on multiples of the step since
  the epoch. Without a ``start`` the range begins ``limit`` steps before ``end`` (or now), so the query stays
  bounded.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx

from gateway.common.epoch import from_epoch_us
from gateway.encoders.line_protocol import MEASUREMENT, to_ns
from gateway.history.base import DEFAULT_TIMEOUT_S, HistoryHttp, HistoryRow, HistoryUnavailable
from gateway.readings import TagValue
from gateway.sinks.influx import InfluxSinkConfig


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
    return from_epoch_us(micros)


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
        # VictoriaMetrics answers every /query with a canned database list: not an answer to this query.
        if series.get("name") != MEASUREMENT:
            raise HistoryUnavailable(f"the /query answer is about {series.get('name')!r}, not {MEASUREMENT!r}")
        for row in series.get("values") or []:
            try:
                ts, number, text, *rest = row
            except (TypeError, ValueError):
                raise HistoryUnavailable(f"unexpected row {row!r} in the InfluxDB answer") from None
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
    """Reads a tag's history with InfluxQL (``GET /query``)."""

    store: ClassVar[str] = "influx"

    def __init__(self, config: InfluxSinkConfig, timeout_s: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        # InfluxDB 2.x/3.x map the 1.x ``db`` parameter to a bucket (2.x through a DBRP mapping, 3.x directly).
        self.database = config.database if config.api == "v1" else config.bucket
        self._http = HistoryHttp(config, "InfluxDB", timeout_s, transport)

    async def query(self, asset: str, tag: str, start: datetime | None, end: datetime | None,
                    step_s: float | None, limit: int) -> list[HistoryRow]:
        q = build_query(asset, tag, start, end, step_s, limit)
        body = await self._http.get_json("/query", {"db": self.database, "q": q, "epoch": "u"})
        return parse_answer(body, step_s)

    async def close(self) -> None:
        await self._http.close()
