"""Alarms as OPC UA events (devices/opcua/alarms.py), seen by an asyncua client subscribed on the asset
object and on the Server object; and HistoryRead of analog variables (history.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from asyncua import ua

from devices.assets.base import Array, AssetModel, State
from devices.clock import VirtualClock
from devices.opcua.alarms import LIMIT_SEVERITY, OFF_NORMAL_SEVERITY
from devices.plc import AssetGroup, Plc
from devices.process_image import UNCERTAIN_EU_EXCEEDED
from devices.tags import Access, DataType, TagKind, TagSpec
from tests.test_opcua_server import DEADLINE_S, PLC_ID, START, Rig, open_rig

HISTORY_WINDOW_S = 1.0  # ten scans of 0.1 s


class Tank(AssetModel):
    """The level follows the ``inflow`` setpoint exactly, so a write drives it across its limits."""

    type_name: ClassVar[str] = "test_tank"
    tags: ClassVar[tuple[TagSpec, ...]] = (
        TagSpec("level", DataType.FLOAT32, TagKind.MEASUREMENT, "Tank level", unit="P1", eu_range=(0.0, 100.0)),
        TagSpec("overflow_alarm", DataType.BOOL, TagKind.ALARM, "Tank overflowing"),
        TagSpec("inflow", DataType.FLOAT32, TagKind.SETPOINT, "Level to drive to", unit="P1",
                eu_range=(-50.0, 150.0), access=Access.RW),
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        return {"inflow": np.full(count, 50.0), "level": np.full(count, 50.0)}

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        return {**state, "level": state["inflow"].copy()}

    def outputs(self, state: State) -> Mapping[str, Array]:
        level = state["level"]
        return {"level": level, "overflow_alarm": (level > 120.0).astype(np.float64), "inflow": state["inflow"]}


class Events:
    """A subscription handler collecting events in a queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def event_notification(self, event: Any) -> None:
        self.queue.put_nowait(event)

    async def next(self) -> Any:
        return await asyncio.wait_for(self.queue.get(), DEADLINE_S)

    async def none_within(self, seconds: float = 0.3) -> None:
        await asyncio.sleep(seconds)
        assert self.queue.empty(), self.queue.get_nowait()


@pytest.fixture
async def tank(tmp_path: Path) -> AsyncIterator[Rig]:
    plc = Plc(PLC_ID, [AssetGroup(Tank(), ("tank-01", "tank-02"))], VirtualClock(start=START), scan_period_s=0.1)
    async with open_rig(tmp_path, plc, history_window_s=HISTORY_WINDOW_S) as rig:
        yield rig


def field(event: Any, name: str) -> Any:
    return getattr(event, name)


async def drive(rig: Rig, level: float) -> None:
    rig.plc.submit_write("tank-01", "inflow", level)
    rig.plc.scan()


async def test_limit_alarm_events_on_the_asset_object(tank: Rig) -> None:
    rig = tank
    asset = await rig.asset("tank-01")
    level = await rig.tag("tank-01", "level")
    events = Events()
    subscription = await rig.client.create_subscription(20, events)
    await subscription.subscribe_events(asset, ua.ObjectIds.ExclusiveLimitAlarmType)
    rig.plc.scan()
    await events.none_within()  # inside EURange: no event

    await drive(rig, 130.0)
    event = await events.next()
    assert event.EventType == ua.NodeId(ua.ObjectIds.ExclusiveLimitAlarmType)
    assert event.SourceNode == asset.nodeid
    assert event.SourceName == "tank-01"
    assert event.Severity == LIMIT_SEVERITY
    assert "above its high limit 100 %" in event.Message.Text
    assert rig.plc.image is not None
    assert event.Time == rig.plc.image.timestamp  # the plant time of the scan, like SourceTimestamp
    assert event.Retain is True
    assert field(event, "ActiveState/Id") is True
    assert field(event, "ActiveState").Text == "Active"
    assert (event.HighLimit, event.LowLimit) == (100.0, 0.0)
    assert event.InputNode == level.nodeid
    assert event.Quality.value == UNCERTAIN_EU_EXCEEDED
    condition_id = event.NodeId
    assert condition_id.NamespaceIndex == rig.ns

    rig.plc.scan()
    await drive(rig, 140.0)
    await events.none_within()  # still above: no transition, no event

    await drive(rig, 50.0)
    event = await events.next()
    assert event.Retain is False
    assert field(event, "ActiveState/Id") is False
    assert "back inside 0..100" in event.Message.Text
    assert event.NodeId == condition_id  # the same condition

    await drive(rig, -10.0)
    assert "below its low limit 0" in (await events.next()).Message.Text
    await subscription.delete()


async def test_off_normal_and_limit_events_on_the_server_object(tank: Rig) -> None:
    rig = tank
    events = Events()
    subscription = await rig.client.create_subscription(20, events)
    await subscription.subscribe_events(rig.client.nodes.server, ua.ObjectIds.AlarmConditionType)
    rig.plc.scan()
    await drive(rig, 130.0)
    received = {(await events.next()).EventType for _ in range(2)}
    assert received == {ua.NodeId(ua.ObjectIds.ExclusiveLimitAlarmType), ua.NodeId(ua.ObjectIds.OffNormalAlarmType)}
    assert rig.exposer.alarms.active == 2

    # ConditionRefresh replays the active (retained) conditions to a new subscription.
    fresh = Events()
    late = await rig.client.create_subscription(20, fresh)
    await late.subscribe_events(rig.client.nodes.server, ua.ObjectIds.AlarmConditionType)
    await rig.client.get_node(ua.ObjectIds.ConditionType).call_method(
        ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
        ua.Variant(late.subscription_id, ua.VariantType.UInt32),
    )
    replayed = [await fresh.next() for _ in range(2)]
    off_normal = next(e for e in replayed if e.EventType == ua.NodeId(ua.ObjectIds.OffNormalAlarmType))
    assert off_normal.Severity == OFF_NORMAL_SEVERITY
    assert off_normal.Message.Text == "tank-01/overflow_alarm: Tank overflowing"
    assert off_normal.Retain is True

    await drive(rig, 50.0)
    cleared = [await events.next() for _ in range(2)]
    assert all(e.Retain is False for e in cleared)
    assert rig.exposer.alarms.active == 0
    await late.delete()
    await subscription.delete()


# --- history -----------------------------------------------------------------------------------------


async def test_history_read_returns_recent_values_with_their_timestamps(tank: Rig) -> None:
    rig = tank
    level = await rig.tag("tank-01", "level")
    assert await level.read_attribute(ua.AttributeIds.Historizing) is not None
    access = (await level.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value
    assert access & ua.AccessLevel.HistoryRead.mask
    rig.plc.scan()  # the initial level, then one change per scan
    written = []
    for value in (10.0, 20.0, 30.0, 40.0):
        await drive(rig, value)
        assert rig.plc.image is not None
        written.append((rig.plc.image.timestamp, value))
    history = await level.read_raw_history(START, written[-1][0] + timedelta(seconds=1))
    assert [(dv.SourceTimestamp, dv.Value.Value) for dv in history] == [
        (START + timedelta(seconds=0.1), 50.0),  # first scan: the initial level
        *written,
    ]
    newest_first = await level.read_raw_history(numvalues=2)
    assert [dv.Value.Value for dv in newest_first] == [40.0, 30.0]

    # The window is plant time: after 2 s of unchanged level only the value then in force remains.
    for _ in range(20):
        rig.plc.scan()
    assert rig.plc.image is not None
    history = await level.read_raw_history(START, rig.plc.image.timestamp)
    assert [dv.Value.Value for dv in history] == [40.0]


async def test_only_analog_variables_are_historized(tank: Rig) -> None:
    rig = tank
    rig.plc.scan()
    alarm = await rig.tag("tank-01", "overflow_alarm")
    access = (await alarm.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value
    assert not access & ua.AccessLevel.HistoryRead.mask
    assert await alarm.read_raw_history(START, START + timedelta(hours=1)) == []
