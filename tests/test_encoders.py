"""Table-driven tests for the pure payload encoders (UNS JSON, line protocol)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.common.status import BAD_NO_COMMUNICATION, GOOD, UNCERTAIN_LAST_USABLE_VALUE
from gateway.encoders.line_protocol import (
    LineProtocolEncoder,
    encode_line,
    escape_string_field,
    escape_tag,
    format_fields,
    to_ns,
)
from gateway.encoders.uns_json import UnsJsonEncoder, format_ts, sanitize_level
from gateway.readings import Reading

TS = datetime(2026, 11, 21, 13, 55, 1, 123456, tzinfo=UTC)


def reading(tag: str = "belt_speed", value: object = 3.4, quality: int = GOOD, **kw: object) -> Reading:
    base: dict[str, object] = {
        "device": "plc1",
        "asset": "conveyor-01",
        "tag": tag,
        "value": value,
        "quality": quality,
        "source_ts": TS,
        "gateway_ts": TS + timedelta(milliseconds=5),
        "site": "mine-a",
        "area": "level-3",
        "unit": "MTS",
    }
    base.update(kw)
    return Reading(**base)  # type: ignore[arg-type]


# -- UNS JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "level"),
    [
        ("Conveyor 01", "conveyor-01"),
        ("a+b#c/d$e", "a-b-c-d-e"),
        ("", "unknown"),
        ("  ", "unknown"),
        ("Level_3", "level_3"),
        ("Zone.é", "zone--"),
    ],
)
def test_sanitize_level(raw: str, level: str) -> None:
    assert sanitize_level(raw) == level


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (TS, "2026-11-21T13:55:01.123Z"),
        (datetime(2026, 1, 1), "2026-01-01T00:00:00.000Z"),  # naive = UTC
        (
            datetime(2026, 1, 1, 2, 0, 0, 999999, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-01T00:00:00.999Z",
        ),
    ],
)
def test_format_ts(ts: datetime, text: str) -> None:
    assert format_ts(ts) == text


def test_asset_layout_one_message_per_asset() -> None:
    enc = UnsJsonEncoder("Acme/Twin Edge", "asset")
    msgs = enc.encode(
        [
            reading("belt_speed", 3.4),
            reading("running", True, unit=None),
            reading("x", None, BAD_NO_COMMUNICATION, asset="Pump 2", area=""),
        ]
    )
    assert [m.topic for m in msgs] == [
        "acme/twin-edge/mine-a/level-3/conveyor-01",
        "acme/twin-edge/mine-a/unknown/pump-2",
    ]
    p = json.loads(msgs[0].payload)
    assert p == {
        "ts": "2026-11-21T13:55:01.123Z",
        "asset": "conveyor-01",
        "device": "plc1",
        "values": {
            "belt_speed": {
                "value": 3.4,
                "unit": "MTS",
                "quality": "Good",
                "status_code": 0,
                "source_ts": "2026-11-21T13:55:01.123Z",
            },
            "running": {
                "value": True,
                "unit": None,
                "quality": "Good",
                "status_code": 0,
                "source_ts": "2026-11-21T13:55:01.123Z",
            },
        },
    }
    bad = json.loads(msgs[1].payload)["values"]["x"]
    assert bad["value"] is None
    assert bad["quality"] == "Bad"
    assert bad["status_code"] == BAD_NO_COMMUNICATION


def test_asset_layout_repeated_tag_starts_new_message() -> None:
    # Two polls in one batch: both samples must be published, in order.
    later = TS + timedelta(seconds=1)
    msgs = UnsJsonEncoder().encode([reading(value=1.0), reading(value=2.0, source_ts=later)])
    assert len(msgs) == 2
    assert [json.loads(m.payload)["values"]["belt_speed"]["value"] for m in msgs] == [1.0, 2.0]
    assert json.loads(msgs[1].payload)["ts"] == "2026-11-21T13:55:02.123Z"


def test_asset_message_ts_is_its_newest_sample() -> None:
    """Tags of one asset with different source timestamps (OPC UA notifications of several scans,
    naive and aware stamps mixed): the message's ``ts`` is the newest of them."""
    older, newest = TS - timedelta(seconds=2), TS + timedelta(milliseconds=500)
    batch = [reading("a", source_ts=older), reading("b", source_ts=newest.replace(tzinfo=None)),
             reading("c", source_ts=TS)]
    payload = json.loads(UnsJsonEncoder().encode(batch)[0].payload)
    assert payload["ts"] == "2026-11-21T13:55:01.623Z"
    assert [payload["values"][t]["source_ts"] for t in "abc"] == [
        "2026-11-21T13:54:59.123Z", "2026-11-21T13:55:01.623Z", "2026-11-21T13:55:01.123Z"]


def test_tag_layout_plain_json_contract() -> None:
    msgs = UnsJsonEncoder("twinedge", "tag").encode(
        [reading("Motor.Current", float("nan"), UNCERTAIN_LAST_USABLE_VALUE)]
    )
    assert msgs[0].topic == "twinedge/mine-a/level-3/conveyor-01/motor-current"
    assert json.loads(msgs[0].payload) == {
        "ts": "2026-11-21T13:55:01.123Z",
        "asset": "conveyor-01",
        "device": "plc1",
        "signal": "Motor.Current",
        "value": None,  # NaN is not JSON
        "unit": "MTS",
        "quality": "Uncertain",
        "status_code": UNCERTAIN_LAST_USABLE_VALUE,
    }


# -- line protocol ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("a b", r"a\ b"),
        ("a,b", r"a\,b"),
        ("a=b", r"a\=b"),
        ("a\nb", r"a\ b"),
        ('q"uote', 'q"uote'),  # quotes need no escaping in tags
        ("end\\", "end\\\\"),
    ],
)
def test_escape_tag(raw: str, escaped: str) -> None:
    assert escape_tag(raw) == escaped


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("ok", '"ok"'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("two\nlines", r'"two\nlines"'),
        ("a,b=c d", '"a,b=c d"'),
    ],
)
def test_escape_string_field(raw: str, escaped: str) -> None:
    assert escape_string_field(raw) == escaped


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        (3.4, "value=3.4,status=0i"),
        (3, "value=3.0,status=0i"),  # ints as float: no field type conflict (§4.1)
        (True, "value=1.0,status=0i"),
        (False, "value=0.0,status=0i"),
        (None, "status=0i"),
        (float("inf"), "status=0i"),
        ("Running", 'value_str="Running",status=0i'),
        (1e21, "value=1e+21,status=0i"),
    ],
)
def test_format_fields(value: object, fields: str) -> None:
    assert format_fields(value, 0) == fields


def test_encode_line_narrow_schema() -> None:
    line = encode_line(reading(asset="Conveyor 01", area="level,3"))
    assert line == (
        r"telemetry,area=level\,3,asset=Conveyor\ 01,device=plc1,quality=Good,site=mine-a,tag=belt_speed,"
        r"unit=MTS value=3.4,status=0i 1795269301123456000"
    )


def test_empty_tags_omitted_and_bad_quality() -> None:
    line = encode_line(reading(value=None, quality=BAD_NO_COMMUNICATION, site="", unit=None))
    assert line == (
        "telemetry,area=level-3,asset=conveyor-01,device=plc1,quality=Bad,tag=belt_speed "
        f"status={BAD_NO_COMMUNICATION}i 1795269301123456000"
    )


def test_to_ns_exact() -> None:
    assert to_ns(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert to_ns(datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC)) == 9223372036854775000
    assert to_ns(datetime(2026, 1, 1)) == to_ns(datetime(2026, 1, 1, tzinfo=UTC))


def test_encoder_cache_matches_encode_line() -> None:
    enc = LineProtocolEncoder(cache_size=2)
    batch = [reading(tag=f"t{i % 3}", value=float(i)) for i in range(10)]
    assert enc.encode(batch) == [encode_line(r) for r in batch]
