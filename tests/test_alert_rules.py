"""The alert rule engine, table-driven: each case is a rule, a sequence of samples and the
transitions expected after each one. Pure: no database, no event loop."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.alerts.rules import AlertEngine, AlertRuleConfig
from gateway.common.status import BAD_NO_COMMUNICATION, GOOD, UNCERTAIN_LAST_USABLE_VALUE
from gateway.readings import Reading, TagValue

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def reading(t: float, value: TagValue | None, *, tag: str = "temp", asset: str = "a1",
            quality: int = GOOD) -> Reading:
    ts = T0 + timedelta(seconds=t)
    return Reading("plc-1", asset, tag, value, quality, ts, ts)


@dataclass
class Case:
    name: str
    rule: dict[str, Any]
    samples: list[tuple[float, TagValue | None] | tuple[float, TagValue | None, int]]
    expected: str  # one char per sample: R raised, C cleared, . nothing


CASES = [
    Case("high raises above threshold, clears below it", {"type": "high", "threshold": 80},
         [(0, 70), (1, 81), (2, 85), (3, 79), (4, 90)], ".R.CR"),
    Case("high at exactly the threshold does not raise", {"type": "high", "threshold": 80},
         [(0, 80), (1, 80.001)], ".R"),
    Case("hysteresis: stays active until below threshold - hysteresis",
         {"type": "high", "threshold": 80, "hysteresis": 5},
         [(0, 81), (1, 78), (2, 76), (3, 75), (4, 81), (5, 74.9)], "R..CRC"),
    Case("low mirrors high with hysteresis", {"type": "low", "threshold": 10, "hysteresis": 2},
         [(0, 9), (1, 11), (2, 12.5), (3, 8)], "R.CR"),
    Case("on-delay: condition must hold for on_delay_s", {"type": "high", "threshold": 80, "on_delay_s": 5},
         [(0, 90), (3, 90), (4, 70), (5, 90), (9, 95), (10, 91), (11, 50)], "....." "RC"),
    Case("bad quality neither raises nor clears", {"type": "high", "threshold": 80},
         [(0, 90), (1, None, BAD_NO_COMMUNICATION), (2, 10, UNCERTAIN_LAST_USABLE_VALUE), (3, 10)], "R..C"),
    Case("rate of change over consecutive samples", {"type": "rate_of_change", "rate_per_s": 2},
         [(0, 10), (1, 11), (2, 15), (3, 16), (5, 12)], "..RC."),
    Case("rate of change with hysteresis", {"type": "rate_of_change", "rate_per_s": 2, "hysteresis": 1},
         [(0, 0), (1, 3), (2, 4.5), (3, 5.5)], ".R.C"),
    Case("state value equals", {"type": "state", "tag": "efficiency_status", "equals": "Low"},
         [(0, "High"), (1, "Low"), (2, "Low"), (3, "Medium")], ".R.C"),
    Case("state numeric equality across int/float, bool is not 1", {"type": "state", "equals": 2},
         [(0, True), (1, 2.0), (2, 1)], ".RC"),
    Case("offline on BadNoCommunication, back on any other quality", {"type": "offline"},
         [(0, 1, GOOD), (1, None, BAD_NO_COMMUNICATION), (2, None, BAD_NO_COMMUNICATION), (3, 5, GOOD)],
         ".R.C"),
    Case("offline with on-delay", {"type": "offline", "on_delay_s": 10},
         [(0, None, BAD_NO_COMMUNICATION), (5, None, BAD_NO_COMMUNICATION), (10, None, BAD_NO_COMMUNICATION)],
         "..R"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule(case: Case) -> None:
    rule = AlertRuleConfig.model_validate({"id": "r", "tag": case.rule.get("tag", "temp"), **case.rule})
    engine = AlertEngine([rule])
    seen = ""
    for sample in case.samples:
        t, value, quality = (*sample, GOOD) if len(sample) == 2 else sample
        events = engine.evaluate([reading(t, value, tag=rule.tag or "temp", quality=quality)],
                                 T0 + timedelta(seconds=t))
        assert len(events) <= 1
        seen += {"raised": "R", "cleared": "C"}[events[0].kind] if events else "."
    assert seen == case.expected


def test_stale_fires_on_time_alone_and_clears_on_fresh_data() -> None:
    engine = AlertEngine([AlertRuleConfig(id="s", type="stale", tag="temp", stale_after_s=10)])
    assert engine.evaluate([reading(0, 1)], T0) == []
    assert engine.evaluate([], T0 + timedelta(seconds=10)) == []
    # the same source timestamp again is not fresh data (a PLC whose clock stopped)
    assert engine.evaluate([reading(0, 1)], T0 + timedelta(seconds=10)) == []
    [raised] = engine.evaluate([], T0 + timedelta(seconds=11))
    assert (raised.kind, raised.asset, raised.severity) == ("raised", "a1", "warning")
    assert engine.evaluate([], T0 + timedelta(seconds=20)) == []
    [cleared] = engine.evaluate([reading(21, 2)], T0 + timedelta(seconds=21))
    assert cleared.kind == "cleared"


def test_one_alert_per_rule_and_asset_and_scoping() -> None:
    rule = AlertRuleConfig(id="h", type="high", tag="temp", threshold=50, assets=("a1", "a2"),
                           severity="critical", message="too hot")
    engine = AlertEngine([rule])
    batch = [reading(0, 60, asset="a1"), reading(0, 70, asset="a1"), reading(0, 60, asset="a2"),
             reading(0, 99, asset="a3"), reading(0, 99, asset="a1", tag="other")]
    events = engine.evaluate(batch, T0)
    assert [(e.kind, e.asset, e.message, e.severity) for e in events] == [
        ("raised", "a1", "too hot", "critical"), ("raised", "a2", "too hot", "critical")]


def test_changed_or_removed_rules_report_their_active_alerts() -> None:
    rule = AlertRuleConfig(id="h", type="high", tag="temp", threshold=50)
    engine = AlertEngine([rule])
    engine.evaluate([reading(0, 60)], T0)
    assert engine.set_rules([rule]) == []  # unchanged: state kept
    assert engine.evaluate([reading(1, 61)], T0) == []
    assert engine.set_rules([rule.model_copy(update={"threshold": 70})]) == [("h", "a1")]
    assert engine.set_rules([]) == []


def test_restore_lets_a_restarted_engine_clear_an_open_alert() -> None:
    engine = AlertEngine([AlertRuleConfig(id="h", type="high", tag="temp", threshold=50)])
    engine.restore([("h", "a1"), ("gone", "a1")])
    [event] = engine.evaluate([reading(0, 10)], T0)
    assert (event.kind, event.rule_id) == ("cleared", "h")


@pytest.mark.parametrize(("fields", "message"), [
    ({"type": "high", "tag": "t"}, "needs threshold"),
    ({"type": "rate_of_change", "tag": "t"}, "needs rate_per_s"),
    ({"type": "stale"}, "needs tag, stale_after_s"),
    ({"type": "state", "tag": "t"}, "needs equals"),
    ({"type": "high", "tag": "t", "threshold": 1, "hysteresis": -1}, "greater than or equal to 0"),
    ({"type": "offline", "colour": "red"}, "Extra inputs are not permitted"),
    ({"type": "banana"}, "Input should be"),
])
def test_invalid_rules_are_refused_with_the_reason(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AlertRuleConfig.model_validate({"id": "r", **fields})
