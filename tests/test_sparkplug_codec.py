"""Sparkplug B codec, outbox record format and session rules as pure functions: no broker needed."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.common.configfile import ConfigError
from gateway.common.status import (
    BAD_NO_COMMUNICATION,
    BAD_SENSOR_FAILURE,
    BAD_TIMEOUT,
    GOOD,
    UNCERTAIN_ENGINEERING_UNITS_EXCEEDED,
    UNCERTAIN_NO_COMMUNICATION_LAST_USABLE_VALUE,
)
from gateway.config import load_gateway_config
from gateway.encoders.sparkplug_b import (
    QUALITY_BAD,
    QUALITY_GOOD,
    QUALITY_STALE,
    DataType,
    Metric,
    Property,
    datatype_of,
    decode_payload,
    encode_payload,
    parse_state,
    quality_properties,
    sanitize_id,
    sparkplug_quality,
)
from gateway.readings import Reading
from gateway.sinks.sparkplug_records import Sample, decode_record, encode_records
from gateway.sinks.sparkplug_session import EdgeNodeSession, next_bdseq

TS = datetime(2026, 11, 21, 13, 55, 1, 123000, tzinfo=UTC)
TS_MS = 1795269301123


@pytest.mark.parametrize(
    ("value", "datatype"),
    [(True, DataType.BOOLEAN), (-5, DataType.INT64), (2**63 - 1, DataType.INT64), (2**63, DataType.DOUBLE),
     (1.5, DataType.DOUBLE), ("auto", DataType.STRING)],
)
def test_datatype_follows_the_value_and_round_trips(value: bool | int | float | str, datatype: DataType) -> None:
    assert datatype_of(value) == datatype
    encoded = encode_payload(1, [Metric(2, value, datatype_of(value), name="m", alias=7)], seq=3)
    payload = decode_payload(encoded)
    assert payload.seq == 3
    assert payload.metrics == (Metric(2, float(value) if datatype == DataType.DOUBLE else value, datatype, "m", 7),)


def test_data_messages_leave_datatype_and_name_out_and_null_has_no_value() -> None:
    metrics = [Metric(5, None, DataType.DOUBLE, alias=3, is_historical=True), Metric(6, -1, DataType.INT64, alias=4)]
    payload = decode_payload(encode_payload(9, metrics, seq=255, with_datatypes=False))
    assert payload.timestamp == 9
    assert payload.metrics[0] == Metric(5, None, None, None, 3, is_historical=True)
    # Without the datatype the sign of an Int64 cannot be known: the raw uint64 comes back.
    assert payload.metrics[1].value == 2**64 - 1


def test_ndeath_payload_has_no_seq() -> None:
    session = EdgeNodeSession("G", "E")
    session.bdseq = 17
    death = session.death(1000)
    assert death.topic == "spBv1.0/G/NDEATH/E"
    payload = decode_payload(death.payload)
    assert payload.seq is None
    assert payload.metrics == (Metric(1000, 17, DataType.INT64, "bdSeq"),)


@pytest.mark.parametrize(
    ("status", "quality"),
    [(GOOD, QUALITY_GOOD), (BAD_NO_COMMUNICATION, QUALITY_BAD), (0xC0000000, QUALITY_BAD),
     (UNCERTAIN_NO_COMMUNICATION_LAST_USABLE_VALUE, QUALITY_STALE),
     (UNCERTAIN_NO_COMMUNICATION_LAST_USABLE_VALUE | 0x0400, QUALITY_STALE),  # info bits do not matter
     (UNCERTAIN_ENGINEERING_UNITS_EXCEEDED, QUALITY_GOOD)],
)
def test_quality_maps_opc_ua_status_onto_the_three_sparkplug_codes(status: int, quality: int) -> None:
    assert sparkplug_quality(status) == quality


def test_quality_properties_only_when_not_good_and_decode_as_int32_and_uint32() -> None:
    assert quality_properties(GOOD) == ()
    props = quality_properties(BAD_NO_COMMUNICATION)
    assert props == (Property("Quality", DataType.INT32, 0), Property("StatusCode", DataType.UINT32, 0x80310000))
    payload = decode_payload(encode_payload(1, [Metric(1, None, DataType.DOUBLE, "m", 3, properties=props)]))
    assert payload.metrics[0].properties == props


def test_decode_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a Sparkplug B payload"):
        decode_payload(b"\xff\xff\xff")


@pytest.mark.parametrize(
    ("payload", "state"),
    [(b'{"online": true, "timestamp": 5}', (True, 5)), (b'{"online": false}', (False, None)),
     (b"ONLINE", None), (b'{"online": "yes"}', None), (b"\xff", None), (b"[1]", None)],
)
def test_parse_state(payload: bytes, state: tuple[bool, int | None] | None) -> None:
    assert parse_state(payload) == state


def test_ids_lose_wildcards_and_separators() -> None:
    assert sanitize_id("Pump/2#a+b") == "Pump_2_a_b"
    assert sanitize_id("  ") == "unknown"


def test_records_keep_types_nan_and_order_per_device() -> None:
    def r(asset: str, tag: str, value: bool | int | float | str | None, status: int = GOOD) -> Reading:
        return Reading("plc", asset, tag, value, status, TS, TS)

    batch = [r("a", "x", True), r("b/1", "y", 1), r("a", "x", math.nan), r("a", "z", None, BAD_NO_COMMUNICATION),
             r("a", "w", "s"), r("a", "v", 2.0)]
    records = encode_records(batch)
    assert [key for key, _ in records] == ["a", "b_1"]
    samples = decode_record(records[0][1])
    assert [s.tag for s in samples] == ["x", "x", "z", "w", "v"]
    assert samples[0].value is True
    assert math.isnan(samples[1].value)  # type: ignore[arg-type]
    assert samples[2] == Sample("z", None, BAD_NO_COMMUNICATION, TS_MS)
    assert samples[4].value == 2.0
    assert isinstance(samples[4].value, float)
    assert decode_record(records[1][1]) == [Sample("y", 1, GOOD, TS_MS)]


def test_bdseq_starts_at_zero_and_wraps() -> None:
    assert [next_bdseq(x) for x in (None, 0, 254, 255)] == [0, 1, 255, 0]


def test_seq_wraps_and_a_retyped_metric_rebirths_its_device() -> None:
    session = EdgeNodeSession("G", "E")
    seqs = [decode_payload(m.payload).seq for m in session.births(0)]
    for i in range(300):
        seqs += [decode_payload(m.payload).seq for m in session.data("d", [Sample("t", i, GOOD, i)],
                                                                      historical=False, now_ms=i)]
    assert seqs == [k % 256 for k in range(301)]  # NBIRTH, DBIRTH, then 299 DDATA
    messages = session.data("d", [Sample("t", "text", GOOD, 1)], historical=False, now_ms=1)
    assert [m.topic for m in messages] == ["spBv1.0/G/DBIRTH/E/d"]
    birth = decode_payload(messages[0].payload)
    assert birth.metrics[0].datatype == DataType.STRING
    assert birth.metrics[0].value == "text"
    # An int under a Double metric is widened, not a reason to re-birth.
    session.data("e", [Sample("f", 1.5, GOOD, 1)], historical=False, now_ms=1)
    (ddata,) = session.data("e", [Sample("f", 2, GOOD, 2)], historical=False, now_ms=2)
    assert decode_payload(ddata.payload).metrics[0].value == 2.0


def test_ddata_reports_changes_only_and_history_always() -> None:
    session = EdgeNodeSession("G", "E")
    session.births(0)
    session.data("d", [Sample("t", 1.0, GOOD, 1)], historical=False, now_ms=1)
    assert session.data("d", [Sample("t", 1.0, GOOD, 2)], historical=False, now_ms=2) == []
    (bad,) = session.data("d", [Sample("t", 1.0, BAD_SENSOR_FAILURE, 3)], historical=False, now_ms=3)
    assert decode_payload(bad.payload).metrics[0].properties == quality_properties(BAD_SENSOR_FAILURE)
    (old,) = session.data("d", [Sample("t", 1.0, BAD_SENSOR_FAILURE, 4)], historical=True, now_ms=4)
    assert decode_payload(old.payload).metrics[0].is_historical


def test_device_first_seen_without_communication_is_announced_when_it_answers() -> None:
    """Nothing for a device hosts never saw online; its first answer is a DBIRTH carrying every tag,
    the ones still without communication included. Info bits (low 16) do not hide a communication loss."""
    session = EdgeNodeSession("G", "E")
    session.births(0)
    lost = [Sample("t", None, BAD_NO_COMMUNICATION, 1), Sample("u", None, BAD_TIMEOUT | 0x0400, 1)]
    assert session.data("d", lost, historical=False, now_ms=1) == []
    assert [m.topic for m in session.births(2)] == ["spBv1.0/G/NBIRTH/E"]
    (birth,) = session.data("d", [Sample("t", 5, GOOD, 3)], historical=False, now_ms=3)
    assert [(m.name, m.value) for m in decode_payload(birth.payload).metrics] == [("t", 5), ("u", None)]


def test_rebirth_command_by_name_or_alias() -> None:
    session = EdgeNodeSession("G", "E")
    by_name = encode_payload(1, [Metric(1, True, DataType.BOOLEAN, name="Node Control/Rebirth")])
    by_alias = encode_payload(1, [Metric(1, True, DataType.BOOLEAN, alias=2)])
    not_asked = encode_payload(1, [Metric(1, False, DataType.BOOLEAN, name="Node Control/Rebirth")])
    assert session.is_rebirth_command(by_name)
    assert session.is_rebirth_command(by_alias)
    assert not session.is_rebirth_command(not_asked)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("group_id", "'a/b'", "sinks.sparkplug.group_id = 'a/b': Value error, must be non-empty"),
     ("edge_node_id", "'n+1'", "sinks.sparkplug.edge_node_id = 'n+1': Value error"),
     ("url", "'http://x'", "sinks.sparkplug.url = 'http://x': Value error, url must start with mqtt://"),
     ("colour", "red", "sinks.sparkplug.colour = 'red': unknown key")],
)
def test_config_errors_name_file_and_key(tmp_path: Path, key: str, value: str, message: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"sinks:\n  sparkplug:\n    enabled: true\n    {key}: {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    (line,) = caught.value.lines
    assert line.startswith(f"{path}: {message}")
