"""WebSocket streams over real connections (uvicorn on a free port, the websockets client): handshake
auth, open streams closed when their token expires or is revoked, filters and down-sampling, alert and
command streams, slow clients, and drift-free periods."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.alerts.rules import AlertRuleConfig
from gateway.api.app import ApiParts, create_app
from gateway.api.auth import AuthConfig, Authenticator, load_or_create_secret
from gateway.api.ws import every
from gateway.api.ws_hub import WsClient, WsHub
from gateway.commands.store import CommandRequest
from gateway.readings import Reading
from gateway.storage.audit import Actor
from gateway.storage.users import UserStore
from tests.edge_support import FAST_HASH, PASSWORDS, token
from tests.fixtures.servers import free_port
from tests.test_api_routes import T0, Api, readings, start_api


@dataclass
class Served:
    api: Api
    url: str


@pytest.fixture
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    """The API on a real server; ``indirect`` parametrisation with True turns anonymous read on."""
    api, _ = await start_api(tmp_path, anonymous_read=getattr(request, "param", False))
    port = free_port()
    parts = ApiParts(api.services, api.hub, api.snapshots, queue_size=8, machine_period_s=0.1)
    app = create_app(api.state, None, parts)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn has no startup event
        await asyncio.sleep(0.02)
    yield Served(api, f"ws://127.0.0.1:{port}")
    server.should_exit = True
    await task
    await api.snapshots.close()
    await api.client.aclose()
    await api.services.close()


def bearer(served: Served, role: str) -> list[Any]:
    return ["bearer", served.api.tokens[role]]


async def recv(ws: ClientConnection, within_s: float = 5.0) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), within_s))
    return message


async def closed_by_server(ws: ClientConnection, within_s: float = 5.0) -> tuple[int | None, str]:
    """Wait (bounded) for the server to close ``ws``, skipping the messages before; its code and reason."""

    async def drain() -> None:  # reading on, or a full receive queue would hold the close frame back
        while True:
            await ws.recv()

    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(drain(), within_s)
    received = closed.value.rcvd
    return (received.code, received.reason) if received is not None else (None, "")


async def close_code(url: str, **kwargs: Any) -> int | None:
    async with connect(url, **kwargs) as ws:
        return (await closed_by_server(ws))[0]


@pytest.mark.parametrize("path", ["/ws/stream", "/ws/alerts", "/ws/commands", "/ws/mine", "/ws/machines/lathe-01"])
async def test_handshake_needs_a_token(served: Served, path: str) -> None:
    assert await close_code(served.url + path) == 1008
    assert await close_code(served.url + path, subprotocols=["bearer", "not-a-jwt"]) == 1008
    for role in ("viewer", "operator", "admin"):
        async with connect(served.url + path, subprotocols=bearer(served, role)) as ws:
            assert ws.subprotocol == "bearer"
    # The query-parameter fallback.
    async with connect(f"{served.url}{path}?token={served.api.tokens['viewer']}") as ws:
        await asyncio.sleep(0.05)
        assert ws.state.name == "OPEN"


async def test_bad_stream_parameters_are_refused(served: Served) -> None:
    for query in ("min_interval_ms=-5", "min_interval_ms=fast", "assets=no-such-asset"):
        code = await close_code(f"{served.url}/ws/stream?{query}", subprotocols=bearer(served, "viewer"))
        assert code == 1008, query
    assert await close_code(f"{served.url}/ws/machines/nope", subprotocols=bearer(served, "viewer")) == 1008


async def _subscribers(hub: WsHub, topic: str, n: int = 1) -> None:
    for _ in range(100):
        if hub.clients(topic) >= n:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"no {topic} subscriber")


async def test_stream_filters_and_down_samples(served: Served) -> None:
    hub = served.api.hub
    url = f"{served.url}/ws/stream?assets=conveyor-01&tags=belt_speed&min_interval_ms=200"
    async with connect(url, subprotocols=bearer(served, "viewer")) as ws:
        await _subscribers(hub, "readings")
        for step in range(3):  # three batches within 200 ms: only the first passes
            hub.publish_readings(readings(T0 + timedelta(seconds=step)))
        first = await recv(ws)
        assert first["type"] == "readings"
        assert [(r["asset"], r["tag"]) for r in first["readings"]] == [("conveyor-01", "belt_speed")]
        assert first["readings"][0]["quality"] == "Good"
        with pytest.raises(TimeoutError):
            await recv(ws, within_s=0.1)
        await asyncio.sleep(0.2)
        hub.publish_readings(readings(T0 + timedelta(seconds=9)))
        assert (await recv(ws))["readings"][0]["source_ts"].startswith("2026-01-01T06:00:09")


async def test_alert_and_command_streams(served: Served) -> None:
    api = served.api
    api.services.alerts.subscribe(lambda r: api.hub.publish("alerts", {"type": "alert", "state": r.state,
                                                                       "rule": r.rule_id}))
    api.services.commands.subscribe(lambda r: api.hub.publish("commands", {"type": "command", "id": r.id,
                                                                           "state": r.state}))
    async with connect(f"{served.url}/ws/alerts", subprotocols=bearer(served, "viewer")) as alerts, \
            connect(f"{served.url}/ws/commands", subprotocols=bearer(served, "viewer")) as commands:
        await _subscribers(api.hub, "alerts")
        await _subscribers(api.hub, "commands")
        await api.services.alerts.put_rule(
            AlertRuleConfig(id="fast-belt", type="high", tag="belt_speed", threshold=1.0), Actor("admin"))
        await api.services.alerts.process([Reading("plc-shop", "conveyor-01", "belt_speed", 2.0, 0, T0, T0)])
        assert (await recv(alerts))["state"] == "active"
        await api.services.alerts.process([Reading("plc-shop", "conveyor-01", "belt_speed", 0.5, 0, T0, T0)])
        assert (await recv(alerts))["state"] == "cleared"
        _record, _ = await api.services.commands.submit(
            CommandRequest(asset="conveyor-01", command="stop"), Actor("operator", ("operator",)))
        states = [(await recv(commands))["state"] for _ in range(3)]
        assert states == ["PENDING", "IN_PROGRESS", "COMPLETED"]


async def test_handshake_honours_revocation(served: Served) -> None:
    api = served.api
    await api.client.post("/api/v1/auth/logout", headers=api.auth("viewer"))
    assert await close_code(f"{served.url}/ws/stream", subprotocols=bearer(served, "viewer")) == 1008
    changed = await api.client.patch("/api/v1/users/operator", headers=api.auth("admin"), json={"role": "viewer"})
    assert changed.status_code == 200
    assert await close_code(f"{served.url}/ws/alerts", subprotocols=bearer(served, "operator")) == 1008
    async with connect(f"{served.url}/ws/alerts", subprotocols=bearer(served, "admin")) as ws:
        assert ws.subprotocol == "bearer"


async def still_streaming(served: Served, *streams: ClientConnection) -> None:
    """Each of ``streams`` (on /ws/alerts) gets the next alert."""
    served.api.hub.publish("alerts", {"type": "alert", "alert": {"id": 1, "asset": "conveyor-01"}})
    for ws in streams:
        assert (await recv(ws))["alert"]["id"] == 1


async def test_logout_closes_the_tokens_open_streams(served: Served) -> None:
    api, url = served.api, served.url
    other_session: list[Any] = ["bearer", await token(api.client, "viewer", PASSWORDS["viewer"])]
    async with connect(f"{url}/ws/stream", subprotocols=bearer(served, "viewer")) as stream, \
            connect(f"{url}/ws/alerts", subprotocols=bearer(served, "viewer")) as alerts, \
            connect(f"{url}/ws/alerts", subprotocols=other_session) as same_user, \
            connect(f"{url}/ws/alerts", subprotocols=bearer(served, "admin")) as admin:
        await _subscribers(api.hub, "alerts", 3)
        assert (await api.client.post("/api/v1/auth/logout", headers=api.auth("viewer"))).status_code == 204
        assert await closed_by_server(stream) == (1008, "token revoked")
        assert await closed_by_server(alerts) == (1008, "token revoked")
        await still_streaming(served, same_user, admin)  # logout revokes only the presented token


async def test_user_changes_close_the_users_open_streams(served: Served) -> None:
    api, url = served.api, served.url
    async with connect(f"{url}/ws/alerts", subprotocols=bearer(served, "operator")) as operator, \
            connect(f"{url}/ws/alerts", subprotocols=bearer(served, "viewer")) as viewer, \
            connect(f"{url}/ws/alerts", subprotocols=bearer(served, "admin")) as admin:
        await _subscribers(api.hub, "alerts", 3)
        refused = await api.client.patch("/api/v1/users/admin", headers=api.auth("admin"), json={"role": "viewer"})
        assert refused.status_code == 409  # the last admin: the change is refused and revokes nothing
        assert (await api.client.delete("/api/v1/users/operator", headers=api.auth("admin"))).status_code == 204
        assert await closed_by_server(operator) == (1008, "token revoked")
        await still_streaming(served, viewer, admin)


async def test_a_token_expiring_while_connected_closes_the_stream(served: Served) -> None:
    auth = served.api.services.auth
    # Below the config's 60 s floor: model_copy does not validate, so the test need not wait a minute.
    auth.config = auth.config.model_copy(update={"token_ttl_s": 2})
    short: list[Any] = ["bearer", await token(served.api.client, "viewer", PASSWORDS["viewer"])]
    # The seed route's 10 Hz stream: messages flow until the token's exp, then the close.
    async with connect(f"{served.url}/ws/machines/lathe-01", subprotocols=short) as machine, \
            connect(f"{served.url}/ws/alerts", subprotocols=bearer(served, "viewer")) as alerts:
        assert (await recv(machine))["id"] == "lathe-01"
        assert await closed_by_server(machine) == (1008, "token expired")
        await still_streaming(served, alerts)


async def test_a_revocation_through_another_gateway_is_swept(served: Served, tmp_path: Path) -> None:
    api = served.api
    api.services.auth.guard.ttl_s = 1.0  # api.auth.revocation_check_s: the sweep's period
    config = AuthConfig()
    other = Authenticator(config, UserStore(api.services.db), load_or_create_secret(config, tmp_path),
                          hasher=FAST_HASH)
    async with connect(f"{served.url}/ws/alerts", subprotocols=bearer(served, "viewer")) as viewer, \
            connect(f"{served.url}/ws/alerts", subprotocols=bearer(served, "admin")) as admin:
        await _subscribers(api.hub, "alerts", 2)
        await other.logout(other.decode(api.tokens["viewer"]), "192.0.2.2")  # this gateway is not told
        assert await closed_by_server(viewer) == (1008, "token revoked")
        await still_streaming(served, admin)


@pytest.mark.parametrize("served", [True], indirect=True)
async def test_anonymous_streams_are_not_watched(served: Served) -> None:
    api = served.api
    async with connect(f"{served.url}/ws/alerts") as anonymous, \
            connect(f"{served.url}/ws/alerts", subprotocols=bearer(served, "viewer")) as viewer:
        await _subscribers(api.hub, "alerts", 2)
        assert (await api.client.post("/api/v1/auth/logout", headers=api.auth("viewer"))).status_code == 204
        assert await closed_by_server(viewer) == (1008, "token revoked")
        await still_streaming(served, anonymous)


async def _site_user(api: Api, name: str, site: str) -> list[Any]:
    created = await api.client.post("/api/v1/users", headers=api.auth("admin"), json={
        "username": name, "password": f"{name}-password", "role": "viewer", "sites": [site]})
    assert created.status_code == 201, created.text
    return ["bearer", await token(api.client, name, f"{name}-password")]


async def test_streams_deliver_only_the_callers_sites(served: Served) -> None:
    api, hub = served.api, served.api.hub
    mine, shop = await _site_user(api, "mine.viewer", "mine"), await _site_user(api, "shop.viewer", "factory")
    assert await close_code(f"{served.url}/ws/stream?assets=conveyor-01", subprotocols=mine) == 1008
    assert await close_code(f"{served.url}/ws/machines/lathe-01", subprotocols=mine) == 1008
    async with connect(f"{served.url}/ws/stream", subprotocols=mine) as stream, \
            connect(f"{served.url}/ws/stream?assets=truck-01,mine", subprotocols=mine) as chosen, \
            connect(f"{served.url}/ws/alerts", subprotocols=mine) as alerts, \
            connect(f"{served.url}/ws/commands", subprotocols=mine) as commands, \
            connect(f"{served.url}/ws/mine", subprotocols=shop) as shop_mine, \
            connect(f"{served.url}/ws/mine", subprotocols=mine) as mine_mine:
        for topic, count in (("readings", 2), ("alerts", 1), ("commands", 1), ("mine", 2)):
            await _subscribers(hub, topic, count)
        hub.publish_readings(readings(T0))
        assert {r["asset"] for r in (await recv(stream))["readings"]} == {"truck-01", "crusher-01", "stockpile-01",
                                                                          "mine"}
        assert {r["asset"] for r in (await recv(chosen))["readings"]} == {"truck-01", "mine"}
        for asset in ("conveyor-01", "truck-01"):
            hub.publish("alerts", {"type": "alert", "alert": {"id": 1, "asset": asset}})
            hub.publish("commands", {"type": "command", "command": {"id": 1, "asset": asset}})
        assert (await recv(alerts))["alert"]["asset"] == "truck-01"
        assert (await recv(commands))["command"]["asset"] == "truck-01"
        hub.publish("mine", {"type": "mine_snapshot", **api.snapshots.build()})
        shop_view, mine_view = await recv(shop_mine), await recv(mine_mine)
        assert (shop_view["trucks"], shop_view["kpis"], shop_view["alerts"]) == ([], {}, [])
        assert [t["id"] for t in mine_view["trucks"]] == ["truck-01"]
        assert mine_view["kpis"]
        for ws in (stream, alerts, commands):  # nothing else was queued for them
            with pytest.raises(TimeoutError):
                await recv(ws, within_s=0.1)


class _StuckSocket:
    """A peer that never reads: every send blocks until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sent: list[str] = []

    async def send_text(self, text: str) -> None:
        await self.release.wait()
        self.sent.append(text)


async def test_slow_client_loses_oldest_and_is_told() -> None:
    hub = WsHub()
    stuck, quick = _StuckSocket(), _StuckSocket()
    quick.release.set()
    slow_client = WsClient(stuck, 4, None)  # type: ignore[arg-type]
    fast_client = WsClient(quick, 4, None)  # type: ignore[arg-type]
    hub.add("alerts", slow_client)
    hub.add("alerts", fast_client)
    tasks = [asyncio.create_task(slow_client.run()), asyncio.create_task(fast_client.run())]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(20):
            hub.publish("alerts", {"n": n})
            await asyncio.sleep(0)
        assert loop.time() - started < 0.5  # publishing never waited for the stuck client
        await asyncio.sleep(0.05)
        assert [json.loads(t)["n"] for t in quick.sent] == list(range(20))  # the other client got all
        # The stuck one took the first message into its send and holds the newest 4; 15 were dropped.
        assert slow_client.dropped == 15
        stuck.release.set()
        await asyncio.sleep(0.05)
        received = [json.loads(t) for t in stuck.sent]
        assert received[0] == {"n": 0}
        assert received[1] == {"type": "dropped", "count": 15}
        assert [m["n"] for m in received[2:]] == [16, 17, 18, 19]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_every_keeps_its_period_without_drift() -> None:
    period, ticks = 0.2, 16
    times: list[float] = []
    loop = asyncio.get_running_loop()
    async for _ in every(period):
        times.append(loop.time())
        await asyncio.sleep(0.013)  # work inside the tick must not push later ticks back
        if len(times) == ticks:
            break
    intervals = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.mean(intervals) == pytest.approx(period, rel=0.05)
    assert abs((times[-1] - times[0]) - period * (ticks - 1)) < period * 0.25  # no cumulative drift


async def test_mine_snapshot_stream_period(served: Served) -> None:
    api = served.api
    async with connect(f"{served.url}/ws/mine", subprotocols=bearer(served, "viewer")) as ws:
        await _subscribers(api.hub, "mine")
        api.snapshots.start()
        loop = asyncio.get_running_loop()
        arrivals = []
        for _ in range(11):
            message = await recv(ws)
            arrivals.append(loop.time())
            assert message["type"] == "mine_snapshot"
            assert message["trucks"][0]["id"] == "truck-01"
    intervals = [b - a for a, b in itertools.pairwise(arrivals)]
    assert statistics.mean(intervals) == pytest.approx(0.2, rel=0.05)
    assert abs((arrivals[-1] - arrivals[0]) - 0.2 * 10) < 0.05
    assert len(api.snapshots.ring) >= 10  # the /api/historical-data ring


async def test_machine_stream_about_ten_hertz(served: Served) -> None:
    async with connect(f"{served.url}/ws/machines/lathe-01", subprotocols=bearer(served, "viewer")) as ws:
        loop = asyncio.get_running_loop()
        first = await recv(ws)
        started = loop.time()
        for _ in range(10):
            message = await recv(ws)
        elapsed = loop.time() - started
    assert first["id"] == "lathe-01"
    assert message["data"]["state"] == "Running"
    assert elapsed == pytest.approx(1.0, rel=0.1)
