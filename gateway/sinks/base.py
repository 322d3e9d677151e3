"""The Sink protocol: where readings leave the gateway (ARCHITECTURE.md, "Core abstractions").

Every sink owns a durable outbox (:mod:`gateway.sinks.outbox`) and one background task that
forwards it to the remote. ``write`` only encodes and appends to the outbox, so a slow or absent
remote never stalls the pipeline; delivery is at-least-once, in order (conventions §5.1).
Constructors do no I/O; ``start`` opens the outbox and begins connecting; ``close`` is idempotent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from gateway.readings import Reading


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


def outbox_path(data_dir: str | Path, sink_name: str) -> Path:
    """One outbox file per sink under the data directory, e.g. ``<data>/outbox/mqtt.sqlite``."""
    return Path(data_dir) / "outbox" / f"{_UNSAFE.sub('_', sink_name)}.sqlite"
