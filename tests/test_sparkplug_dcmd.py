"""Sparkplug B DCMD -> gateway commands, against a real Mosquitto: a host's DCMD (by name or by alias)
becomes exactly the write CommandRequest it stands for; what cannot be mapped is logged and dropped; the
queue's rejection is logged; with ``accept_dcmd`` off nothing is taken in. The command queue itself is
tested elsewhere: here a recording ``submit`` stands in for it. Every wait is on a condition with a deadline.
The mapping of device ids back to the asset ids given at wiring (collisions included) is tested without a
broker, on :class:`DeviceCommands` and a session directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.commands.queue import CommandRejected
from gateway.commands.store import CommandRequest
from gateway.encoders.sparkplug_b import REBIRTH, DataType, Metric, encode_payload
from gateway.sinks.sparkplug import SparkplugSink
from gateway.sinks.sparkplug_commands import MAX_PENDING_DCMDS, DeviceCommands, command_actor
from gateway.sinks.sparkplug_records import Sample
from gateway.sinks.sparkplug_session import EdgeNodeSession
from gateway.storage.audit import Actor
from tests.fixtures.servers import MosquittoServer
from tests.test_mqtt_sink import wait_for
from tests.test_sparkplug_sink import GROUP, NODE, Recorder, by_name, make_sink, reading, start_recorder

ASSET, DEVICE = "Pump/2", "Pump_2"  # the device id is the asset id with + # / replaced


class Submitted:
    """A stand-in for CommandQueue.submit: records every request, rejects values above ``limit``."""

    def __init__(self, limit: float = 10.0) -> None:
        self.limit = limit
        self.calls: list[tuple[CommandRequest, Actor]] = []

    async def __call__(self, request: CommandRequest, actor: Actor) -> object:
        self.calls.append((request, actor))
        if isinstance(request.value, float) and request.value > self.limit:
            raise CommandRejected(f"{request.asset}.{request.tag} = {request.value!r} is outside its EURange")
        return None


def dcmd(*metrics: Metric) -> bytes:
    return encode_payload(int(time.time() * 1000), list(metrics))


async def send(rec: Recorder, payload: bytes, device: str = DEVICE, kind: str = "DCMD") -> None:
    topic = f"spBv1.0/{GROUP}/{kind}/{NODE}" + (f"/{device}" if kind == "DCMD" else "")
    await asyncio.to_thread(rec.publish, topic, payload)


async def born_sink(server: MosquittoServer, tmp_path: Path, rec: Recorder, submit: Submitted,
                    **cfg: Any) -> SparkplugSink:
    """A started sink with ``ASSET`` born (speed: Double, running: Boolean) and ``submit`` wired."""
    sink = make_sink(server.url, tmp_path, **cfg)
    sink.accept_commands(submit, [ASSET])
    await sink.start()
    await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
    await sink.write([reading(1, "speed", asset=ASSET, value=3.5), reading(1, "running", asset=ASSET, value=True)])
    await wait_for(lambda: bool(rec.of("DBIRTH", DEVICE)), 5, "DBIRTH")
    return sink


async def test_dcmd_by_name_and_by_alias_submit_writes(mosquitto_server: MosquittoServer, tmp_path: Path) -> None:
    rec = await start_recorder(mosquitto_server)
    submit = Submitted()
    sink = await born_sink(mosquitto_server, tmp_path, rec, submit, accept_dcmd=True)
    try:
        running_alias = by_name(rec.of("DBIRTH", DEVICE)[0])["running"].alias
        await send(rec, dcmd(Metric(None, 4.25, DataType.DOUBLE, name="speed")))
        await send(rec, dcmd(Metric(None, False, DataType.BOOLEAN, alias=running_alias)))
        await wait_for(lambda: len(submit.calls) == 2, 5, "two submitted commands")
    finally:
        await sink.close()
        rec.close()
    assert [request for request, _ in submit.calls] == [
        CommandRequest(asset=ASSET, command="write", tag="speed", value=4.25),
        CommandRequest(asset=ASSET, command="write", tag="running", value=False),
    ]
    assert {actor for _, actor in submit.calls} == {Actor("sparkplug:mqtt", ("operator",), None, "mqtt")}


async def test_dcmd_metrics_of_one_message_are_submitted_in_order(
    mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    rec = await start_recorder(mosquitto_server)
    submit = Submitted()
    sink = await born_sink(mosquitto_server, tmp_path, rec, submit, accept_dcmd=True)
    try:
        await send(rec, dcmd(*(Metric(None, float(v), DataType.DOUBLE, name="speed") for v in range(5))))
        await send(rec, dcmd(Metric(None, 9.0, DataType.DOUBLE, name="speed")))
        await wait_for(lambda: len(submit.calls) == 6, 5, "six submitted commands")
    finally:
        await sink.close()
        rec.close()
    assert [request.value for request, _ in submit.calls] == [0.0, 1.0, 2.0, 3.0, 4.0, 9.0]


async def test_dcmd_unmappable_is_logged_and_rejection_is_logged(
    mosquitto_server: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Junk, an unknown device, unknown metrics and a metric without a value are logged and dropped; the
    queue's rejection is logged with its reason; the sink keeps publishing."""
    rec = await start_recorder(mosquitto_server)
    submit = Submitted(limit=10.0)
    sink = await born_sink(mosquitto_server, tmp_path, rec, submit, accept_dcmd=True)
    try:
        await send(rec, b"\xff\xffnot protobuf")
        await send(rec, dcmd(Metric(None, 1.0, DataType.DOUBLE, name="speed")), device="nobody")
        await send(rec, dcmd(Metric(None, 1.0, DataType.DOUBLE, name="torque")))
        await send(rec, dcmd(Metric(None, 1.0, DataType.DOUBLE, alias=999)))
        await send(rec, dcmd(Metric(None, None, DataType.DOUBLE, name="speed")))
        await send(rec, dcmd(Metric(None, 99.0, DataType.DOUBLE, name="speed")))  # sent last: a barrier
        await wait_for(lambda: "rejected" in caplog.text, 5, "the rejection logged")
        await sink.write([reading(2, "speed", asset=ASSET, value=5.0)])
        await wait_for(lambda: bool(rec.of("DDATA", DEVICE)), 5, "DDATA after the bad commands")
    finally:
        await sink.close()
        rec.close()
    assert [request.value for request, _ in submit.calls] == [99.0]  # only the mappable one reached the queue
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    junk = f"sparkplug: ignoring a DCMD for {DEVICE} that is not Sparkplug B: not a Sparkplug B payload: "
    assert warnings[0].startswith(junk)
    assert warnings[1:] == [
        "sparkplug: ignoring a DCMD for unknown device nobody",
        f"sparkplug: ignoring DCMD metric torque: device {DEVICE} has no such metric",
        f"sparkplug: ignoring DCMD metric alias 999: device {DEVICE} has no such metric",
        f"sparkplug: ignoring DCMD metric speed of device {DEVICE}: no value",
        f"sparkplug: DCMD write {ASSET}.speed = 99.0 rejected: {ASSET}.speed = 99.0 is outside its EURange",
    ]


async def test_dcmd_off_by_default_is_not_taken_in(
    mosquitto_server: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = await start_recorder(mosquitto_server)
    submit = Submitted()
    sink = await born_sink(mosquitto_server, tmp_path, rec, submit)
    try:
        assert sink.config.accept_dcmd is False
        await send(rec, dcmd(Metric(None, 4.0, DataType.DOUBLE, name="speed")))
        # The NCMD follows the DCMD on the same connection: once its Rebirth is seen, the DCMD was delivered
        # (had the node subscribed to it) and handled.
        await send(rec, dcmd(Metric(None, True, DataType.BOOLEAN, name=REBIRTH)), kind="NCMD")
        await wait_for(lambda: len(rec.of("NBIRTH")) == 2, 5, "the rebirth")
    finally:
        await sink.close()
        rec.close()
    assert submit.calls == []
    assert "DCMD" not in caplog.text


async def test_dcmd_without_a_command_queue_is_ignored(
    mosquitto_server: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path, accept_dcmd=True)  # accept_commands never called
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        await send(rec, dcmd(Metric(None, 4.0, DataType.DOUBLE, name="speed")))
        await wait_for(lambda: "no command queue" in caplog.text, 5, "the DCMD logged as ignored")
    finally:
        await sink.close()
        rec.close()


class Held(Submitted):
    """A queue that does not answer until ``release`` is set: DCMDs pile up in front of it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def __call__(self, request: CommandRequest, actor: Actor) -> object:
        await self.release.wait()
        return await super().__call__(request, actor)


async def test_dcmds_waiting_for_the_queue_are_bounded(
        mosquitto_server: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rec = await start_recorder(mosquitto_server)
    submit = Held()
    sink = await born_sink(mosquitto_server, tmp_path, rec, submit, accept_dcmd=True)
    extra = 5
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.sinks.sparkplug_commands"):
            for n in range(MAX_PENDING_DCMDS + extra):
                await send(rec, dcmd(Metric(None, float(n % 10), DataType.DOUBLE, name="speed")))
            await wait_for(lambda: sum("dropping a DCMD" in r.getMessage() for r in caplog.records) == extra,
                           10, "the DCMDs beyond the bound dropped")
        submit.release.set()
        await wait_for(lambda: len(submit.calls) == MAX_PENDING_DCMDS, 10, "the waiting DCMDs submitted")
    finally:
        await sink.close()
        rec.close()
    # The first MAX_PENDING_DCMDS went through, in order; the rest were refused, not queued.
    assert [request.value for request, _ in submit.calls] == [float(n % 10) for n in range(MAX_PENDING_DCMDS)]


# -- device id -> asset id, without a broker ----------------------------------------------------------------


def birth(session: EdgeNodeSession, device: str) -> None:
    """Announce ``device`` with one metric, ``speed``, as the sink would on its first record."""
    session.data(device, [Sample("speed", 1.0, 0, 1)], historical=False, now_ms=1)


async def settled(commands: DeviceCommands) -> None:
    """Let the submissions scheduled so far run (each waits for the one before it)."""
    while commands._tasks:
        await asyncio.wait(list(commands._tasks))


async def test_device_ids_map_to_the_assets_given_at_wiring(caplog: pytest.LogCaptureFixture) -> None:
    """The map is built once from the wired asset ids; an asset written only later is addressable once
    birthed, with no further learning; a device id of no wired asset stays unknown even when birthed."""
    session = EdgeNodeSession(GROUP, NODE)
    commands = DeviceCommands(session, command_actor(None))
    submit = Submitted()
    commands.accept(submit, iter([ASSET, "late#1"]))  # any iterable, read once (runtime passes dict keys)
    session.births(0)
    write = dcmd(Metric(None, 2.0, DataType.DOUBLE, name="speed"))
    with caplog.at_level(logging.WARNING, logger="gateway.sinks.sparkplug_commands"):
        commands.on_dcmd("late_1", write)  # wired, but not birthed yet: a host cannot know it
        birth(session, DEVICE)
        birth(session, "late_1")
        birth(session, "stranger")
        commands.on_dcmd(DEVICE, write)
        commands.on_dcmd("late_1", write)
        commands.on_dcmd("stranger", write)
        await settled(commands)
    assert [request for request, _ in submit.calls] == [
        CommandRequest(asset=ASSET, command="write", tag="speed", value=2.0),
        CommandRequest(asset="late#1", command="write", tag="speed", value=2.0),
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "sparkplug: ignoring a DCMD for unknown device late_1",
        "sparkplug: ignoring a DCMD for unknown device stranger",
    ]


async def test_a_device_id_of_two_assets_is_reported_at_wiring_and_refused(
    caplog: pytest.LogCaptureFixture
) -> None:
    """``Pump/2`` and ``Pump+2`` both publish as device ``Pump_2``: a DCMD for it could mean either, so it
    is refused (never guessed); the collision is logged once at wiring. Other devices are unaffected."""
    session = EdgeNodeSession(GROUP, NODE)
    commands = DeviceCommands(session, command_actor(None))
    submit = Submitted()
    with caplog.at_level(logging.WARNING, logger="gateway.sinks.sparkplug_commands"):
        commands.accept(submit, ["Pump+2", ASSET, "Pump+2", "conveyor-01"])  # a repeated id is no collision
        session.births(0)
        birth(session, DEVICE)
        birth(session, "conveyor-01")
        commands.on_dcmd(DEVICE, dcmd(Metric(None, 2.0, DataType.DOUBLE, name="speed")))
        commands.on_dcmd("conveyor-01", dcmd(Metric(None, 3.0, DataType.DOUBLE, name="speed")))
        await settled(commands)
    assert [request for request, _ in submit.calls] == [
        CommandRequest(asset="conveyor-01", command="write", tag="speed", value=3.0),
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"sparkplug: assets Pump+2, {ASSET} share device id {DEVICE} (their data merge there); "
        "DCMDs for it will be ignored",
        f"sparkplug: ignoring a DCMD for device {DEVICE}: it stands for assets Pump+2, {ASSET}",
    ]
