"""From a source's batch to every consumer: processors, the latest-values cache, then the sinks.

The pipeline never waits on the network: sinks take a batch into their durable outbox and publish
from their own tasks, so a slow broker cannot stall polling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from gateway.latest import LatestValues
from gateway.readings import Reading
from gateway.sinks.base import Sink

log = logging.getLogger(__name__)

# What decides which readings of a batch go to the sinks (processors.py): report by exception, or
# holding back repeated Bad states.
BatchFilter = Callable[[list[Reading]], list[Reading]]


class Pipeline:
    def __init__(
        self,
        sinks: Sequence[Sink],
        latest: LatestValues,
        filter_: BatchFilter | None = None,
    ) -> None:
        self.sinks = tuple(sinks)
        self.latest = latest
        self._filter = filter_
        self.readings_in = 0
        self.readings_out = 0

    async def on_batch(self, readings: list[Reading]) -> None:
        self.readings_in += len(readings)
        self.latest.update(readings)
        batch = self._filter(readings) if self._filter is not None else readings
        if not batch:
            return
        self.readings_out += len(batch)
        for sink in self.sinks:
            await sink.write(batch)
