"""Modbus TCP face of the plant: register map derived from the tag tables, codec, server, exposer."""

from devices.modbus.codec import WORD_ORDERS, WordOrder, decode, encode, register_count
from devices.modbus.config import ModbusOptions
from devices.modbus.exposer import ModbusExposer
from devices.modbus.faults import FaultInjector
from devices.modbus.image import RegisterImage
from devices.modbus.protocol import DeviceIdentity, RequestHandler
from devices.modbus.register_map import (
    BLOCK_STRIDE,
    HEARTBEAT_ADDRESS,
    STATUS_REGISTERS,
    AssetBlock,
    RegisterMap,
    RegisterMapError,
    Table,
    build_register_map,
    register_map_for,
)
from devices.modbus.server import ModbusTcpServer

__all__ = [
    "BLOCK_STRIDE",
    "HEARTBEAT_ADDRESS",
    "STATUS_REGISTERS",
    "WORD_ORDERS",
    "AssetBlock",
    "DeviceIdentity",
    "FaultInjector",
    "ModbusExposer",
    "ModbusOptions",
    "ModbusTcpServer",
    "RegisterImage",
    "RegisterMap",
    "RegisterMapError",
    "RequestHandler",
    "Table",
    "WordOrder",
    "build_register_map",
    "decode",
    "encode",
    "register_count",
    "register_map_for",
]
