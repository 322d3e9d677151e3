"""The latest reading of every tag, as the pipeline last saw it: what REST and dashboards read."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.readings import Reading


class LatestValues:
    def __init__(self) -> None:
        self._by_asset: dict[str, dict[str, Reading]] = {}
        # Per asset, the update() call that last changed it: readers that render an asset (the REST
        # values route) keep their rendering until this moves. Counting per call, not per reading,
        # keeps the pipeline's cost to one store per reading.
        self._changed: dict[str, int] = {}
        self._generation = 0

    def update(self, readings: Iterable[Reading]) -> None:
        self._generation += 1
        generation, by_asset, changed = self._generation, self._by_asset, self._changed
        for reading in readings:
            by_asset.setdefault(reading.asset, {})[reading.tag] = reading
            changed[reading.asset] = generation

    def version(self, asset: str) -> int:
        """Changes whenever a reading of ``asset`` is updated; 0 before the first one."""
        return self._changed.get(asset, 0)

    def asset(self, asset: str) -> dict[str, Reading] | None:
        values = self._by_asset.get(asset)
        return dict(values) if values is not None else None

    def assets(self) -> list[str]:
        return sorted(self._by_asset)
