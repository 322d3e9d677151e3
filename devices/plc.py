"""A simulated PLC: owns its assets' state, scans them at a fixed period of plant time, and applies
client writes and commands at the start of the next scan, as a real controller's scan cycle does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from devices.assets.base import ArgValue, AssetModel, State, validate_write
from devices.assets.coupling import PlantCoupling
from devices.clock import VirtualClock
from devices.process_image import (
    BAD_SENSOR_FAILURE,
    GOOD,
    UNCERTAIN_EU_EXCEEDED,
    GroupImage,
    ProcessImage,
    StatusArray,
)
from devices.tags import CommandRejected, DataType

log = logging.getLogger(__name__)

ScanListener = Callable[[ProcessImage], None]


@dataclass
class AssetGroup:
    """All instances of one asset type on one PLC, stepped together."""

    model: AssetModel
    asset_ids: tuple[str, ...]
    state: State = field(default_factory=dict)


@dataclass(frozen=True)
class _Pending:
    asset_id: str
    action: str  # "write" or "command"
    name: str
    value: float
    args: Mapping[str, ArgValue]
    done: Future[None]


class Plc:
    """Scan cycle: apply queued writes -> step every asset group -> publish the process image."""

    def __init__(
        self,
        plc_id: str,
        groups: Sequence[AssetGroup],
        clock: VirtualClock,
        scan_period_s: float = 0.1,
        seed: int = 0,
        coupling: PlantCoupling | None = None,
    ) -> None:
        self.plc_id = plc_id
        self.coupling = coupling
        self.groups = tuple(groups)
        self.clock = clock
        self.scan_period_s = scan_period_s
        self.scan_count = 0
        self.overruns = 0
        self.image: ProcessImage | None = None
        self._rng = np.random.default_rng(seed)
        self._pending: list[_Pending] = []
        self._listeners: list[ScanListener] = []
        self._sensor_faults: dict[tuple[str, str], float] = {}
        self._where: dict[str, tuple[AssetGroup, int]] = {}
        for group in self.groups:
            if not group.state:
                group.state = group.model.initial_state(len(group.asset_ids), self._rng)
            for index, asset_id in enumerate(group.asset_ids):
                if asset_id in self._where:
                    raise ValueError(f"PLC {plc_id}: asset id {asset_id!r} appears twice")
                self._where[asset_id] = (group, index)

    # --- what clients and scenarios call -------------------------------------------------------

    def asset(self, asset_id: str) -> tuple[AssetGroup, int]:
        try:
            return self._where[asset_id]
        except KeyError:
            raise KeyError(f"no asset {asset_id!r} on PLC {self.plc_id}") from None

    def add_listener(self, listener: ScanListener) -> None:
        self._listeners.append(listener)

    def submit_write(self, asset_id: str, key: str, value: ArgValue) -> Future[None]:
        """Validate a setpoint write now (raising TypeError/ValueError/PermissionError) and queue it."""
        group, _ = self.asset(asset_id)
        stored = validate_write(group.model.tag(key), value)
        return self._queue(_Pending(asset_id, "write", key, stored, {}, Future()))

    def submit_command(self, asset_id: str, name: str, args: Mapping[str, ArgValue]) -> Future[None]:
        """Queue a named command; the future fails with CommandRejected if the model refuses it."""
        group, _ = self.asset(asset_id)
        spec = group.model.command(name)
        expected = {arg.name for arg in spec.args}
        if set(args) != expected:
            raise CommandRejected(f"{name} takes arguments {sorted(expected)}, got {sorted(args)}")
        return self._queue(_Pending(asset_id, "command", name, 0.0, dict(args), Future()))

    def set_sensor_fault(self, asset_id: str, key: str, fault_value: float | None) -> None:
        """Fault a sensor (its tag reads ``fault_value`` with BadSensorFailure), or clear it with None."""
        group, _ = self.asset(asset_id)
        group.model.tag(key)
        if fault_value is None:
            self._sensor_faults.pop((asset_id, key), None)
        else:
            self._sensor_faults[(asset_id, key)] = fault_value

    # --- the scan cycle ------------------------------------------------------------------------

    def scan(self) -> ProcessImage:
        """One scan of exactly ``scan_period_s`` plant seconds; deterministic for a given seed."""
        self._apply_pending()
        for group in self.groups:
            group.state = group.model.step(group.state, self.scan_period_s, self._rng)
        if self.coupling is not None:
            # Flows between asset types (trucks -> crusher -> stockpile, belt -> mill), applied
            # once every group has stepped, so each sees the others' output one scan late.
            self.coupling.apply(self.groups)
        self.scan_count += 1
        timestamp = self.clock.timestamp(self.scan_count * self.scan_period_s)
        self.image = ProcessImage(self.plc_id, self.scan_count, timestamp, self._group_images())
        for listener in self._listeners:
            listener(self.image)
        return self.image

    async def run(self, stop: asyncio.Event) -> None:
        """Scan on the virtual clock until ``stop`` is set; a late scan is counted, never skipped."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            deadline = self.clock.real_deadline((self.scan_count + 1) * self.scan_period_s)
            delay = deadline - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            elif delay < -self.scan_period_s / self.clock.speed:
                self.overruns += 1
                if self.overruns == 1:
                    log.warning("PLC %s: scan overrun, the plant is behind real time", self.plc_id)
            self.scan()
            await asyncio.sleep(0)

    def _queue(self, pending: _Pending) -> Future[None]:
        self._pending.append(pending)
        return pending.done

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, []
        for item in pending:
            group, index = self._where[item.asset_id]
            try:
                if item.action == "write":
                    group.model.apply_write(group.state, index, item.name, item.value)
                else:
                    group.model.apply_command(group.state, index, item.name, item.args)
            except CommandRejected as exc:
                item.done.set_exception(exc)
            else:
                item.done.set_result(None)

    def _group_images(self) -> tuple[GroupImage, ...]:
        images = []
        for group in self.groups:
            values = {key: np.array(array, dtype=np.float64) for key, array in group.model.outputs(group.state).items()}
            status: dict[str, StatusArray] = {}
            for spec in group.model.tags:
                codes = np.full(len(group.asset_ids), GOOD, dtype=np.uint32)
                if spec.eu_range is not None and spec.datatype is not DataType.BOOL:
                    low, high = spec.eu_range
                    outside = (values[spec.key] < low) | (values[spec.key] > high)
                    codes[outside] = UNCERTAIN_EU_EXCEEDED
                status[spec.key] = codes
            for (asset_id, key), fault_value in self._sensor_faults.items():
                owner, index = self._where[asset_id]
                if owner is group:
                    values[key][index] = fault_value
                    status[key][index] = BAD_SENSOR_FAILURE
            images.append(GroupImage(group.model, group.asset_ids, values, status))
        return tuple(images)
