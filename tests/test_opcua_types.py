"""The TwinEdge types NodeSet2 (nodesets/): generated from the tag tables, imported at start, and the
type definition of every asset object."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua import ua

from devices.assets.conveyor import Conveyor
from devices.assets.lathe import Lathe
from devices.assets.registry import ASSET_TYPES
from devices.opcua import INSTANCE_NAMESPACE_URI, TYPES_NAMESPACE_URI
from devices.opcua.nodesets import NODESETS_DIR, read_manifest
from devices.opcua.typemodel import NODESET_FILE, generate, manifest, type_browse_name
from devices.tags import DataType
from devices.units import UNECE_NAMESPACE_URI, unece_unit_id
from tests.test_opcua_server import Rig, open_rig

REGENERATE = ".venv/bin/python scripts/gen_nodesets.py"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with open_rig(tmp_path) as opened:
        yield opened


def test_committed_nodeset_is_the_generators_output() -> None:
    committed = NODESETS_DIR / NODESET_FILE
    assert committed.is_file(), f"{committed} is missing; regenerate with: {REGENERATE}"
    assert committed.read_text(encoding="utf-8") == generate(ASSET_TYPES), (
        f"{committed.name} is stale against the tag tables; regenerate with: {REGENERATE}"
    )
    manifest_file = NODESETS_DIR / "manifest.json"
    assert json.loads(manifest_file.read_text(encoding="utf-8")) == manifest(), (
        f"manifest.json is stale; regenerate with: {REGENERATE}"
    )


def test_nodeset_declares_its_model_and_one_type_per_asset_type() -> None:
    root = ET.parse(NODESETS_DIR / NODESET_FILE).getroot()
    ns = {"n": "http://opcfoundation.org/UA/2011/03/UANodeSet.xsd"}
    assert [uri.text for uri in root.findall("n:NamespaceUris/n:Uri", ns)] == [
        TYPES_NAMESPACE_URI,
        INSTANCE_NAMESPACE_URI,
    ]
    model = root.find("n:Models/n:Model", ns)
    assert model is not None
    assert model.get("ModelUri") == TYPES_NAMESPACE_URI
    types = {element.get("BrowseName") for element in root.findall("n:UAObjectType", ns)}
    assert types == {f"1:{type_browse_name(name)}" for name in ASSET_TYPES}
    assert [entry.uri for entry in read_manifest()] == [TYPES_NAMESPACE_URI]


def test_no_manifest_means_no_nodesets(tmp_path: Path) -> None:
    """The server must start without any nodeset (companion specs absent, or a stripped install)."""
    assert read_manifest(tmp_path) == []


def key(name: ua.QualifiedName) -> tuple[int, str]:
    return name.NamespaceIndex, name.Name


async def test_instance_type_definition_and_the_types_components(rig: Rig) -> None:
    client = rig.client
    types_ns = await client.get_namespace_index(TYPES_NAMESPACE_URI)
    asset = await rig.asset("conveyor-01")
    type_id = await asset.read_type_definition()
    assert type_id == ua.NodeId("ConveyorType", types_ns)
    object_type = client.get_node(type_id)
    assert await object_type.read_node_class() == ua.NodeClass.ObjectType
    assert (await object_type.read_browse_name()) == ua.QualifiedName("ConveyorType", types_ns)
    supertype = await object_type.get_parent()  # inverse HasSubtype
    assert supertype.nodeid == ua.NodeId(ua.ObjectIds.BaseObjectType)

    # Every instance child has a same-named InstanceDeclaration on the type, and vice versa.
    declared = {key(await child.read_browse_name()): child for child in await object_type.get_children()}
    instance = {key(await child.read_browse_name()) for child in await asset.get_children()}
    assert set(declared) == instance
    published = [spec for spec in Conveyor.tags if spec.datatype is not DataType.STRING]
    assert {(rig.ns, spec.key) for spec in published} <= set(declared)

    belt_speed = declared[(rig.ns, "belt_speed")]
    assert await belt_speed.read_type_definition() == ua.NodeId(ua.ObjectIds.AnalogItemType)
    assert (await (await belt_speed.get_child("0:EURange")).read_value()) == ua.Range(0.0, 3.0)
    units = await (await belt_speed.get_child("0:EngineeringUnits")).read_value()
    assert (units.NamespaceUri, units.UnitId) == (UNECE_NAMESPACE_URI, unece_unit_id("MTS"))
    rules = await belt_speed.get_referenced_nodes(ua.ObjectIds.HasModellingRule)
    assert [rule.nodeid for rule in rules] == [ua.NodeId(ua.ObjectIds.ModellingRule_Mandatory)]
    running = declared[(rig.ns, "running")]
    assert await running.read_type_definition() == ua.NodeId(ua.ObjectIds.TwoStateDiscreteType)
    manufacturer = declared[(types_ns, "Manufacturer")]
    assert (await manufacturer.read_value()).Text == Conveyor.manufacturer


async def test_type_methods_have_typed_input_arguments(rig: Rig) -> None:
    types_ns = await rig.client.get_namespace_index(TYPES_NAMESPACE_URI)
    lathe_type = rig.client.get_node(ua.NodeId("LatheType", types_ns))
    for command in Lathe.commands:
        method = await lathe_type.get_child(f"{rig.ns}:{command.name}")
        assert await method.read_node_class() == ua.NodeClass.Method
        if not command.args:
            continue
        arguments = await (await method.get_child("0:InputArguments")).read_value()
        assert [a.Name for a in arguments] == [arg.name for arg in command.args]
        assert all(a.DataType.NamespaceIndex == 0 and a.ValueRank == -1 for a in arguments)


async def test_asset_types_without_a_nodeset_type_stay_base_objects(rig: Rig) -> None:
    """jog-01 is a test-only asset type: no ObjectType in the nodeset, so BaseObjectType."""
    asset = await rig.asset("jog-01")
    assert await asset.read_type_definition() == ua.NodeId(ua.ObjectIds.BaseObjectType)
