"""Helpers of the source tests: readings by tag key, and waiting for a condition without fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.readings import Reading

DEADLINE_S = 10.0


def by_key(readings: list[Reading]) -> dict[str, Reading]:
    return {r.tag: r for r in readings}


async def until(check: Callable[[], Awaitable[bool]], what: str, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if await check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"not within {deadline_s}s: {what}")
