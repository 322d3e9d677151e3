"""The OPC UA face of a PLC, tested over real TCP on loopback with an asyncua client.

The PLC is scanned by hand (``plc.scan()``) so every value is deterministic; waits are on conditions
with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from asyncua import Client, Node, ua
from asyncua.ua import uaerrors

from devices.assets.base import ArgValue, State
from devices.assets.conveyor import Conveyor
from devices.assets.registry import ASSET_TYPES
from devices.clock import VirtualClock
from devices.config import AreaConfig, PlantSettings, PlcConfig, SiteConfig
from devices.opcua import INSTANCE_NAMESPACE_URI, TYPES_NAMESPACE_URI, OpcUaExposer, OpcUaServerConfig
from devices.opcua.values import eu_range
from devices.plc import AssetGroup, Plc
from devices.process_image import BAD_SENSOR_FAILURE, BAD_WAITING_FOR_INITIAL_DATA
from devices.tags import Access, ArgSpec, CommandRejected, CommandSpec, DataType, TagKind, TagSpec
from devices.units import UNECE_NAMESPACE_URI, unece_unit_id

SITE, AREA, PLC_ID = "factory", "shop", "plc-test"
START = datetime(2030, 1, 1, tzinfo=UTC)
DEADLINE_S = 5.0


class JogConveyor(Conveyor):
    """A conveyor with a typed command and an enum setpoint, to test method arguments and enums."""

    type_name: ClassVar[str] = "test_jog_conveyor"
    tags: ClassVar[tuple[TagSpec, ...]] = (
        *Conveyor.tags,
        TagSpec(
            "mode",
            DataType.ENUM,
            TagKind.SETPOINT,
            "Operating mode",
            enum_strings=("auto", "manual"),
            access=Access.RW,
        ),
    )
    commands: ClassVar[tuple[CommandSpec, ...]] = (
        *Conveyor.commands,
        CommandSpec(
            "jog",
            "Run at a speed",
            (
                ArgSpec("speed", DataType.FLOAT32, "Belt speed", eu_range=(0.0, 3.0)),
                ArgSpec("direction", DataType.ENUM, "Direction", enum_strings=("forward", "reverse")),
            ),
        ),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        return {**super().initial_state(count, rng), "mode": np.zeros(count)}

    def apply_command(self, state: State, index: int, name: str, args: Mapping[str, ArgValue]) -> None:
        if name == "jog":
            if args["direction"] == 1:
                raise CommandRejected("reverse jog is locked out on this belt")
            state["speed_setpoint"][index] = float(args["speed"])
            state["running"][index] = 1.0
            return
        super().apply_command(state, index, name, args)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_plc() -> Plc:
    groups = [
        AssetGroup(model(), (f"{name}-01", f"{name}-02")) for name, model in sorted(ASSET_TYPES.items())
    ]
    groups.append(AssetGroup(JogConveyor(), ("jog-01",)))
    return Plc(PLC_ID, groups, VirtualClock(start=START), scan_period_s=0.1, seed=7)


def make_configs(
    opcua: OpcUaServerConfig, data_dir: Path
) -> tuple[SiteConfig, AreaConfig, PlcConfig, PlantSettings]:
    plc_config = PlcConfig(
        id=PLC_ID,
        opcua={"port": opcua.port},
        modbus={"port": free_port()},
        assets=[{"type": "conveyor", "id": "conveyor"}],
    )
    # Until PlcConfig.opcua is typed OpcUaServerConfig, put the full settings in without revalidation.
    plc_config = plc_config.model_copy(update={"opcua": opcua})
    area = AreaConfig(id=AREA, plcs=[plc_config])
    site = SiteConfig(id=SITE, areas=[area])
    return site, area, plc_config, PlantSettings(data_dir=data_dir, bind_host="127.0.0.1")


@dataclass
class Rig:
    plc: Plc
    exposer: OpcUaExposer
    client: Client
    ns: int

    async def tag(self, asset_id: str, key: str) -> Node:
        return await self.client.nodes.objects.get_child(
            [
                f"{self.ns}:{SITE}",
                f"{self.ns}:{AREA}",
                f"{self.ns}:{PLC_ID}",
                f"{self.ns}:{asset_id}",
                f"{self.ns}:{key}",
            ]
        )

    async def asset(self, asset_id: str) -> Node:
        return await self.client.nodes.objects.get_child(
            [f"{self.ns}:{SITE}", f"{self.ns}:{AREA}", f"{self.ns}:{PLC_ID}", f"{self.ns}:{asset_id}"]
        )


@asynccontextmanager
async def open_rig(tmp_path: Path, plc: Plc | None = None, **options: Any) -> AsyncIterator[Rig]:
    """A served PLC (``make_plc()`` unless given) and a connected anonymous client.

    Anonymous sessions are operators: the rig tests the data path; roles are tested in
    test_opcua_security.py. ``options`` go to OpcUaServerConfig.
    """
    plc = plc or make_plc()
    opcua = OpcUaServerConfig(port=free_port(), security_policies=("None",), anonymous_role="operator", **options)
    exposer = OpcUaExposer(plc, *make_configs(opcua, tmp_path))
    async with exposer, Client(exposer.endpoint_url, timeout=DEADLINE_S) as client:
        ns = await client.get_namespace_index(INSTANCE_NAMESPACE_URI)
        yield Rig(plc, exposer, client, ns)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with open_rig(tmp_path) as opened:
        yield opened


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def scan_until_done(plc: Plc, task: asyncio.Task[Any]) -> Any:
    """Scan until a client call that waits for the PLC's next scan has returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not task.done():
        if loop.time() > deadline:
            task.cancel()
            pytest.fail("call did not return")
        plc.scan()
        await asyncio.sleep(0.01)
    return task.result()


# --- address space --------------------------------------------------------------------------------


async def test_every_tag_of_every_asset_type_has_its_node(rig: Rig) -> None:
    types_ns = await rig.client.get_namespace_index(TYPES_NAMESPACE_URI)
    assert types_ns != rig.ns
    for group in rig.plc.groups:
        model = group.model
        for asset_id in group.asset_ids:
            asset = await rig.asset(asset_id)
            manufacturer = await asset.get_child(f"{types_ns}:Manufacturer")
            assert (await manufacturer.read_value()).Text == model.manufacturer
            assert await (await asset.get_child(f"{types_ns}:SerialNumber")).read_value()
            for spec in model.tags:
                node = await rig.tag(asset_id, spec.key)
                assert (await node.read_browse_name()).Name == spec.key
                assert (await node.read_description()).Text == spec.description
                type_def = await node.read_type_definition()
                level = await node.read_attribute(ua.AttributeIds.AccessLevel)
                expected_level = ua.AccessLevel.CurrentRead.mask | (
                    ua.AccessLevel.CurrentWrite.mask if spec.access is Access.RW else 0
                )
                assert level.Value.Value == expected_level, spec.key
                if spec.datatype is DataType.BOOL:
                    assert type_def == ua.NodeId(2373)  # TwoStateDiscreteType
                    assert (await (await node.get_child("0:TrueState")).read_value()).Text
                    assert (await (await node.get_child("0:FalseState")).read_value()).Text
                elif spec.datatype is DataType.ENUM:
                    assert type_def == ua.NodeId(2376)  # MultiStateDiscreteType
                    texts = await (await node.get_child("0:EnumStrings")).read_value()
                    assert [t.Text for t in texts] == list(spec.enum_strings)
                elif spec.kind in (TagKind.MEASUREMENT, TagKind.COUNTER):
                    assert type_def == ua.NodeId(2368), spec.key  # AnalogItemType
                    rng = await (await node.get_child("0:EURange")).read_value()
                    assert (rng.Low, rng.High) == (eu_range(spec).Low, eu_range(spec).High)
                    if spec.eu_range is not None:
                        assert (rng.Low, rng.High) == spec.eu_range
                    if spec.unit is not None:
                        eu = await (await node.get_child("0:EngineeringUnits")).read_value()
                        assert eu.NamespaceUri == UNECE_NAMESPACE_URI
                        assert eu.UnitId == unece_unit_id(spec.unit)
                        assert eu.DisplayName.Text
                        assert eu.Description.Text


async def test_methods_have_typed_input_arguments(rig: Rig) -> None:
    jog = await (await rig.asset("jog-01")).get_child(f"{rig.ns}:jog")
    assert await jog.read_node_class() == ua.NodeClass.Method
    arguments = await (await jog.get_child("0:InputArguments")).read_value()
    assert [(a.Name, a.DataType) for a in arguments] == [
        ("speed", ua.NodeId(ua.ObjectIds.Float)),
        ("direction", ua.NodeId(ua.ObjectIds.UInt32)),
    ]


async def test_before_first_scan_values_wait_for_initial_data(rig: Rig) -> None:
    assert rig.plc.image is None
    datavalue = await (await rig.tag("conveyor-01", "belt_speed")).read_data_value(raise_on_bad_status=False)
    assert datavalue.StatusCode.value == BAD_WAITING_FOR_INITIAL_DATA
    assert datavalue.Value.Value is None


async def test_values_and_timestamps_follow_the_process_image(rig: Rig) -> None:
    for _ in range(3):
        image = rig.plc.scan()
    for group in rig.plc.groups:
        for asset_id in group.asset_ids:
            for spec in group.model.tags:
                value, status = image.lookup(asset_id, spec.key)
                datavalue = await (await rig.tag(asset_id, spec.key)).read_data_value(
                    raise_on_bad_status=False
                )
                assert datavalue.StatusCode.value == status, spec.key
                if spec.datatype is DataType.FLOAT32:
                    assert datavalue.Value.Value == pytest.approx(value, rel=1e-6, abs=1e-6), spec.key
                elif spec.datatype is DataType.BOOL:
                    assert datavalue.Value.Value is (value != 0.0)
                else:
                    assert datavalue.Value.Value == round(value)
                # Unchanged values keep the timestamp of the scan that last changed them.
                assert START < datavalue.SourceTimestamp <= image.timestamp
    speed = await (await rig.tag("conveyor-01", "belt_speed")).read_data_value()
    assert speed.SourceTimestamp == image.timestamp  # accelerating belt: changes every scan


async def test_only_changed_values_are_written(rig: Rig) -> None:
    rig.plc.scan()
    first = rig.exposer.publisher.writes
    assert first == sum(len(g.asset_ids) * len(g.model.tags) for g in rig.plc.groups)
    rig.plc.scan()
    assert 0 < rig.exposer.publisher.writes - first < first  # e.g. setpoints did not change


async def test_subscription_receives_changes(rig: Rig) -> None:
    received: asyncio.Queue[tuple[Any, ua.DataValue]] = asyncio.Queue()

    class Handler:
        def datachange_notification(self, node: Node, value: Any, data: Any) -> None:
            received.put_nowait((value, data.monitored_item.Value))

    subscription = await rig.client.create_subscription(20, Handler())
    await subscription.subscribe_data_change(await rig.tag("conveyor-02", "belt_speed"))
    value, datavalue = await asyncio.wait_for(received.get(), DEADLINE_S)
    assert datavalue.StatusCode.value == BAD_WAITING_FOR_INITIAL_DATA
    for _ in range(2):
        image = rig.plc.scan()
        expected = image.lookup("conveyor-02", "belt_speed")[0]
        while True:  # the notifier may coalesce; wait for this scan's value
            value, datavalue = await asyncio.wait_for(received.get(), DEADLINE_S)
            if datavalue.SourceTimestamp == image.timestamp:
                break
        assert value == pytest.approx(expected, rel=1e-6)
    await subscription.delete()


# --- writes -----------------------------------------------------------------------------------------


async def test_good_write_takes_effect_at_the_next_scan(rig: Rig) -> None:
    rig.plc.scan()
    node = await rig.tag("conveyor-01", "speed_setpoint")
    await node.write_value(ua.Variant(2.25, ua.VariantType.Float))
    assert await node.read_value() == 1.5  # unchanged until the PLC applies it
    rig.plc.scan()
    assert await node.read_value() == 2.25
    assert rig.plc.image is not None
    assert rig.plc.image.lookup("conveyor-01", "speed_setpoint")[0] == 2.25
    assert rig.plc.image.lookup("conveyor-02", "speed_setpoint")[0] == 1.5


# One server for all cases: each start costs ~1 s of asyncua's standard address space.
REFUSED_WRITES = [
    ("speed_setpoint", ua.Variant(3.5, ua.VariantType.Float), uaerrors.BadOutOfRange),
    ("speed_setpoint", ua.Variant(-0.1, ua.VariantType.Float), uaerrors.BadOutOfRange),
    ("speed_setpoint", ua.Variant(float("nan"), ua.VariantType.Float), uaerrors.BadOutOfRange),
    ("speed_setpoint", ua.Variant(1.0, ua.VariantType.Double), uaerrors.BadTypeMismatch),
    ("speed_setpoint", ua.Variant(True, ua.VariantType.Boolean), uaerrors.BadTypeMismatch),
    ("speed_setpoint", ua.Variant("1.0", ua.VariantType.String), uaerrors.BadTypeMismatch),
    ("mode", ua.Variant(2, ua.VariantType.UInt32), uaerrors.BadOutOfRange),
    ("mode", ua.Variant(1, ua.VariantType.Int32), uaerrors.BadTypeMismatch),
    ("belt_speed", ua.Variant(1.0, ua.VariantType.Float), uaerrors.BadNotWritable),
    ("running", ua.Variant(False, ua.VariantType.Boolean), uaerrors.BadNotWritable),
]


async def test_refused_writes_change_nothing(rig: Rig) -> None:
    rig.plc.scan()
    for key, variant, error in REFUSED_WRITES:
        node = await rig.tag("jog-01", key)
        before = await node.read_value()
        with pytest.raises(error):
            await node.write_value(variant)
        image = rig.plc.scan()
        if key in ("speed_setpoint", "mode"):
            assert await node.read_value() == before, (key, variant)
            assert image.lookup("jog-01", key)[0] == before


async def test_enum_setpoint_write(rig: Rig) -> None:
    rig.plc.scan()
    node = await rig.tag("jog-01", "mode")
    await node.write_value(ua.Variant(1, ua.VariantType.UInt32))
    rig.plc.scan()
    assert await node.read_value() == 1


async def test_write_results_are_per_node(rig: Rig) -> None:
    """One refused node must not fail the other writes of the same request."""
    rig.plc.scan()
    good = await rig.tag("conveyor-01", "arrival_rate")
    bad = await rig.tag("conveyor-01", "belt_speed")
    params = ua.WriteParameters()
    for node, variant in (
        (good, ua.Variant(1.0, ua.VariantType.Float)),
        (bad, ua.Variant(1.0, ua.VariantType.Float)),
    ):
        item = ua.WriteValue(
            NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(variant)
        )
        params.NodesToWrite.append(item)
    results = await rig.client.uaclient.write(params)
    assert [r.value for r in results] == [ua.StatusCodes.Good, ua.StatusCodes.BadNotWritable]
    rig.plc.scan()
    assert await good.read_value() == 1.0


# --- methods -----------------------------------------------------------------------------------------


async def test_stop_and_start_methods(rig: Rig) -> None:
    rig.plc.scan()
    asset = await rig.asset("conveyor-01")
    running = await rig.tag("conveyor-01", "running")
    assert await running.read_value() is True
    await scan_until_done(rig.plc, asyncio.create_task(asset.call_method(f"{rig.ns}:stop")))
    assert await running.read_value() is False  # the call returned after the scan that applied it
    await scan_until_done(rig.plc, asyncio.create_task(asset.call_method(f"{rig.ns}:start")))
    assert await running.read_value() is True


async def test_method_with_typed_arguments(rig: Rig) -> None:
    rig.plc.scan()
    asset = await rig.asset("jog-01")
    call = asset.call_method(
        f"{rig.ns}:jog", ua.Variant(2.5, ua.VariantType.Float), ua.Variant(0, ua.VariantType.UInt32)
    )
    await scan_until_done(rig.plc, asyncio.create_task(call))
    assert await (await rig.tag("jog-01", "speed_setpoint")).read_value() == 2.5


async def call_raw(rig: Rig, asset_id: str, method: str, *args: ua.Variant) -> ua.CallMethodResult:
    asset = await rig.asset(asset_id)
    request = ua.CallMethodRequest(
        ObjectId=asset.nodeid,
        MethodId=(await asset.get_child(f"{rig.ns}:{method}")).nodeid,
        InputArguments=list(args),
    )
    task = asyncio.create_task(rig.client.uaclient.call([request]))
    results: list[ua.CallMethodResult] = await scan_until_done(rig.plc, task)
    return results[0]


BAD_ARGUMENTS = [
    (
        (ua.Variant(3.5, ua.VariantType.Float), ua.Variant(0, ua.VariantType.UInt32)),
        ua.StatusCodes.BadInvalidArgument,
        [ua.StatusCodes.BadOutOfRange, ua.StatusCodes.Good],
    ),
    (
        (ua.Variant(1.0, ua.VariantType.Double), ua.Variant(0, ua.VariantType.UInt32)),
        ua.StatusCodes.BadInvalidArgument,
        [ua.StatusCodes.BadTypeMismatch, ua.StatusCodes.Good],
    ),
    (
        (ua.Variant(1.0, ua.VariantType.Float), ua.Variant(5, ua.VariantType.UInt32)),
        ua.StatusCodes.BadInvalidArgument,
        [ua.StatusCodes.Good, ua.StatusCodes.BadOutOfRange],
    ),
    ((ua.Variant(1.0, ua.VariantType.Float),), ua.StatusCodes.BadArgumentsMissing, None),
    (
        (
            ua.Variant(1.0, ua.VariantType.Float),
            ua.Variant(0, ua.VariantType.UInt32),
            ua.Variant(0, ua.VariantType.UInt32),
        ),
        ua.StatusCodes.BadTooManyArguments,
        None,
    ),
]


async def test_bad_method_arguments(rig: Rig) -> None:
    rig.plc.scan()
    for args, status, arg_results in BAD_ARGUMENTS:
        result = await call_raw(rig, "jog-01", "jog", *args)
        assert result.StatusCode.value == status, args
        if arg_results is not None:
            assert [r.value for r in result.InputArgumentResults] == arg_results
            assert any(d.AdditionalInfo for d in result.InputArgumentDiagnosticInfos)
        rig.plc.scan()
        assert await (await rig.tag("jog-01", "speed_setpoint")).read_value() == 1.5


async def test_command_rejected_by_the_model(rig: Rig) -> None:
    rig.plc.scan()
    result = await call_raw(
        rig, "jog-01", "jog", ua.Variant(1.0, ua.VariantType.Float), ua.Variant(1, ua.VariantType.UInt32)
    )
    assert result.StatusCode.value == ua.StatusCodes.BadInvalidArgument
    assert "locked out" in result.InputArgumentDiagnosticInfos[0].AdditionalInfo
    call = (await rig.asset("jog-01")).call_method(
        f"{rig.ns}:jog", ua.Variant(1.0, ua.VariantType.Float), ua.Variant(1, ua.VariantType.UInt32)
    )
    with pytest.raises(uaerrors.BadInvalidArgument):
        await scan_until_done(rig.plc, asyncio.create_task(call))


# --- quality -----------------------------------------------------------------------------------------


async def test_sensor_fault_reads_bad_sensor_failure(rig: Rig) -> None:
    rig.plc.scan()
    node = await rig.tag("conveyor-02", "bearing_temp")
    rig.plc.set_sensor_fault("conveyor-02", "bearing_temp", -40.0)
    rig.plc.scan()
    datavalue = await node.read_data_value(raise_on_bad_status=False)
    assert datavalue.StatusCode.value == BAD_SENSOR_FAILURE
    assert datavalue.Value.Value is None  # a Bad value is null on the wire (OPC 10000-4 §7.7.1)
    other = await (await rig.tag("conveyor-01", "bearing_temp")).read_data_value()
    assert other.StatusCode.is_good()
    rig.plc.set_sensor_fault("conveyor-02", "bearing_temp", None)
    rig.plc.scan()
    assert (await node.read_data_value()).StatusCode.is_good()


async def test_close_is_idempotent_and_stops_publishing(tmp_path: Path) -> None:
    plc = make_plc()
    opcua = OpcUaServerConfig(port=free_port(), security_policies=("None",))
    exposer = OpcUaExposer(plc, *make_configs(opcua, tmp_path))
    assert not exposer.running  # the constructor does no I/O
    await exposer.start()
    await exposer.start()
    assert exposer.running
    await exposer.close()
    await exposer.close()
    plc.scan()  # the listener stays registered on the PLC but must do nothing now
    assert not exposer.running
