"""Poll every source on its own task and hand each batch of readings to one callback.

Rules from the reference gateways (ARCHITECTURE.md habit 4): a source is never polled twice at
once (Telegraf ``gatherOnce``, Home Assistant's DataUpdateCoordinator), because a slow PLC answering
overlapping polls only gets slower. A poll that outlasts its interval is an *overrun*: the missed
slots are skipped, not queued, and counted; the first overrun of a streak is logged at WARNING and
the end of the streak at INFO, so a permanently slow device does not flood the log.
``refresh(source)`` (after a command) polls at once, or right after the poll in progress.

Each source polls on its own phase of the interval grid (Telegraf's ``collection_offset``, chosen
here), so a gateway of many PLCs does not poll them all in the same instant and then process all
their answers in the same few loop iterations, where the last one's next slot is already late.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.common.lifecycle import Service
from gateway.readings import Reading
from gateway.sources.base import Source

log = logging.getLogger(__name__)

_GOLDEN = 0.6180339887498949
OnBatch = Callable[[list[Reading]], Awaitable[None]]


@dataclass
class SourceStats:
    connected: bool = False
    reads: int = 0  # completed polls
    values: int = 0  # readings handed on (any quality)
    bad_values: int = 0  # of which not Good
    errors: int = 0  # polls whose read() or on_batch raised
    overruns: int = 0
    last_duration_s: float = 0.0
    last_error: str | None = None


@dataclass
class _Job:
    source: Source
    interval_s: float
    phase_s: float = 0.0  # offset of this source's slots within the interval
    stats: SourceStats = field(default_factory=SourceStats)
    woken: bool = False  # set by wake() while no poll is waiting; the next wait returns at once
    waiter: asyncio.Future[None] | None = None  # the poll task's wait for its next slot, while it waits
    task: asyncio.Task[None] | None = None
    overrunning: bool = False

    def wake(self) -> None:
        """Poll now, or right after the poll in progress."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        else:
            self.woken = True

    async def until(self, due: float) -> None:
        """Wait for ``due`` (``time.monotonic()``) or a wake(), whichever is first.

        One future resolved by a timer or by wake(): on a busy loop every hop costs an iteration of
        everything else, and ``asyncio.wait_for`` on an Event takes three or four (a task for the
        wait, its cancellation, and the wait for that) where this takes one."""
        if self.woken or due <= time.monotonic():
            self.woken = False
            return
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        # loop.time() is time.monotonic() in asyncio's own loops; converted anyway, as the contract says.
        timer = loop.call_at(loop.time() + (due - time.monotonic()), _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
            self.woken = False


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Poller(Service):
    """``add()`` sources, then ``async with poller:`` (or start/close) runs one task per source."""

    def __init__(self, on_batch: OnBatch) -> None:
        self._on_batch = on_batch
        self._jobs: dict[str, _Job] = {}
        self._running = False

    def add(self, source: Source, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"source {source.name}: interval must be > 0")
        if source.name in self._jobs:
            raise ValueError(f"source {source.name} added twice")
        # Spread the sources' slots over the interval (golden-ratio steps stay apart for any count),
        # so their polls, answers and batches do not all land in the same loop iterations.
        job = _Job(source, interval_s, phase_s=(len(self._jobs) * _GOLDEN) % 1.0 * interval_s)
        self._jobs[source.name] = job
        source.on_data(job.wake)  # data that arrives by itself is handed on at once
        if self._running:
            job.task = asyncio.create_task(self._run(job), name=f"poll:{source.name}")

    def refresh(self, source: str) -> None:
        """Poll ``source`` now (or as soon as its current poll ends). Unknown names raise KeyError."""
        self._jobs[source].wake()

    def sources(self) -> dict[str, Source]:
        return {name: job.source for name, job in self._jobs.items()}

    def stats(self) -> dict[str, SourceStats]:
        for job in self._jobs.values():
            job.stats.connected = job.source.connected
        return {name: job.stats for name, job in self._jobs.items()}

    async def start(self) -> None:
        """Connect sources and start polling; a source that is down does not block the others."""
        self._running = True
        for job in self._jobs.values():
            if job.task is None:
                job.task = asyncio.create_task(self._run(job), name=f"poll:{job.source.name}")

    async def close(self) -> None:
        """Cancel the poll tasks (a poll in flight is abandoned) and close every source."""
        self._running = False
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in self._jobs.values():
            job.task = None
            try:
                await job.source.close()
            except Exception:
                log.exception("source %s: close failed", job.source.name)

    async def _run(self, job: _Job) -> None:
        # Connecting is part of the first poll, at once: read() reconnects by itself with its backoff.
        # The slots after it are on this source's phase of the interval grid.
        due = time.monotonic() + job.phase_s - job.interval_s
        while True:
            await job.until(due)
            started = time.monotonic()
            await self._poll_once(job)
            finished = time.monotonic()
            job.stats.last_duration_s = finished - started
            self._note_overrun(job, finished - started)
            # Stay on the grid of the interval; skip (never queue) slots a long poll missed.
            due += job.interval_s
            if due <= finished:
                due += math.ceil((finished - due) / job.interval_s) * job.interval_s
                if due <= finished:
                    due += job.interval_s

    async def _poll_once(self, job: _Job) -> None:
        name = job.source.name
        try:
            readings = await job.source.read()
        except Exception as exc:
            # Sources report device trouble as bad quality; an exception here is a bug, so log it
            # with a traceback but keep polling: one broken source must not stop the gateway.
            job.stats.errors += 1
            job.stats.last_error = f"read: {exc!r}"
            log.exception("source %s: read() raised", name)
            return
        job.stats.reads += 1
        job.stats.values += len(readings)
        job.stats.bad_values += sum(1 for r in readings if not r.good)
        if not readings:
            return
        try:
            await self._on_batch(readings)
        except Exception as exc:
            job.stats.errors += 1
            job.stats.last_error = f"on_batch: {exc!r}"
            log.exception("source %s: on_batch failed for %d readings", name, len(readings))

    def _note_overrun(self, job: _Job, elapsed: float) -> None:
        if elapsed > job.interval_s:
            job.stats.overruns += 1
            if not job.overrunning:
                job.overrunning = True
                log.warning(
                    "source %s: poll took %.3fs, longer than its %.3fs interval (skipping missed polls)",
                    job.source.name,
                    elapsed,
                    job.interval_s,
                )
        elif job.overrunning:
            job.overrunning = False
            log.info("source %s: polls fit their interval again", job.source.name)
