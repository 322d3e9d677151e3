"""Asset types registered by name, the name config files use."""

from __future__ import annotations

from devices.assets.base import AssetModel
from devices.assets.cnc_mill import CncMill
from devices.assets.conveyor import Conveyor
from devices.assets.crusher import Crusher
from devices.assets.gripper import VacuumGripper
from devices.assets.lathe import Lathe
from devices.assets.mine import MineKpis
from devices.assets.mine_truck import MineTruck
from devices.assets.replay import CncReplay
from devices.assets.robot_arm import RobotArm
from devices.assets.stockpile import Stockpile
from devices.assets.warehouse import Warehouse

ASSET_TYPES: dict[str, type[AssetModel]] = {
    model.type_name: model
    for model in (
        Conveyor,
        RobotArm,
        CncMill,
        Lathe,
        Warehouse,
        VacuumGripper,
        MineTruck,
        Crusher,
        Stockpile,
        MineKpis,
        CncReplay,
    )
}


def asset_type(name: str) -> type[AssetModel]:
    try:
        return ASSET_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(ASSET_TYPES))
        raise KeyError(f"unknown asset type {name!r} (known: {known})") from None
