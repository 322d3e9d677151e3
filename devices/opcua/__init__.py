"""OPC UA face of a PLC: the address space derived from its tag tables, served by asyncua.

Public surface: ``OpcUaExposer`` (one server per PLC), ``OpcUaServerConfig`` / ``OpcUaUser`` / ``Role`` /
``SecurityPolicy`` (the PLC's ``opcua`` config block) and the two namespace URIs the gateway resolves.
"""

from devices.opcua.address_space import INSTANCE_NAMESPACE_URI, TYPES_NAMESPACE_URI
from devices.opcua.config import OpcUaServerConfig, OpcUaUser, Role, SecurityPolicy
from devices.opcua.exposer import OpcUaExposer

__all__ = [
    "INSTANCE_NAMESPACE_URI",
    "TYPES_NAMESPACE_URI",
    "OpcUaExposer",
    "OpcUaServerConfig",
    "OpcUaUser",
    "Role",
    "SecurityPolicy",
]
