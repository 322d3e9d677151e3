"""The Source contract and the plumbing every protocol shares: backoff, availability, bad readings.

A source owns one PLC endpoint. Its constructor does no I/O; ``connect()`` tries once and never
raises for an unreachable device (the device may come up later); ``read()`` always returns one
Reading per configured tag, with a bad quality when the value could not be obtained, because
ARCHITECTURE.md makes availability data rather than an exception. Reconnecting happens inside
``read()``, paced by a capped exponential backoff so a dead PLC costs one connect attempt per
backoff step, not one per poll.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from gateway.readings import Reading, TagValue

if TYPE_CHECKING:  # the catalogue imports the Modbus codec of this package
    from gateway.catalogue import Catalogue, CataloguePlc

log = logging.getLogger(__name__)


class SourceError(Exception):
    """A write or command failed: unknown tag, read-only tag, bad value or device refusal."""


class SourceUnavailable(SourceError):
    """The device is not connected, so a write or command was not attempted."""


def catalogue_plc(source: str, plc_id: str, catalogue: Catalogue | None) -> CataloguePlc:
    """The catalogue entry a source's ``plc:`` names, or a SourceError saying what is missing."""
    if catalogue is None:
        raise SourceError(f"source {source}: plc {plc_id!r} needs the tag catalogue")
    try:
        return catalogue.plc(plc_id)
    except KeyError:
        raise SourceError(f"source {source}: plc {plc_id!r} is not in the catalogue") from None


@runtime_checkable
class Source(Protocol):
    name: str

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def read(self) -> list[Reading]: ...

    def on_data(self, callback: Callable[[], None]) -> None:
        """Register what to call when readings arrived by themselves (OPC UA subscriptions), so the
        Poller reads them at once instead of at its next tick. Sources that only answer reads never
        call it."""
        ...

    async def write(self, asset: str, tag: str, value: TagValue) -> None: ...

    async def call(self, asset: str, command: str, args: Sequence[Any] = ()) -> Any: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class TagRef:
    """Where a tag's readings go: enough to build a Reading without the protocol address."""

    asset: str
    tag: str
    unit: str | None = None
    site: str = ""
    area: str = ""


class Backoff:
    """Capped exponential backoff with jitter (paho 1 s -> 120 s, asyncua cap 30 s: conventions §5.2).

    Jitter (up to +10 %) keeps a gateway with many sources from reconnecting to a restarted
    plant all in the same instant.
    """

    def __init__(self, minimum: float, maximum: float, clock: Any = time.monotonic) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self._clock = clock
        self._delay = 0.0
        self._next = 0.0

    @property
    def delay(self) -> float:
        return self._delay

    def ready(self) -> bool:
        return float(self._clock()) >= self._next

    def failed(self) -> float:
        self._delay = self.minimum if self._delay == 0 else min(self._delay * 2, self.maximum)
        wait = self._delay * (1 + random.random() * 0.1)
        self._next = float(self._clock()) + wait
        return wait

    def reset(self) -> None:
        self._delay = 0.0
        self._next = 0.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def _nothing() -> None:
    return None


class SourceBase:
    """Shared lifecycle: idempotent close, ``async with``, availability logged once each way."""

    def __init__(self, name: str, reconnect_min_s: float, reconnect_max_s: float) -> None:
        self.name = name
        self._backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self._available: bool | None = None  # None until the first attempt: log the first outcome
        self._closed = False
        self._data_arrived: Callable[[], None] = _nothing

    def on_data(self, callback: Callable[[], None]) -> None:
        self._data_arrived = callback

    @property
    def connected(self) -> bool:
        return bool(self._available)

    def _set_available(self, available: bool, reason: str = "") -> None:
        if available == self._available:
            return
        previous, self._available = self._available, available
        if available:
            self._backoff.reset()
            log.info("source %s: connected%s", self.name, f" ({reason})" if reason else "")
        elif previous is None:
            log.warning("source %s: unreachable: %s", self.name, reason or "unknown error")
        else:
            log.warning("source %s: connection lost: %s", self.name, reason or "unknown error")

    def bad_readings(
        self, refs: Sequence[TagRef], quality: int, now: datetime | None = None
    ) -> list[Reading]:
        now = now or utcnow()
        return [
            Reading(self.name, r.asset, r.tag, None, quality, now, now, r.site, r.area, r.unit) for r in refs
        ]

    def reading(
        self, ref: TagRef, value: TagValue | None, quality: int, source_ts: datetime, now: datetime
    ) -> Reading:
        return Reading(
            self.name, ref.asset, ref.tag, value, quality, source_ts, now, ref.site, ref.area, ref.unit
        )

    async def close(self) -> None:
        raise NotImplementedError

    async def connect(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
