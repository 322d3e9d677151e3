"""OPC UA points: what a source reads (from its catalogue PLC or hand-listed tags), how each point's
browse path becomes a NodeId on the connected server, and how values cross the Variant boundary.

NodeIds are never kept across connections (see opcua.py): ``resolve_nodes`` looks each namespace
index up by URI and translates the browse paths in one TranslateBrowsePathsToNodeIds call per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.object_ids import ObjectIds

from gateway.readings import TagValue
from gateway.sources.base import SourceError, TagRef, catalogue_plc
from gateway.sources.config import OpcUaSourceConfig

if TYPE_CHECKING:  # the catalogue module imports the codec, so only a type reference here
    from gateway.catalogue import Catalogue

_OBJECTS_FOLDER = ua.NodeId(cast(Any, ObjectIds.ObjectsFolder))
_HIERARCHICAL = ua.NodeId(cast(Any, ObjectIds.HierarchicalReferences))


@dataclass(frozen=True, slots=True)
class OpcUaPoint:
    ref: TagRef
    browse_path: tuple[str, ...] | None = None
    namespace_uri: str | None = None
    node_id: str | None = None
    writable: bool = False


def build_points(
    config: OpcUaSourceConfig, catalogue: Catalogue | None = None
) -> tuple[str, list[OpcUaPoint]]:
    """Endpoint and points of a source, from its catalogue PLC or its hand-listed tags."""
    if config.plc is None:
        assert config.endpoint is not None  # checked by the config model
        points = [
            OpcUaPoint(
                TagRef(t.asset, t.key, t.unit, config.site, config.area),
                t.browse_path,
                t.namespace_uri or config.namespace_uri,
                t.node_id,
                writable=True,  # the server decides; a refusal comes back as BadNotWritable
            )
            for t in config.tags
        ]
        return config.endpoint, points
    plc = catalogue_plc(config.name, config.plc, catalogue)
    if plc.opcua is None:
        raise SourceError(f"source {config.name}: plc {config.plc!r} has no OPC UA endpoint")
    points = [
        OpcUaPoint(
            TagRef(asset.id, tag.key, tag.unit, plc.site, plc.area),
            tag.opcua.browse_path,
            plc.opcua.namespace_uri,
            writable=tag.access == "rw",
        )
        for asset in plc.assets
        for tag in asset.tags
        if tag.opcua is not None
    ]
    return config.endpoint or plc.opcua.endpoint, points


def _relative_path(browse_path: tuple[str, ...], ns: int) -> ua.RelativePath:
    return ua.RelativePath(
        [
            ua.RelativePathElement(
                ReferenceTypeId=_HIERARCHICAL,
                IsInverse=cast(Any, False),
                IncludeSubtypes=cast(Any, True),
                TargetName=ua.QualifiedName(name, ns),
            )
            for name in browse_path
        ]
    )


async def resolve_nodes(
    client: Client, points: list[OpcUaPoint], nodes: list[ua.NodeId | None], batch_size: int,
    namespaces: Sequence[str] | None = None,
) -> None:
    """Fill in ``nodes[i]`` where still unknown: namespace indexes by URI (``namespaces``, or the
    server's array read now), paths in batched calls. A point whose namespace or path the server
    does not know (yet) stays None."""
    if namespaces is None:
        namespaces = await client.get_namespace_array()
    todo: list[tuple[int, ua.RelativePath]] = []
    for i, point in enumerate(points):
        if nodes[i] is not None:
            continue
        if point.node_id is not None:
            nodes[i] = ua.NodeId.from_string(point.node_id)
            continue
        assert point.browse_path is not None
        assert point.namespace_uri is not None
        if point.namespace_uri not in namespaces:
            continue  # not registered (yet): the server may still be loading its model
        todo.append((i, _relative_path(point.browse_path, namespaces.index(point.namespace_uri))))
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        results = await client.translate_browsepaths(_OBJECTS_FOLDER, [path for _, path in batch])
        for (i, _), result in zip(batch, results, strict=True):
            if result.StatusCode.is_good() and result.Targets:
                target = result.Targets[0].TargetId
                nodes[i] = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)


def plain_value(value: Any) -> TagValue | None:
    """Variant payloads the pipeline cannot carry (LocalizedText, arrays...) become text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, ua.LocalizedText):
        return value.Text or ""
    return str(value)


def coerce_value(value: TagValue, variant_type: ua.VariantType) -> Any:
    """A pipeline value as the Python type asyncua encodes as ``variant_type``."""
    if variant_type == ua.VariantType.Boolean:
        return bool(value)
    if variant_type in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    if variant_type == ua.VariantType.String:
        return str(value)
    if variant_type.name.startswith(("Int", "UInt", "SByte", "Byte")):
        if isinstance(value, float) and not value.is_integer():
            raise SourceError(f"{value!r} is not an integer")
        return int(value)
    return value
