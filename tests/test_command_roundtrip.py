"""A command's full life against a running plant: REST -> queue -> source write -> PLC scan -> poll
read-back -> COMPLETED, over OPC UA and over Modbus; a refused value changes nothing; a method call."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devices.config import PlantConfig
from devices.plant import Plant
from gateway.commands.store import CommandRecord
from gateway.config import GatewayConfig
from gateway.runtime import Gateway, build_gateway, run_gateway
from tests.fixtures.plant import PLANT_START
from tests.fixtures.servers import free_port

ADMIN_PASSWORD = "roundtrip-admin-pass-1"
OPERATOR = {"username": "op", "password": "roundtrip-op-pass-1", "role": "operator"}
OPCUA_USER = {"name": "gw", "password": "gw-opcua-password", "role": "operator"}


@dataclass
class Running:
    gateway: Gateway
    http: httpx.AsyncClient
    plant: Plant
    states: dict[int, list[str]]
    headers: dict[str, str]

    def setpoint(self) -> float:
        image = self.plant.plcs[0].plc.image
        assert image is not None
        return image.lookup("conveyor-01", "speed_setpoint")[0]


@pytest.fixture(params=["opcua", "modbus"])
async def running(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    protocol = request.param
    monkeypatch.setenv("TWINEDGE_ADMIN_PASSWORD", ADMIN_PASSWORD)
    plant = Plant(PlantConfig.model_validate({
        "plant": {"name": "rt", "seed": 3, "data_dir": str(tmp_path / "plant"), "api_port": None,
                  "start_time": PLANT_START.isoformat()},
        "sites": [{"id": "factory", "areas": [{"id": "line-1", "plcs": [{
            "id": "plc-1", "scan_period_ms": 100,
            "opcua": {"port": free_port(), "users": [OPCUA_USER]},
            "modbus": {"port": free_port()},
            "assets": [{"type": "conveyor", "id": "conveyor", "count": 2}],
        }]}]}],
    }), announce=lambda _line: None)
    source: dict[str, Any] = {"name": f"plc-1-{protocol}", "protocol": protocol, "plc": "plc-1",
                              "interval_ms": 200}
    if protocol == "opcua":
        source.update(username=OPCUA_USER["name"], password=OPCUA_USER["password"])
    api_port = free_port()
    config = GatewayConfig.model_validate({
        "gateway": {"id": "gw-rt", "data_dir": str(tmp_path / "gateway"),
                    "catalogue": str(tmp_path / "plant" / "catalogue.json")},
        "sources": [source],
        "sinks": {"mqtt": {"enabled": False}},
        "api": {"port": api_port, "auth": {"anonymous_read": False}},
        "commands": {"execute_timeout_s": 5},
    })
    stop = asyncio.Event()
    async with plant.serving():
        scanning = asyncio.create_task(plant.plcs[0].plc.run(stop))
        gateway = build_gateway(config)
        states: dict[int, list[str]] = {}

        def record(command: CommandRecord) -> None:
            states.setdefault(command.id, []).append(command.state)

        gateway.edge.commands.subscribe(record)
        runner = asyncio.create_task(run_gateway(gateway, stop, announce=False))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as http:
                for _ in range(100):
                    if gateway.state.latest.asset("conveyor-01"):
                        break
                    await asyncio.sleep(0.1)
                admin = await _token(http, "admin", ADMIN_PASSWORD)
                created = await http.post("/api/v1/users", json=OPERATOR,
                                          headers={"Authorization": f"Bearer {admin}"})
                assert created.status_code == 201, created.text
                operator = await _token(http, OPERATOR["username"], OPERATOR["password"])
                yield Running(gateway, http, plant, states, {"Authorization": f"Bearer {operator}"})
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)
            await scanning


async def _token(http: httpx.AsyncClient, username: str, password: str) -> str:
    response = await http.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def _final(running: Running, command_id: int) -> dict[str, Any]:
    for _ in range(100):
        body: dict[str, Any] = (await running.http.get(f"/api/v1/commands/{command_id}",
                                                       headers=running.headers)).json()
        if body["state"] not in ("PENDING", "IN_PROGRESS"):
            return body
        await asyncio.sleep(0.1)
    pytest.fail(f"command {command_id} did not finish")


async def test_write_completes_after_read_back(running: Running) -> None:
    before = running.setpoint()
    target = 1.1 if not math.isclose(before, 1.1, rel_tol=1e-6) else 0.7
    response = await running.http.post("/api/v1/commands", headers=running.headers, json={
        "asset": "conveyor-01", "command": "write", "tag": "speed_setpoint", "value": target})
    assert response.status_code == 201, response.text
    final = await _final(running, response.json()["id"])
    assert final["state"] == "COMPLETED", final
    assert running.states[final["id"]] == ["PENDING", "IN_PROGRESS", "COMPLETED"]
    # The PLC holds it, and the gateway's latest value (the read-back) shows it.
    assert math.isclose(running.setpoint(), target, rel_tol=1e-6)
    latest = running.gateway.state.latest.asset("conveyor-01")
    assert latest is not None
    assert math.isclose(float(latest["speed_setpoint"].value or 0), target, rel_tol=1e-6)
    audit_entries = running.gateway.edge.audit
    entries = await audit_entries.entries(limit=10, action_prefix="command.")
    assert {e.result for e in entries} >= {"accepted", "completed"}


async def test_out_of_range_is_refused_and_changes_nothing(running: Running) -> None:
    before = running.setpoint()
    response = await running.http.post("/api/v1/commands", headers=running.headers, json={
        "asset": "conveyor-01", "command": "write", "tag": "speed_setpoint", "value": 7.5})
    assert response.status_code == 422
    assert "EURange" in response.json()["detail"]
    listed = (await running.http.get("/api/v1/commands", headers=running.headers)).json()
    assert listed == []
    await asyncio.sleep(0.3)  # a few scans: nothing was written
    assert running.setpoint() == before
    wrong_type = await running.http.post("/api/v1/commands", headers=running.headers, json={
        "asset": "conveyor-01", "command": "write", "tag": "speed_setpoint", "value": "fast"})
    assert wrong_type.status_code == 422
    unknown = await running.http.post("/api/v1/commands", headers=running.headers, json={
        "asset": "conveyor-99", "command": "stop"})
    assert unknown.status_code == 422
    assert (await running.http.post("/api/v1/commands", json={
        "asset": "conveyor-01", "command": "stop"})).status_code == 401


async def test_method_call_stop(running: Running) -> None:
    response = await running.http.post("/api/v1/commands", headers=running.headers, json={
        "asset": "conveyor-01", "command": "stop"})
    assert response.status_code == 201, response.text
    final = await _final(running, response.json()["id"])
    assert final["state"] == "COMPLETED", final
    assert running.states[final["id"]] == ["PENDING", "IN_PROGRESS", "COMPLETED"]
    image = running.plant.plcs[0].plc.image
    assert image is not None
    assert image.lookup("conveyor-01", "running")[0] == 0.0
    # The drive's state reaches the gateway through the normal pipeline (a later notification when
    # the OPC UA source subscribes rather than polls).
    for _ in range(50):
        latest = running.gateway.state.latest.asset("conveyor-01") or {}
        if "running" in latest and latest["running"].value in (False, 0):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("running = False never reached the gateway")
