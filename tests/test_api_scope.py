"""Per-site scope (OWASP API1) through the real app: a user limited to the mine site, every REST route
family. Out-of-scope assets are invisible: left out of lists, 404 like an unknown asset everywhere else.
(The WebSocket streams are in test_ws_streams.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.alerts.rules import AlertEvent
from tests.edge_support import token
from tests.test_api_routes import T0, Api, start_api

MINE = {"truck-01", "crusher-01", "stockpile-01", "mine"}
FACTORY = {"conveyor-01", "lathe-01", "hbw"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The route tests' app plus a mine operator, a factory operator and a mine-only admin."""
    built, _ = await start_api(tmp_path)
    for name, role, sites in (("mine.op", "operator", ["mine"]), ("shop.op", "operator", ["factory"]),
                              ("mine.admin", "admin", ["mine"])):
        created = await built.client.post("/api/v1/users", headers=built.auth("admin"), json={
            "username": name, "password": f"{name}-password", "role": role, "sites": sites})
        assert created.status_code == 201, created.text
        built.tokens[name] = await token(built.client, name, f"{name}-password")
    yield built
    await built.client.aclose()
    await built.services.close()


async def get(api: Api, path: str, who: str = "mine.op") -> Any:
    response = await api.client.get(path, headers=api.auth(who))
    assert response.status_code == 200, (path, response.text)
    return response.json()


async def assert_like_unknown(api: Api, method: str, path: str, unknown_path: str, body: Any = None) -> None:
    """The out-of-scope answer is the unknown one, word for word but for the id."""
    hidden = await api.client.request(method, path, headers=api.auth("mine.op"), json=body)
    unknown = await api.client.request(method, unknown_path, headers=api.auth("mine.op"), json=body)
    assert hidden.status_code == unknown.status_code == 404, (path, hidden.text, unknown.text)
    assert hidden.headers["content-type"] == "application/problem+json"
    assert hidden.json()["title"] == unknown.json()["title"]
    assert len(hidden.json()) == len(unknown.json())


async def test_lists_hold_only_the_callers_sites(api: Api) -> None:
    assert {a["id"] for a in await get(api, "/api/v1/assets")} == MINE
    assert {a["id"] for a in await get(api, "/api/v1/devices")} == MINE
    assert [p["id"] for p in await get(api, "/api/v1/plcs")] == ["plc-mine"]
    assert {a["id"] for a in await get(api, "/api/v1/assets", "shop.op")} == FACTORY
    assert {a["id"] for a in await get(api, "/api/v1/assets", "viewer")} == MINE | FACTORY  # no sites: all
    assert [k["asset"] for k in await get(api, "/api/v1/mine/kpis")] == ["mine"]
    assert await get(api, "/api/v1/lathes/jobs") == []
    assert await get(api, "/api/v1/warehouse/inventory") == []
    assert await get(api, "/api/v1/mine/kpis", "shop.op") == []
    me = await get(api, "/api/v1/auth/me")
    assert me["sites"] == ["mine"]


@pytest.mark.parametrize("path", ["/api/v1/assets/{}", "/api/v1/assets/{}/values", "/api/v1/devices/{}",
                                  "/api/v1/assets/{}/history?tag=belt_speed", "/machines/{}/data"])
async def test_items_out_of_scope_are_not_found(api: Api, path: str) -> None:
    await assert_like_unknown(api, "GET", path.format("conveyor-01"), path.format("no-such-asset"))
    assert (await api.client.get(path.format("conveyor-01"), headers=api.auth("shop.op"))).status_code == 200


async def test_seed_routes(api: Api) -> None:
    assert {m["id"] for m in await get(api, "/machines")} == MINE
    await assert_like_unknown(api, "GET", "/api/sensor-data/lathe-01", "/api/sensor-data/lathe-99")
    assert (await get(api, "/api/status"))["assets"] == len(MINE)
    api.snapshots.ring.append(api.snapshots.build())
    for snapshot in (await get(api, "/api/current-data"), (await get(api, "/api/historical-data"))["snapshots"][0]):
        assert [t["id"] for t in snapshot["trucks"]] == ["truck-01"]
        assert snapshot["kpis"]  # read from the "mine" asset, which is in scope
    factory_view = await get(api, "/api/current-data", "shop.op")
    assert (factory_view["trucks"], factory_view["crushers"], factory_view["zones"]) == ([], [], [])
    assert factory_view["kpis"] == {}
    assert all(r["asset"] in FACTORY for r in factory_view["recommendations"])
    everything = await get(api, "/api/current-data", "viewer")
    assert everything["trucks"]
    assert everything["recommendations"]
    # Orders to machines of other sites: as if there were none of that type, or no such machine.
    for path, body in (("/order/process", {}), ("/order/process", {"warehouse": "hbw"}),
                       ("/simulator/start", {"material": "Wood", "operation": "Facing", "tool": 1}),
                       ("/simulator/start", {"lathe_id": "lathe-01", "material": "Wood", "operation": "Facing",
                                             "tool": 1})):
        response = await api.client.post(path, headers=api.auth("mine.op"), json=body)
        assert response.status_code == 404, (path, body, response.text)
    assert api.plc.executed == []


async def test_commands(api: Api) -> None:
    write = {"asset": "conveyor-01", "command": "write", "tag": "speed_setpoint", "value": 1.0}
    await assert_like_unknown(api, "POST", "/api/v1/commands", "/api/v1/commands", write)
    unknown = await api.client.post("/api/v1/commands", headers=api.auth("mine.op"), json={**write, "asset": "x-9"})
    assert unknown.json()["detail"] == "no asset 'x-9'"
    rejected = await api.services.audit.entries(action_prefix="command.")
    assert (rejected[0].actor, rejected[0].result) == ("mine.op", "rejected")
    # In scope, the request goes on to the catalogue's validation.
    read_only = await api.client.post("/api/v1/commands", headers=api.auth("mine.op"), json={
        "asset": "crusher-01", "command": "write", "tag": "throughput", "value": 1.0})
    assert read_only.status_code == 422
    created = await api.client.post("/api/v1/commands", headers=api.auth("shop.op"), json=write)
    assert created.status_code == 201, created.text
    command_id = created.json()["id"]
    await assert_like_unknown(api, "GET", f"/api/v1/commands/{command_id}", "/api/v1/commands/99999")
    await assert_like_unknown(api, "POST", f"/api/v1/commands/{command_id}/cancel", "/api/v1/commands/99999/cancel")
    assert await get(api, "/api/v1/commands") == []
    assert await get(api, "/api/v1/commands?asset=conveyor-01") == []
    assert await get(api, "/commands/pending") == []
    assert [c["id"] for c in await get(api, "/api/v1/commands", "shop.op")] == [command_id]


async def test_alerts_and_rules(api: Api) -> None:
    events = [AlertEvent("raised", "hot", a, "t", "warning", 5.0, "hot", T0) for a in ("conveyor-01", "truck-01")]
    conveyor, truck = await api.services.alerts.store.apply(events)
    assert [a["asset"] for a in await get(api, "/api/v1/alerts?state=all")] == ["truck-01"]
    assert await get(api, "/api/v1/alerts?asset=conveyor-01") == []
    assert (await get(api, f"/api/v1/alerts/{truck.id}"))["asset"] == "truck-01"
    await assert_like_unknown(api, "GET", f"/api/v1/alerts/{conveyor.id}", "/api/v1/alerts/99999")
    await assert_like_unknown(api, "POST", f"/api/v1/alerts/{conveyor.id}/ack", "/api/v1/alerts/99999/ack", {})
    assert (await api.client.post(f"/api/v1/alerts/{truck.id}/ack", headers=api.auth("mine.op"),
                                  json={})).status_code == 200

    admin = api.auth("admin")
    for rule_id, assets in (("shop-only", ["conveyor-01"]), ("both", ["conveyor-01", "truck-01"]), ("all", [])):
        rule = {"id": rule_id, "type": "high", "tag": "t", "threshold": 1, "assets": assets}
        assert (await api.client.put(f"/api/v1/alert-rules/{rule_id}", headers=admin, json=rule)).status_code == 201
    shown = {r["rule"]["id"]: r["rule"]["assets"] for r in await get(api, "/api/v1/alert-rules")}
    assert shown == {"both": ["truck-01"], "all": []}
    await assert_like_unknown(api, "GET", "/api/v1/alert-rules/shop-only", "/api/v1/alert-rules/nope")
    assert (await get(api, "/api/v1/alert-rules/both"))["rule"]["assets"] == ["truck-01"]
    # Rules, users and the audit log are gateway-wide: a site-limited admin may not change or read them.
    rule = {"id": "mine-rule", "type": "high", "tag": "t", "threshold": 1, "assets": ["truck-01"]}
    for method, path, body in (("PUT", "/api/v1/alert-rules/mine-rule", rule), ("DELETE", "/api/v1/alert-rules/all",
                               None), ("GET", "/api/v1/users", None), ("GET", "/api/v1/audit", None)):
        response = await api.client.request(method, path, headers=api.auth("mine.admin"), json=body)
        assert response.status_code == 403, (method, path)
