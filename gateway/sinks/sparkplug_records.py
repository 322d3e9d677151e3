"""What the Sparkplug sink stores in its outbox: readings in a neutral form, not Sparkplug payloads.

A Sparkplug payload cannot be made ahead of publishing: its ``seq``, the metric aliases and whether it
is historical belong to the MQTT session that sends it. The outbox therefore keeps the samples: one
record per device (asset) per batch, key = the Sparkplug device id, payload = JSON rows
``[tag, kind, value, status, source ms]``. ``kind`` keeps the Python type exact through JSON
(``b`` bool, ``i`` int, ``f`` float, ``s`` str, ``n`` no value) and lets NaN and the infinities,
which JSON lacks, travel as strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from gateway.common.epoch import epoch_ms
from gateway.encoders.sparkplug_b import MetricValue, sanitize_id
from gateway.readings import Reading


@dataclass(frozen=True, slots=True)
class Sample:
    tag: str
    value: MetricValue | None
    status: int  # OPC UA StatusCode
    ts_ms: int  # source timestamp, ms since the epoch (UTC)


def _row(r: Reading) -> list[object]:
    value = r.value
    if value is None:
        return [r.tag, "n", None, r.quality, epoch_ms(r.source_ts)]
    if isinstance(value, bool):
        kind = "b"
    elif isinstance(value, int):
        kind = "i"
    elif isinstance(value, float):
        kind = "f"
        if not math.isfinite(value):
            value = repr(value)  # 'nan', 'inf', '-inf': float() reads them back
    else:
        kind = "s"
    return [r.tag, kind, value, r.quality, epoch_ms(r.source_ts)]


def encode_records(batch: Sequence[Reading]) -> list[tuple[str, bytes]]:
    """Outbox records for a batch: one per device, devices in order of first appearance, samples in
    batch order (a tag may repeat: every sample is kept)."""
    rows: dict[str, list[list[object]]] = {}
    for r in batch:
        rows.setdefault(sanitize_id(r.asset), []).append(_row(r))
    return [(device, orjson.dumps(device_rows)) for device, device_rows in rows.items()]


def decode_record(payload: bytes) -> list[Sample]:
    samples = []
    for tag, kind, value, status, ts_ms in orjson.loads(payload):
        if kind == "f":
            value = float(value)  # also turns 'nan' / 'inf' back into floats
        samples.append(Sample(tag, value, status, ts_ms))
    return samples
