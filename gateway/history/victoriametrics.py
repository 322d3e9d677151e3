"""History from VictoriaMetrics (``history: victoriametrics``), which takes the Influx sink's line protocol but
answers MetricsQL, not InfluxQL.

What VictoriaMetrics makes of the sink's lines (checked against victoria-metrics 1.79.5):
- A series is ``<measurement>_<field>`` with the tags as labels: the ``value`` field of a Good sample is
  ``telemetry_value{asset="...", tag="...", quality="Good", ...}``.
- Strings are not kept: ``value_str`` is stored as the number the string parses to, else 0. A string tag's history
  cannot come from here, so the reader raises HistoryUnavailable for it and the route answers from the local ring.
- Timestamps are kept in milliseconds (the sink writes nanoseconds).

The results mean what the InfluxQL reader's mean:
A first instant query surveys the range: how many samples, the first and the last one's time, and whether the
tag holds strings.
- Raw: the newest ``limit`` samples in [start, end], from ``/api/v1/export`` (raw samples, JSON lines). Export has
  no "newest N", so it walks back from the last sample in windows sized from the surveyed density, doubling until
  it has ``limit`` samples.
- Step: buckets [k*step, (k+1)*step) aligned on the epoch, with the mean of the values and the sample count; without
  ``start`` the range begins ``limit`` steps before ``end`` (or now). A range of at most ``limit`` samples is
  exported and bucketed here: the newest ``limit`` non-empty buckets, as InfluxQL returns them. A bigger one is
  aggregated by the server over the newest ``limit`` steps up to the last sample, which gives fewer buckets than
  InfluxQL only when some of those steps are empty and older samples exist. Whole buckets come from
  ``/api/v1/query_range`` evaluated at each bucket's last millisecond with a window of one step: a window covers
  (t - step, t], which is exactly the bucket. The partial buckets at either end of the range, and buckets ending
  within LATENCY_MARGIN_MS of now, are computed here from exported raw samples, so every bucket counts only samples
  inside [start, end].

Every query sends ``nocache=1``: the response cache would keep serving a range from before an outbox replay
back-filled it, and caching also moves a range's start onto a multiple of the step, off the bucket ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx

from gateway.common.epoch import from_epoch_ms
from gateway.encoders.line_protocol import MEASUREMENT, to_ns
from gateway.history.base import DEFAULT_TIMEOUT_S, HistoryHttp, HistoryRow, HistoryUnavailable
from gateway.sinks.influx import InfluxSinkConfig

VALUE_METRIC = f"{MEASUREMENT}_value"
TEXT_METRIC = f"{MEASUREMENT}_value_str"
# query_range overwrites points newer than -search.latencyOffset (default 30 s) with the point before them, taking
# that data for incomplete; buckets ending this close to now are computed from raw samples instead.
LATENCY_MARGIN_MS = 60_000
# VictoriaMetrics drops samples more than two days ahead of its clock, so an open end stops there.
FUTURE_MS = 2 * 86_400_000
# An open start: a query whose window reaches back to within one lookback step (5 min) of the epoch answers
# nothing at all, so ranges start a day after it; no sample is that old.
EARLIEST_MS = 86_400_000

Sample = tuple[int, float]  # (milliseconds since the epoch, value)


def label_literal(value: str) -> str:
    """A MetricsQL string literal: JSON escapes quotes, backslashes and control characters the way MetricsQL's
    Go-style unquoting reads them back."""
    return json.dumps(value, ensure_ascii=False)


def selector(metric: str, asset: str, tag: str) -> str:
    return f'{metric}{{asset={label_literal(asset)},tag={label_literal(tag)},quality="Good"}}'


def survey_query(asset: str, tag: str, window_ms: int) -> str:
    """Over the window: the number of samples, the first and the last one's time, and the number of string
    samples. Sums run over every series of the tag (its device or unit label may have changed)."""
    value = f"{selector(VALUE_METRIC, asset, tag)}[{window_ms}ms]"
    text = f"{selector(TEXT_METRIC, asset, tag)}[{window_ms}ms]"
    return (f'label_set(sum(count_over_time({value})), "q", "count") '
            f'or label_set(min(tfirst_over_time({value})), "q", "first") '
            f'or label_set(max(tlast_over_time({value})), "q", "last") '
            f'or label_set(sum(count_over_time({text})), "q", "strings")')


def bucket_query(asset: str, tag: str, step_ms: int) -> str:
    value = f"{selector(VALUE_METRIC, asset, tag)}[{step_ms}ms]"
    return (f'label_set(sum(sum_over_time({value})), "q", "sum") '
            f'or label_set(sum(count_over_time({value})), "q", "count")')


def to_ms(ts: datetime, *, round_up: bool) -> int:
    ns = to_ns(ts)
    return -(-ns // 1_000_000) if round_up else ns // 1_000_000


def seconds(ms: int) -> str:
    """A time parameter: seconds with the exact milliseconds (no float rounding)."""
    return f"{ms // 1000}.{ms % 1000:03d}"


def _dt(ms: int) -> datetime:
    return from_epoch_ms(ms)


def parse_export(text: str) -> list[Sample]:
    """Samples of an ``/api/v1/export`` answer (a series, or part of one, per line), oldest first."""
    samples: list[Sample] = []
    try:
        for line in text.splitlines():
            if line.strip():
                series = json.loads(line)
                samples.extend((int(ts), float(value))
                               for ts, value in zip(series["timestamps"], series["values"], strict=True))
    except (ValueError, KeyError, TypeError) as exc:
        raise HistoryUnavailable(f"unexpected VictoriaMetrics export: {exc!r}") from None
    samples.sort(key=lambda s: s[0])
    return samples


def parse_result(body: Any) -> dict[str, list[Sample]]:
    """Points per ``q`` label of a ``/api/v1/query`` (one point) or ``/api/v1/query_range`` answer."""
    try:
        if body["status"] != "success":
            raise HistoryUnavailable(f"VictoriaMetrics: {body.get('error')}")
        found: dict[str, list[Sample]] = {}
        for series in body["data"]["result"]:
            points = series["values"] if "values" in series else [series["value"]]
            found[series["metric"]["q"]] = [(round(float(t) * 1000), float(v)) for t, v in points]
    except (ValueError, KeyError, TypeError) as exc:
        raise HistoryUnavailable(f"unexpected VictoriaMetrics answer: {exc!r}") from None
    return found


def bucket(samples: list[Sample], step_ms: int) -> list[HistoryRow]:
    """Raw samples in epoch-aligned buckets, mean and count: what ``bucket_query`` gives for whole buckets."""
    totals: dict[int, tuple[float, int]] = {}
    for ts, value in samples:
        total, count = totals.get(ts // step_ms, (0.0, 0))
        totals[ts // step_ms] = (total + value, count + 1)
    return [HistoryRow(_dt(k * step_ms), total / count, count) for k, (total, count) in sorted(totals.items())]


@dataclass(frozen=True, slots=True)
class _Survey:
    count: int
    first_ms: int | None
    last_ms: int | None
    strings: int


class VictoriaMetricsHistory:
    """Reads a tag's history from VictoriaMetrics with MetricsQL and raw exports."""

    store: ClassVar[str] = "victoriametrics"

    def __init__(self, config: InfluxSinkConfig, timeout_s: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._http = HistoryHttp(config, "VictoriaMetrics", timeout_s, transport)

    async def query(self, asset: str, tag: str, start: datetime | None, end: datetime | None,
                    step_s: float | None, limit: int) -> list[HistoryRow]:
        now = to_ms(datetime.now(UTC), round_up=False)
        hi = to_ms(end, round_up=False) if end is not None else now + FUTURE_MS
        lo = max(EARLIEST_MS, to_ms(start, round_up=True) if start is not None else 0)
        step = None if step_s is None else max(1, round(step_s * 1000))
        if step is not None and start is None:  # bounded as the InfluxQL query is: limit steps before end or now
            lo = max(lo, (hi if end is not None else now) - step * limit)
        if lo > hi:
            return []
        survey = await self._survey(asset, tag, lo, hi)
        if survey.strings:
            raise HistoryUnavailable(f"{asset}.{tag} holds strings, which VictoriaMetrics keeps only as numbers")
        if survey.first_ms is None or survey.last_ms is None:
            return []
        lo, hi = max(lo, survey.first_ms), min(hi, survey.last_ms)  # the same samples, in a narrower range
        if step is None:
            samples = await self._newest(asset, tag, lo, hi, survey.count, limit)
            return [HistoryRow(_dt(ts), value) for ts, value in samples]
        if survey.count <= limit:  # at most limit buckets' worth of samples: bucketed here, newest limit buckets
            return bucket(await self._export(asset, tag, lo, hi), step)[-limit:]
        lo = max(lo, (hi // step - limit + 1) * step)  # the newest limit buckets up to the newest sample
        return await self._buckets(asset, tag, lo, hi, step, now)

    async def _survey(self, asset: str, tag: str, lo: int, hi: int) -> _Survey:
        # An instant query at hi whose window, (hi - window, hi], is [lo, hi].
        body = await self._http.get_json("/api/v1/query", {
            "query": survey_query(asset, tag, hi - lo + 1), "time": seconds(hi), "nocache": "1"})
        found = {q: points[0][1] for q, points in parse_result(body).items() if points}
        first, last = found.get("first"), found.get("last")
        return _Survey(int(found.get("count", 0)), None if first is None else round(first * 1000),
                       None if last is None else round(last * 1000), int(found.get("strings", 0)))

    async def _newest(self, asset: str, tag: str, lo: int, hi: int, count: int, limit: int) -> list[Sample]:
        """The newest ``limit`` of the ``count`` samples in [lo, hi]."""
        if count <= limit:
            return await self._export(asset, tag, lo, hi)
        width = max(1, (hi - lo) * limit // count)  # enough for limit samples at the range's mean density
        samples: list[Sample] = []
        upper = hi
        while True:
            lower = max(lo, upper - width + 1)
            samples[:0] = await self._export(asset, tag, lower, upper)
            if len(samples) >= limit or lower == lo:
                return samples[-limit:]
            upper, width = lower - 1, width * 2

    async def _buckets(self, asset: str, tag: str, lo: int, hi: int, step: int, now: int) -> list[HistoryRow]:
        whole_from = -(-lo // step) * step  # the first bucket starting inside the range
        whole_to = min(hi + 1, now - LATENCY_MARGIN_MS) // step * step  # the end of the last whole, settled one
        if whole_from >= whole_to:
            return bucket(await self._export(asset, tag, lo, hi), step)
        rows = await self._whole_buckets(asset, tag, whole_from, whole_to, step)
        raw: list[Sample] = []
        if lo < whole_from:
            raw += await self._export(asset, tag, lo, whole_from - 1)
        if whole_to <= hi:
            raw += await self._export(asset, tag, whole_to, hi)
        return sorted(rows + bucket(raw, step), key=lambda r: r.ts)

    async def _whole_buckets(self, asset: str, tag: str, first: int, end: int, step: int) -> list[HistoryRow]:
        """Buckets from ``first`` up to ``end`` (exclusive), evaluated at each one's last millisecond."""
        body = await self._http.get_json("/api/v1/query_range", {
            "query": bucket_query(asset, tag, step), "start": seconds(first + step - 1), "end": seconds(end - 1),
            "step": f"{step}ms", "nocache": "1"})
        found = parse_result(body)
        sums = dict(found.get("sum", []))
        return [HistoryRow(_dt(t - step + 1), sums[t] / n, int(n)) for t, n in found.get("count", [])
                if n and t in sums]

    async def _export(self, asset: str, tag: str, lo: int, hi: int) -> list[Sample]:
        text = await self._http.get_text("/api/v1/export", {
            "match[]": selector(VALUE_METRIC, asset, tag), "start": seconds(lo), "end": seconds(hi)})
        return parse_export(text)

    async def close(self) -> None:
        await self._http.close()
