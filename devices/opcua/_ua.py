"""Typed shims over asyncua's ``ua`` names for ``mypy --strict``.

asyncua annotates NodeId/StatusCode/DataValue fields with its int/str/datetime subclasses (``ua.Int32``,
``ua.UInt32``, ``ua.DateTime``...) and re-exports StatusCodes, AttributeIds and Server implicitly.
These helpers take plain Python values (which is what asyncua stores at runtime anyway) so the rest of
the package type-checks without a cast on every line.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from asyncua import ua
from asyncua.server.server import Server as Server
from asyncua.ua.attribute_ids import AttributeIds as AttributeIds
from asyncua.ua.object_ids import ObjectIds as ObjectIds
from asyncua.ua.status_codes import StatusCodes as StatusCodes


def nodeid(identifier: int | str, namespace: int = 0) -> ua.NodeId:
    return ua.NodeId(cast(Any, identifier), cast(Any, namespace))


def status(code: int) -> ua.StatusCode:
    return ua.StatusCode(cast(Any, code))


def datavalue(
    variant: ua.Variant,
    code: ua.StatusCode,
    source: datetime | None = None,
    server: datetime | None = None,
) -> ua.DataValue:
    return ua.DataValue(
        Value=variant, StatusCode=code, SourceTimestamp=cast(Any, source), ServerTimestamp=cast(Any, server)
    )


def diagnostic(reason: str) -> ua.DiagnosticInfo:
    """A DiagnosticInfo carrying a reason inline (AdditionalInfo needs no string table)."""
    return ua.DiagnosticInfo(AdditionalInfo=cast(Any, reason))
