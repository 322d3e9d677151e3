"""The publisher's data-change check decides exactly as asyncua's for the default trigger."""

from __future__ import annotations

from datetime import UTC, datetime

from asyncua import ua
from asyncua.server.monitored_item_service import MonitoredItemService, MonitoredItemValues
from hypothesis import given
from hypothesis import strategies as st

from devices.opcua._ua import datavalue, scalar_variant, status
from devices.opcua.publisher import _status_or_value_changed

TS = datetime(2026, 11, 21, 20, 0, tzinfo=UTC)
_STATUSES = [status(0), status(0), status(0x80310000), status(0x40900000)]  # a shared Good and a copy

_values = st.one_of(
    st.tuples(st.just(ua.VariantType.Float), st.sampled_from([0.0, 1.5, -2.25, 1e30])),
    st.tuples(st.just(ua.VariantType.Double), st.sampled_from([0.0, 1.5, 3.0])),
    st.tuples(st.just(ua.VariantType.UInt32), st.sampled_from([0, 1, 7])),
    st.tuples(st.just(ua.VariantType.Boolean), st.booleans()),
    st.none(),  # a Bad value: a Null Variant
)


@st.composite
def datavalues(draw: st.DrawFn) -> ua.DataValue:
    picked = draw(_values)
    variant = ua.Variant() if picked is None else scalar_variant(picked[1], picked[0])
    return datavalue(variant, draw(st.sampled_from(_STATUSES)), TS, TS)


@given(st.one_of(st.none(), datavalues()), datavalues())
def test_same_decision_as_asyncua(old: ua.DataValue | None, new: ua.DataValue) -> None:
    values = MonitoredItemValues()
    values.old_dvalue, values.current_dvalue = old, new
    expected = MonitoredItemService._is_data_changed(values, ua.DataChangeTrigger.StatusValue)
    assert _status_or_value_changed(old, new) is expected
