"""The Sink protocol: where readings leave the gateway (ARCHITECTURE.md, "Core abstractions").

Every sink owns a durable outbox (:mod:`gateway.sinks.outbox`) and one background task that
forwards it to the remote. ``write`` only encodes and appends to the outbox, so a slow or absent
remote never stalls the pipeline; delivery is at-least-once, in order (conventions §5.1).
Constructors do no I/O; ``start`` opens the outbox and begins connecting; ``close`` is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gateway.readings import Reading
from gateway.sinks.outbox_common import OutboxBackend

if TYPE_CHECKING:
    from gateway.sinks.outbox import AsyncOutbox

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SinkStats:
    """A snapshot of one sink's health, for metrics and the REST status endpoint.

    ``published`` counts records the remote acknowledged (MQTT messages or Influx lines);
    ``dropped`` counts records lost on purpose: outbox overflow (oldest first) plus poison batches
    the remote rejected for good. Both loss causes are persistent counters of the outbox.
    """

    connected: bool
    published: int
    errors: int
    dropped: int
    outbox_depth: int
    outbox_oldest_age_s: float


@runtime_checkable
class Sink(Protocol):
    """What the Runtime needs from an output plugin."""

    name: str

    async def start(self) -> None:
        """Open the outbox and start forwarding in the background. Must not fail when the remote
        is unreachable: the sink keeps retrying and reports ``connected=False``."""
        ...

    async def write(self, batch: Sequence[Reading]) -> None:
        """Encode ``batch`` and append it to the durable outbox. Never waits on the network."""
        ...

    async def close(self) -> None:
        """Drain what can be sent within the sink's close timeout, then stop. Idempotent."""
        ...

    def stats(self) -> SinkStats: ...


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def outbox_path(data_dir: str | Path, sink_name: str, backend: OutboxBackend = "sqlite") -> Path:
    """One outbox per sink under the data directory: ``<data>/outbox/mqtt.sqlite`` (a file), or
    ``<data>/outbox/mqtt.log`` (a directory of segment files) with the ``log`` store."""
    suffix = ".log" if backend == "log" else ".sqlite"
    return Path(data_dir) / "outbox" / f"{_UNSAFE.sub('_', sink_name)}{suffix}"


async def open_outbox(data_dir: str | Path, sink_name: str, max_rows: int, *, backend: OutboxBackend = "sqlite",
                      tail_max: int = 20_000) -> AsyncOutbox:
    """Open the sink's outbox in the chosen store (``gateway.outbox``). Records a previous run left in
    the other store are moved into this one first, in order, and the other store is then removed:
    switching stores loses nothing."""
    from gateway.sinks.outbox import AsyncOutbox

    outbox = await AsyncOutbox.open(outbox_path(data_dir, sink_name, backend), max_rows, tail_max=tail_max,
                                    backend=backend)
    other: OutboxBackend = "log" if backend == "sqlite" else "sqlite"
    old_path = outbox_path(data_dir, sink_name, other)
    if old_path.exists():
        old = await AsyncOutbox.open(old_path, max_rows, tail_max=0, backend=other)
        moved = 0
        try:
            while batch := await old.peek(10_000):
                await outbox.append([(r.key, r.payload) for r in batch], [r.items for r in batch])
                moved += await old.ack(batch[-1].id)
            counters = (old.dropped_total, old.discarded_total)
        finally:
            await old.close()
        _remove_store(old_path)
        log.info("%s: moved %d items from the %s outbox %s (its dropped/discarded counters %d/%d start over)",
                 sink_name, moved, other, old_path, *counters)
    return outbox


def _remove_store(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
        return
    for suffix in ("", "-wal", "-shm"):  # SQLite's database file and its WAL companions
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class OutboxForwarding:
    """What every outbox-backed sink shares: draining on close and reporting its stats.

    The sink sets ``_outbox`` in ``start``, sets ``_acked`` whenever records leave the outbox, and
    keeps the counters; records are removed only once the remote end acknowledged them.
    """

    name: str
    close_timeout_s: float
    _outbox: AsyncOutbox | None
    _task: asyncio.Task[None] | None
    _wake: asyncio.Event
    _acked: asyncio.Event
    _connected: bool
    _closed: bool
    _published: int
    _errors: int
    _outage_since: float | None

    def _init_forwarding(self) -> None:
        """The state every outbox-backed sink starts with (constructors call this; no I/O)."""
        self._outbox = None
        self._task = None
        self._wake = asyncio.Event()  # set when there is something new to forward
        self._acked = asyncio.Event()  # set whenever records left the outbox
        self._connected = False
        self._closed = False
        self._published = 0
        self._errors = 0
        self._outage_since = None

    def _went_down(self) -> bool:
        """Mark the link down; True only at the start of an outage, so it is logged once, not per retry."""
        self._connected = False
        if self._outage_since is not None:
            return False
        self._outage_since = time.monotonic()
        return True

    def _broker_lost(self, url: str, why: str) -> None:
        """An MQTT link dropped: count it and log the outage once. Our own disconnect while closing
        is neither an error nor an outage."""
        if self._closed and self._connected:
            self._connected = False
            return
        self._errors += 1
        if self._went_down():
            log.warning("%s: broker %s unavailable (%s); buffering in the outbox and retrying", self.name, url, why)

    def _came_up(self) -> float | None:
        """Mark the link up; the length of the outage that just ended, if one did."""
        self._connected = True
        since, self._outage_since = self._outage_since, None
        return None if since is None else time.monotonic() - since

    async def _drain(self, timeout_s: float, *, only_while_connected: bool = False) -> None:
        """Wait until the outbox is empty or ``timeout_s`` passes (or the link is gone, if asked)."""
        deadline = time.monotonic() + timeout_s
        while self._outbox is not None and self._outbox.depth() > 0:
            if only_while_connected and not self._connected:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("%s: closing with %d records still in the outbox", self.name, self._outbox.depth())
                return
            self._acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), remaining)

    async def _stop_forwarding(self, *, drain: bool, only_while_connected: bool = True) -> None:
        """Let the task forward what it can within ``close_timeout_s`` (if ``drain``), then stop it."""
        if self._task is None:
            return
        if drain:
            await self._drain(self.close_timeout_s, only_while_connected=only_while_connected)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _ack_upto(self, upto: int) -> int:
        """Remove records up to ``upto`` from the outbox; how many went."""
        assert self._outbox is not None
        removed = await self._outbox.ack(upto)
        self._acked.set()
        return removed

    def _stats(self, extra_dropped: int = 0) -> SinkStats:
        outbox = self._outbox
        return SinkStats(
            connected=self._connected,
            published=self._published,
            errors=self._errors,
            dropped=(outbox.dropped_total + outbox.discarded_total if outbox else 0) + extra_dropped,
            outbox_depth=outbox.depth() if outbox else 0,
            outbox_oldest_age_s=outbox.oldest_age_s() if outbox else 0.0,
        )

