"""What the edge API reads: the runtime hands it this view, never the runtime itself."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from gateway.api.history_ring import TagRing
from gateway.catalogue import Catalogue, CatalogueAsset
from gateway.common.epoch import epoch_us, from_epoch_us
from gateway.latest import LatestValues
from gateway.readings import Reading, TagValue


@dataclass(frozen=True)
class AssetInfo:
    id: str
    type: str
    plc: str
    site: str
    area: str


# The caller's sites -> the ids of the assets it may see (OWASP API1), None meaning every asset. Routers
# that hold no EdgeState get ``EdgeState.visible_ids`` as this.
AssetScope = Callable[[Set[str]], frozenset[str] | None]


def no_assets_known(sites: Set[str]) -> frozenset[str] | None:
    """The scope where no assets are known: callers limited to sites see nothing (fail closed)."""
    return None if not sites else frozenset()


@dataclass(frozen=True)
class SourceStatus:
    name: str
    protocol: str
    endpoint: str
    connected: bool
    plc: str | None = None  # the catalogue PLC it reads, None for hand-listed tags


class Sample(NamedTuple):
    """One sample of a history query."""

    ts: datetime  # source timestamp
    value: TagValue | None
    quality: int


@dataclass(frozen=True)
class Bucket:
    start: datetime
    value: float | TagValue | None  # the mean of numbers, else the last value
    count: int


class RecentHistory:
    """The local store behind the history route: the last ``per_tag`` samples of every tag, in memory.

    Bounded per tag (habit 5), so memory is tags x per_tag whatever the poll rate; what falls out of
    the ring is in InfluxDB when that sink is on. Only Good samples with a value are kept: history of
    "no value" is the quality, which the latest-values route reports.
    """

    def __init__(self, per_tag: int = 3600) -> None:
        self.per_tag = per_tag
        # Typed arrays per tag (history_ring.py): a sample as a tuple cost ~90 bytes, and the rings
        # hold millions; arrays are also invisible to the garbage collector, as plain tuples were.
        self._rings: dict[tuple[str, str], TagRing] = {}

    def add(self, readings: Iterable[Reading]) -> None:
        rings = self._rings
        stamps: dict[datetime, int] = {}  # a batch shares a few timestamps: convert each once
        for r in readings:
            value = r.value
            if value is None:
                continue
            key = (r.asset, r.tag)
            ring = rings.get(key)
            if ring is None:
                ring = rings[key] = TagRing(self.per_tag, value)
            ts = r.source_ts
            us = stamps.get(ts)
            if us is None:
                us = stamps[ts] = epoch_us(ts)
            ring.add(us, value, r.quality)  # skips a timestamp it already has (two sources, one PLC)

    def tags(self, asset: str) -> list[str]:
        return sorted(tag for (a, tag) in self._rings if a == asset)

    def query(self, asset: str, tag: str, start: datetime | None = None, end: datetime | None = None) -> list[Sample]:
        ring = self._rings.get((asset, tag))
        if ring is None:
            return []
        low = epoch_us(start) if start is not None else None
        high = epoch_us(end) if end is not None else None
        return [Sample(from_epoch_us(us), value, quality) for us, value, quality in ring.samples()
                if (low is None or us >= low) and (high is None or us <= high)]

    @staticmethod
    def aggregate(samples: list[Sample], step: timedelta) -> list[Bucket]:
        """Buckets of ``step`` aligned on the first sample: mean of numbers, else the last value."""
        if not samples:
            return []
        origin, buckets = samples[0].ts, []
        current: list[Sample] = []
        bucket_start = origin
        for sample in samples:
            while sample.ts >= bucket_start + step:
                if current:
                    buckets.append(_bucket(bucket_start, current))
                    current = []
                bucket_start += step * max(1, int((sample.ts - bucket_start) / step))
            current.append(sample)
        buckets.append(_bucket(bucket_start, current))
        return buckets


def _bucket(start: datetime, samples: list[Sample]) -> Bucket:
    numbers = [float(s.value) for s in samples
               if isinstance(s.value, int | float) and not isinstance(s.value, bool)]
    if len(numbers) == len(samples):
        return Bucket(start, sum(numbers) / len(numbers), len(samples))
    return Bucket(start, samples[-1].value, len(samples))


@dataclass
class EdgeState:
    gateway_id: str
    latest: LatestValues
    assets: dict[str, AssetInfo] = field(default_factory=dict)
    sources: Callable[[], list[SourceStatus]] = list
    catalogue: Catalogue | None = None
    history: RecentHistory = field(default_factory=RecentHistory)

    def catalogue_asset(self, asset_id: str) -> CatalogueAsset | None:
        if self.catalogue is None:
            return None
        for plc in self.catalogue.plcs:
            for asset in plc.assets:
                if asset.id == asset_id:
                    return asset
        return None

    def assets_of_type(self, type_name: str, sites: Set[str] = frozenset()) -> list[AssetInfo]:
        return [a for a in self.visible_assets(sites) if a.type == type_name]

    # -- per-site scope (OWASP API1): ``sites`` is the caller's, empty meaning every site. An asset out
    # of scope is answered exactly like an unknown one, so its existence does not leak.

    def visible(self, sites: Set[str], asset_id: str) -> AssetInfo | None:
        """The asset when it exists and is in scope, else None."""
        info = self.assets.get(asset_id)
        return info if info is not None and (not sites or info.site in sites) else None

    def visible_assets(self, sites: Set[str]) -> list[AssetInfo]:
        """The assets in scope, by id."""
        return sorted((a for a in self.assets.values() if not sites or a.site in sites), key=lambda a: a.id)

    def visible_ids(self, sites: Set[str]) -> frozenset[str] | None:
        """The ids of the assets in scope; None when the caller sees every asset."""
        return None if not sites else frozenset(a.id for a in self.assets.values() if a.site in sites)

    def values(self, asset_id: str) -> dict[str, TagValue | None]:
        """Latest values of an asset by tag; enums as the catalogue's strings (what dashboards show)."""
        readings = self.latest.asset(asset_id) or {}
        spec = self.catalogue_asset(asset_id)
        enums = {t.key: t.enum_strings for t in spec.tags if t.enum_strings} if spec is not None else {}
        out: dict[str, TagValue | None] = {}
        for tag, reading in readings.items():
            value = reading.value
            names = enums.get(tag)
            if names and isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < len(names):
                value = names[int(value)]
            out[tag] = value
        return out
