"""A command validator built from the tag catalogue (conventions §6.3, input validation on writes).

Checks, in the order a client needs them: the asset exists; for a write the tag exists and is
writable (access rw), the value has the tag's type and fits its datatype bounds (INT16 -32768..32767,
UINT16 0..65535, FLOAT32 finite) and its EURange; for a named command, the asset type has it and
each argument passes the same checks. Every failure raises CommandRejected with the reason (422).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from gateway.catalogue import Catalogue, CatalogueAsset
from gateway.commands.queue import CommandRejected
from gateway.commands.store import WRITE, CommandRequest
from gateway.readings import TagValue

_INT_BOUNDS = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "enum": (0, 2**16 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38


def check_value(
    name: str, value: TagValue, datatype: str, eu_range: Sequence[float] | None = None,
    enum_strings: Sequence[str] = (),
) -> TagValue:
    """The value as the PLC takes it (an enum name becomes its index); CommandRejected otherwise."""
    if datatype == "bool":
        if not isinstance(value, bool):
            raise CommandRejected(f"{name} is bool; got {type(value).__name__} {value!r}")
        return value
    if datatype == "string":
        if not isinstance(value, str):
            raise CommandRejected(f"{name} is a string; got {type(value).__name__} {value!r}")
        return value
    if datatype == "enum" and isinstance(value, str):
        if value not in enum_strings:
            raise CommandRejected(f"{name} must be one of {', '.join(enum_strings)}; got {value!r}")
        return enum_strings.index(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandRejected(f"{name} is {datatype}; got {type(value).__name__} {value!r}")
    number: float | int = value
    if datatype in _INT_BOUNDS:
        if isinstance(value, float) and not value.is_integer():
            raise CommandRejected(f"{name} is {datatype}, an integer; got {value!r}")
        number = int(value)
        low, high = _INT_BOUNDS[datatype]
        if datatype == "enum" and enum_strings:
            high = len(enum_strings) - 1
        if not low <= number <= high:
            raise CommandRejected(f"{name} = {value!r} is outside the {datatype} range {low}..{high}")
    elif not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise CommandRejected(f"{name} = {value!r} is not a finite {datatype}")
    if eu_range is not None and not eu_range[0] <= number <= eu_range[1]:
        raise CommandRejected(f"{name} = {value!r} is outside its EURange {eu_range[0]:g}..{eu_range[1]:g}")
    return number


def _check_write(asset: CatalogueAsset, request: CommandRequest) -> None:
    tag = next((t for t in asset.tags if t.key == request.tag), None)
    if tag is None:
        raise CommandRejected(f"{asset.id} has no tag {request.tag!r}")
    if tag.access != "rw":
        raise CommandRejected(f"{asset.id}.{tag.key} is read-only")
    assert request.value is not None  # CommandRequest guarantees it for writes
    check_value(f"{asset.id}.{tag.key}", request.value, tag.datatype, tag.eu_range, tag.enum_strings)


def _check_call(asset: CatalogueAsset, request: CommandRequest) -> None:
    command = next((c for c in asset.commands if c.name == request.command), None)
    if command is None:
        known = ", ".join(c.name for c in asset.commands) or "none"
        raise CommandRejected(f"{asset.id} ({asset.type}) has no command {request.command!r}; has: {known}")
    specs: Sequence[Any] = command.args
    if len(request.args) != len(specs):
        raise CommandRejected(f"{request.command} takes {len(specs)} argument(s); got {len(request.args)}")
    for index, (value, spec) in enumerate(zip(request.args, specs, strict=True)):
        if not isinstance(spec, dict):
            continue  # an argument the catalogue does not describe: the PLC checks it
        name = f"{request.command}.{spec.get('name', index)}"
        check_value(name, value, str(spec.get("datatype", "float32")), spec.get("eu_range"),
                    tuple(spec.get("enum_strings") or ()))


def catalogue_validator(catalogue: Catalogue) -> Callable[[CommandRequest], None]:
    """The ``validate`` callback for CommandQueue, from the catalogue the gateway loaded."""
    assets = {asset.id: asset for plc in catalogue.plcs for asset in plc.assets}

    def validate(request: CommandRequest) -> None:
        asset = assets.get(request.asset)
        if asset is None:
            raise CommandRejected(f"unknown asset {request.asset!r}")
        if request.command == WRITE:
            _check_write(asset, request)
        else:
            _check_call(asset, request)

    return validate
