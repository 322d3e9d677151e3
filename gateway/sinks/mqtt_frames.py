"""The pipe protocol between the MQTT sink and its publisher process (:mod:`gateway.sinks.mqtt_process`).

Sink -> worker, on the worker's stdin: first one JSON line (:class:`WorkerHello`), then binary frames,
each a header (type byte, body length) and a body:

- ``P``: records to publish, oldest first, tagged with the generation they were handed over in (a
  worker that asked for a resend ignores batches of the generation before it: they may be out of order);
- ``C``: say offline, disconnect and exit.

Worker -> sink, on the worker's stdout: one JSON object per line, an :data:`Event`.

Binary, not JSON, for the records: the payloads are already bytes and a batch of 500 is framed by one
``struct`` call per record, a fraction of what paho then spends publishing them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from gateway.sinks.mqtt_publisher import MqttPublishConfig
from gateway.sinks.outbox_common import OutboxRecord

HEADER = struct.Struct("!cI")  # frame type, body length
_BATCH = struct.Struct("!II")  # generation, record count
_RECORD = struct.Struct("!qHI")  # outbox id, topic length, payload length

PUBLISH = b"P"
CLOSE = b"C"

Event = dict[str, Any]


class WorkerHello(BaseModel):
    """What a worker needs before its first frame."""

    model_config = ConfigDict(extra="forbid")

    config: MqttPublishConfig
    client_id: str
    status_topic: str
    log_level: int


def batch_frame(generation: int, records: Sequence[OutboxRecord]) -> bytes:
    parts = [_BATCH.pack(generation, len(records))]
    for rec in records:
        topic = rec.key.encode()
        parts += (_RECORD.pack(rec.id, len(topic), len(rec.payload)), topic, rec.payload)
    body = b"".join(parts)
    return HEADER.pack(PUBLISH, len(body)) + body


def close_frame() -> bytes:
    return HEADER.pack(CLOSE, 0)


def parse_batch(body: bytes) -> tuple[int, list[OutboxRecord]]:
    """The generation and records of a ``P`` frame's body. ``created`` is not carried: 0.0."""
    generation, count = _BATCH.unpack_from(body)
    offset = _BATCH.size
    records: list[OutboxRecord] = []
    for _ in range(count):
        rec_id, topic_len, payload_len = _RECORD.unpack_from(body, offset)
        offset += _RECORD.size
        topic = body[offset : offset + topic_len].decode()
        offset += topic_len
        records.append(OutboxRecord(rec_id, topic, body[offset : offset + payload_len], 0.0))
        offset += payload_len
    if offset != len(body):
        raise ValueError(f"batch frame has {len(body) - offset} bytes after its {count} records")
    return generation, records


def event_line(event: Event) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"
