"""The WebSocket hub's own logic, without sockets: senders are woken a bounded slice per event-loop
iteration (so a broadcast to many clients leaves room for REST requests), and readings reach exactly
the clients whose filter selects them, through the index by asset."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from gateway.api.auth import Principal
from gateway.api.ws_hub import ReadingFilter, WakePacer, WsClient, WsHub
from gateway.common.status import GOOD
from gateway.readings import Reading

VIEWER = Principal(sub="viewer", role="viewer")
T0 = datetime(2026, 1, 1, 6, 0, tzinfo=UTC)


class _RecordingSocket:
    """Sends complete at once; the hub's shared counter records the order of every send."""

    def __init__(self, log: list[int], n: int) -> None:
        self.log, self.n = log, n
        self.texts: list[str] = []

    async def send_text(self, data: str) -> None:
        self.log.append(self.n)
        self.texts.append(data)


def _reading(asset: str, tag: str, value: float) -> Reading:
    return Reading(device="plc-1", asset=asset, tag=tag, value=value, quality=GOOD, source_ts=T0, gateway_ts=T0,
                   unit="m/s")


def _alert_clients(count: int, per_iteration: int) -> tuple[WsHub, list[int], list[WsClient], list[asyncio.Task[None]]]:
    """A paced hub with ``count`` alert clients and their running senders; sends are logged by client number."""
    hub = WsHub(pacer=WakePacer(per_iteration=per_iteration))
    log: list[int] = []
    clients = [WsClient(_RecordingSocket(log, n), 8, VIEWER, pacer=hub.pacer) for n in range(count)]
    for client in clients:
        hub.add("alerts", client)
    return hub, log, clients, [asyncio.create_task(c.run()) for c in clients]


async def test_pacer_wakes_a_slice_per_iteration_in_order() -> None:
    pacer = WakePacer(per_iteration=64)
    events = [asyncio.Event() for _ in range(200)]
    for event in events:
        pacer.wake(event)
        pacer.wake(event)  # asked twice while pending: woken once
    woken = []
    for _ in range(5):
        # One loop iteration. This task was ready before the iteration began, so it resumes before the
        # pacer's slice, which runs after the iteration's I/O callbacks.
        await asyncio.sleep(0)
        woken.append(sum(e.is_set() for e in events))
        if woken[-1] == 64:
            assert all(e.is_set() for e in events[:64])
            assert not any(e.is_set() for e in events[64:])
    assert woken == [0, 64, 128, 192, 200]


async def test_work_that_io_schedules_goes_before_the_next_slice() -> None:
    """A request whose bytes arrive during a broadcast: what its data_received schedules (uvicorn's
    request task) runs before any sender of the next slice, so the request waits for no more sends."""
    hub, log, clients, tasks = _alert_clients(1000, per_iteration=50)
    loop = asyncio.get_running_loop()
    sends_in_between: list[int] = []
    handled = asyncio.Event()

    class Server(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:  # an I/O callback, as uvicorn's
            at_arrival = len(log)

            def request() -> None:
                sends_in_between.append(len(log) - at_arrival)
                handled.set()

            loop.call_soon(request)

    server = await loop.create_server(Server, "127.0.0.1", 0)
    _, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    try:
        await asyncio.sleep(0)  # every sender is waiting
        hub.publish("alerts", {"type": "alert", "n": 1})
        writer.write(b"GET")  # arrives while the 1,000 sends are paced out
        await asyncio.wait_for(handled.wait(), 5)
        assert 0 < len(log) < len(clients)  # it did arrive mid-broadcast
        assert sends_in_between == [0]
        for _ in range(10 * len(clients)):
            if len(log) == len(clients):
                break
            await asyncio.sleep(0)
        assert sorted(log) == list(range(len(clients)))
    finally:
        writer.close()
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_broadcast_to_many_clients_leaves_the_loop_free_between_slices() -> None:
    """Count the sends made between consecutive loop iterations: never more than a slice, so I/O that
    arrives during a broadcast to 1,000 clients waits for one slice, not for all 1,000 sends."""
    hub, log, clients, tasks = _alert_clients(1000, per_iteration=50)
    await asyncio.sleep(0)  # every sender is waiting
    loop = asyncio.get_running_loop()
    per_iteration: list[int] = []
    seen = 0

    def probe() -> None:  # re-arms itself each iteration, like an I/O callback would arrive
        nonlocal seen
        per_iteration.append(len(log) - seen)
        seen = len(log)
        if len(log) < len(clients):
            loop.call_soon(probe)

    try:
        hub.publish("alerts", {"type": "alert", "n": 1})
        loop.call_soon(probe)
        for _ in range(10 * len(clients)):  # bounded: one iteration at a time until every send is done
            if len(log) == len(clients):
                break
            await asyncio.sleep(0)
        assert sorted(log) == list(range(1000))  # every client got the message exactly once
        assert max(per_iteration) <= 50
        assert len(per_iteration) >= 1000 // 50
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_readings_reach_the_clients_whose_filter_selects_them() -> None:
    hub = WsHub()
    log: list[int] = []
    sockets = [_RecordingSocket(log, n) for n in range(5)]
    filters = [
        ReadingFilter(frozenset({"conveyor-01"})),
        ReadingFilter(frozenset({"conveyor-01"})),  # same filter: shares the message
        ReadingFilter(frozenset({"conveyor-02"}), frozenset({"belt_speed"})),
        ReadingFilter(),  # every asset
        ReadingFilter(frozenset({"conveyor-01"}), min_interval_s=60),  # down-sampled per client
    ]
    clients = [WsClient(s, 8, VIEWER, f, pacer=hub.pacer) for s, f in zip(sockets, filters, strict=True)]
    removers = [hub.add("readings", c) for c in clients]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    try:
        batch = [_reading("conveyor-01", "belt_speed", 1.0), _reading("conveyor-02", "belt_speed", 2.0),
                 _reading("conveyor-02", "motor_temp", 40.0), _reading("lathe-01", "spindle_rpm", 900.0)]
        hub.publish_readings(batch)
        hub.publish_readings(batch)  # the down-sampled client lets this one pass by
        for _ in range(5):
            await asyncio.sleep(0)

        def got(n: int) -> list[list[tuple[str, str]]]:
            return [[(r["asset"], r["tag"]) for r in json.loads(t)["readings"]] for t in sockets[n].texts]

        assert got(0) == got(1) == [[("conveyor-01", "belt_speed")]] * 2
        assert got(2) == [[("conveyor-02", "belt_speed")]] * 2
        assert got(3) == [[(r.asset, r.tag) for r in batch]] * 2
        assert got(4) == [[("conveyor-01", "belt_speed")]]
        assert sockets[0].texts[0] is sockets[1].texts[0]  # serialised once for both

        for remove in removers:
            remove()
        assert hub.clients("readings") == 0
        hub.publish_readings(batch)
        await asyncio.sleep(0)
        assert all(not c.queue for c in clients)
        assert not hub._readings.groups
        assert not hub._readings.by_asset
        assert not hub._readings.sampled
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
