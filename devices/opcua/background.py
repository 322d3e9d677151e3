"""Base of the scan listeners that hand work from the (synchronous) PLC scan to one background task."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod


class BackgroundDrain(ABC):
    """The scan queues work and calls ``_wake.set()``; the task then runs ``_drain`` once per wake-up,
    so work queued by several scans in a row is handled in one pass."""

    def __init__(self, task_name: str) -> None:
        self._task_name = task_name
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._task_name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._drain()

    @abstractmethod
    async def _drain(self) -> None:
        """Handle everything queued since the previous wake-up."""
