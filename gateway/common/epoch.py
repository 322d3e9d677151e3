"""Exact conversions between datetimes and integer time since the Unix epoch.

Integer arithmetic on timedeltas, never float seconds: ``ts.timestamp()`` rounds 1.123 s to 1122 ms, and
an InfluxDB point or a Sparkplug metric written with the wrong millisecond is another sample. Naive
datetimes are UTC, the gateway's convention.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MS = timedelta(milliseconds=1)


def _aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def epoch_us(ts: datetime) -> int:
    """Microseconds since the epoch (a datetime's own resolution)."""
    return (_aware(ts) - EPOCH) // _US


def epoch_ms(ts: datetime) -> int:
    """Milliseconds since the epoch, rounded down."""
    return (_aware(ts) - EPOCH) // _MS


def from_epoch_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def from_epoch_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)
