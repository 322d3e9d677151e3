"""Report-by-exception: deadbands, heartbeat, quality changes (pure: time is gateway_ts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.common.status import BAD_NO_COMMUNICATION, BAD_TIMEOUT, GOOD, UNCERTAIN_LAST_USABLE_VALUE
from gateway.processors import Deadband, RepeatedBadFilter, ReportByException, changed
from gateway.readings import Reading, TagValue

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def r(value: TagValue | None, t: float = 0.0, quality: int = GOOD, tag: str = "x") -> Reading:
    ts = T0 + timedelta(seconds=t)
    return Reading("plc", "a", tag, value, quality, ts, ts)


@pytest.mark.parametrize(
    ("deadband", "last", "new", "passes"),
    [
        (Deadband(), 1.0, 1.0, False),
        (Deadband(), 1.0, 1.0001, True),
        (Deadband(absolute=0.5), 10.0, 10.5, False),  # exactly the deadband: suppressed (OPC UA: >)
        (Deadband(absolute=0.5), 10.0, 10.51, True),
        (Deadband(absolute=0.5), 10.0, 9.4, True),
        (Deadband(percent=1, eu_range=(0, 200)), 100.0, 101.9, False),  # 1 % of span 200 = 2
        (Deadband(percent=1, eu_range=(0, 200)), 100.0, 102.1, True),
        (Deadband(percent=10), 50.0, 54.0, False),  # no EU range: 10 % of 50
        (Deadband(percent=10), 50.0, 56.0, True),
        (Deadband(absolute=1, percent=10), 50.0, 4.0 + 50.0, False),  # the larger threshold wins
        (Deadband(absolute=100), True, False, True),  # bools pass on change whatever the deadband
        (Deadband(absolute=100), "a", "a", False),
        (Deadband(absolute=100), "a", "b", True),
    ],
)
def test_changed(deadband: Deadband, last: TagValue, new: TagValue, passes: bool) -> None:
    assert changed(r(last), r(new), deadband) is passes


def test_drift_is_measured_from_the_last_passed_value() -> None:
    rbe = ReportByException(default=Deadband(absolute=1.0), max_age_s=None)
    out = [rbe([r(v, t)]) for t, v in enumerate([0.0, 0.4, 0.8, 1.2, 1.3])]
    assert [len(o) for o in out] == [1, 0, 0, 1, 0]


def test_quality_changes_always_pass_and_repeated_bad_is_suppressed() -> None:
    rbe = ReportByException(default=Deadband(absolute=100.0), max_age_s=None)
    assert rbe([r(1.0, 0)])
    assert rbe([r(None, 1, BAD_NO_COMMUNICATION)])
    assert not rbe([r(None, 2, BAD_NO_COMMUNICATION)])
    assert rbe([r(1.0, 3)])  # back to good with the same value: passes


def test_heartbeat_republishes_unchanged_values_after_max_age() -> None:
    rbe = ReportByException(max_age_s=10.0)
    assert rbe([r(5.0, 0)])
    assert not rbe([r(5.0, 9.9)])
    assert rbe([r(5.0, 10.0)])
    assert not rbe([r(5.0, 15.0)])  # the age restarts from the republished reading


def test_per_tag_deadbands_and_forget() -> None:
    rbe = ReportByException({("plc", "a", "y"): Deadband(absolute=10)}, max_age_s=None)
    assert len(rbe([r(0.0, 0, tag="x"), r(0.0, 0, tag="y")])) == 2
    out = rbe([r(1.0, 1, tag="x"), r(1.0, 1, tag="y")])
    assert [o.tag for o in out] == ["x"]
    rbe.forget("plc")
    assert len(rbe([r(1.0, 2, tag="x"), r(1.0, 2, tag="y")])) == 2


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="absolute"):
        Deadband(absolute=-1)
    with pytest.raises(ValueError, match="percent"):
        Deadband(percent=150)
    with pytest.raises(ValueError, match="max_age_s"):
        ReportByException(max_age_s=0)


def test_repeated_bad_passes_once_per_run_and_status() -> None:
    f = RepeatedBadFilter(max_age_s=60)
    bad = BAD_NO_COMMUNICATION
    assert f([r(None, 0, bad), r(None, 0, bad, tag="y")]) == [r(None, 0, bad), r(None, 0, bad, tag="y")]
    assert f([r(None, 1, bad), r(None, 1, bad, tag="y")]) == []  # unchanged Bad: held back
    assert f([r(None, 2, BAD_TIMEOUT), r(None, 2, bad, tag="y")]) == [r(None, 2, BAD_TIMEOUT)]  # new StatusCode
    assert f([r(5.0, 3), r(None, 3, bad, tag="y")]) == [r(5.0, 3)]  # Good ends x's run, y stays held
    assert f([r(None, 4, BAD_TIMEOUT)]) == [r(None, 4, BAD_TIMEOUT)]  # a new run after Good passes again


def test_repeated_bad_heartbeat_and_no_heartbeat() -> None:
    bad = BAD_NO_COMMUNICATION
    f = RepeatedBadFilter(max_age_s=10)
    assert f([r(None, 0, bad)])
    assert not f([r(None, 9.9, bad)])
    assert f([r(None, 10, bad)]) == [r(None, 10, bad)]  # the heartbeat: measured from the last one passed
    assert not f([r(None, 19, bad)])
    never = RepeatedBadFilter(max_age_s=None)
    assert never([r(None, 0, bad)])
    assert not never([r(None, 10_000, bad)])


def test_good_and_uncertain_always_pass_and_order_is_kept() -> None:
    f = RepeatedBadFilter()
    bad = BAD_NO_COMMUNICATION
    f([r(None, 0, bad, tag="b")])
    batch = [r(1.0, 1, tag="a"), r(None, 1, bad, tag="b"), r(2.0, 1, UNCERTAIN_LAST_USABLE_VALUE, tag="c"),
             r(1.0, 1, tag="a")]
    assert f(batch) == [batch[0], batch[2], batch[3]]
    good = [r(float(i), 2, tag=f"t{i}") for i in range(5)]
    assert f(good) is good  # nothing held back: the batch itself, no copy
    with pytest.raises(ValueError, match="max_age_s"):
        RepeatedBadFilter(max_age_s=0)
