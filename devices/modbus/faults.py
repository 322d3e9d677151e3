"""Fault injection for one PLC's Modbus endpoint: a misbehaving PLC to test gateways against.

Faults cover the fault-test matrix of conventions §5.5: a slow PLC (delay), a silent one (no
response: the client's timeout fires), a busy or failing one (exception 06 / 04, Telegraf retries
on 06), and a TCP stack that resets its connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    delay_s: float = 0.0
    no_response: bool = False
    exception_code: int | None = None
    drop_connections: bool = False
    until: float | None = None  # monotonic deadline; None = until cleared


class FaultInjector:
    """Holds the active fault; the server consults it for every connection and request."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._fault: Fault | None = None
        self.on_drop: Callable[[], None] | None = None  # set by the server: abort open connections

    def inject(
        self,
        *,
        delay_ms: float = 0.0,
        no_response: bool = False,
        exception_code: int | None = None,
        drop_connections: bool = False,
        duration_s: float | None = None,
    ) -> None:
        """Replace the active fault.

        ``delay_ms`` delays every response; ``no_response`` reads requests and never answers;
        ``exception_code`` (4 device failure, 6 busy, or any 1..255) answers every request with that
        exception; ``drop_connections`` aborts every open connection now and every new one right
        after accept. All of it lasts ``duration_s`` seconds, or until :meth:`clear`.
        """
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        if exception_code is not None and not 1 <= exception_code <= 0xFF:
            raise ValueError(f"exception_code must be 1..255, got {exception_code}")
        if duration_s is not None and duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        until = None if duration_s is None else self._monotonic() + duration_s
        self._fault = Fault(delay_ms / 1000.0, no_response, exception_code, drop_connections, until)
        if drop_connections and self.on_drop is not None:
            self.on_drop()

    def clear(self) -> None:
        self._fault = None

    def current(self) -> Fault | None:
        fault = self._fault
        if fault is not None and fault.until is not None and self._monotonic() >= fault.until:
            self._fault = fault = None
        return fault
