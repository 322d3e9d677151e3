"""Read-planner tests: worked examples plus hypothesis properties against a brute-force optimum."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sources.modbus_planner import (
    MAX_BITS,
    MAX_REGISTERS,
    PlanError,
    PlanItem,
    ReadRequest,
    Span,
    Table,
    plan_reads,
)


def item(address: int, count: int = 1, table: Table = "holding_register", unit: int = 1) -> PlanItem:
    return PlanItem(unit, table, address, count, (unit, table, address, count))


def test_adjacent_points_merge_into_one_request() -> None:
    plan = plan_reads([item(0, 2), item(2, 2), item(4)])
    assert [(r.address, r.count) for r in plan] == [(0, 5)]


def test_gap_is_not_bridged_without_declared_readable_addresses() -> None:
    plan = plan_reads([item(0, 2), item(4, 2)], max_gap=10)
    assert [(r.address, r.count) for r in plan] == [(0, 2), (4, 2)]


def test_gap_bridged_when_declared_readable_and_small_enough() -> None:
    spans = [Span(1, "holding_register", 0, 20)]
    assert [
        (r.address, r.count) for r in plan_reads([item(0, 2), item(4, 2)], max_gap=2, readable=spans)
    ] == [(0, 6)]
    # max_gap still applies inside a readable block
    assert len(plan_reads([item(0, 2), item(10, 2)], max_gap=2, readable=spans)) == 2


def test_tables_and_units_never_share_a_request() -> None:
    plan = plan_reads([item(0), item(1, table="input_register"), item(2, unit=2), item(3)])
    keys = {(r.unit_id, r.table) for r in plan}
    assert keys == {(1, "holding_register"), (1, "input_register"), (2, "holding_register")}


def test_limits_split_requests_but_never_a_point() -> None:
    regs = plan_reads([item(a, 2) for a in range(0, 300, 2)])
    assert all(r.count <= MAX_REGISTERS for r in regs)
    assert [r.count for r in regs] == [124, 124, 52]  # 125 would split a float32
    bits = plan_reads([item(a, table="coil") for a in range(4500)])
    assert [r.count for r in bits] == [2000, 2000, 500]


def test_rejects_points_too_wide_or_out_of_range() -> None:
    with pytest.raises(PlanError):
        plan_reads([item(0, 126)])
    with pytest.raises(PlanError):
        plan_reads([item(65535, 2)])


def test_slice_locates_a_point_in_the_response() -> None:
    (request,) = plan_reads([item(10, 2), item(12, 1)])
    assert request.slice(request.items[1]) == slice(2, 3)


# --- properties ------------------------------------------------------------------------------

TABLES: list[Table] = ["coil", "discrete_input", "input_register", "holding_register"]

items_st = st.lists(
    st.builds(
        item,
        address=st.integers(0, 400),
        count=st.integers(1, 4),
        table=st.sampled_from(TABLES),
        unit=st.integers(1, 2),
    ),
    max_size=40,
)
spans_st = st.lists(
    st.builds(
        Span,
        unit_id=st.integers(1, 2),
        table=st.sampled_from(TABLES),
        address=st.integers(0, 400),
        count=st.integers(1, 60),
    ),
    max_size=5,
)


def _fix_bits(items: list[PlanItem]) -> list[PlanItem]:
    return [
        PlanItem(
            i.unit_id, i.table, i.address, 1 if i.table in ("coil", "discrete_input") else i.count, i.key
        )
        for i in items
    ]


def _readable(items: list[PlanItem], spans: list[Span]) -> set[tuple[int, str, int]]:
    out = {(i.unit_id, i.table, a) for i in items for a in range(i.address, i.end)}
    out |= {(s.unit_id, s.table, a) for s in spans for a in range(s.address, s.address + s.count)}
    return out


def _valid(run: list[PlanItem], readable: set[tuple[int, str, int]], max_gap: int, limit: int) -> bool:
    start, end = run[0].address, max(i.end for i in run)
    if end - start > limit:
        return False
    reach = run[0].end
    for nxt in run[1:]:
        if nxt.address > reach:
            gap = range(reach, nxt.address)
            if len(gap) > max_gap or any((nxt.unit_id, nxt.table, a) not in readable for a in gap):
                return False
        reach = max(reach, nxt.end)
    return True


def _optimum(items: list[PlanItem], readable: set[tuple[int, str, int]], max_gap: int, limit: int) -> int:
    ordered = sorted(items, key=lambda i: (i.address, i.end))

    @cache
    def best(k: int) -> int:  # fewest requests for ordered[k:]
        if k == len(ordered):
            return 0
        return min(
            1 + best(j)
            for j in range(k + 1, len(ordered) + 1)
            if _valid(ordered[k:j], readable, max_gap, limit)
        )

    return best(0)


@settings(max_examples=200, deadline=None)
@given(items=items_st, spans=spans_st, max_gap=st.integers(0, 8), max_registers=st.integers(4, 20))
def test_plan_properties(items: list[PlanItem], spans: list[Span], max_gap: int, max_registers: int) -> None:
    items = _fix_bits(items)
    plan = plan_reads(items, max_gap=max_gap, readable=spans, max_registers=max_registers, max_bits=30)
    readable = _readable(items, spans)

    # every point is read exactly once, whole, by a request of its own unit and table
    seen = [i for r in plan for i in r.items]
    assert sorted(seen, key=repr) == sorted(items, key=repr)
    for r in plan:
        limit = 30 if r.table in ("coil", "discrete_input") else max_registers
        assert 1 <= r.count <= limit
        for i in r.items:
            assert (i.unit_id, i.table) == (r.unit_id, r.table)
            assert r.address <= i.address
            assert i.end <= r.end
        # never an address the map does not declare readable
        assert all((r.unit_id, r.table, a) in readable for a in range(r.address, r.end))

    # as few requests as possible, per unit and table
    groups: dict[tuple[int, str], list[PlanItem]] = {}
    for i in items:
        groups.setdefault((i.unit_id, i.table), []).append(i)
    for (unit, table), members in groups.items():
        limit = 30 if table in ("coil", "discrete_input") else max_registers
        ours = sum(1 for r in plan if (r.unit_id, r.table) == (unit, table))
        assert ours == _optimum(members, readable, max_gap, limit)


@given(items=items_st)
def test_plan_is_deterministic_and_order_independent(items: list[PlanItem]) -> None:
    items = _fix_bits(items)
    a: list[ReadRequest] = plan_reads(items)
    b = plan_reads(list(reversed(items)))
    assert [(r.unit_id, r.table, r.address, r.count) for r in a] == [
        (r.unit_id, r.table, r.address, r.count) for r in b
    ]


def test_protocol_limits_are_the_spec_values() -> None:
    assert (MAX_REGISTERS, MAX_BITS) == (125, 2000)
