"""The Sparkplug B protobuf schema, built at import from a descriptor written here (conventions §3.1).

The field numbers are those of the Sparkplug 3.0 specification, chapter "Payloads", section "Google
Protocol Buffer Schema"; the schema is ours, not Tahu's EPL-licensed ``sparkplug_b.proto``. Building
the descriptor in Python needs neither ``protoc`` nor generated code, so nothing has to be regenerated
when protobuf moves.

Only what the gateway writes or reads is declared: Payload, Metric with the scalar values, PropertySet
and PropertyValue. Messages are declared at the top level instead of nested in Payload: protobuf
encodes fields by number, so the bytes are the same. A received payload that uses what is left out
(DataSet, Template, MetaData, extensions) still parses: protobuf keeps such fields as unknown fields.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "twinedge.sparkplug_b"

# The scalar members of a value ``oneof``: (field name, protobuf type), numbered from a message's first.
_SCALAR_VALUES = (
    ("int_value", _F.TYPE_UINT32),
    ("long_value", _F.TYPE_UINT64),
    ("float_value", _F.TYPE_FLOAT),
    ("double_value", _F.TYPE_DOUBLE),
    ("boolean_value", _F.TYPE_BOOL),
    ("string_value", _F.TYPE_STRING),
)


def _add_message(
    file: Any, name: str, fields: list[tuple[str, int, int, str | None, bool]], value_from: int | None = None
) -> None:
    """One message: ``fields`` are (name, number, type, message type or None, repeated); ``value_from``
    numbers the scalar ``oneof value`` members from that field number on."""
    message = file.message_type.add(name=name)
    for field_name, number, field_type, type_name, repeated in fields:
        field = message.field.add(
            name=field_name,
            number=number,
            type=field_type,
            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
        )
        if type_name is not None:
            field.type_name = f".{_PACKAGE}.{type_name}"
    if value_from is not None:
        message.oneof_decl.add(name="value")
        for offset, (field_name, field_type) in enumerate(_SCALAR_VALUES):
            message.field.add(
                name=field_name, number=value_from + offset, type=field_type, label=_F.LABEL_OPTIONAL, oneof_index=0
            )


def _build() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="twinedge_sparkplug_b.proto", package=_PACKAGE, syntax="proto2")
    msg, u32, u64, boolean, string = _F.TYPE_MESSAGE, _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_BOOL, _F.TYPE_STRING
    # PropertyValue: type = 1, is_null = 2, value oneof int_value = 3 ... string_value = 8.
    _add_message(file, "PropertyValue", [("type", 1, u32, None, False), ("is_null", 2, boolean, None, False)], 3)
    # PropertySet: keys = 1, values = 2 (two arrays of the same length).
    _add_message(file, "PropertySet", [("keys", 1, string, None, True), ("values", 2, msg, "PropertyValue", True)])
    # Metric: name = 1 ... is_null = 7, properties = 9, value oneof int_value = 10 ... string_value = 15.
    _add_message(
        file,
        "Metric",
        [
            ("name", 1, string, None, False),
            ("alias", 2, u64, None, False),
            ("timestamp", 3, u64, None, False),
            ("datatype", 4, u32, None, False),
            ("is_historical", 5, boolean, None, False),
            ("is_null", 7, boolean, None, False),
            ("properties", 9, msg, "PropertySet", False),
        ],
        10,
    )
    # Payload: timestamp = 1, metrics = 2, seq = 3.
    _add_message(
        file,
        "Payload",
        [("timestamp", 1, u64, None, False), ("metrics", 2, msg, "Metric", True), ("seq", 3, u64, None, False)],
    )
    # A private pool: the default one is process-wide and would clash with anyone else's Sparkplug schema.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Payload"))


# The message class (``PayloadMessage.FromString(data)``, ``PayloadMessage()``). Typed Any: protobuf ships
# no type information, and a class made at run time could have none anyway.
PayloadMessage: Any = _build()
