"""Sparkplug B device commands (DCMD) as gateway commands: how a SCADA host writes a tag.

A host publishes ``spBv1.0/<group>/DCMD/<edge_node>/<device>`` with metrics named, or aliased as the
device's DBIRTH announced them, and the values to write. Each metric becomes one ``write``
:class:`CommandRequest` handed to the command queue, exactly as a REST client's would be: validation
against the tag table and ranges, per-PLC ordering, the audit log and the read-back all apply, and the
new value then reaches the host as DDATA like any other change. Nothing here writes to a PLC itself.

Only devices and metrics this node has birthed are addressable: a host can only know those, and anything
else (or a payload that is not Sparkplug B, or a metric without a value) is logged and dropped, since a
command channel must never stop the sink that publishes the plant's data.

A device id is the asset id made topic-safe (:func:`sanitize_id`), which is not one-to-one: ``a/b`` and
``a_b`` are both device ``a_b``. The gateway's assets are fixed when it is built (catalogue and sources
are read once), so the reverse map is made once, when the command queue is wired in; a device id that
stands for two assets is reported then, and its DCMDs are refused rather than guessed at.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from pydantic import ValidationError

from gateway.commands.queue import CommandRejected
from gateway.commands.store import WRITE, CommandRequest
from gateway.encoders.sparkplug_b import decode_payload, sanitize_id
from gateway.sinks.sparkplug_session import EdgeNodeSession
from gateway.storage.audit import Actor

log = logging.getLogger(__name__)

# CommandQueue.submit, or a stand-in: raises CommandRejected when the request is invalid for its target.
Submit = Callable[[CommandRequest, Actor], Awaitable[object]]

# DCMDs taken in but not yet handed to the queue (each waits for the one before it). A host that sends
# faster than the queue stores must not grow memory without bound: beyond this, DCMDs are dropped,
# counted and logged.
MAX_PENDING_DCMDS = 64


def command_actor(primary_host_id: str | None) -> Actor:
    """Who the audit log shows as the author of a DCMD: the primary host when one is configured (it is the
    host meant to send commands), else just the MQTT channel. Operator: a DCMD is a tag write."""
    return Actor(f"sparkplug:{primary_host_id or 'mqtt'}", ("operator",), None, "mqtt")


class DeviceCommands:
    """Turns the DCMDs of one edge node into submitted commands. Runs on the event loop (paho's callbacks
    do, see :mod:`gateway.sinks.mqtt_link`), so it never awaits: submissions run as tasks."""

    def __init__(self, session: EdgeNodeSession, actor: Actor) -> None:
        self.session = session
        self.actor = actor
        self.submit: Submit | None = None  # set by accept, once the command queue exists (after the sink)
        # device id -> its asset id, and the device ids that stand for more than one asset (-> those assets).
        self._asset_of: dict[str, str] = {}
        self._ambiguous: dict[str, tuple[str, ...]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._tail: asyncio.Task[None] | None = None  # the newest submission: the next one waits for it
        self.dropped = 0  # DCMDs refused because MAX_PENDING_DCMDS were still waiting

    def accept(self, submit: Submit, assets: Iterable[str]) -> None:
        """Take DCMDs from now on: write through ``submit``, for ``assets`` (every asset id the gateway reads;
        none can appear later, so this is the whole reverse map of device ids)."""
        by_device: dict[str, set[str]] = {}
        for asset in assets:
            by_device.setdefault(sanitize_id(asset), set()).add(asset)
        self._asset_of = {device: next(iter(ids)) for device, ids in by_device.items() if len(ids) == 1}
        self._ambiguous = {device: tuple(sorted(ids)) for device, ids in by_device.items() if len(ids) > 1}
        for device, ids in sorted(self._ambiguous.items()):
            # Said once here, where it can be fixed (rename an asset); each refused DCMD is logged too.
            log.warning("sparkplug: assets %s share device id %s (their data merge there); DCMDs for it will be "
                        "ignored", ", ".join(ids), device)
        self.submit = submit

    def on_dcmd(self, device_id: str, data: bytes) -> None:
        try:
            payload = decode_payload(data)
        except ValueError as exc:
            log.warning("sparkplug: ignoring a DCMD for %s that is not Sparkplug B: %s", device_id, exc)
            return
        if self.submit is None:
            log.warning("sparkplug: ignoring a DCMD for %s: no command queue to write through", device_id)
            return
        asset = self._asset_of.get(device_id)
        if not self.session.knows_device(device_id) or (asset is None and device_id not in self._ambiguous):
            log.warning("sparkplug: ignoring a DCMD for unknown device %s", device_id)
            return
        if asset is None:
            log.warning("sparkplug: ignoring a DCMD for device %s: it stands for assets %s",
                        device_id, ", ".join(self._ambiguous[device_id]))
            return
        requests = []
        for metric in payload.metrics:
            label = metric.name if metric.name is not None else f"alias {metric.alias}"
            tag = self.session.device_tag(device_id, metric.name, metric.alias)
            if tag is None:
                log.warning("sparkplug: ignoring DCMD metric %s: device %s has no such metric", label, device_id)
            elif metric.value is None:
                log.warning("sparkplug: ignoring DCMD metric %s of device %s: no value", label, device_id)
            else:
                try:
                    requests.append(CommandRequest(asset=asset, command=WRITE, tag=tag, value=metric.value))
                except ValidationError as exc:
                    log.warning("sparkplug: ignoring DCMD metric %s of device %s: %s", label, device_id, exc)
        if not requests:
            return
        if len(self._tasks) >= MAX_PENDING_DCMDS:
            self.dropped += 1
            log.warning("sparkplug: dropping a DCMD for %s: %d DCMDs still wait for the command queue "
                        "(%d dropped so far)", device_id, len(self._tasks), self.dropped)
            return
        self._schedule(requests)

    def _schedule(self, requests: list[CommandRequest]) -> None:
        # Chained behind the previous DCMD's task: the queue orders what it is given, so submissions must
        # reach it in the order the host sent them.
        task = asyncio.create_task(self._submit_all(self._tail, requests), name="sparkplug-dcmd")
        self._tail = task
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _submit_all(self, previous: asyncio.Task[None] | None, requests: list[CommandRequest]) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        submit = self.submit
        assert submit is not None  # checked before scheduling, never unset
        for request in requests:
            target = f"{request.asset}.{request.tag} = {request.value!r}"
            try:
                await submit(request, self.actor)
            except CommandRejected as exc:  # the queue has audited it
                log.warning("sparkplug: DCMD write %s rejected: %s", target, exc.reason)
            except Exception:
                log.exception("sparkplug: DCMD write %s could not be submitted", target)
            else:
                log.info("sparkplug: DCMD write %s submitted", target)

    async def close(self) -> None:
        """Drop submissions not made yet: the command queue stops before the sinks do."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
