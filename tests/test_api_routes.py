"""REST additions under /api/v1 and the seed routes, through the real app (httpx ASGI transport)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.api.app import ApiParts, create_app
from gateway.api.auth import AuthConfig, Authenticator, load_or_create_secret
from gateway.api.edge import EdgeServices
from gateway.api.seed_routes import MineSnapshots
from gateway.api.state import AssetInfo, EdgeState, RecentHistory, SourceStatus
from gateway.api.ws_hub import WsHub
from gateway.catalogue import parse_catalogue
from gateway.commands.validation import catalogue_validator
from gateway.latest import LatestValues
from gateway.readings import Reading, TagValue
from gateway.storage.db import Database
from gateway.storage.users import UserStore
from tests.edge_support import FAST_HASH, PASSWORDS, FakePlc, token

T0 = datetime(2026, 1, 1, 6, 0, tzinfo=UTC)


def _tag(key: str, datatype: str = "float32", **extra: Any) -> dict[str, Any]:
    return {"key": key, "datatype": datatype, **extra}


ENUM_SLOT = {"datatype": "enum", "enum_strings": ["Empty", "Raw", "Processed"]}
CATALOGUE: dict[str, Any] = {
    "format": "twinedge-catalogue", "version": 1, "plant": "test",
    "plcs": [
        {"id": "plc-shop", "site": "factory", "area": "shop",
         "opcua": {"endpoint": "opc.tcp://127.0.0.1:4840", "namespace_uri": "urn:test"}, "assets": [
             {"id": "conveyor-01", "type": "conveyor",
              "tags": [_tag("speed_setpoint", unit="MTS", eu_range=[0, 3], access="rw"),
                       _tag("belt_speed", unit="MTS")],
              "commands": [{"name": "stop"}]},
             {"id": "lathe-01", "type": "lathe",
              "tags": [_tag("state", "enum", enum_strings=["Idle", "Running", "Tool broken"]), _tag("rpm"),
                       _tag("job_id", "uint32"),
                       _tag("material", "enum", enum_strings=["Mild Steel", "Aluminium", "Wood"])],
              "commands": [{"name": "start_job", "args": [
                  {"name": "material", "datatype": "enum", "enum_strings": ["Mild Steel", "Aluminium", "Wood"]},
                  {"name": "operation", "datatype": "enum", "enum_strings": ["Turning", "Facing"]},
                  {"name": "tool_no", "datatype": "uint16", "eu_range": [1, 12]},
                  {"name": "estimated_min", "datatype": "float32", "eu_range": [1, 240]}]}]},
             {"id": "hbw", "type": "warehouse",
              "tags": [{"key": f"slot_{i}", **ENUM_SLOT} for i in range(1, 4)],
              "commands": [{"name": "process", "args": [{"name": "slot", "datatype": "uint16", "eu_range": [0, 9]}]}]},
         ]},
        {"id": "plc-mine", "site": "mine", "area": "pit", "assets": [
            {"id": "truck-01", "type": "mine_truck", "tags": [
                _tag("state", "enum", enum_strings=["Loading", "Hauling", "Dumping", "Returning", "Refuelling",
                                                    "Broken down"]), _tag("fuel_level")]},
            {"id": "crusher-01", "type": "crusher", "tags": [_tag("liner_wear"), _tag("throughput")]},
            {"id": "stockpile-01", "type": "stockpile", "tags": [_tag("level_pct"), _tag("reclaiming", "bool")]},
            {"id": "mine", "type": "mine", "tags": [_tag("total_throughput"), _tag("truck_utilisation")]},
        ]},
    ],
}
VALUES: dict[tuple[str, str], TagValue] = {
    ("conveyor-01", "speed_setpoint"): 1.2, ("conveyor-01", "belt_speed"): 1.19,
    ("lathe-01", "state"): 1, ("lathe-01", "rpm"): 900.0, ("lathe-01", "job_id"): 7, ("lathe-01", "material"): 1,
    ("hbw", "slot_1"): 2, ("hbw", "slot_2"): 0, ("hbw", "slot_3"): 1,
    ("truck-01", "state"): 5, ("truck-01", "fuel_level"): 40.0,
    ("crusher-01", "liner_wear"): 75.0, ("crusher-01", "throughput"): 1800.0,
    ("stockpile-01", "level_pct"): 90.0, ("stockpile-01", "reclaiming"): False,
    ("mine", "total_throughput"): 1750.0, ("mine", "truck_utilisation"): 82.0,
}


def readings(ts: datetime, scale: float = 1.0) -> list[Reading]:
    places = {"plc-shop": ("factory", "shop"), "plc-mine": ("mine", "pit")}
    plc_of = {a["id"]: p["id"] for p in CATALOGUE["plcs"] for a in p["assets"]}
    out = []
    for (asset, tag), value in VALUES.items():
        if isinstance(value, float):
            value = value * scale
        site, area = places[plc_of[asset]]
        out.append(Reading(plc_of[asset], asset, tag, value, 0, ts, ts, site, area))
    return out


@dataclass
class Api:
    client: httpx.AsyncClient
    state: EdgeState
    services: EdgeServices
    plc: FakePlc
    snapshots: MineSnapshots
    hub: WsHub
    tokens: dict[str, str]
    app: FastAPI

    def auth(self, role: str | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}


def build_state(catalogue: Any) -> EdgeState:
    latest, history = LatestValues(), RecentHistory(100)
    assets = {a.id: AssetInfo(a.id, a.type, p.id, p.site, p.area) for p in catalogue.plcs for a in p.assets}
    for step in range(5):  # five samples per tag, 1 s apart
        batch = readings(T0 + timedelta(seconds=step), 1.0 + step / 100)
        latest.update(batch)
        history.add(batch)
    sources = [SourceStatus("plc-shop", "opcua", "opc.tcp://127.0.0.1:4840", True, "plc-shop"),
               SourceStatus("plc-mine", "modbus", "127.0.0.1:5020", False, "plc-mine")]
    return EdgeState("gw-test", latest, assets, lambda: sources, catalogue, history)


async def start_api(tmp_path: Path, anonymous_read: bool = False) -> tuple[Api, Database]:
    catalogue = parse_catalogue(CATALOGUE)
    database = Database(f"sqlite:///{tmp_path / 'edge.db'}")
    config = AuthConfig(anonymous_read=anonymous_read)
    authenticator = Authenticator(config, UserStore(database), load_or_create_secret(config, tmp_path),
                                  hasher=FAST_HASH)
    plc = FakePlc()
    services = EdgeServices(database, data_dir=tmp_path, execute=plc.execute, validate=catalogue_validator(catalogue),
                            authenticator=authenticator, env={"TWINEDGE_ADMIN_PASSWORD": PASSWORDS["admin"]})
    await services.start()
    state, hub = build_state(catalogue), WsHub()
    snapshots = MineSnapshots(state, hub, period_s=0.2, kept=10)
    app = create_app(state, None, ApiParts(services, hub, snapshots))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge")
    tokens = {"admin": await token(client, "admin", PASSWORDS["admin"])}
    for role in ("operator", "viewer"):
        created = await client.post("/api/v1/users", headers={"Authorization": f"Bearer {tokens['admin']}"},
                                    json={"username": role, "password": PASSWORDS[role], "role": role})
        assert created.status_code == 201, created.text
        tokens[role] = await token(client, role, PASSWORDS[role])
    return Api(client, state, services, plc, snapshots, hub, tokens, app), database


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    built, _ = await start_api(tmp_path)
    yield built
    await built.client.aclose()
    await built.services.close()


READ_ROUTES = ["/api/v1/plcs", "/api/v1/assets", "/api/v1/assets/conveyor-01", "/api/v1/assets/conveyor-01/values",
               "/api/v1/assets/conveyor-01/history?tag=belt_speed", "/api/v1/mine/kpis", "/api/v1/lathes/jobs",
               "/api/v1/warehouse/inventory", "/api/v1/devices", "/machines", "/machines/lathe-01/data",
               "/api/status", "/api/streaming-status", "/api/current-data", "/api/historical-data",
               "/api/sensor-data/lathe-01", "/commands/pending"]


@pytest.mark.parametrize("path", READ_ROUTES)
async def test_read_routes_need_a_viewer(api: Api, path: str) -> None:
    assert (await api.client.get(path)).status_code == 401
    assert (await api.client.get(path, headers={"Authorization": "Bearer not-a-jwt"})).status_code == 401
    for role in ("viewer", "operator", "admin"):
        response = await api.client.get(path, headers=api.auth(role))
        assert response.status_code == 200, (role, response.text)


async def test_plcs_and_assets(api: Api) -> None:
    plcs = (await api.client.get("/api/v1/plcs", headers=api.auth("viewer"))).json()
    shop = next(p for p in plcs if p["id"] == "plc-shop")
    assert shop["endpoints"] == {"opcua": "opc.tcp://127.0.0.1:4840"}
    assert shop["connected"] is True
    assert shop["sources"][0]["name"] == "plc-shop"
    assert next(p for p in plcs if p["id"] == "plc-mine")["connected"] is False
    assets = (await api.client.get("/api/v1/assets?type=lathe", headers=api.auth("viewer"))).json()
    assert [a["id"] for a in assets] == ["lathe-01"]
    detail = (await api.client.get("/api/v1/assets/conveyor-01", headers=api.auth("viewer"))).json()
    assert detail["hierarchy"] == ["factory", "shop", "plc-shop", "conveyor-01"]
    setpoint = next(t for t in detail["tags"] if t["key"] == "speed_setpoint")
    assert (setpoint["access"], setpoint["unit"], setpoint["eu_range"]) == ("rw", "MTS", [0, 3])
    assert detail["commands"][0]["name"] == "stop"
    values = (await api.client.get("/api/v1/assets/conveyor-01/values", headers=api.auth("viewer"))).json()
    assert values["values"]["belt_speed"]["quality"] == "Good"
    assert values["values"]["belt_speed"]["source_ts"].startswith("2026-01-01T06:00:04")
    missing = await api.client.get("/api/v1/assets/nope", headers=api.auth("viewer"))
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


async def test_history(api: Api) -> None:
    get = api.client.get
    h = api.auth("viewer")
    raw = (await get("/api/v1/assets/conveyor-01/history?tag=belt_speed", headers=h)).json()
    assert raw["store"] == "local"
    assert len(raw["points"]) == 5
    window = (await get("/api/v1/assets/conveyor-01/history", headers=h, params={
        "tag": "belt_speed", "start": "2026-01-01T06:00:01Z", "end": "2026-01-01T06:00:03Z"})).json()
    assert len(window["points"]) == 3
    stepped = (await get("/api/v1/assets/conveyor-01/history?tag=belt_speed&step=2", headers=h)).json()
    assert [p["count"] for p in stepped["points"]] == [2, 2, 1]
    assert stepped["points"][0]["value"] == pytest.approx(1.19 * (1.0 + 1.01) / 2)
    for params, status in [({"tag": "nope"}, 422), ({}, 422), ({"tag": "belt_speed", "step": -1}, 422),
                           ({"tag": "belt_speed", "start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
                            422), ({"tag": "belt_speed", "start": "yesterday"}, 422)]:
        response = await get("/api/v1/assets/conveyor-01/history", headers=h, params=params)
        assert response.status_code == status, (params, response.text)
    assert (await get("/api/v1/assets/nope/history?tag=x", headers=h)).status_code == 404


async def test_views_of_mine_lathes_warehouse(api: Api) -> None:
    h = api.auth("viewer")
    kpis = (await api.client.get("/api/v1/mine/kpis", headers=h)).json()
    assert kpis[0]["asset"] == "mine"
    assert kpis[0]["truck_utilisation"] == pytest.approx(82.0 * 1.04)
    jobs = (await api.client.get("/api/v1/lathes/jobs", headers=h)).json()
    assert (jobs[0]["asset"], jobs[0]["state"], jobs[0]["material"], jobs[0]["job_id"]) == (
        "lathe-01", "Running", "Aluminium", 7)
    inventory = (await api.client.get("/api/v1/warehouse/inventory", headers=h)).json()
    assert inventory[0]["slots"] == {"1": "Processed", "2": "Empty", "3": "Raw"}
    assert inventory[0]["counts"] == {"Processed": 1, "Empty": 1, "Raw": 1}


async def test_seed_reads(api: Api) -> None:
    h = api.auth("viewer")
    machines = (await api.client.get("/machines", headers=h)).json()
    lathe = next(m for m in machines if m["id"] == "lathe-01")
    assert (lathe["state"], lathe["online"]) == ("Running", True)
    assert next(m for m in machines if m["id"] == "truck-01")["online"] is False
    data = (await api.client.get("/machines/lathe-01/data", headers=h)).json()
    assert data["data"]["rpm"] == pytest.approx(900 * 1.04)
    assert data["timestamp"].startswith("2026-01-01T06:00:04")
    assert (await api.client.get("/machines/nope/data", headers=h)).status_code == 404
    assert (await api.client.get("/api/sensor-data/conveyor-01", headers=h)).status_code == 404
    status = (await api.client.get("/api/status", headers=h)).json()
    assert status["status"] == "degraded"
    assert status["sources"] == {"total": 2, "connected": 1}
    current = (await api.client.get("/api/current-data", headers=h)).json()
    assert [t["id"] for t in current["trucks"]] == ["truck-01"]
    assert current["trucks"][0]["state"] == "Broken down"
    assert current["zones"] == [{"zone": "workshop", "trucks": ["truck-01"], "count": 1}]
    assert current["kpis"]["total_throughput"] == pytest.approx(1750 * 1.04)
    actions = {(r["asset"], r["action"]) for r in current["recommendations"]}
    assert actions == {("truck-01", "repair"), ("crusher-01", "reline"), ("stockpile-01", "start_reclaim")}
    streaming = (await api.client.get("/api/streaming-status", headers=h)).json()
    assert streaming["streaming"] is False
    assert streaming["snapshots_kept"] == 0
    api.snapshots.ring.append(api.snapshots.build())
    history = (await api.client.get("/api/historical-data?limit=5", headers=h)).json()
    assert history["count"] == 1
    assert "kpis" in history["snapshots"][0]


async def test_process_order_picks_a_raw_slot(api: Api) -> None:
    assert (await api.client.post("/order/process", json={}, headers=api.auth("viewer"))).status_code == 403
    assert (await api.client.post("/order/process", json={})).status_code == 401
    response = await api.client.post("/order/process", json={}, headers=api.auth("operator"))
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["asset"], body["command"], body["args"]) == ("hbw", "process", [3])
    explicit = await api.client.post("/order/process", json={"slot": 1}, headers=api.auth("operator"))
    assert explicit.json()["args"] == [1]
    for bad, status in [({"slot": 12}, 422), ({"warehouse": "lathe-01"}, 404), ({"colour": "red"}, 422)]:
        response = await api.client.post("/order/process", json=bad, headers=api.auth("operator"))
        assert response.status_code == status, (bad, response.text)
    # No raw workpiece left: a clear 409 and nothing queued.
    shop = api.state.latest.asset("hbw") or {}
    raw = shop["slot_3"]
    api.state.latest.update([Reading(raw.device, "hbw", "slot_3", 2, 0, raw.source_ts, raw.gateway_ts)])
    before = [c.id for c in await api.services.commands.list_commands()]
    none_left = await api.client.post("/order/process", json={}, headers=api.auth("operator"))
    assert none_left.status_code == 409
    assert "no raw workpiece" in none_left.json()["detail"]
    assert [c.id for c in await api.services.commands.list_commands()] == before


async def test_simulator_start(api: Api) -> None:
    body = {"material": "Aluminium", "operation": "Facing", "tool": 3}
    assert (await api.client.post("/simulator/start", json=body, headers=api.auth("viewer"))).status_code == 403
    response = await api.client.post("/simulator/start", json=body, headers=api.auth("operator"))
    assert response.status_code == 202, response.text
    assert (response.json()["command"], response.json()["args"]) == ("start_job", ["Aluminium", "Facing", 3, 30.0])
    before = [c.id for c in await api.services.commands.list_commands()]
    for bad in [{**body, "material": "Gold"}, {**body, "tool": 40}, {**body, "lathe_id": "hbw"}, {"tool": 3}]:
        refused = await api.client.post("/simulator/start", json=bad, headers=api.auth("operator"))
        assert refused.status_code in (404, 422), (bad, refused.text)
    assert [c.id for c in await api.services.commands.list_commands()] == before


async def test_anonymous_read_switch(tmp_path: Path) -> None:
    built, _ = await start_api(tmp_path, anonymous_read=True)
    try:
        assert (await built.client.get("/api/v1/assets")).status_code == 200
        assert (await built.client.post("/order/process", json={})).status_code == 401
    finally:
        await built.client.aclose()
        await built.services.close()
