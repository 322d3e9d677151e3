"""`twinedge status`: a running gateway's sources and sinks at a glance, from its API.

Reads ``/api/v1/health`` (gateway id, each source's protocol and endpoint) and ``/metrics`` (the
Prometheus counters of gateway/metrics.py) and prints one table row per source and per sink. Only the
standard library and prometheus_client's text parser: the command must work wherever the gateway runs.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_URL = "http://127.0.0.1:8080"

SOURCE_COLUMNS = (  # (header, sample name)
    ("reads", "twinedge_source_reads_total"),
    ("values", "twinedge_source_values_total"),
    ("bad", "twinedge_source_bad_values_total"),
    ("errors", "twinedge_source_errors_total"),
    ("overruns", "twinedge_source_overruns_total"),
    ("dropped", "twinedge_source_dropped_total"),
)
SINK_COLUMNS = (
    ("published", "twinedge_sink_published_total"),
    ("errors", "twinedge_sink_errors_total"),
    ("dropped", "twinedge_sink_dropped_total"),
    ("outbox", "twinedge_outbox_depth"),
)


class Unreachable(Exception):
    """The gateway API could not be read; the message says why, in one line."""


Samples = dict[str, dict[str, float]]  # sample name -> label value (source or sink) -> value


@dataclass(frozen=True)
class GatewayStatus:
    url: str
    health: dict[str, Any]
    samples: Samples
    pipeline: dict[str, float]


def _get(url: str, timeout_s: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise Unreachable(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"{url}: {reason}") from None


def parse_metrics(text: str) -> tuple[Samples, dict[str, float]]:
    """Per-source/sink samples keyed by sample name and label, and the unlabelled pipeline counters."""
    samples: Samples = {}
    pipeline: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("twinedge_"):
            continue
        for sample in family.samples:
            key = sample.labels.get("source", sample.labels.get("sink"))
            if key is not None:
                samples.setdefault(sample.name, {})[key] = sample.value
            elif sample.name.startswith("twinedge_pipeline_") and sample.name.endswith("_total"):
                pipeline[sample.name.removeprefix("twinedge_pipeline_").removesuffix("_total")] = sample.value
    return samples, pipeline


def fetch_status(url: str = DEFAULT_URL, timeout_s: float = 5.0) -> GatewayStatus:
    base = url.rstrip("/")
    try:
        health = json.loads(_get(f"{base}/api/v1/health", timeout_s))
    except json.JSONDecodeError:
        raise Unreachable(f"{base}/api/v1/health did not answer JSON: is this a TwinEdge gateway?") from None
    samples, pipeline = parse_metrics(_get(f"{base}/metrics", timeout_s))
    return GatewayStatus(base, health, samples, pipeline)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _age(seconds: float | None) -> str:
    if seconds is None or seconds <= 0:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def _yes(value: float | bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in (list(headers), *rows)]


def render(status: GatewayStatus) -> str:
    health, samples = status.health, status.samples
    lines = [f"gateway {health.get('gateway', '?')} at {status.url}: {health.get('status', '?')}"]
    if status.pipeline:
        lines.append(f"pipeline: {_number(status.pipeline.get('readings_in'))} readings in, "
                     f"{_number(status.pipeline.get('readings_out'))} out")
    lines.append("")
    described = {s["name"]: s for s in health.get("sources", [])}
    names = list(described) + sorted(set(samples.get("twinedge_source_connected", {})) - set(described))
    if names:
        rows = []
        for name in names:
            info = described.get(name, {})
            connected = samples.get("twinedge_source_connected", {}).get(name, info.get("connected"))
            rows.append([name, str(info.get("protocol", "-")), str(info.get("endpoint", "-")), _yes(connected),
                         *(_number(samples.get(sample, {}).get(name)) for _, sample in SOURCE_COLUMNS)])
        lines += _table(["source", "protocol", "endpoint", "connected", *(h for h, _ in SOURCE_COLUMNS)], rows)
    else:
        lines.append("no sources")
    lines.append("")
    sinks = sorted(samples.get("twinedge_sink_connected", {}))
    if sinks:
        rows = [[sink, _yes(samples["twinedge_sink_connected"][sink]),
                 *(_number(samples.get(sample, {}).get(sink)) for _, sample in SINK_COLUMNS),
                 _age(samples.get("twinedge_outbox_oldest_age_seconds", {}).get(sink))] for sink in sinks]
        lines += _table(["sink", "connected", *(h for h, _ in SINK_COLUMNS), "oldest"], rows)
    else:
        lines.append("no sinks")
    return "\n".join(lines)


def run_status(url: str = DEFAULT_URL, timeout_s: float = 5.0, out: TextIO | None = None) -> int:
    """Print the status table; 1 with a one-line reason when the API cannot be read."""
    try:
        status = fetch_status(url, timeout_s)
    except Unreachable as exc:
        print(f"twinedge status: cannot read the gateway API at {url.rstrip('/')} ({exc}); "
              "is the gateway running ('twinedge up' or 'twinedge gateway'), and is --url right?", file=sys.stderr)
        return 1
    print(render(status), file=out or sys.stdout)
    return 0
