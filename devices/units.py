"""UNECE Rec. 20 units as OPC UA EngineeringUnits (OPC 10000-8 §5.6.4.4).

UnitId packs the common code's ASCII bytes big-endian into an Int32; the table of codes used by the
plant comes from the OPC Foundation's UNECE_to_OPCUA.csv (see ../shared/reference/conventions.md §1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

UNECE_NAMESPACE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"


@dataclass(frozen=True)
class Unit:
    code: str
    symbol: str
    name: str

    @property
    def unit_id(self) -> int:
        return unece_unit_id(self.code)


def unece_unit_id(code: str) -> int:
    """Pack a UNECE common code into the OPC UA UnitId: CEL -> 4408652."""
    value = 0
    for char in code.encode("ascii"):
        value = (value << 8) | char
    return value


_UNITS = (
    Unit("CEL", "°C", "degree Celsius"),
    Unit("KEL", "K", "kelvin"),
    Unit("BAR", "bar", "bar [unit of pressure]"),
    Unit("MBR", "mbar", "millibar"),
    Unit("KPA", "kPa", "kilopascal"),
    Unit("RPM", "r/min", "revolutions per minute"),
    Unit("MTS", "m/s", "metre per second"),
    Unit("C16", "mm/s", "millimetre per second"),
    Unit("HTZ", "Hz", "hertz"),
    Unit("AMP", "A", "ampere"),
    Unit("VLT", "V", "volt"),
    Unit("KWT", "kW", "kilowatt"),
    Unit("WTT", "W", "watt"),
    Unit("KWH", "kW·h", "kilowatt hour"),
    Unit("P1", "%", "percent"),
    Unit("C62", "1", "one"),
    Unit("E18", "t/h", "tonne per hour"),
    Unit("TNE", "t", "tonne (metric ton)"),
    Unit("KGM", "kg", "kilogram"),
    Unit("MTR", "m", "metre"),
    Unit("MMT", "mm", "millimetre"),
    Unit("NU", "N·m", "newton metre"),
    Unit("DD", "°", "degree [unit of angle]"),
    Unit("SEC", "s", "second [unit of time]"),
    Unit("HUR", "h", "hour"),
    Unit("C26", "ms", "millisecond"),
    Unit("KMH", "km/h", "kilometre per hour"),
    Unit("L2", "l/min", "litre per minute"),
    Unit("LTR", "l", "litre"),
    Unit("MIN", "min", "minute [unit of time]"),
)

UNITS: dict[str, Unit] = {unit.code: unit for unit in _UNITS}


def unit_for(code: str) -> Unit:
    try:
        return UNITS[code]
    except KeyError:
        raise KeyError(f"unknown UNECE unit code {code!r}; add it to devices/units.py") from None
