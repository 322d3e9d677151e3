"""NodeSet2 XML of the TwinEdge asset types, generated from the tag tables (``scripts/gen_nodesets.py``).

One ObjectType per asset type in ``http://twinedge.dev/UA/Plant/``, a subtype of BaseObjectType (the
server must start without the DI/Machinery companion nodesets, conventions.md §1.4), with:

- a variable per published tag: AnalogItemType with EURange and EngineeringUnits, MultiStateDiscreteType
  with EnumStrings, TwoStateDiscreteType with TrueState/FalseState, as the instances have them;
- the identification properties Manufacturer, Model, SerialNumber and AssetType;
- a method per command with typed InputArguments;
- GeneratesEvent references to the alarm types the server emits for it (alarms.py).

Browse names: tag variables and methods use the *instance* namespace (``urn:twinedge:plant``, index 2
in this file), identification properties the types namespace (index 1), standard properties
namespace 0. That is exactly how instances are named (address_space.py), so a client can match an
instance's children to the type's InstanceDeclarations by browse name; the gateway resolves tags by
``urn:twinedge:plant`` browse paths and must keep doing so.

The output is deterministic (no dates from the clock, sorted types) so a test can compare the committed
file with a fresh generation. The codecs come from values.py, the same functions that build instances.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable

from devices.assets.base import AssetModel
from devices.opcua import INSTANCE_NAMESPACE_URI, TYPES_NAMESPACE_URI, values
from devices.opcua._ua import ObjectIds
from devices.tags import ArgSpec, CommandSpec, DataType, TagKind, TagSpec

NODESET_FILE = "TwinEdge.Plant.NodeSet2.xml"
MODEL_VERSION = "1.0.0"
# Bump by hand with MODEL_VERSION when the types change meaningfully; never from the clock, so the
# generated file is reproducible.
PUBLICATION_DATE = "2026-01-01T00:00:00Z"

_UANODESET = "http://opcfoundation.org/UA/2011/03/UANodeSet.xsd"
_UAX = "http://opcfoundation.org/UA/2008/02/Types.xsd"
ET.register_namespace("", _UANODESET)
ET.register_namespace("uax", _UAX)

_TYPES_NS = 1
_INSTANCE_NS = 2

_ALIASES = {
    "Boolean": "i=1",
    "Int16": "i=4",
    "UInt16": "i=5",
    "Int32": "i=6",
    "UInt32": "i=7",
    "Float": "i=10",
    "String": "i=12",
    "LocalizedText": "i=21",
    "Argument": "i=296",
    "Range": "i=884",
    "EUInformation": "i=887",
    "HasModellingRule": "i=37",
    "HasTypeDefinition": "i=40",
    "GeneratesEvent": "i=41",
    "HasSubtype": "i=45",
    "HasProperty": "i=46",
    "HasComponent": "i=47",
}
_MANDATORY = "i=78"
_PROPERTY_TYPE = "i=68"
_BASE_OBJECT_TYPE = "i=58"
EXCLUSIVE_LIMIT_ALARM_TYPE = 9341
OFF_NORMAL_ALARM_TYPE = 10637


def type_browse_name(type_name: str) -> str:
    """``mine_truck`` -> ``MineTruckType``; also the string NodeId of the type in the types namespace."""
    return "".join(part.capitalize() for part in type_name.split("_")) + "Type"


def alarm_tags(model: type[AssetModel] | AssetModel) -> tuple[list[TagSpec], list[TagSpec]]:
    """(limit-alarmed analog tags, off-normal boolean alarm tags) of an asset type (alarms.py)."""
    limits = [
        spec
        for spec in model.tags
        if spec.eu_range is not None
        and spec.kind in (TagKind.MEASUREMENT, TagKind.COUNTER)
        and values.variable_type(spec) is values.VariableType.ANALOG_ITEM
    ]
    off_normal = [spec for spec in model.tags if spec.kind is TagKind.ALARM and spec.datatype is DataType.BOOL]
    return limits, off_normal


def _u(tag: str) -> str:
    return f"{{{_UANODESET}}}{tag}"


def _x(tag: str) -> str:
    return f"{{{_UAX}}}{tag}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def _num(value: float) -> str:
    return repr(float(value))


class _Writer:
    def __init__(self, root: ET.Element) -> None:
        self.root = root

    def node(
        self,
        tag: str,
        nodeid: str,
        browse_name: str,
        description: str,
        refs: Iterable[tuple[str, str, bool]],
        parent: str | None = None,
        **attrib: str,
    ) -> ET.Element:
        attributes = {"NodeId": nodeid, "BrowseName": browse_name}
        if parent is not None:
            attributes["ParentNodeId"] = parent
        attributes.update(attrib)
        element = _sub(self.root, _u(tag), **attributes)
        _sub(element, _u("DisplayName"), browse_name.split(":", 1)[-1])
        if description:
            _sub(element, _u("Description"), description)
        references = _sub(element, _u("References"))
        for ref_type, target, forward in refs:
            if forward:
                _sub(references, _u("Reference"), target, ReferenceType=ref_type)
            else:
                _sub(references, _u("Reference"), target, ReferenceType=ref_type, IsForward="false")
        return element

    def prop(self, owner: str, name: str, data_type: str, browse_ns: int = 0, value_rank: int = -1) -> ET.Element:
        """A mandatory PropertyType child; returns its ``<Value>`` element (empty: no value)."""
        browse = f"{browse_ns}:{name}" if browse_ns else name
        attrib = {"DataType": data_type}
        if value_rank != -1:
            attrib.update(ValueRank=str(value_rank), ArrayDimensions="0")
        element = self.node(
            "UAVariable",
            f"{owner}#{name}",
            browse,
            "",
            [("HasTypeDefinition", _PROPERTY_TYPE, True), ("HasModellingRule", _MANDATORY, True),
             ("HasProperty", owner, False)],
            parent=owner,
            **attrib,
        )
        return _sub(element, _u("Value"))


def _localized(parent: ET.Element, text: str, tag: str = "LocalizedText") -> None:
    element = _sub(parent, _x(tag))
    _sub(element, _x("Locale"), "en")
    _sub(element, _x("Text"), text)


def _extension(parent: ET.Element, encoding_id: int, body_tag: str) -> ET.Element:
    ext = _sub(parent, _x("ExtensionObject"))
    _sub(_sub(ext, _x("TypeId")), _x("Identifier"), f"i={encoding_id}")
    return _sub(_sub(ext, _x("Body")), _x(body_tag))


def _data_type(datatype: DataType) -> str:
    return values.variant_type(datatype).name


def _tag_variable(writer: _Writer, owner: str, spec: TagSpec) -> None:
    nodeid = f"{owner}/{spec.key}"
    vtype = values.variable_type(spec)
    writer.node(
        "UAVariable",
        nodeid,
        f"{_INSTANCE_NS}:{spec.key}",
        spec.description,
        [("HasTypeDefinition", f"i={int(vtype)}", True), ("HasModellingRule", _MANDATORY, True),
         ("HasComponent", owner, False)],
        parent=owner,
        DataType=_data_type(spec.datatype),
        AccessLevel=str(values.access_level(spec)),
    )
    if vtype is values.VariableType.ANALOG_ITEM:
        rng = values.eu_range(spec)
        body = _extension(writer.prop(nodeid, "EURange", "Range"), ObjectIds.Range_Encoding_DefaultXml, "Range")
        _sub(body, _x("Low"), _num(rng.Low))
        _sub(body, _x("High"), _num(rng.High))
        if spec.unit is not None:
            eu = values.eu_information(spec.unit)
            value = writer.prop(nodeid, "EngineeringUnits", "EUInformation")
            body = _extension(value, ObjectIds.EUInformation_Encoding_DefaultXml, "EUInformation")
            _sub(body, _x("NamespaceUri"), eu.NamespaceUri)
            _sub(body, _x("UnitId"), str(eu.UnitId))
            _localized(body, str(eu.DisplayName.Text), "DisplayName")
            _localized(body, str(eu.Description.Text), "Description")
    elif vtype is values.VariableType.MULTI_STATE_DISCRETE:
        texts = _sub(writer.prop(nodeid, "EnumStrings", "LocalizedText", value_rank=1), _x("ListOfLocalizedText"))
        for text in spec.enum_strings:
            _localized(texts, text)
    elif vtype is values.VariableType.TWO_STATE_DISCRETE:
        true_text, false_text = values.two_state_texts(spec)
        _localized(writer.prop(nodeid, "TrueState", "LocalizedText"), true_text)
        _localized(writer.prop(nodeid, "FalseState", "LocalizedText"), false_text)


def _method(writer: _Writer, owner: str, spec: CommandSpec) -> None:
    nodeid = f"{owner}/{spec.name}()"
    writer.node(
        "UAMethod",
        nodeid,
        f"{_INSTANCE_NS}:{spec.name}",
        spec.description,
        [("HasModellingRule", _MANDATORY, True), ("HasComponent", owner, False)],
        parent=owner,
    )
    if spec.args:
        args = _sub(writer.prop(nodeid, "InputArguments", "Argument", value_rank=1), _x("ListOfExtensionObject"))
        for arg in spec.args:
            _argument(args, arg)


def _argument(parent: ET.Element, arg: ArgSpec) -> None:
    described = values.argument(arg)
    body = _extension(parent, ObjectIds.Argument_Encoding_DefaultXml, "Argument")
    _sub(body, _x("Name"), arg.name)
    _sub(_sub(body, _x("DataType")), _x("Identifier"), described.DataType.to_string())
    _sub(body, _x("ValueRank"), "-1")
    _sub(body, _x("ArrayDimensions"))
    _localized(body, str(described.Description.Text), "Description")


def _object_type(writer: _Writer, model: type[AssetModel]) -> None:
    name = type_browse_name(model.type_name)
    nodeid = f"ns={_TYPES_NS};s={name}"
    published = [spec for spec in model.tags if spec.datatype is not DataType.STRING]
    limits, off_normal = alarm_tags(model)
    refs: list[tuple[str, str, bool]] = [("HasSubtype", _BASE_OBJECT_TYPE, False)]
    refs += [("HasProperty", f"{nodeid}#{prop}", True) for prop in ("Manufacturer", "Model", "SerialNumber",
                                                                       "AssetType")]
    refs += [("HasComponent", f"{nodeid}/{spec.key}", True) for spec in published]
    refs += [("HasComponent", f"{nodeid}/{command.name}()", True) for command in model.commands]
    if limits:
        refs.append(("GeneratesEvent", f"i={EXCLUSIVE_LIMIT_ALARM_TYPE}", True))
    if off_normal:
        refs.append(("GeneratesEvent", f"i={OFF_NORMAL_ALARM_TYPE}", True))
    writer.node("UAObjectType", nodeid, f"{_TYPES_NS}:{name}", f"TwinEdge {model.type_name} asset", refs)
    # Identification as in Machinery MachineIdentificationType (conventions.md §1.4); values that are
    # the same for every instance are the type's defaults.
    _localized(writer.prop(nodeid, "Manufacturer", "LocalizedText", _TYPES_NS), model.manufacturer)
    _localized(writer.prop(nodeid, "Model", "LocalizedText", _TYPES_NS), model.model_name or model.type_name)
    writer.prop(nodeid, "SerialNumber", "String", _TYPES_NS)
    _sub(writer.prop(nodeid, "AssetType", "String", _TYPES_NS), _x("String"), model.type_name)
    for spec in published:
        _tag_variable(writer, nodeid, spec)
    for command in model.commands:
        _method(writer, nodeid, command)


def generate(asset_types: dict[str, type[AssetModel]]) -> str:
    """The NodeSet2 XML text for ``asset_types`` (sorted by type name)."""
    root = ET.Element(_u("UANodeSet"), {"LastModified": PUBLICATION_DATE})
    uris = _sub(root, _u("NamespaceUris"))
    _sub(uris, _u("Uri"), TYPES_NAMESPACE_URI)
    _sub(uris, _u("Uri"), INSTANCE_NAMESPACE_URI)
    models = _sub(root, _u("Models"))
    model = _sub(models, _u("Model"), ModelUri=TYPES_NAMESPACE_URI, Version=MODEL_VERSION,
                 PublicationDate=PUBLICATION_DATE)
    _sub(model, _u("RequiredModel"), ModelUri="http://opcfoundation.org/UA/", Version="1.04.7",
         PublicationDate="2020-07-15T00:00:00Z")
    aliases = _sub(root, _u("Aliases"))
    for alias, target in _ALIASES.items():
        _sub(aliases, _u("Alias"), target, Alias=alias)
    writer = _Writer(root)
    for name in sorted(asset_types):
        _object_type(writer, asset_types[name])
    ET.indent(root, space="  ")
    header = (
        "<?xml version='1.0' encoding='utf-8'?>\n"
        "<!-- Generated by scripts/gen_nodesets.py from the tag tables; do not edit. -->\n"
    )
    return header + ET.tostring(root, encoding="unicode") + "\n"


def manifest() -> dict[str, list[dict[str, str]]]:
    """nodesets/manifest.json: the load order (nodesets.py). Companion nodesets would come first."""
    return {"nodesets": [{"file": NODESET_FILE, "uri": TYPES_NAMESPACE_URI}]}
