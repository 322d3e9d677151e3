"""The services' collector settings still collect reference cycles, just less often."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.common.heap import OLDER_THRESHOLD, YOUNG_THRESHOLD, settle_after_startup


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_cycles_are_collected_without_an_explicit_collect(restored_gc: None) -> None:
    settle_after_startup()
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert gc.get_freeze_count() > 0  # start-up objects are out of the collector's way
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # a cycle: reference counting alone cannot free it
    # Enough live allocations for a middle-generation collection too, in case a young one ran
    # between building the cycle and dropping it (the count only grows while objects live).
    n = YOUNG_THRESHOLD * (OLDER_THRESHOLD + 2)
    keep = [[] for _ in range(n)]
    assert gone() is None
    assert len(keep) == n
