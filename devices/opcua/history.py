"""History of analog variables for HistoryRead (ReadRawModifiedDetails), fed by the publisher.

Why not ``server.historize_node_data_change``: it creates an internal subscription with one monitored
item per node, so every value change of every historized variable would travel the publisher's
notifier -> monitored item -> subscription -> ``create_task(save)`` path (tens of microseconds each),
and setup costs one monitored item per variable. Here the publisher appends the DataValue it has just
built to a per-variable deque during the scan (about a microsecond), and asyncua's HistoryManager
reads through this storage.

Why not asyncua's ``HistoryDict``: it trims by *wall-clock* age of the SourceTimestamp, but our source
timestamps are plant time (virtual, possibly accelerated or in the future), and ``list.pop(0)`` is
O(n). The window here is relative to the variable's newest SourceTimestamp, and the newest value at or
before the window start is kept as well, so a trend of the window starts with the value then in force
(values are only written on change, publisher.py).

Cost: setup is one empty deque per analog variable (10,000 variables: ~10 ms, ~1 MB). Per scan, the
bench (bench/opcua_bench.py --history-window 60, ~4,700 changed analog values per scan) measured the
scan going from ~10 ms to 40-55 ms; with the garbage collector disabled, 23 ms — half the cost is GC
passes over the DataValues history keeps alive, the rest appending and trimming. Memory grows
with window x change rate: a DataValue is ~400 bytes, so 10,000 variables changing every 100 ms scan
with a one-hour window hold 360 million values (~140 GB) — keep ``history_window_s`` short (minutes)
for big, fast plants, or history only a small PLC. Values are in memory only and lost on restart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

from asyncua import ua
from asyncua.server.history import HistoryStorageInterface

History = deque[ua.DataValue]

_EPOCH = ua.get_win_epoch()


def _ts(datavalue: ua.DataValue) -> datetime:
    """The SourceTimestamp; the publisher sets one on every value it writes."""
    return cast(datetime, datavalue.SourceTimestamp)


class PlantHistory(HistoryStorageInterface):
    """In-memory raw history per variable, windowed in plant time."""

    def __init__(self, window_s: float, max_history_data_response_size: int = 10000) -> None:
        super().__init__(max_history_data_response_size)
        self._window = timedelta(seconds=window_s)
        self._data: dict[ua.NodeId, History] = {}
        self._now: datetime | None = None

    def track(self, nodeids: Iterable[ua.NodeId]) -> list[History]:
        """Historize ``nodeids``; returns their deques, in order, for the publisher to append to."""
        return [self._data.setdefault(nodeid, deque()) for nodeid in nodeids]

    def advance(self, now: datetime) -> None:
        """The plant time of the latest scan (the publisher calls this every scan): the window ends
        here even for variables that have not changed since."""
        self._now = now

    def append(self, history: History, datavalue: ua.DataValue) -> None:
        """Called by the publisher during a scan: synchronous and O(1) amortised."""
        history.append(datavalue)
        self._trim(history)

    def _trim(self, history: History) -> None:
        if self._now is None:
            return
        cutoff = self._now - self._window
        # Keep history[0] while history[1] is still at or before the cutoff: the value in force then.
        while len(history) > 1 and _ts(history[1]) <= cutoff:
            history.popleft()

    def __contains__(self, nodeid: object) -> bool:
        return nodeid in self._data

    # --- HistoryStorageInterface ------------------------------------------------------------------

    async def init(self) -> None:
        return None

    async def new_historized_node(self, node_id: ua.NodeId, period: timedelta | None, count: int = 0) -> None:
        self._data.setdefault(node_id, deque())

    async def save_node_value(self, node_id: ua.NodeId, datavalue: ua.DataValue) -> None:
        history = self._data.get(node_id)
        if history is not None:
            self.append(history, datavalue)

    async def read_node_history(
        self, node_id: ua.NodeId, start: datetime | None, end: datetime | None, nb_values: int
    ) -> tuple[list[ua.DataValue], datetime | None]:
        """Same semantics as asyncua's HistoryDict (OPC 10000-11 §6.4.3.2): a missing StartTime
        reads backwards from EndTime (newest first), a missing EndTime forwards from StartTime,
        StartTime > EndTime backwards; the continuation point is the SourceTimestamp of the first
        value not returned when the response is capped (asyncua reads on from it as a StartTime)."""
        history = self._data.get(node_id)
        if history is None:
            return [], None
        self._trim(history)
        start = start or _EPOCH
        end = end or _EPOCH
        if start == _EPOCH:
            results = [dv for dv in reversed(history) if end == _EPOCH or _ts(dv) <= end]
        elif end == _EPOCH:
            results = [dv for dv in history if start <= _ts(dv)]
        elif start > end:
            results = [dv for dv in reversed(history) if end <= _ts(dv) <= start]
        else:
            results = [dv for dv in history if start <= _ts(dv) <= end]
        if nb_values and len(results) > nb_values:
            results = results[:nb_values]
        cont: datetime | None = None
        if len(results) > self.max_history_data_response_size:
            cont = _ts(results[self.max_history_data_response_size])
            results = results[: self.max_history_data_response_size]
        return results, cont

    async def new_historized_event(
        self, source_id: ua.NodeId, evtypes: Any, period: timedelta | None, count: int = 0
    ) -> None:
        raise NotImplementedError("event history is not kept (alarms.py)")

    async def save_event(self, event: Any) -> None:
        return None

    async def read_event_history(
        self, source_id: ua.NodeId, start: datetime | None, end: datetime | None, nb_values: int, evfilter: Any
    ) -> tuple[list[Any], datetime | None]:
        return [], None

    async def stop(self) -> None:
        self._data.clear()
