"""The PLC's address space, derived from the tag tables of its asset groups.

Layout (the gateway relies on it; see docs and ARCHITECTURE.md habit 7)::

    Objects/<site id>/<area id>/<plc id>/<asset id>/<tag key>     browse names in urn:twinedge:plant
                                           <asset id>/<command>   Methods, InputArguments from ArgSpec
                                           <asset id>/Manufacturer, Model, SerialNumber, AssetType
                                                                  (browse names in the types namespace,
                                                                   so a tag walk over the instance
                                                                   namespace never mistakes them for tags)

Each asset object's TypeDefinition is its ObjectType from nodesets/ (``<Type>Type`` in the types
namespace, typemodel.py) when that nodeset was imported, BaseObjectType otherwise; its children carry
the browse names of the type's InstanceDeclarations. Asset objects are event notifiers (alarms.py).

NodeIds are strings in the instance namespace: the tag path joined by ``/``; properties of a tag append
``#<property>`` and methods append ``()``, so no NodeId can collide whatever the keys are. Clients
must still resolve by browse path, never by these strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from asyncua import ua
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData

from devices.assets.base import AssetModel
from devices.opcua import values
from devices.opcua._ua import AttributeIds, ObjectIds, datavalue, nodeid, status
from devices.opcua.history import History
from devices.opcua.nodes import NodeBuilder
from devices.opcua.typemodel import type_browse_name
from devices.process_image import BAD_WAITING_FOR_INITIAL_DATA
from devices.tags import CommandSpec, DataType, TagSpec

EVENT_NOTIFIER_SUBSCRIBE = 0x01  # EventNotifier SubscribeToEvents bit (OPC 10000-3 §8.59)


@dataclass
class TagNodes:
    """The variables of one tag across every instance of an asset type, in instance order."""

    spec: TagSpec
    nodeids: list[ua.NodeId] = field(default_factory=list)
    values: list[AttributeValue] = field(default_factory=list)
    # Per-instance raw history the publisher appends to (history.py); None when not historized.
    history: list[History] | None = None


@dataclass
class GroupNodes:
    model: AssetModel
    asset_ids: tuple[str, ...]
    tags: list[TagNodes]
    asset_nodes: list[ua.NodeId] = field(default_factory=list)  # the asset objects, in asset_ids order


@dataclass(frozen=True)
class TagRef:
    asset_id: str
    spec: TagSpec


@dataclass(frozen=True)
class CommandRef:
    asset_id: str
    asset_node: ua.NodeId
    spec: CommandSpec


@dataclass
class PlantNodes:
    """What the exposer needs to find again: value slots per group, and what each NodeId means."""

    namespace_index: int
    types_namespace_index: int
    groups: list[GroupNodes]
    tags: dict[ua.NodeId, TagRef]
    commands: dict[ua.NodeId, CommandRef]
    node_count: int


@dataclass(frozen=True)
class AssetGroupView:
    """The part of a PLC asset group the address space needs (keeps this module free of Plc)."""

    model: AssetModel
    asset_ids: tuple[str, ...]


def waiting_value() -> ua.DataValue:
    """A variable's value before the first scan (OPC 10000-8 §7.3.2: BadWaitingForInitialData)."""
    return datavalue(ua.Variant(), status(BAD_WAITING_FOR_INITIAL_DATA), server=datetime.now(UTC))


class _Builder:
    def __init__(self, aspace: AddressSpace, ns: int, types_ns: int) -> None:
        self.nodes = NodeBuilder(aspace)
        self.aspace = aspace
        self.ns = ns
        self.types_ns = types_ns

    def name(self, text: str) -> ua.QualifiedName:
        return ua.QualifiedName(text, self.ns)

    def folder(self, path: str, key: str, parent: NodeData, description: str) -> NodeData:
        folder_id = nodeid(path, self.ns)
        existing = self.aspace.get(folder_id)
        if existing is not None:
            return existing
        return self.nodes.add_object(
            folder_id, self.name(key), parent, values.ObjectType.FOLDER, description, organizes=True
        )

    def prop(
        self,
        owner: NodeData,
        path: str,
        name: str,
        data_type: int,
        value: ua.Variant,
        ns: int = 0,
        value_rank: int = -1,
    ) -> None:
        self.nodes.add_property(
            nodeid(f"{path}#{name}", self.ns),
            ua.QualifiedName(name, ns),
            owner,
            data_type,
            value,
            value_rank,
        )

    def tag(self, asset: NodeData, asset_path: str, spec: TagSpec, historizing: bool) -> NodeData:
        path = f"{asset_path}/{spec.key}"
        vtype = values.variable_type(spec)
        analog = vtype is values.VariableType.ANALOG_ITEM
        node = self.nodes.add_variable(
            nodeid(path, self.ns),
            self.name(spec.key),
            asset,
            vtype.value,
            values.data_type_id(spec.datatype),
            waiting_value(),
            access_level=values.access_level(spec, historizing and analog),
            description=spec.description,
            historizing=historizing and analog,
        )
        if analog:
            self.prop(
                node,
                path,
                "EURange",
                values.RANGE_DATATYPE,
                ua.Variant(values.eu_range(spec), ua.VariantType.ExtensionObject),
            )
            if spec.unit is not None:
                self.prop(
                    node,
                    path,
                    "EngineeringUnits",
                    values.EU_INFORMATION_DATATYPE,
                    ua.Variant(values.eu_information(spec.unit), ua.VariantType.ExtensionObject),
                )
        elif vtype is values.VariableType.MULTI_STATE_DISCRETE:
            texts = [ua.LocalizedText(text, "en") for text in spec.enum_strings]
            self.prop(
                node,
                path,
                "EnumStrings",
                ObjectIds.LocalizedText,
                ua.Variant(texts, ua.VariantType.LocalizedText, is_array=True),
                value_rank=1,
            )
        elif vtype is values.VariableType.TWO_STATE_DISCRETE:
            true_text, false_text = values.two_state_texts(spec)
            for name, text in (("TrueState", true_text), ("FalseState", false_text)):
                self.prop(
                    node,
                    path,
                    name,
                    ObjectIds.LocalizedText,
                    ua.Variant(ua.LocalizedText(text, "en"), ua.VariantType.LocalizedText),
                )
        return node

    def identification(
        self, asset: NodeData, asset_path: str, plc_id: str, asset_id: str, model: AssetModel
    ) -> None:
        # Names and types as in DI/Machinery MachineIdentificationType (conventions.md §1.4).
        text = ua.VariantType.LocalizedText
        self.prop(
            asset,
            asset_path,
            "Manufacturer",
            ObjectIds.LocalizedText,
            ua.Variant(ua.LocalizedText(model.manufacturer, "en"), text),
            ns=self.types_ns,
        )
        self.prop(
            asset,
            asset_path,
            "Model",
            ObjectIds.LocalizedText,
            ua.Variant(ua.LocalizedText(model.model_name or model.type_name, "en"), text),
            ns=self.types_ns,
        )
        self.prop(
            asset,
            asset_path,
            "SerialNumber",
            ObjectIds.String,
            ua.Variant(f"{plc_id}-{asset_id}", ua.VariantType.String),
            ns=self.types_ns,
        )
        self.prop(
            asset,
            asset_path,
            "AssetType",
            ObjectIds.String,
            ua.Variant(model.type_name, ua.VariantType.String),
            ns=self.types_ns,
        )

    def command(self, asset: NodeData, asset_path: str, spec: CommandSpec) -> NodeData:
        path = f"{asset_path}/{spec.name}()"
        method = self.nodes.add_method(nodeid(path, self.ns), self.name(spec.name), asset, spec.description)
        if spec.args:
            arguments = [values.argument(arg) for arg in spec.args]
            self.prop(
                method,
                path,
                "InputArguments",
                values.ARGUMENT_DATATYPE,
                ua.Variant(arguments, ua.VariantType.ExtensionObject, is_array=True),
                value_rank=1,
            )
        return method


def build_plant_nodes(
    aspace: AddressSpace,
    namespace_index: int,
    types_namespace_index: int,
    site: tuple[str, str],
    area: tuple[str, str],
    plc_id: str,
    groups: Sequence[AssetGroupView],
    historizing: bool = False,
) -> PlantNodes:
    """Add the PLC's folders, asset objects, tag variables and methods; returns the lookup tables.

    ``site`` and ``area`` are (id, description) pairs.
    """
    builder = _Builder(aspace, namespace_index, types_namespace_index)
    objects = aspace[nodeid(ObjectIds.ObjectsFolder)]
    site_node = builder.folder(site[0], site[0], objects, site[1])
    area_path = f"{site[0]}/{area[0]}"
    area_node = builder.folder(area_path, area[0], site_node, area[1])
    plc_path = f"{area_path}/{plc_id}"
    plc_node = builder.folder(plc_path, plc_id, area_node, f"PLC {plc_id}")

    tags: dict[ua.NodeId, TagRef] = {}
    commands: dict[ua.NodeId, CommandRef] = {}
    group_nodes: list[GroupNodes] = []
    for group in groups:
        model = group.model
        published = [spec for spec in model.tags if spec.datatype is not DataType.STRING]
        tag_nodes = [TagNodes(spec) for spec in published]
        asset_nodes: list[ua.NodeId] = []
        # The ObjectType from nodesets/ (typemodel.py) if it was imported; asset types outside the
        # registry (tests, plugins) have none and stay BaseObjectType instances.
        type_id = nodeid(type_browse_name(model.type_name), types_namespace_index)
        type_definition = type_id if type_id in aspace else nodeid(values.ObjectType.BASE_OBJECT)
        for asset_id in group.asset_ids:
            asset_path = f"{plc_path}/{asset_id}"
            asset = builder.nodes.add_object(
                nodeid(asset_path, namespace_index),
                builder.name(asset_id),
                plc_node,
                type_definition,
                f"{model.type_name} {asset_id}",
                event_notifier=EVENT_NOTIFIER_SUBSCRIBE,  # alarms.py sends its events from here
            )
            asset_nodes.append(asset.nodeid)
            builder.identification(asset, asset_path, plc_id, asset_id, model)
            for slot in tag_nodes:
                node = builder.tag(asset, asset_path, slot.spec, historizing)
                slot.nodeids.append(node.nodeid)
                slot.values.append(node.attributes[AttributeIds.Value])
                tags[node.nodeid] = TagRef(asset_id, slot.spec)
            for command in model.commands:
                method = builder.command(asset, asset_path, command)
                commands[method.nodeid] = CommandRef(asset_id, asset.nodeid, command)
        group_nodes.append(GroupNodes(model, group.asset_ids, tag_nodes, asset_nodes))
    return PlantNodes(
        namespace_index, types_namespace_index, group_nodes, tags, commands, builder.nodes.count
    )
