"""Sparkplug B 3.0 payloads and topics as pure functions (conventions §3.1): no I/O, no clock.

Datatypes follow the value: ``bool`` -> Boolean, ``int`` -> Int64, ``float`` -> Double, ``str`` ->
String. Sparkplug has no per-value quality but the ``Quality`` property, an Int32 restricted to
0 (BAD), 192 (GOOD) and 500 (STALE) and required only when not GOOD (spec, "Quality Codes"). A Reading
carries an OPC UA StatusCode, so a metric that is not Good gets both ``Quality`` (the nearest of the
three) and ``StatusCode`` (UInt32, the exact code). A missing value is ``is_null`` with no value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from google.protobuf.message import DecodeError

from gateway.common.status import GOOD, UNCERTAIN_LAST_USABLE_VALUE, UNCERTAIN_NO_COMMUNICATION_LAST_USABLE_VALUE
from gateway.encoders.sparkplug_schema import PayloadMessage

NAMESPACE = "spBv1.0"
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"

MetricValue = bool | int | float | str


class DataType(IntEnum):
    """The basic Sparkplug datatypes (spec, "Data Types")."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14


# Which member of the value oneof carries each datatype, and the bit width of the signed integers, which
# travel as two's complement in the unsigned protobuf fields.
_FIELD = {
    **dict.fromkeys((DataType.INT8, DataType.INT16, DataType.INT32), "int_value"),
    **dict.fromkeys((DataType.UINT8, DataType.UINT16, DataType.UINT32), "int_value"),
    **dict.fromkeys((DataType.INT64, DataType.UINT64, DataType.DATETIME), "long_value"),
    DataType.FLOAT: "float_value",
    DataType.DOUBLE: "double_value",
    DataType.BOOLEAN: "boolean_value",
    DataType.STRING: "string_value",
    DataType.TEXT: "string_value",
}
_SIGNED_BITS = {DataType.INT8: 32, DataType.INT16: 32, DataType.INT32: 32, DataType.INT64: 64}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# The Quality property's codes (spec, "Quality Codes").
QUALITY_BAD = 0
QUALITY_GOOD = 192
QUALITY_STALE = 500
# OPC UA codes meaning "the last value, no longer updated": Sparkplug calls that STALE.
_STALE_STATUS = frozenset({UNCERTAIN_NO_COMMUNICATION_LAST_USABLE_VALUE, UNCERTAIN_LAST_USABLE_VALUE})
_SEVERITY_MASK = 0xC0000000
_BAD_SEVERITY = 0x80000000


@dataclass(frozen=True, slots=True)
class Property:
    key: str
    datatype: DataType
    value: MetricValue


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric. ``value`` None is ``is_null``. ``datatype`` is required to encode (it picks the value
    field) but is written only when the payload says so: births carry it, DATA should not (§3.1)."""

    timestamp: int | None  # ms since the epoch, UTC
    value: MetricValue | None
    datatype: DataType | None = None
    name: str | None = None
    alias: int | None = None
    is_historical: bool = False
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True, slots=True)
class Payload:
    timestamp: int | None
    metrics: tuple[Metric, ...]
    seq: int | None = None


def datatype_of(value: MetricValue) -> DataType:
    """The Sparkplug datatype the gateway publishes a Python value as."""
    if isinstance(value, bool):  # before int: bool is an int
        return DataType.BOOLEAN
    if isinstance(value, int):
        return DataType.INT64 if _INT64_MIN <= value <= _INT64_MAX else DataType.DOUBLE
    if isinstance(value, float):
        return DataType.DOUBLE
    return DataType.STRING


def sparkplug_quality(status: int) -> int:
    """The Sparkplug quality nearest to an OPC UA StatusCode: Bad -> BAD, the Uncertain "last usable
    value" codes -> STALE, anything else (Good, other Uncertain: a usable value) -> GOOD."""
    if status & _SEVERITY_MASK == _BAD_SEVERITY or status & _SEVERITY_MASK == _SEVERITY_MASK:
        return QUALITY_BAD
    if status & 0xFFFF0000 in _STALE_STATUS:  # the low 16 bits are info bits, not part of the code
        return QUALITY_STALE
    return QUALITY_GOOD


def quality_properties(status: int) -> tuple[Property, ...]:
    """Properties of a metric with this StatusCode: none when Good (an absent Quality means GOOD)."""
    if status == GOOD:
        return ()
    return (
        Property("Quality", DataType.INT32, sparkplug_quality(status)),
        Property("StatusCode", DataType.UINT32, status),
    )


def sanitize_id(text: str) -> str:
    """A group, edge node or device id: Sparkplug forbids ``+``, ``#`` and ``/`` in them (§3.1)."""
    cleaned = text.strip().translate({ord("+"): "_", ord("#"): "_", ord("/"): "_"})
    return cleaned or "unknown"


def topic(group_id: str, message_type: str, edge_node_id: str, device_id: str | None = None) -> str:
    """``spBv1.0/<group_id>/<message_type>/<edge_node_id>[/<device_id>]``."""
    base = f"{NAMESPACE}/{group_id}/{message_type}/{edge_node_id}"
    return base if device_id is None else f"{base}/{device_id}"


def state_topic(host_id: str) -> str:
    """Where a host application publishes its retained STATE (Sparkplug 3.0)."""
    return f"{NAMESPACE}/STATE/{host_id}"


def parse_state(payload: bytes) -> tuple[bool, int | None] | None:
    """A host's STATE ``{"online": <bool>, "timestamp": <ms>}`` as (online, timestamp or None); None when
    the payload is not one."""
    try:
        doc = json.loads(payload)
    except ValueError:  # also UnicodeDecodeError
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("online"), bool):
        return None
    ts = doc.get("timestamp")
    return doc["online"], ts if isinstance(ts, int) and not isinstance(ts, bool) else None


# -- encoding ------------------------------------------------------------------------------------------


def _set_value(target: Any, datatype: DataType, value: MetricValue) -> None:
    field = _FIELD.get(datatype)
    if field is None:
        raise ValueError(f"datatype {datatype!r} is not supported")
    if field == "int_value":
        value = int(value) & 0xFFFFFFFF
    elif field == "long_value":
        value = int(value) & 0xFFFFFFFFFFFFFFFF
    setattr(target, field, value)


def encode_payload(
    timestamp: int, metrics: Sequence[Metric], seq: int | None = None, *, with_datatypes: bool = True
) -> bytes:
    """Serialise a payload. ``seq`` None leaves it out (NDEATH); ``with_datatypes`` False leaves the
    metrics' datatypes out (DATA messages)."""
    message = PayloadMessage(timestamp=timestamp)
    if seq is not None:
        message.seq = seq
    for metric in metrics:
        if metric.datatype is None:
            raise ValueError(f"metric {metric.name or metric.alias!r} has no datatype")
        out = message.metrics.add()
        if metric.name is not None:
            out.name = metric.name
        if metric.alias is not None:
            out.alias = metric.alias
        if metric.timestamp is not None:
            out.timestamp = metric.timestamp
        if with_datatypes:
            out.datatype = metric.datatype
        if metric.is_historical:
            out.is_historical = True
        if metric.value is None:
            out.is_null = True
        else:
            _set_value(out, metric.datatype, metric.value)
        for prop in metric.properties:
            out.properties.keys.append(prop.key)
            value = out.properties.values.add(type=prop.datatype)
            _set_value(value, prop.datatype, prop.value)
    data: bytes = message.SerializeToString()
    return data


# -- decoding ------------------------------------------------------------------------------------------


def _datatype(number: int | None) -> DataType | None:
    if number is None:
        return None
    try:
        return DataType(number)
    except ValueError:  # a datatype this codec does not model (arrays, DataSet, Template ...)
        return None


def _get_value(source: Any, datatype: DataType | None) -> MetricValue | None:
    field = source.WhichOneof("value")
    if field is None:
        return None
    value: MetricValue = getattr(source, field)
    bits = _SIGNED_BITS.get(datatype) if datatype is not None else None
    if bits is not None and isinstance(value, int) and value >= 2 ** (bits - 1):
        value -= 2**bits
    return value


def decode_payload(data: bytes) -> Payload:
    """Parse a Sparkplug B payload; ValueError if it is not one. Signed integers are restored when the
    metric carries its datatype (births, and commands that include it)."""
    try:
        message = PayloadMessage.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a Sparkplug B payload: {exc}") from None
    metrics = []
    for m in message.metrics:
        datatype = _datatype(m.datatype) if m.HasField("datatype") else None
        props = []
        for key, v in zip(m.properties.keys, m.properties.values, strict=False):
            prop_type = _datatype(v.type)
            prop_value = _get_value(v, prop_type)
            if prop_type is not None and prop_value is not None:
                props.append(Property(key, prop_type, prop_value))
        metrics.append(
            Metric(
                timestamp=m.timestamp if m.HasField("timestamp") else None,
                value=None if m.is_null else _get_value(m, datatype),
                datatype=datatype,
                name=m.name if m.HasField("name") else None,
                alias=m.alias if m.HasField("alias") else None,
                is_historical=m.is_historical,
                properties=tuple(props),
            )
        )
    return Payload(
        timestamp=message.timestamp if message.HasField("timestamp") else None,
        metrics=tuple(metrics),
        seq=message.seq if message.HasField("seq") else None,
    )
