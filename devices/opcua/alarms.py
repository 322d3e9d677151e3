"""Alarms as OPC UA events: limit alarms when an analog tag leaves its EURange, off-normal alarms when a
boolean alarm tag (TagKind.ALARM) turns true.

Detection runs in the publisher right after each scan (``on_scan``): a few vectorised numpy compares
per alarmed tag, so the scan does not slow down. Only transitions produce events — entering an alarm
(Retain true, ActiveState Active) and leaving it (Retain false, ActiveState Inactive) — and a task
sends them, so the PLC's scan never awaits a subscription.

Each event is sent twice with the same EventId: with the asset object as notifier and with the Server
object as notifier. asyncua delivers an event only to monitored items on its emitting node (no
notifier hierarchy), and clients subscribe either on the asset (EventNotifier SubscribeToEvents) or on
the Server object (alarm lists, UaExpert's Event view).

Event types (OPC 10000-9, conventions.md §1.2):

- ``ExclusiveLimitAlarmType`` (i=9341) for analog MEASUREMENT/COUNTER tags with an explicit EURange:
  HighLimit/LowLimit = EURange, LimitState/CurrentState High or Low, severity 700 (medium-high band).
  A Bad value (sensor failure) is no limit violation and keeps the alarm's state.
- ``OffNormalAlarmType`` (i=10637) for TagKind.ALARM booleans, severity 800 (high band).

What of the Alarms & Conditions state machine is implemented:

- ConditionId (the ``NodeId`` event field) is stable per alarmed variable (``<tag path>#LimitAlarm`` /
  ``#OffNormalAlarm`` in the instance namespace), SourceNode/SourceName the asset object, InputNode
  the variable, Time the plant time of the scan, Quality the variable's StatusCode, Message text.
- EnabledState is always Enabled; ActiveState follows the value; Retain = ActiveState.
- ConditionRefresh / ConditionRefresh2 (asyncua's built-in handling): replays the retained (active)
  conditions to a subscription on the Server object.

What is not implemented (asyncua has no server-side condition state machine, issue #712):

- no condition nodes in the address space (the ConditionId cannot be browsed or read);
- Acknowledge / Confirm / AddComment / Enable / Disable / Shelving: the alarms are auto-acknowledged
  (AckedState/Id = true on every event), and calling Acknowledge on them is not possible;
- no branches, no SuppressedState/OutOfServiceState, no deadbands or delays, no event history;
- OffNormalAlarm's NormalState is null (normal is "false" for every alarm tag).
"""

from __future__ import annotations

import copy
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from asyncua import ua
from asyncua.common.event_objects import ExclusiveLimitAlarm, OffNormalAlarm
from asyncua.server.subscription_service import SubscriptionService

from devices.opcua._ua import ObjectIds, nodeid, status
from devices.opcua.address_space import GroupNodes, TagNodes
from devices.opcua.background import BackgroundDrain
from devices.opcua.typemodel import alarm_tags
from devices.process_image import ProcessImage
from devices.tags import TagSpec
from devices.units import unit_for

log = logging.getLogger(__name__)

LIMIT_SEVERITY = 700
OFF_NORMAL_SEVERITY = 800
_BAD_MASK = 0x80000000
_V = ua.VariantType
_SERVER = nodeid(ObjectIds.Server)
_LIMIT_STATES = {1: ("High", ObjectIds.ExclusiveLimitStateMachineType_High),
                 -1: ("Low", ObjectIds.ExclusiveLimitStateMachineType_Low)}


@dataclass
class _Watch:
    """One alarmed tag across the instances of its asset type. ``state``: 0 normal, 1 high, -1 low
    (limit alarms) or 0/1 (off-normal)."""

    group: int
    slot: TagNodes
    asset_nodes: list[ua.NodeId]
    asset_ids: tuple[str, ...]
    limit: bool
    state: np.ndarray[Any, np.dtype[np.int8]] = field(default_factory=lambda: np.zeros(0, np.int8))


@dataclass(frozen=True)
class Transition:
    """An alarm entering (``state`` != 0) or leaving (``state`` == 0) its active state."""

    watch: _Watch
    index: int
    state: int
    value: float
    status: int
    time: datetime


class AlarmMonitor(BackgroundDrain):
    """Finds alarm transitions after each scan and sends them as events from a task."""

    def __init__(self, groups: list[GroupNodes], subscriptions: SubscriptionService, namespace: int) -> None:
        super().__init__("opcua-alarms")
        self._subscriptions = subscriptions
        self._namespace = namespace
        self._watches: list[_Watch] = []
        for index, group in enumerate(groups):
            limits, off_normal = alarm_tags(group.model)
            alarmed = {spec.key: True for spec in limits} | {spec.key: False for spec in off_normal}
            for slot in group.tags:
                if slot.spec.key in alarmed:
                    watch = _Watch(index, slot, group.asset_nodes, group.asset_ids, alarmed[slot.spec.key])
                    watch.state = np.zeros(len(group.asset_ids), np.int8)
                    self._watches.append(watch)
        self._pending: list[Transition] = []
        self.sent = 0

    @property
    def active(self) -> int:
        return sum(int(np.count_nonzero(watch.state)) for watch in self._watches)

    # --- detection (synchronous, in the scan) ------------------------------------------------------

    def on_scan(self, image: ProcessImage) -> None:
        time = image.timestamp if image.timestamp.tzinfo else image.timestamp.replace(tzinfo=UTC)
        for watch in self._watches:
            group_image = image.groups[watch.group]
            key = watch.slot.spec.key
            raw = group_image.values[key]
            codes = group_image.status[key]
            if watch.limit:
                low, high = watch.slot.spec.eu_range or (-np.inf, np.inf)
                new = np.where(raw > high, 1, np.where(raw < low, -1, 0))
            else:
                new = raw != 0.0
            # A Bad value (sensor failure) says nothing about the process: keep the alarm's state.
            usable = ((codes & _BAD_MASK) == 0) & ~np.isnan(raw)
            new = np.where(usable, new, watch.state).astype(np.int8)
            changed = np.flatnonzero(new != watch.state)
            if changed.size:
                for index in changed.tolist():
                    self._pending.append(
                        Transition(watch, index, int(new[index]), float(raw[index]), int(codes[index]), time)
                    )
                watch.state = new
        if self._pending:
            self._wake.set()

    # --- events (asynchronous) ---------------------------------------------------------------------

    async def _drain(self) -> None:
        pending, self._pending = self._pending, []
        for transition in pending:
            try:
                await self._send(self.event(transition))
            except Exception:  # one bad event must not stop the alarm stream
                log.exception("OPC UA alarm event for %s failed", transition.watch.slot.spec.key)

    async def _send(self, event: Any) -> None:
        at_asset = copy.copy(event)
        at_asset.emitting_node = event.SourceNode
        await self._subscriptions.trigger_event(at_asset)
        # Sent last, so asyncua keeps this copy as the retained condition ConditionRefresh replays
        # (it replays to subscriptions on the Server object).
        event.emitting_node = _SERVER
        await self._subscriptions.trigger_event(event)
        self.sent += 1

    def event(self, transition: Transition) -> Any:
        """The event object of a transition (public for tests and diagnostics)."""
        watch = transition.watch
        spec = watch.slot.spec
        asset_id = watch.asset_ids[transition.index]
        active = transition.state != 0
        if watch.limit:
            event: Any = ExclusiveLimitAlarm()  # type: ignore[no-untyped-call]
            severity = LIMIT_SEVERITY
            low, high = spec.eu_range or (float("nan"), float("nan"))
            event.add_property("HighLimit", float(high), _V.Double)
            event.add_property("LowLimit", float(low), _V.Double)
            if active:
                text, state_id = _LIMIT_STATES[transition.state]
                event.add_variable("LimitState/CurrentState", ua.LocalizedText(text, "en"), _V.LocalizedText)
                event.add_property("LimitState/CurrentState/Id", nodeid(state_id), _V.NodeId)
            suffix = "LimitAlarm"
        else:
            event = OffNormalAlarm()  # type: ignore[no-untyped-call]
            severity = OFF_NORMAL_SEVERITY
            suffix = "OffNormalAlarm"
        variable = watch.slot.nodeids[transition.index]
        condition_id = nodeid(f"{cast(str, variable.Identifier)}#{suffix}", self._namespace)  # string ids
        message = _message(asset_id, spec, transition, watch.limit)
        fields: list[tuple[str, Any, ua.VariantType]] = [
            ("EventId", uuid.uuid4().bytes, _V.ByteString),
            ("NodeId", condition_id, _V.NodeId),
            ("SourceNode", watch.asset_nodes[transition.index], _V.NodeId),
            ("SourceName", asset_id, _V.String),
            ("Time", transition.time, _V.DateTime),
            ("ReceiveTime", datetime.now(UTC), _V.DateTime),
            ("Message", ua.LocalizedText(message, "en"), _V.LocalizedText),
            ("Severity", severity, _V.UInt16),
            ("ConditionClassId", nodeid(ObjectIds.ProcessConditionClassType), _V.NodeId),
            ("ConditionClassName", ua.LocalizedText("Process", "en"), _V.LocalizedText),
            ("ConditionName", f"{spec.key}.{suffix}", _V.String),
            ("Retain", active, _V.Boolean),
            ("EnabledState", ua.LocalizedText("Enabled", "en"), _V.LocalizedText),
            ("EnabledState/Id", True, _V.Boolean),
            ("ActiveState", ua.LocalizedText("Active" if active else "Inactive", "en"), _V.LocalizedText),
            ("ActiveState/Id", active, _V.Boolean),
            ("ActiveState/TransitionTime", transition.time, _V.DateTime),
            ("AckedState", ua.LocalizedText("Acknowledged", "en"), _V.LocalizedText),
            ("AckedState/Id", True, _V.Boolean),
            ("InputNode", variable, _V.NodeId),
            ("Quality", status(transition.status), _V.StatusCode),
            ("LastSeverity", severity, _V.UInt16),
        ]
        for name, value, vtype in fields:
            event.add_property(name, value, vtype)  # add_property also fixes the field's wire type
        return event


def _message(asset_id: str, spec: TagSpec, transition: Transition, limit: bool) -> str:
    where = f"{asset_id}/{spec.key}"
    if not limit:
        return f"{where}: {spec.description}" if transition.state else f"{where}: back to normal"
    low, high = spec.eu_range or (float("nan"), float("nan"))
    unit = f" {unit_for(spec.unit).symbol}" if spec.unit else ""
    reading = f"{transition.value:.4g}{unit}"
    if transition.state > 0:
        return f"{where} = {reading} above its high limit {high:g}{unit}"
    if transition.state < 0:
        return f"{where} = {reading} below its low limit {low:g}{unit}"
    return f"{where} = {reading} back inside {low:g}..{high:g}{unit}"
