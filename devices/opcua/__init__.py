"""OPC UA face of a PLC: the address space derived from its tag tables, served by asyncua.

Public surface: ``OpcUaExposer`` (one server per PLC), ``OpcUaServerConfig`` / ``OpcUaUser`` / ``Role`` /
``SecurityPolicy`` (the PLC's ``opcua`` config block) and the two namespace URIs the gateway resolves.

``OpcUaExposer`` is imported lazily so that devices/config.py can import ``devices.opcua.config``
without an import cycle (the exposer itself imports devices.config).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from devices.opcua.config import OpcUaServerConfig, OpcUaUser, Role, SecurityPolicy

if TYPE_CHECKING:
    from devices.opcua.exposer import OpcUaExposer

INSTANCE_NAMESPACE_URI = "urn:twinedge:plant"
TYPES_NAMESPACE_URI = "http://twinedge.dev/UA/Plant/"

__all__ = [
    "INSTANCE_NAMESPACE_URI",
    "TYPES_NAMESPACE_URI",
    "OpcUaExposer",
    "OpcUaServerConfig",
    "OpcUaUser",
    "Role",
    "SecurityPolicy",
]


def __getattr__(name: str) -> Any:
    if name == "OpcUaExposer":
        from devices.opcua.exposer import OpcUaExposer

        return OpcUaExposer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
