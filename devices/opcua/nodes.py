"""Fast node creation straight into asyncua's internal address space.

asyncua's NodeManagementService builds ~24 attribute Variants and two timestamps per node and
re-reads the target of every reference: 10 s for 31,000 nodes on this host, and 60 s through the
Node API under one parent. Building ``NodeData`` ourselves with only the attributes a node class
has (OPC 10000-3 §5) and the references it needs takes a fraction of that, which is what lets a PLC
with 10,000 variables serve within seconds of start.

This relies on asyncua's internal ``NodeData``/``AttributeValue``/``AddressSpace`` layout, stable
across 2.x; asyncua is pinned to ~=2.1.0 in pyproject.toml for that reason.
"""

from __future__ import annotations

from typing import Any

from asyncua import ua
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData

from devices.opcua._ua import AttributeIds, ObjectIds
from devices.opcua._ua import nodeid as make_nodeid

_ORGANIZES = make_nodeid(ObjectIds.Organizes)
_HAS_COMPONENT = make_nodeid(ObjectIds.HasComponent)
_HAS_PROPERTY = make_nodeid(ObjectIds.HasProperty)
_HAS_TYPE_DEFINITION = make_nodeid(ObjectIds.HasTypeDefinition)

Ref = ua.NodeId


def _dv(value: Any, vtype: ua.VariantType) -> AttributeValue:
    return AttributeValue(ua.DataValue(ua.Variant(value, vtype)))


_Key = tuple[Any, ...]


class NodeBuilder:
    """Adds nodes and their references to one address space; no checks beyond parent existence.

    The caller guarantees unique NodeIds (they are derived from the unique path of each node).
    """

    def __init__(self, aspace: AddressSpace) -> None:
        self._aspace = aspace
        self._type_names: dict[ua.NodeId, tuple[ua.QualifiedName, ua.LocalizedText, ua.NodeClass]] = {}
        # Constant attributes (AccessLevel, DataType, the description of a tag on its 1,000th
        # instance...) share one AttributeValue across nodes: creating Variants, DataValues and
        # AttributeValues dominated the build time. Sharing is safe because nothing writes them:
        # asyncua replaces an attribute's DataValue only on write, the Write service refuses every
        # write to these nodes' attributes (writes.py), and a monitored item on such an attribute
        # registers its callback under a server-unique handle, so sharing the callback dict only
        # means a write that never happens would notify more items.
        self._shared: dict[_Key, AttributeValue] = {}
        self.count = 0

    def _const(self, key: _Key, make: Any) -> AttributeValue:
        attribute = self._shared.get(key)
        if attribute is None:
            attribute = self._shared[key] = AttributeValue(ua.DataValue(make()))
        return attribute

    def _scalar(self, value: bool | int | float | str | ua.NodeId, vtype: ua.VariantType) -> AttributeValue:
        attribute = self._shared.get((vtype, type(value), value))
        if attribute is None:  # no lambda on the hot path: this runs ~10 times per node
            attribute = self._const((vtype, type(value), value), lambda: ua.Variant(value, vtype))
        return attribute

    def _text(self, text: str, locale: str | None = None) -> AttributeValue:
        attribute = self._shared.get(("text", text, locale))
        if attribute is None:
            attribute = self._const(
                ("text", text, locale),
                lambda: ua.Variant(ua.LocalizedText(text, locale), ua.VariantType.LocalizedText),
            )
        return attribute

    # --- node classes ----------------------------------------------------------------------------

    def add_object(
        self,
        nodeid: ua.NodeId,
        browse_name: ua.QualifiedName,
        parent: NodeData,
        type_definition: int | ua.NodeId,
        description: str = "",
        organizes: bool = False,
        event_notifier: int = 0,
    ) -> NodeData:
        node = self._base(nodeid, ua.NodeClass.Object, browse_name, description)
        node.attributes[AttributeIds.EventNotifier] = self._scalar(event_notifier, ua.VariantType.Byte)
        self._link(parent, node, _ORGANIZES if organizes else _HAS_COMPONENT, type_definition)
        return node

    def add_variable(
        self,
        nodeid: ua.NodeId,
        browse_name: ua.QualifiedName,
        parent: NodeData,
        type_definition: int | ua.NodeId,
        data_type: ua.NodeId,
        value: ua.DataValue,
        access_level: int = 1,
        description: str = "",
        value_rank: int = -1,
        historizing: bool = False,
        is_property: bool = False,
        minimum_sampling_interval: float = 0.0,
    ) -> NodeData:
        node = self._base(nodeid, ua.NodeClass.Variable, browse_name, description)
        attrs = node.attributes
        attrs[AttributeIds.Value] = AttributeValue(value)
        attrs[AttributeIds.DataType] = self._scalar(data_type, ua.VariantType.NodeId)
        attrs[AttributeIds.ValueRank] = self._scalar(value_rank, ua.VariantType.Int32)
        if value_rank >= 0:
            attrs[AttributeIds.ArrayDimensions] = AttributeValue(
                ua.DataValue(ua.Variant([0] * max(value_rank, 1), ua.VariantType.UInt32, is_array=True))
            )
        attrs[AttributeIds.AccessLevel] = self._scalar(access_level, ua.VariantType.Byte)
        attrs[AttributeIds.UserAccessLevel] = self._scalar(access_level, ua.VariantType.Byte)
        attrs[AttributeIds.MinimumSamplingInterval] = self._scalar(
            minimum_sampling_interval, ua.VariantType.Double
        )
        attrs[AttributeIds.Historizing] = self._scalar(historizing, ua.VariantType.Boolean)
        self._link(parent, node, _HAS_PROPERTY if is_property else _HAS_COMPONENT, type_definition)
        return node

    def add_property(
        self,
        nodeid: ua.NodeId,
        browse_name: ua.QualifiedName,
        parent: NodeData,
        data_type: int | ua.NodeId,
        value: ua.Variant,
        value_rank: int = -1,
    ) -> NodeData:
        """A read-only PropertyType (i=68) variable with a constant value."""
        dtype = data_type if isinstance(data_type, ua.NodeId) else make_nodeid(data_type, 0)
        return self.add_variable(
            nodeid,
            browse_name,
            parent,
            68,
            dtype,
            ua.DataValue(value),
            value_rank=value_rank,
            is_property=True,
        )

    def add_method(
        self, nodeid: ua.NodeId, browse_name: ua.QualifiedName, parent: NodeData, description: str = ""
    ) -> NodeData:
        node = self._base(nodeid, ua.NodeClass.Method, browse_name, description)
        node.attributes[AttributeIds.Executable] = self._scalar(True, ua.VariantType.Boolean)
        node.attributes[AttributeIds.UserExecutable] = self._scalar(True, ua.VariantType.Boolean)
        self._link(parent, node, _HAS_COMPONENT, None)
        return node

    # --- internals -------------------------------------------------------------------------------

    def _base(
        self, nodeid: ua.NodeId, node_class: ua.NodeClass, browse_name: ua.QualifiedName, description: str
    ) -> NodeData:
        node = NodeData(nodeid)
        attrs = node.attributes
        attrs[AttributeIds.NodeId] = _dv(nodeid, ua.VariantType.NodeId)
        attrs[AttributeIds.NodeClass] = self._scalar(int(node_class), ua.VariantType.Int32)
        attrs[AttributeIds.BrowseName] = self._const(
            ("qn", browse_name.Name, browse_name.NamespaceIndex),
            lambda: ua.Variant(browse_name, ua.VariantType.QualifiedName),
        )
        attrs[AttributeIds.DisplayName] = self._text(browse_name.Name)
        attrs[AttributeIds.Description] = self._text(description, "en")
        attrs[AttributeIds.WriteMask] = self._scalar(0, ua.VariantType.UInt32)
        attrs[AttributeIds.UserWriteMask] = self._scalar(0, ua.VariantType.UInt32)
        self._aspace[nodeid] = node
        self.count += 1
        return node

    def _type_info(self, type_id: ua.NodeId) -> tuple[ua.QualifiedName, ua.LocalizedText, ua.NodeClass]:
        info = self._type_names.get(type_id)
        if info is None:
            type_node = self._aspace[type_id]  # KeyError for an unknown type: a programming error
            info = (
                type_node.attributes[AttributeIds.BrowseName].value.Value.Value,  # type: ignore[union-attr]
                type_node.attributes[AttributeIds.DisplayName].value.Value.Value,  # type: ignore[union-attr]
                type_node.attributes[AttributeIds.NodeClass].value.Value.Value,  # type: ignore[union-attr]
            )
            self._type_names[type_id] = info
        return info

    def _link(
        self, parent: NodeData, child: NodeData, ref_type: ua.NodeId, type_definition: int | ua.NodeId | None
    ) -> None:
        attrs = child.attributes
        browse_name = attrs[AttributeIds.BrowseName].value.Value.Value  # type: ignore[union-attr]
        display_name = attrs[AttributeIds.DisplayName].value.Value.Value  # type: ignore[union-attr]
        node_class = attrs[AttributeIds.NodeClass].value.Value.Value  # type: ignore[union-attr]
        parent_attrs = parent.attributes
        type_id = ua.NodeId()
        if type_definition is not None:
            type_id = (
                type_definition if isinstance(type_definition, ua.NodeId) else make_nodeid(type_definition, 0)
            )
            type_name, type_display, type_class = self._type_info(type_id)
            child.references.append(
                ua.ReferenceDescription(
                    ReferenceTypeId=_HAS_TYPE_DEFINITION,
                    IsForward=True,
                    NodeId=type_id,
                    BrowseName=type_name,
                    DisplayName=type_display,
                    NodeClass=type_class,
                )
            )
        parent.references.append(
            ua.ReferenceDescription(
                ReferenceTypeId=ref_type,
                IsForward=True,
                NodeId=child.nodeid,
                BrowseName=browse_name,
                DisplayName=display_name,
                NodeClass=node_class,
                TypeDefinition=type_id,
            )
        )
        child.references.append(
            ua.ReferenceDescription(
                ReferenceTypeId=ref_type,
                IsForward=False,
                NodeId=parent.nodeid,
                BrowseName=parent_attrs[AttributeIds.BrowseName].value.Value.Value,  # type: ignore[union-attr]
                DisplayName=parent_attrs[AttributeIds.DisplayName].value.Value.Value,  # type: ignore[union-attr]
                NodeClass=parent_attrs[AttributeIds.NodeClass].value.Value.Value,  # type: ignore[union-attr]
                TypeDefinition=self._type_definition_of(parent),
            )
        )

    @staticmethod
    def _type_definition_of(node: NodeData) -> ua.NodeId:
        for ref in node.references:
            if ref.IsForward and ref.ReferenceTypeId == _HAS_TYPE_DEFINITION:
                target: ua.NodeId = ref.NodeId
                return target
        return ua.NodeId()
