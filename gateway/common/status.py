"""OPC UA StatusCodes used as data quality across the gateway (OPC 10000-8 §7.3.2).

Values from the OPC Foundation's StatusCode.csv (../shared/reference/conventions.md §1.1). Kept as
plain ints so the pipeline, sinks and API need no OPC UA library.
"""

from __future__ import annotations

GOOD = 0x00000000
UNCERTAIN_NO_COMMUNICATION_LAST_USABLE_VALUE = 0x408F0000
UNCERTAIN_LAST_USABLE_VALUE = 0x40900000
UNCERTAIN_ENGINEERING_UNITS_EXCEEDED = 0x40940000
BAD_NO_COMMUNICATION = 0x80310000
BAD_WAITING_FOR_INITIAL_DATA = 0x80320000
BAD_SENSOR_FAILURE = 0x808C0000
BAD_DEVICE_FAILURE = 0x808B0000
BAD_OUT_OF_SERVICE = 0x808D0000
BAD_TIMEOUT = 0x800A0000
BAD_OUT_OF_RANGE = 0x803C0000
BAD_NOT_WRITABLE = 0x803B0000
BAD_TYPE_MISMATCH = 0x80740000
BAD_USER_ACCESS_DENIED = 0x801F0000
BAD_CONFIGURATION_ERROR = 0x80890000
BAD_NODE_ID_UNKNOWN = 0x80340000

NAMES: dict[int, str] = {
    GOOD: "Good",
    UNCERTAIN_NO_COMMUNICATION_LAST_USABLE_VALUE: "UncertainNoCommunicationLastUsableValue",
    UNCERTAIN_LAST_USABLE_VALUE: "UncertainLastUsableValue",
    UNCERTAIN_ENGINEERING_UNITS_EXCEEDED: "UncertainEngineeringUnitsExceeded",
    BAD_NO_COMMUNICATION: "BadNoCommunication",
    BAD_WAITING_FOR_INITIAL_DATA: "BadWaitingForInitialData",
    BAD_SENSOR_FAILURE: "BadSensorFailure",
    BAD_DEVICE_FAILURE: "BadDeviceFailure",
    BAD_OUT_OF_SERVICE: "BadOutOfService",
    BAD_TIMEOUT: "BadTimeout",
    BAD_OUT_OF_RANGE: "BadOutOfRange",
    BAD_NOT_WRITABLE: "BadNotWritable",
    BAD_TYPE_MISMATCH: "BadTypeMismatch",
    BAD_USER_ACCESS_DENIED: "BadUserAccessDenied",
    BAD_CONFIGURATION_ERROR: "BadConfigurationError",
    BAD_NODE_ID_UNKNOWN: "BadNodeIdUnknown",
}

_SEVERITY_MASK = 0xC0000000


def is_bad(code: int) -> bool:
    """Severity Bad (both top bits of a StatusCode set: 0b10 and the reserved 0b11)."""
    return code & 0x80000000 != 0


def quality_class(code: int) -> str:
    """Good, Uncertain or Bad, from the two severity bits of a StatusCode."""
    severity = code & _SEVERITY_MASK
    if severity == 0:
        return "Good"
    if severity == 0x40000000:
        return "Uncertain"
    return "Bad"


def status_name(code: int) -> str:
    return NAMES.get(code, f"0x{code:08X}")
