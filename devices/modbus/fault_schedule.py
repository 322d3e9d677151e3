"""Modbus faults from config (``modbus.faults``), fired in plant time by a listener on the PLC's scans.

Like scenarios (devices/scenarios.py) the plant time of a scan is ``scan_count x scan_period``: the
scan that reaches a fault's ``at`` injects it into the PLC's ``FaultInjector``, and the first scan at
or after ``at + duration`` clears it, unless something else (the control API) has replaced it since.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from devices.modbus.config import ScheduledModbusFault
from devices.modbus.faults import Fault, FaultInjector
from devices.plc import Plc
from devices.process_image import ProcessImage

log = logging.getLogger(__name__)


class ModbusFaultSchedule:
    """Fires one PLC's scheduled Modbus faults; ``close()`` stops it (Plc has no remove_listener)."""

    def __init__(self, plc: Plc, faults: FaultInjector, scheduled: Iterable[ScheduledModbusFault] = ()) -> None:
        self.plc = plc
        self.faults = faults
        self.pending = sorted(scheduled, key=lambda f: f.at_s)
        self.active: ScheduledModbusFault | None = None
        self.injected: Fault | None = None  # what we put into the injector, to clear only that
        self.fired: list[tuple[float, str]] = []  # (plant seconds, description): an audit trail
        self._closed = False
        plc.add_listener(self._on_scan)

    def close(self) -> None:
        self._closed = True

    def clear(self) -> int:
        """Drop the pending faults and forget the active one (the caller clears the injector)."""
        dropped = len(self.pending)
        self.pending.clear()
        self.active = self.injected = None
        return dropped

    def _on_scan(self, image: ProcessImage) -> None:
        if self._closed:
            return
        now = image.scan_count * self.plc.scan_period_s
        active = self.active
        if active is not None and active.duration_s is not None and now >= active.at_s + active.duration_s:
            if self.injected is not None and self.faults.current() is self.injected:
                self.faults.clear()
            self.active = self.injected = None
            self.fired.append((now, f"end {describe(active)}"))
        while self.pending and self.pending[0].at_s <= now:
            fault = self.pending.pop(0)
            self.faults.inject(delay_ms=fault.delay_ms, no_response=fault.no_response,
                               exception_code=fault.exception_code, drop_connections=fault.drop_connections)
            self.active, self.injected = fault, self.faults.current()
            self.fired.append((now, f"start {describe(fault)}"))
            log.info("modbus fault on %s at plant %.0f s: %s", self.plc.plc_id, now, describe(fault))


def describe(fault: ScheduledModbusFault | Fault) -> str:
    parts = []
    delay_ms = fault.delay_ms if isinstance(fault, ScheduledModbusFault) else fault.delay_s * 1000.0
    if delay_ms:
        parts.append(f"delay {delay_ms:g} ms")
    if fault.no_response:
        parts.append("no response")
    if fault.exception_code is not None:
        parts.append(f"exception {fault.exception_code:02d}")
    if fault.drop_connections:
        parts.append("drop connections")
    return ", ".join(parts) or "none"
