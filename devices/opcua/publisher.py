"""Process image -> variable values, written straight into the address space after every scan.

The PLC calls listeners synchronously from its scan, so ``on_scan`` never awaits: it stores each
changed DataValue in the node's ``AttributeValue`` (what Read serves) and hands nodes that have
monitored items to a notifier task, which runs asyncua's (async) data-change callbacks. Writing the
attribute directly skips the Write service and any value setter, which were measured 3.4x slower
than this path and must not see the PLC's own updates as client writes.

Only values whose wire representation or StatusCode changed are written, to keep notification load
down. A variable's SourceTimestamp is therefore the plant time of the scan at which its value last
changed: OPC 10000-4 §7.7.3 — "once a value has been assigned a source timestamp, the source
timestamp for that value instance never changes".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from asyncua import ua
from asyncua.server.address_space import AttributeValue
from asyncua.server.monitored_item_service import MonitoredItemService

from devices.opcua import values
from devices.opcua._ua import datavalue as make_datavalue
from devices.opcua._ua import scalar_variant
from devices.opcua._ua import status as make_status
from devices.opcua.address_space import GroupNodes, TagNodes
from devices.opcua.background import BackgroundDrain
from devices.opcua.history import PlantHistory
from devices.process_image import ProcessImage
from devices.tags import DataType

if TYPE_CHECKING:
    from devices.opcua.alarms import AlarmMonitor  # alarms.py imports address_space, as we do

log = logging.getLogger(__name__)

_BAD_MASK = 0x80000000  # severity bits 11 = Bad (OPC 10000-4 §7.39)


@dataclass
class _TagPlan:
    slot: TagNodes
    vtype: ua.VariantType
    convert: Any
    last_values: np.ndarray[Any, Any] | None = None
    last_status: np.ndarray[Any, Any] | None = None


class ValuePublisher(BackgroundDrain):
    """Keeps the variables of one PLC equal to its latest process image.

    ``history`` receives every written DataValue of historized variables (``TagNodes.history``);
    ``alarms`` looks for alarm transitions after each scan. Both run inside the scan, synchronously.
    """

    def __init__(
        self, groups: list[GroupNodes], history: PlantHistory | None = None, alarms: AlarmMonitor | None = None
    ) -> None:
        super().__init__("opcua-notify")
        self._groups = groups
        self._history = history
        self._alarms = alarms
        self._plans: list[list[_TagPlan]] = [
            [
                _TagPlan(
                    slot, values.variant_type(slot.spec.datatype), values.wire_converter(slot.spec.datatype)
                )
                for slot in group.tags
                if slot.spec.datatype is not DataType.STRING  # no numeric image value to publish
            ]
            for group in groups
        ]
        self._status_cache: dict[int, ua.StatusCode] = {}
        self._pending: dict[ua.NodeId, tuple[AttributeValue, ua.DataValue]] = {}
        self.scans = 0
        self.writes = 0  # variables written, over all scans
        self.coalesced = 0  # notifications replaced by a newer value before the notifier ran
        self._layout_ok: bool | None = None

    # --- the scan listener -------------------------------------------------------------------------

    def on_scan(self, image: ProcessImage) -> None:
        if self._layout_ok is None:
            self._layout_ok = self._check_layout(image)
        if not self._layout_ok:
            return
        source_ts = image.timestamp if image.timestamp.tzinfo else image.timestamp.replace(tzinfo=UTC)
        server_ts = datetime.now(UTC)
        pending = self._pending
        history = self._history
        if history is not None:
            history.advance(source_ts)
        written = 0
        for group_image, plans in zip(image.groups, self._plans, strict=True):
            for plan in plans:
                key = plan.slot.spec.key
                raw = group_image.values[key]
                status = group_image.status[key]
                seen = values.comparable(plan.slot.spec.datatype, raw)
                if plan.last_values is None or plan.last_status is None:
                    changed = np.arange(len(raw))
                else:
                    diff = (seen != plan.last_values) | (status != plan.last_status)
                    if seen.dtype.kind == "f":
                        diff &= ~(np.isnan(seen) & np.isnan(plan.last_values))  # NaN is not a change
                    changed = np.flatnonzero(diff)
                plan.last_values = seen
                plan.last_status = status.copy()
                slots = plan.slot.values
                nodeids = plan.slot.nodeids
                histories = plan.slot.history if history is not None else None
                for index in changed.tolist():
                    code = int(status[index])
                    if code & _BAD_MASK:
                        # A Bad value is null on the wire (OPC 10000-4 §7.7.1), as asyncua's own
                        # write path does; the fault value stays in the process image.
                        variant = ua.Variant()
                    else:
                        # Unchecked construction: 0.12 us instead of 0.68 us per value (_ua.scalar_variant).
                        variant = scalar_variant(plan.convert(float(raw[index])), plan.vtype)
                    datavalue = make_datavalue(variant, self._status(code), source_ts, server_ts)
                    attribute = slots[index]
                    attribute.value = datavalue
                    if histories is not None and history is not None:
                        history.append(histories[index], datavalue)
                    attribute.value_callback = None
                    if attribute.datachange_callbacks:
                        if nodeids[index] in pending:
                            self.coalesced += 1
                        pending[nodeids[index]] = (attribute, datavalue)
                written += len(changed)
        self.scans += 1
        self.writes += written
        if pending:
            self._wake.set()
        if self._alarms is not None:
            self._alarms.on_scan(image)

    def _status(self, code: int) -> ua.StatusCode:
        status = self._status_cache.get(code)
        if status is None:
            status = self._status_cache[code] = make_status(code)
        return status

    def _check_layout(self, image: ProcessImage) -> bool:
        """The image's groups must be the PLC's groups in the order the nodes were built from. A
        mismatch is a bug; it is logged rather than raised so it cannot stop the PLC's scan."""
        layout = [(group.model.type_name, group.asset_ids) for group in image.groups]
        expected = [(group.model.type_name, group.asset_ids) for group in self._groups]
        if layout != expected:
            log.error("OPC UA: process image layout %s differs from the address space %s", layout, expected)
            return False
        return True

    # --- notifications ----------------------------------------------------------------------------

    async def _drain(self) -> None:
        pending, self._pending = self._pending, {}
        for attribute, datavalue in pending.values():
            for handle, callback in list(attribute.datachange_callbacks.items()):
                try:
                    service = getattr(callback, "__self__", None)
                    if type(service) is MonitoredItemService and _is_asyncua_datachange(callback):
                        await _notify_monitored_item(service, handle, datavalue)
                    else:
                        await callback(handle, datavalue)
                except Exception:  # one broken subscription must not stop the others
                    log.exception("OPC UA data-change callback %s failed", handle)


def _is_asyncua_datachange(callback: Any) -> bool:
    return getattr(callback, "__func__", None) is _ASYNCUA_DATACHANGE


_ASYNCUA_DATACHANGE = MonitoredItemService.datachange_callback


async def _notify_monitored_item(service: MonitoredItemService, handle: int, datavalue: ua.DataValue) -> None:
    """asyncua's ``MonitoredItemService.datachange_callback`` (asyncua 2.1) without its deepcopy.

    asyncua deep-copies every notified DataValue into the monitored item, "to prevent referencing the
    inner value" of a value the writer might mutate in place; that copy was 58% of the PLC process's
    CPU with a client monitoring 10,000 changing variables (bench/opcua_subscription_bench.py). The
    publisher builds a new DataValue (scalar Variant) for every change and never mutates one after
    writing it, so the monitored item may keep a reference. The notification is also built with its
    fields instead of asyncua's default-constructed one (which builds and discards a DataValue).
    Everything else (monitoring mode, filter/deadband, the change trigger, the queue) is asyncua's.
    """
    mid = service._monitored_datachange[handle]
    mdata = service._monitored_items[mid]
    if mdata.mode == ua.MonitoringMode.Disabled:
        return
    mvalue = mdata.mvalue
    old = mvalue.old_dvalue = mvalue.current_dvalue
    mvalue.current_dvalue = datavalue
    data_filter = mdata.filter
    if data_filter is not None and data_filter:  # a DataChangeFilter: asyncua's trigger and deadband checks
        passes = service._is_data_changed(mvalue, data_filter.Trigger) and service._is_deadband_exceeded(
            mvalue, data_filter
        )
    else:
        passes = _status_or_value_changed(old, datavalue)
    if passes:
        event = ua.MonitoredItemNotification(ClientHandle=mdata.client_handle, Value=datavalue)
        await service.isub.enqueue_datachange_event(mid, event, mdata.queue_size)


def _status_or_value_changed(old: ua.DataValue | None, new: ua.DataValue) -> bool:
    """asyncua's ``_is_data_changed`` for the default trigger (StatusValue), without its dataclass and
    enum comparisons, which were 8% of the plant's CPU under a 25,000 values/s subscription load. The
    publisher reuses one StatusCode object per code, so identity settles most status comparisons."""
    if old is None:
        return True
    old_status, new_status = old.StatusCode, new.StatusCode
    if old_status is not new_status and (
        old_status is None or new_status is None or old_status.value != new_status.value
    ):
        return True
    old_value, new_value = old.Value, new.Value
    if old_value is None or new_value is None:
        return old_value is not new_value
    return bool(
        old_value.VariantType is not new_value.VariantType
        or old_value.is_array != new_value.is_array
        or old_value.Dimensions != new_value.Dimensions
        or old_value.Value != new_value.Value
    )
