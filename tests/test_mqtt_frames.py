"""The pipe protocol between the MQTT sink and its publisher process: frames survive a round trip."""

from __future__ import annotations

import pytest

from gateway.sinks.mqtt_frames import HEADER, PUBLISH, batch_frame, close_frame, parse_batch
from gateway.sinks.outbox_common import OutboxRecord


def test_a_batch_frame_round_trips_ids_topics_and_payloads() -> None:
    records = [OutboxRecord(7, "twinedge/mine-a/Zone ü/crusher-1", b'{"v":1}', 1.5),
               OutboxRecord(9, "t", b"", 2.0),
               OutboxRecord(2**40, "x/y", bytes(range(256)) * 300, 3.0)]
    frame = batch_frame(5, records)
    kind, length = HEADER.unpack_from(frame)
    assert kind == PUBLISH
    assert length == len(frame) - HEADER.size
    generation, parsed = parse_batch(frame[HEADER.size:])
    assert generation == 5
    assert [(r.id, r.key, r.payload) for r in parsed] == [(r.id, r.key, r.payload) for r in records]


def test_a_batch_body_with_bytes_after_its_records_is_refused() -> None:
    body = batch_frame(0, [OutboxRecord(1, "t", b"p", 0.0)])[HEADER.size:]
    with pytest.raises(ValueError, match="1 bytes after its 1 records"):
        parse_batch(body + b"!")


def test_a_close_frame_has_no_body() -> None:
    assert HEADER.unpack(close_frame())[1] == 0
