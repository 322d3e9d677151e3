"""Pure Modbus read planner: merge the points of a map into as few requests as possible.

Requests are grouped per (unit id, table) and never exceed the protocol limits of
../shared/reference/conventions.md §2.2: 125 registers (FC03/FC04) or 2000 bits (FC01/FC02).
A point is never split across two requests.

The gap rule (why reading "a few spare registers" is not free): many devices, the TwinEdge plant
among them (conventions §2.6), answer exception 02 for an unmapped address, even one inside a block,
and a single bad address fails the whole request. So two points are merged across a gap only when

1. the gap is at most ``max_gap`` addresses, and
2. every address in the gap is *declared readable*: covered by another point of the map that is not
   polled as a tag (a command coil, the heartbeat, a status register) or by a block the map says is
   contiguous and fully readable (``readable`` spans, e.g. one asset's block in a vendor manual).

With no declared spans, only adjacent or overlapping points are merged. Under these constraints the
left-to-right greedy sweep is optimal (any sub-run of a valid request is itself valid), which the
property tests check against a brute-force search.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

Table = Literal["coil", "discrete_input", "input_register", "holding_register"]
BIT_TABLES: Final[frozenset[str]] = frozenset({"coil", "discrete_input"})
MAX_REGISTERS: Final = 125  # Modbus Application Protocol V1.1b3, FC03/FC04 quantity
MAX_BITS: Final = 2000  # FC01/FC02 quantity


class PlanError(ValueError):
    """A point cannot be read at all (e.g. wider than one request)."""


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One point to read; ``key`` identifies it to the caller (e.g. (asset, tag))."""

    unit_id: int
    table: Table
    address: int
    count: int
    key: Hashable

    @property
    def end(self) -> int:  # exclusive
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class Span:
    """Addresses [address, address + count) of one table and unit known to be readable."""

    unit_id: int
    table: Table
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class ReadRequest:
    unit_id: int
    table: Table
    address: int
    count: int
    items: tuple[PlanItem, ...]

    @property
    def end(self) -> int:
        return self.address + self.count

    def slice(self, item: PlanItem) -> slice:
        """Where ``item`` sits in this request's response."""
        return slice(item.address - self.address, item.end - self.address)


def _limit(table: Table, max_registers: int, max_bits: int) -> int:
    return max_bits if table in BIT_TABLES else max_registers


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _covered(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """True if [start, end) lies inside one merged range (ranges are disjoint and sorted)."""
    return any(lo <= start and end <= hi for lo, hi in ranges)


def plan_reads(
    items: Sequence[PlanItem],
    *,
    max_gap: int = 0,
    readable: Iterable[Span] = (),
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[ReadRequest]:
    """Requests covering every item, sorted by unit, table and address."""
    if max_gap < 0:
        raise PlanError("max_gap must be >= 0")
    groups: dict[tuple[int, Table], list[PlanItem]] = defaultdict(list)
    for item in items:
        limit = _limit(item.table, max_registers, max_bits)
        if item.count < 1 or item.count > limit:
            raise PlanError(f"{item.key!r}: count {item.count} outside 1..{limit} for {item.table}")
        if item.address < 0 or item.end > 0x10000:
            raise PlanError(f"{item.key!r}: addresses {item.address}..{item.end - 1} outside 0..65535")
        groups[(item.unit_id, item.table)].append(item)
    spans: dict[tuple[int, Table], list[tuple[int, int]]] = defaultdict(list)
    for span in readable:
        spans[(span.unit_id, span.table)].append((span.address, span.address + span.count))

    requests: list[ReadRequest] = []
    for group_key in sorted(groups):
        unit_id, table = group_key
        limit = _limit(table, max_registers, max_bits)
        ordered = sorted(groups[group_key], key=lambda i: (i.address, i.end))
        # Polled points are readable too: a gap may be partly filled by one and partly by a span.
        safe = _merge_ranges([*spans[group_key], *((i.address, i.end) for i in ordered)])
        run: list[PlanItem] = []
        start = end = 0
        for item in ordered:
            if run:
                new_end = max(end, item.end)
                gap_ok = item.address <= end or (
                    item.address - end <= max_gap and _covered(safe, end, item.address)
                )
                if gap_ok and new_end - start <= limit:
                    run.append(item)
                    end = new_end
                    continue
                requests.append(ReadRequest(unit_id, table, start, end - start, tuple(run)))
            run, start, end = [item], item.address, item.end
        if run:
            requests.append(ReadRequest(unit_id, table, start, end - start, tuple(run)))
    return requests
