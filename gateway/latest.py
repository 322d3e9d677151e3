"""The latest reading of every tag, as the pipeline last saw it: what REST and dashboards read."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.readings import Reading


class LatestValues:
    def __init__(self) -> None:
        self._by_asset: dict[str, dict[str, Reading]] = {}

    def update(self, readings: Iterable[Reading]) -> None:
        for reading in readings:
            self._by_asset.setdefault(reading.asset, {})[reading.tag] = reading

    def asset(self, asset: str) -> dict[str, Reading] | None:
        values = self._by_asset.get(asset)
        return dict(values) if values is not None else None

    def assets(self) -> list[str]:
        return sorted(self._by_asset)
