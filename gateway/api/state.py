"""What the edge API reads: the runtime hands it this view, never the runtime itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.latest import LatestValues


@dataclass(frozen=True)
class AssetInfo:
    id: str
    type: str
    plc: str
    site: str
    area: str


@dataclass(frozen=True)
class SourceStatus:
    name: str
    protocol: str
    endpoint: str
    connected: bool


@dataclass
class EdgeState:
    gateway_id: str
    latest: LatestValues
    assets: dict[str, AssetInfo] = field(default_factory=dict)
    sources: Callable[[], list[SourceStatus]] = list
