"""Asset types registered by name, the name config files use."""

from __future__ import annotations

from devices.assets.base import AssetModel
from devices.assets.conveyor import Conveyor

ASSET_TYPES: dict[str, type[AssetModel]] = {
    model.type_name: model for model in (Conveyor,)
}


def asset_type(name: str) -> type[AssetModel]:
    try:
        return ASSET_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(ASSET_TYPES))
        raise KeyError(f"unknown asset type {name!r} (known: {known})") from None
