"""The latest-values route renders its JSON without the response model (for speed); these tests hold
that rendering equal to the documented model's, and show a cached rendering never outlives a change."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway.api.routes_assets import AssetValues, TagReading
from gateway.api.state import AssetInfo
from gateway.api.values_json import render_values
from gateway.common.status import status_name
from gateway.readings import Reading, TagValue
from tests.test_api_routes import T0, start_api

INFO = AssetInfo(id="conveyor-01", type="conveyor", plc="plc-shop", site="factory", area="shop")

values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**63), 2**63 - 1),
                   st.booleans(), st.text(max_size=20))
stamps = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
qualities = st.sampled_from([0, 0x40000000, 0x80000000, 0x808A0000, 0x80310000])


@given(st.dictionaries(st.text(min_size=1, max_size=12), st.tuples(st.none() | values, qualities, stamps,
                                                                   st.none() | st.just("MTS")), max_size=8))
def test_rendering_equals_the_response_model(
        tags: dict[str, tuple[TagValue | None, int, datetime, str | None]]) -> None:
    readings = {tag: Reading("plc-shop", "conveyor-01", tag, value, quality, ts, ts, "factory", "shop", unit)
                for tag, (value, quality, ts, unit) in tags.items()}
    model = AssetValues(**vars(INFO), values={
        tag: TagReading(value=r.value, unit=r.unit, quality=r.quality_name, status_code=r.quality,
                        status=status_name(r.quality), source_ts=r.source_ts, source=r.device)
        for tag, r in sorted(readings.items())})
    rendered = render_values(INFO, readings)
    assert rendered.decode() == model.model_dump_json()  # byte for byte, NaN as null included
    assert list(json.loads(rendered)["values"]) == sorted(readings)


async def test_values_follow_every_update(tmp_path: Path) -> None:
    api, _ = await start_api(tmp_path)
    try:
        url, auth = "/api/v1/assets/conveyor-01/values", api.auth("viewer")
        first = (await api.client.get(url, headers=auth)).json()
        again = (await api.client.get(url, headers=auth)).json()
        assert again == first
        later = T0 + timedelta(minutes=1)
        api.state.latest.update([Reading("plc-shop", "conveyor-01", "belt_speed", math.pi, 0, later, later,
                                         "factory", "shop", "MTS")])
        after = (await api.client.get(url, headers=auth)).json()
        assert after["values"]["belt_speed"]["value"] == math.pi
        assert after["values"]["belt_speed"]["source_ts"] == "2026-01-01T06:01:00Z"
        assert after["values"]["speed_setpoint"] == first["values"]["speed_setpoint"]
        api.state.latest.update([Reading("plc-shop", "lathe-01", "rpm", 1.0, 0, later, later, "factory", "shop")])
        assert (await api.client.get(url, headers=auth)).json() == after  # another asset's update
        legacy = (await api.client.get("/api/v1/devices/conveyor-01", headers=auth)).json()
        assert legacy == after  # the older route returns the same document
    finally:
        await api.client.aclose()
        await api.snapshots.close()
        await api.services.close()
