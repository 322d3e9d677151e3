"""The command queue's ``execute``: write through the asset's source, then observe the effect.

ARCHITECTURE.md: "Nothing publishes an assumed value: after a write, the new state is observed by the
next poll." So a write is COMPLETED only when a reading of the written tag, received after the write
returned, equals the written value (float32 tolerance: both protocols carry float32, so 1.1 comes
back as 1.100000023841858). Readings received after the write that still show the old value mean the
PLC has not scanned yet; the executor keeps refreshing until the queue's ``execute_timeout_s`` ends,
and the failure then names the value last read (a read-back mismatch). A PLC error (exception
response, Bad status, refused method) fails the command at once with the device's reason.

A named command completes when the call returned Good and a fresh poll of the source arrived, so a
client reading after COMPLETED sees the command's effect.

Readings reach the executor through :meth:`CommandExecutor.observe`, which the runtime calls with
every batch the pipeline carries; it only resolves futures, so it costs the pipeline nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.catalogue import Catalogue, CatalogueAsset
from gateway.commands.store import WRITE, CommandRecord
from gateway.latest import LatestValues
from gateway.readings import Reading, TagValue
from gateway.sources.base import Source

FLOAT32_REL_TOL = 1e-6
REPOLL_S = 0.02


class CommandFailed(Exception):
    """Raised with the reason the command queue stores as FAILED."""


def same_value(written: TagValue, read: TagValue | None, rel_tol: float = FLOAT32_REL_TOL) -> bool:
    if read is None:
        return False
    if isinstance(written, bool) or isinstance(read, bool):
        return bool(written) == bool(read) if isinstance(read, bool | int) else False
    if isinstance(written, str) or isinstance(read, str):
        return written == read
    return math.isclose(float(written), float(read), rel_tol=rel_tol, abs_tol=1e-6)


@dataclass
class _Watch:
    source: str
    asset: str
    tag: str | None  # None: any reading of the asset (named commands)
    after: datetime  # gateway_ts must be later: read after the write/call returned
    # source_ts must be later too: OPC UA stamps values with the PLC's scan, so this means "from a
    # scan after the one before the call" (Modbus stamps poll time, which always passes).
    source_after: datetime | None = None
    fresh: asyncio.Event = field(default_factory=asyncio.Event)
    last: Reading | None = None


class CommandExecutor:
    """``execute(record)`` for :class:`CommandQueue`; ``observe(batch)`` from the pipeline."""

    def __init__(
        self, sources: Mapping[str, Source], routes: Mapping[str, str], refresh: Callable[[str], None],
        catalogue: Catalogue | None = None, *, latest: LatestValues | None = None,
        rel_tol: float = FLOAT32_REL_TOL, timeout_s: float = 9.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``routes``: asset id -> source name (built by the runtime from catalogue and config).
        ``timeout_s`` bounds the read-back; keep it below the queue's ``execute_timeout_s`` so the
        failure carries the executor's reason (the value last read) rather than a bare timeout."""
        self.timeout_s = timeout_s
        self.latest = latest
        self.sources = dict(sources)
        self.routes = dict(routes)
        self.refresh = refresh
        self.rel_tol = rel_tol
        self.clock = clock
        self._assets: dict[str, CatalogueAsset] = (
            {a.id: a for plc in catalogue.plcs for a in plc.assets} if catalogue is not None else {})
        self._watches: list[_Watch] = []

    def observe(self, readings: Sequence[Reading]) -> None:
        if not self._watches or not readings:
            return
        for watch in self._watches:
            for r in readings:
                if (r.device == watch.source and r.asset == watch.asset
                        and (watch.tag is None or r.tag == watch.tag) and r.gateway_ts > watch.after
                        and (watch.source_after is None or r.source_ts > watch.source_after)):
                    watch.last = r
                    watch.fresh.set()

    def source_of(self, asset: str) -> Source:
        name = self.routes.get(asset)
        if name is None or name not in self.sources:
            raise CommandFailed(f"no source reads asset {asset!r}")
        return self.sources[name]

    async def execute(self, command: CommandRecord) -> None:
        source = self.source_of(command.asset)
        if command.command == WRITE:
            assert command.tag is not None
            await self._write(source, command.asset, command.tag, command.value)
        else:
            await self._call(source, command.asset, command.command, command.args)

    async def _write(self, source: Source, asset: str, tag: str, value: TagValue) -> None:
        value = self._plc_value(asset, tag, value)
        try:
            await source.write(asset, tag, value)
        except Exception as exc:  # SourceError/SourceUnavailable carry the device's reason
            raise CommandFailed(f"write failed: {exc}") from None
        watch = _Watch(source.name, asset, tag, self.clock())
        self._watches.append(watch)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            while True:
                watch.fresh.clear()
                self.refresh(source.name)
                try:
                    await asyncio.wait_for(watch.fresh.wait(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise CommandFailed(self._mismatch(watch, value)) from None
                last = watch.last
                assert last is not None
                if last.good and same_value(value, last.value, self.rel_tol):
                    return
                # The PLC applies writes at its next scan: poll again shortly, not in a tight loop.
                await asyncio.sleep(REPOLL_S)
        finally:
            self._watches.remove(watch)

    def _mismatch(self, watch: _Watch, value: TagValue) -> str:
        last = watch.last
        if last is None:
            return f"no read-back of {watch.asset}.{watch.tag} within {self.timeout_s:g} s of the write"
        return (f"read-back mismatch: wrote {value!r}, read {last.value!r} ({last.quality_name}) "
                f"for {self.timeout_s:g} s")

    async def _call(self, source: Source, asset: str, command: str, args: Sequence[TagValue]) -> None:
        plc_args = self._plc_args(asset, command, args)
        seen = (self.latest.asset(asset) or {}) if self.latest is not None else {}
        source_after = max((r.source_ts for r in seen.values() if r.device == source.name), default=None)
        try:
            await source.call(asset, command, plc_args)
        except Exception as exc:
            raise CommandFailed(f"{command} failed: {exc}") from None
        watch = _Watch(source.name, asset, None, self.clock(), source_after)
        self._watches.append(watch)
        try:
            self.refresh(source.name)
            try:
                await asyncio.wait_for(watch.fresh.wait(), self.timeout_s)
            except TimeoutError:
                raise CommandFailed(f"{command} returned Good but no poll followed within {self.timeout_s:g} s") \
                    from None
        finally:
            self._watches.remove(watch)

    def _plc_value(self, asset: str, tag: str, value: TagValue) -> TagValue:
        """Enum names become their index: the PLC takes numbers."""
        spec = self._assets.get(asset)
        tag_spec = next((t for t in spec.tags if t.key == tag), None) if spec is not None else None
        if tag_spec is not None and isinstance(value, str) and value in tag_spec.enum_strings:
            return tag_spec.enum_strings.index(value)
        return value

    def _plc_args(self, asset: str, command: str, args: Sequence[TagValue]) -> list[TagValue]:
        spec = self._assets.get(asset)
        cmd = next((c for c in spec.commands if c.name == command), None) if spec is not None else None
        out = list(args)
        if cmd is None:
            return out
        for i, (value, arg) in enumerate(zip(out, cmd.args, strict=False)):
            if not isinstance(arg, dict):
                continue
            names = tuple(arg.get("enum_strings") or ())
            if isinstance(value, str) and value in names:
                out[i] = names.index(value)
            elif arg.get("datatype") in ("float32", "float64") and type(value) is int:
                out[i] = float(value)  # OPC UA wants a Float variant, not an Int64
        return out
