"""The PLC's process image: every tag's value and quality after a scan, held as arrays per asset type."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from devices.assets.base import Array, AssetModel

StatusArray = npt.NDArray[np.uint32]

# OPC UA StatusCodes used as tag quality (OPC 10000-8 §7.3.2; values from StatusCode.csv).
GOOD = 0x00000000
UNCERTAIN_EU_EXCEEDED = 0x40940000
BAD_WAITING_FOR_INITIAL_DATA = 0x80320000
BAD_SENSOR_FAILURE = 0x808C0000


@dataclass(frozen=True)
class GroupImage:
    """Values and qualities of all instances of one asset type on a PLC."""

    model: AssetModel
    asset_ids: tuple[str, ...]
    values: dict[str, Array]
    status: dict[str, StatusArray]


@dataclass(frozen=True)
class ProcessImage:
    plc_id: str
    scan_count: int
    timestamp: datetime
    groups: tuple[GroupImage, ...]

    def lookup(self, asset_id: str, key: str) -> tuple[float, int]:
        """Value and StatusCode of one tag (for tests and slow paths; exposers index arrays)."""
        for group in self.groups:
            if asset_id in group.asset_ids:
                index = group.asset_ids.index(asset_id)
                return float(group.values[key][index]), int(group.status[key][index])
        raise KeyError(f"no asset {asset_id!r} on PLC {self.plc_id}")
