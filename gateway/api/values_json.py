"""The latest values of an asset as the JSON the REST routes return, rendered once per change.

The values routes are the ones dashboards poll. Building and validating a response model per tag cost
about 3 us a tag, and a load conveyor carries hundreds of tags; orjson writes the same document
straight from the readings (``tests/test_api_values_render.py`` holds it equal to the documented
model, byte for byte). A rendering is kept per asset until the pipeline next changes that asset
(``LatestValues.version``), so requests between two polls share it.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from gateway.api.state import AssetInfo
from gateway.common.status import status_name
from gateway.latest import LatestValues
from gateway.readings import Reading


def render_values(info: AssetInfo, readings: Mapping[str, Reading]) -> bytes:
    """``{id, type, plc, site, area, values: {tag: {value, unit, quality, status_code, status,
    source_ts, source}}}``, tags sorted; NaN and infinities as null, timestamps ISO 8601 with ``Z``."""
    return orjson.dumps({**vars(info), "values": {
        tag: {"value": r.value, "unit": r.unit, "quality": r.quality_name, "status_code": r.quality,
              "status": status_name(r.quality), "source_ts": r.source_ts, "source": r.device}
        for tag, r in sorted(readings.items())}}, option=orjson.OPT_UTC_Z)


class ValuesJson:
    """Renderings of the assets' latest values, one kept per asset asked for (bounded by the
    catalogue: callers look the asset up before asking)."""

    def __init__(self, latest: LatestValues) -> None:
        self.latest = latest
        self._rendered: dict[str, tuple[int, bytes]] = {}  # asset -> (version it was rendered at, body)

    def body(self, info: AssetInfo) -> bytes:
        version = self.latest.version(info.id)
        cached = self._rendered.get(info.id)
        if cached is None or cached[0] != version:
            cached = self._rendered[info.id] = (version, render_values(info, self.latest.asset(info.id) or {}))
        return cached[1]
