"""Modbus fault injection per PLC, from the control API and from config (issue 5).

A plant is served in-process and scanned by the test; faults go in through the real control API app
(httpx's ASGI transport) or ``modbus.faults`` in the plant config, and a pymodbus client observes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from devices.config import PlantConfig
from devices.control_api import create_control_app
from devices.plant import Plant
from tests.fixtures.plant import small_plant_config

DEADLINE_S = 10.0
FAULTS = "/plant/plcs/plc-1/modbus/faults"


def _config(tmp_path: Path, faults: list[dict[str, Any]] | None = None, scan_period_ms: int = 100) -> PlantConfig:
    data = small_plant_config(tmp_path).model_dump(mode="json")
    plc = data["sites"][0]["areas"][0]["plcs"][0]
    plc["scan_period_ms"] = scan_period_ms
    plc["opcua"]["enabled"] = False  # only the Modbus face is under test: a faster start
    plc["modbus"]["faults"] = faults or []
    return PlantConfig.model_validate(data)


@dataclass
class Rig:
    plant: Plant
    http: httpx.AsyncClient
    modbus: AsyncModbusTcpClient

    def scan(self, times: int = 1) -> None:
        for _ in range(times):
            self.plant.plcs[0].plc.scan()

    async def heartbeat(self) -> Any:
        """Read input register 0 (the scan counter); the pymodbus response, or raises."""
        if not self.modbus.connected:
            await self.modbus.connect()
        return await self.modbus.read_input_registers(0, count=1, device_id=1)

    async def ok(self) -> bool:
        try:
            return not (await self.heartbeat()).isError()
        except ModbusException:
            return False


@contextlib.asynccontextmanager
async def _serve(config: PlantConfig) -> AsyncIterator[Rig]:
    plant = Plant(config, announce=lambda _line: None)
    async with plant.serving():
        plant.plcs[0].plc.scan()
        host, port = plant.modbus["plc-1"].address
        modbus = AsyncModbusTcpClient(host, port=port, timeout=1, retries=0)
        assert await modbus.connect()
        transport = httpx.ASGITransport(create_control_app(plant))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://plant") as http:
                yield Rig(plant, http, modbus)
        finally:
            modbus.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with _serve(_config(tmp_path)) as served:
        yield served


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_no_fault_at_start(rig: Rig) -> None:
    body = (await rig.http.get(FAULTS)).json()
    assert body == {"plc": "plc-1", "active": None, "scheduled": [], "fired": []}
    assert await rig.ok()


@pytest.mark.parametrize("code", [4, 6])
async def test_exception_until_deleted(rig: Rig, code: int) -> None:
    injected = await rig.http.post(FAULTS, json={"exception_code": code})
    assert injected.status_code == 201, injected.text
    active = injected.json()["active"]
    assert active["exception_code"] == code
    assert active["source"] == "api"
    assert active["remaining_s"] is None
    response = await rig.heartbeat()
    assert response.isError()
    assert response.exception_code == code
    assert (await rig.http.get(FAULTS)).json()["active"]["exception_code"] == code

    cleared = await rig.http.delete(FAULTS)
    assert cleared.json() == {"plc": "plc-1", "cleared": True, "dropped": 0}
    assert await rig.ok()
    assert (await rig.http.get(FAULTS)).json()["active"] is None


async def test_timed_fault_expires(rig: Rig) -> None:
    injected = await rig.http.post(FAULTS, json={"exception_code": 4, "duration_s": 0.3})
    assert 0 < injected.json()["active"]["remaining_s"] <= 0.3
    assert (await rig.heartbeat()).exception_code == 4
    await _until(rig.ok, "the timed fault to expire")
    assert (await rig.http.get(FAULTS)).json()["active"] is None


async def test_delay(rig: Rig) -> None:
    assert (await rig.http.post(FAULTS, json={"delay_ms": 300})).status_code == 201
    started = time.monotonic()
    assert not (await rig.heartbeat()).isError()
    assert time.monotonic() - started >= 0.3
    await rig.http.delete(FAULTS)
    started = time.monotonic()
    assert not (await rig.heartbeat()).isError()
    assert time.monotonic() - started < 0.3


async def test_no_response(rig: Rig) -> None:
    assert (await rig.http.post(FAULTS, json={"no_response": True})).status_code == 201
    with pytest.raises(ModbusException):
        await rig.heartbeat()  # the client's 1 s timeout fires
    await rig.http.delete(FAULTS)
    await _until(rig.ok, "answers after the fault is cleared")


async def test_drop_connections(rig: Rig) -> None:
    assert await rig.ok()
    server = rig.plant.modbus["plc-1"].server
    assert server.connection_count == 1
    assert (await rig.http.post(FAULTS, json={"drop_connections": True})).status_code == 201

    async def dropped() -> bool:
        return server.connection_count == 0

    await _until(dropped, "the open connection to be reset")
    refused = server.refused_connections
    assert not await rig.ok()  # reconnecting gets accepted and reset at once
    assert server.refused_connections > refused
    await rig.http.delete(FAULTS)
    await _until(rig.ok, "a reconnect after the fault is cleared")


@pytest.mark.parametrize("body", [
    {},  # does nothing
    {"delay_ms": 0},
    {"exception_code": 3},
    {"exception_code": 2},
    {"delay_ms": -1},
    {"delay_ms": 1e9},
    {"delay_ms": "slow"},
    {"no_response": True, "duration_s": 0},
    {"no_response": True, "duration_s": -5},
    {"no_response": True, "colour": "red"},
])
async def test_bad_values_are_422(rig: Rig, body: dict[str, Any]) -> None:
    response = await rig.http.post(FAULTS, json=body)
    assert response.status_code == 422, body
    assert (await rig.http.get(FAULTS)).json()["active"] is None
    assert await rig.ok()


async def test_unknown_plc_and_not_serving(rig: Rig, tmp_path: Path) -> None:
    assert (await rig.http.get("/plant/plcs/nope/modbus/faults")).status_code == 404
    assert (await rig.http.post("/plant/plcs/nope/modbus/faults", json={"no_response": True})).status_code == 404
    idle = Plant(_config(tmp_path / "idle"), announce=lambda _line: None)  # built, not serving
    async with httpx.AsyncClient(transport=httpx.ASGITransport(create_control_app(idle)),
                                 base_url="http://plant") as http:
        assert (await http.get(FAULTS)).status_code == 409
        assert (await http.delete(FAULTS)).status_code == 409


async def test_config_fault_fires_at_its_plant_time(tmp_path: Path) -> None:
    # 10 s scans: 2min is the end of scan 12; the fault lasts 30 s of plant time, to the end of scan 15.
    config = _config(tmp_path, [{"at": "2min", "exception_code": 6, "duration": 30},
                                {"at": 1800, "delay_ms": 250}], scan_period_ms=10_000)
    async with _serve(config) as rig:  # the fixture scanned once
        listed = (await rig.http.get(FAULTS)).json()
        assert [f["at_s"] for f in listed["scheduled"]] == [120.0, 1800.0]
        assert listed["scheduled"][0] == {"at_s": 120.0, "delay_ms": 0.0, "no_response": False,
                                          "exception_code": 6, "drop_connections": False, "duration_s": 30.0}
        rig.scan(10)  # scan 11: plant time 110 s
        assert await rig.ok()
        rig.scan()  # scan 12: 120 s
        assert (await rig.heartbeat()).exception_code == 6
        body = (await rig.http.get(FAULTS)).json()
        assert body["active"]["source"] == "config"
        assert body["active"]["until_plant_s"] == 150.0
        assert [f["at_s"] for f in body["scheduled"]] == [1800.0]
        assert body["fired"] == [{"plant_s": 120.0, "what": "start exception 06"}]
        rig.scan(2)  # 140 s: still on
        assert (await rig.heartbeat()).exception_code == 6
        rig.scan()  # 150 s: over
        assert await rig.ok()
        assert (await rig.http.get(FAULTS)).json()["fired"][-1] == {"plant_s": 150.0, "what": "end exception 06"}

        # DELETE also drops what is still scheduled.
        assert (await rig.http.delete(FAULTS)).json() == {"plc": "plc-1", "cleared": False, "dropped": 1}
        rig.scan(200)
        assert (await rig.http.get(FAULTS)).json()["active"] is None


async def test_api_fault_survives_the_end_of_a_config_fault(tmp_path: Path) -> None:
    config = _config(tmp_path, [{"at": 20, "no_response": True, "duration": "10s"}], scan_period_ms=10_000)
    async with _serve(config) as rig:
        rig.scan()  # 20 s: the config fault starts
        assert (await rig.http.get(FAULTS)).json()["active"]["no_response"] is True
        await rig.http.post(FAULTS, json={"exception_code": 4})  # replaces it
        rig.scan()  # 30 s: the config fault's end must not clear the API's
        assert (await rig.heartbeat()).exception_code == 4
        assert (await rig.http.get(FAULTS)).json()["active"]["source"] == "api"


@pytest.mark.parametrize(("fault", "key"), [
    ({"at": "soon", "delay_ms": 5}, "faults.0.at"),
    ({"at": 10}, "faults.0"),
    ({"at": 10, "exception_code": 2}, "faults.0.exception_code"),
    ({"at": 10, "delay_ms": -5}, "faults.0.delay_ms"),
    ({"at": 10, "no_response": True, "duration": "0s"}, "faults.0"),
    ({"at": 10, "no_response": True, "speed": 1}, "faults.0.speed"),
])
def test_bad_config_faults_are_rejected(tmp_path: Path, fault: dict[str, Any], key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _config(tmp_path, [fault])
    locations = [".".join(str(part) for part in error["loc"]) for error in caught.value.errors()]
    assert any(location.endswith(f"modbus.{key}") for location in locations), locations
