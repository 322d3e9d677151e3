"""The command queue through the real app, with a fake ``execute`` callback standing in for the
runtime: validation, idempotency, ordering, cancel, expiry, timeout, failure, restart recovery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection

from gateway.commands import store
from gateway.commands.queue import CommandQueue, CommandQueueConfig
from gateway.commands.store import CommandRecord, CommandRequest
from gateway.storage.audit import Actor
from gateway.storage.db import Database
from tests.edge_support import Edge, FakePlc

pytest_plugins = ["tests.fixtures.edge"]

WRITE = {"asset": "conveyor-01", "command": "write", "tag": "speed_setpoint", "value": 1.5}
URL = "/api/v1/commands"


async def finished(queue: CommandQueue, command_id: int) -> CommandRecord:
    async with asyncio.timeout(5):
        return await queue.wait(command_id)


def states_reached(queue: CommandQueue, predicate: Callable[[list[CommandRecord]], bool]) -> asyncio.Event:
    """An event set once the state changes seen so far satisfy ``predicate`` (no polling, no sleeps)."""
    seen: list[CommandRecord] = []
    event = asyncio.Event()

    def listener(record: CommandRecord) -> None:
        seen.append(record)
        if predicate(seen):
            event.set()

    queue.subscribe(listener)
    return event


async def test_write_runs_to_completed_and_is_audited(edge: Edge) -> None:
    response = await edge.client.post(URL, json=WRITE, headers=edge.auth("operator"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["state"], body["created_by"], body["channel"]) == ("PENDING", "operator", "rest")
    assert response.headers["Location"] == f"/api/v1/commands/{body['id']}"
    done = await finished(edge.services.commands, body["id"])
    assert done.state == "COMPLETED"
    assert edge.plc.executed == [body["id"]]
    fetched = (await edge.client.get(f"{URL}/{body['id']}")).json()
    assert fetched["state"] == "COMPLETED"
    assert fetched["started_at"] is not None
    assert fetched["finished_at"] is not None
    entries = await edge.services.audit.entries(action_prefix="command.")
    assert [(e.result, e.actor, e.channel) for e in entries] == [
        ("completed", "gateway", "system"), ("accepted", "operator", "rest")]
    assert entries[1].target == {"asset": "conveyor-01", "signal": "speed_setpoint", "command_id": body["id"]}
    assert entries[1].requested == 1.5


async def test_named_command_with_arguments(edge: Edge) -> None:
    operator = edge.auth("operator")
    body = {"asset": "conveyor-01", "command": "set_speed", "args": [1.2]}
    response = await edge.client.post(URL, json=body, headers=operator)
    assert response.status_code == 201, response.text
    assert (await finished(edge.services.commands, response.json()["id"])).state == "COMPLETED"


@pytest.mark.parametrize(("body", "reason"), [
    ({**WRITE, "asset": "nope-01"}, "unknown asset 'nope-01'"),
    ({**WRITE, "tag": "nope"}, "conveyor-01 has no tag 'nope'"),
    ({**WRITE, "tag": "motor_temp", "value": 20.0}, "conveyor-01.motor_temp is read-only"),
    ({**WRITE, "value": 2.5}, "outside its EURange 0..2"),
    ({**WRITE, "value": -0.1}, "outside its EURange 0..2"),
    ({**WRITE, "value": "fast"}, "is float32; got str 'fast'"),
    ({**WRITE, "value": True}, "is float32; got bool True"),
    ({**WRITE, "tag": "running", "value": 1}, "is bool; got int 1"),
    ({**WRITE, "tag": "batch", "value": 40000}, "outside the int16 range -32768..32767"),
    ({**WRITE, "tag": "batch", "value": 1.5}, "an integer; got 1.5"),
    ({**WRITE, "tag": "mode", "value": "Turbo"}, "must be one of Auto, Manual"),
    ({**WRITE, "tag": "mode", "value": 2}, "outside the enum range 0..1"),
    ({"asset": "conveyor-01", "command": "explode"}, "has no command 'explode'; has: start, set_speed"),
    ({"asset": "conveyor-01", "command": "set_speed", "args": []}, "takes 1 argument(s); got 0"),
    ({"asset": "conveyor-01", "command": "set_speed", "args": [9.0]}, "set_speed.speed = 9.0 is outside"),
])
async def test_invalid_commands_are_422_with_the_reason_and_change_nothing(
    edge: Edge, body: dict[str, Any], reason: str
) -> None:
    response = await edge.client.post(URL, json=body, headers=edge.auth("operator"))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert reason in response.json()["detail"]
    assert (await edge.client.get(URL)).json() == []
    [entry] = await edge.services.audit.entries(action_prefix="command.")
    assert entry.result == "rejected"
    assert reason in (entry.detail or "")


@pytest.mark.parametrize("body", [
    {"asset": "conveyor-01", "command": "write", "tag": "speed_setpoint"},  # no value
    {"asset": "conveyor-01", "command": "start", "tag": "speed_setpoint", "value": 1},
    {**WRITE, "state": "COMPLETED"},  # mass assignment (OWASP API3)
    {**WRITE, "created_by": "admin"},
    {**WRITE, "ttl_s": -1},
    {"command": "write"},
])
async def test_malformed_bodies_are_422(edge: Edge, body: dict[str, Any]) -> None:
    response = await edge.client.post(URL, json=body, headers=edge.auth("operator"))
    assert response.status_code == 422
    assert (await edge.client.get(URL)).json() == []


async def test_idempotency_key_replays_and_conflicts(edge: Edge) -> None:
    operator = edge.auth("operator")
    first = await edge.client.post(URL, json=WRITE, headers={**operator, "Idempotency-Key": "k-1"})
    replay = await edge.client.post(URL, json=WRITE, headers={**operator, "Idempotency-Key": "k-1"})
    assert first.status_code == 201
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    conflict = await edge.client.post(URL, json={**WRITE, "value": 0.5},
                                      headers={**operator, "Idempotency-Key": "k-1"})
    assert conflict.status_code == 409
    assert "different request" in conflict.json()["detail"]
    # keys are scoped per caller: the admin's "k-1" is a different command
    other = await edge.client.post(URL, json=WRITE, headers={**edge.auth("admin"), "Idempotency-Key": "k-1"})
    assert other.status_code == 201
    assert other.json()["id"] != first.json()["id"]
    assert len((await edge.client.get(URL)).json()) == 2
    await finished(edge.services.commands, other.json()["id"])
    assert edge.plc.executed == [first.json()["id"], other.json()["id"]]


async def test_order_per_asset_concurrency_across_plcs_and_cancel(edge: Edge) -> None:
    queue, operator = edge.services.commands, edge.auth("operator")
    edge.plc.gate = asyncio.Event()
    both_running = states_reached(queue, lambda seen: sum(r.state == "IN_PROGRESS" for r in seen) == 2)
    ids = []
    for value in (0.5, 1.0, 1.5):
        response = await edge.client.post(URL, json={**WRITE, "value": value}, headers=operator)
        ids.append(response.json()["id"])
    crusher = {"asset": "crusher-01", "command": "write", "tag": "feed_rate", "value": 50}
    ids.append((await edge.client.post(URL, json=crusher, headers=operator)).json()["id"])
    async with asyncio.timeout(5):
        await both_running.wait()  # one per asset at once: conveyor's first and the crusher's
    running = {c["id"] for c in (await edge.client.get(URL, params={"state": "IN_PROGRESS"})).json()}
    assert running == {ids[0], ids[3]}
    pending = (await edge.client.get("/commands/pending")).json()  # the seed route, oldest first
    assert [c["id"] for c in pending] == [ids[1], ids[2]]

    busy = await edge.client.post(f"{URL}/{ids[0]}/cancel", headers=operator)
    assert busy.status_code == 409
    assert (await edge.client.post(f"{URL}/{ids[2]}/cancel", headers=edge.auth("viewer"))).status_code == 403
    cancelled = await edge.client.post(f"{URL}/{ids[2]}/cancel", headers=operator)
    assert cancelled.json()["state"] == "CANCELLED"
    assert (await edge.client.post(f"{URL}/99999/cancel", headers=operator)).status_code == 404

    edge.plc.gate.set()
    results = [await finished(queue, i) for i in ids]
    assert [r.state for r in results] == ["COMPLETED", "COMPLETED", "CANCELLED", "COMPLETED"]
    conveyor = [i for i in edge.plc.executed if i in ids[:3]]
    assert conveyor == [ids[0], ids[1]]  # in submission order, the cancelled one never ran


async def test_failure_and_timeout_are_failed_with_the_reason(edge: Edge) -> None:
    queue, operator = edge.services.commands, edge.auth("operator")
    edge.plc.fail["conveyor-01"] = "read-back mismatch: wrote 1.5, read 1.2"
    failed = (await edge.client.post(URL, json=WRITE, headers=operator)).json()
    result = await finished(queue, failed["id"])
    assert (result.state, result.reason) == ("FAILED", "read-back mismatch: wrote 1.5, read 1.2")

    queue.config = CommandQueueConfig(execute_timeout_s=0.05)
    edge.plc.hang.add("crusher-01")
    crusher = {"asset": "crusher-01", "command": "write", "tag": "feed_rate", "value": 5}
    hung = (await edge.client.post(URL, json=crusher, headers=operator)).json()
    result = await finished(queue, hung["id"])
    assert (result.state, result.reason) == ("FAILED", "timed out after 0.05 s")
    results = [e.result for e in await edge.services.audit.entries(action_prefix="command.")]
    assert results.count("failed") == 2


async def test_pending_commands_expire_after_their_ttl(edge: Edge) -> None:
    queue, operator = edge.services.commands, edge.auth("operator")
    now = [datetime.now(UTC)]
    queue.clock = lambda: now[0]
    edge.plc.gate = asyncio.Event()
    running = states_reached(queue, lambda seen: any(r.state == "IN_PROGRESS" for r in seen))
    first = (await edge.client.post(URL, json=WRITE, headers=operator)).json()
    short = (await edge.client.post(URL, json={**WRITE, "value": 0.2, "ttl_s": 5}, headers=operator)).json()
    async with asyncio.timeout(5):
        await running.wait()
    now[0] += timedelta(seconds=6)
    [expired] = await queue.expire_due()
    assert (expired.id, expired.state) == (short["id"], "EXPIRED")
    edge.plc.gate.set()
    assert (await finished(queue, first["id"])).state == "COMPLETED"
    assert edge.plc.executed == [first["id"]]  # the stale command never reached the PLC


async def test_restart_fails_interrupted_commands_and_resumes_pending(database: Database) -> None:
    operator = Actor("op", ("operator",))
    now = datetime.now(UTC)
    later = now + timedelta(minutes=5)
    request = CommandRequest.model_validate(WRITE)

    def dead_gateway_left(conn: Connection) -> list[int]:
        # What a killed gateway leaves behind: one command mid-execution, two waiting behind it.
        ids = [store.insert_sync(conn, request, operator, None, now, later)[0].id for _ in range(3)]
        store.transition_sync(conn, ids[0], "PENDING", "IN_PROGRESS", now, operator)
        return ids

    ids = await database.run(dead_gateway_left)
    plc = FakePlc()
    queue = CommandQueue(database, plc.execute)
    await queue.start()
    try:
        results = [await finished(queue, i) for i in ids]
    finally:
        await queue.close()
    assert (results[0].state, results[0].reason) == ("FAILED", "gateway restarted during execution")
    assert [r.state for r in results[1:]] == ["COMPLETED", "COMPLETED"]
    assert plc.executed == ids[1:]


async def test_close_fails_the_running_command_and_keeps_pending_ones(database: Database) -> None:
    plc = FakePlc(gate=asyncio.Event())
    queue = CommandQueue(database, plc.execute)
    await queue.start()
    running = states_reached(queue, lambda seen: any(r.state == "IN_PROGRESS" for r in seen))
    actor = Actor("op", ("operator",))
    first, _ = await queue.submit(CommandRequest.model_validate(WRITE), actor)
    second, _ = await queue.submit(CommandRequest.model_validate(WRITE), actor)
    async with asyncio.timeout(5):
        await running.wait()
    await queue.close()
    await queue.close()  # idempotent
    assert (await queue.get(first.id)).state == "FAILED"  # type: ignore[union-attr]
    assert (await queue.get(second.id)).state == "PENDING"  # type: ignore[union-attr]


async def test_idempotency_key_can_be_required(edge: Edge) -> None:
    edge.services.commands.config = CommandQueueConfig(require_idempotency_key=True)
    response = await edge.client.post(URL, json=WRITE, headers=edge.auth("operator"))
    assert response.status_code == 428
    assert "Idempotency-Key" in response.json()["detail"]
