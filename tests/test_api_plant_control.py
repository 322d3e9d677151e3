"""The plant's control API (devices/control_api.py) through httpx's ASGI transport, plant scanned by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from devices.control_api import create_control_app
from devices.plant import Plant
from devices.process_image import BAD_SENSOR_FAILURE, GOOD
from tests.fixtures.plant import small_plant_config


@pytest.fixture
async def plant(tmp_path: Path) -> Plant:
    built = Plant(small_plant_config(tmp_path), announce=lambda _line: None)
    for _ in range(5):
        built.plcs[0].plc.scan()
    return built


@pytest.fixture
async def client(plant: Plant) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(create_control_app(plant)),
                                 base_url="http://plant") as http:
        yield http


async def test_clock(client: httpx.AsyncClient, plant: Plant) -> None:
    assert (await client.get("/plant/clock")).json()["speed"] == 1.0
    changed = await client.put("/plant/clock", json={"speed": 60})
    assert changed.status_code == 200
    assert changed.json()["speed"] == 60.0
    assert plant.clock.speed == 60.0
    for bad in ({"speed": 0}, {"speed": -1}, {"speed": "fast"}, {"speed": 1e9}, {}):
        assert (await client.put("/plant/clock", json=bad)).status_code == 422
    assert plant.clock.speed == 60.0


async def test_plcs_and_read_tag(client: httpx.AsyncClient, plant: Plant) -> None:
    plcs = (await client.get("/plant/plcs")).json()
    assert plcs[0]["id"] == "plc-1"
    assert plcs[0]["assets"] == ["conveyor-01", "conveyor-02"]
    tag = (await client.get("/plant/tags/conveyor-01/belt_speed")).json()
    image = plant.plcs[0].plc.image
    assert image is not None
    assert tag["value"] == image.lookup("conveyor-01", "belt_speed")[0]
    assert tag["status_code"] == GOOD
    assert (await client.get("/plant/tags/nope/belt_speed")).status_code == 404
    assert (await client.get("/plant/tags/conveyor-01/nope")).status_code == 404


async def test_force_setpoint_and_measurement(client: httpx.AsyncClient, plant: Plant) -> None:
    plc = plant.plcs[0].plc
    forced = await client.put("/plant/tags/conveyor-01/speed_setpoint", json={"value": 0.8})
    assert forced.status_code == 202
    assert forced.json()["forced"] == "setpoint"
    plc.scan()  # applied at the next scan, as any client write
    assert plc.image is not None
    assert plc.image.lookup("conveyor-01", "speed_setpoint")[0] == pytest.approx(0.8)
    refused = await client.put("/plant/tags/conveyor-01/speed_setpoint", json={"value": 9.0})
    assert refused.status_code == 422
    plc.scan()
    assert plc.image.lookup("conveyor-01", "speed_setpoint")[0] == pytest.approx(0.8)
    measured = await client.put("/plant/tags/conveyor-01/bearing_temp", json={"value": 95.0})
    assert measured.status_code == 202
    assert measured.json()["forced"] == "measurement"
    plc.scan()
    assert plc.image.lookup("conveyor-01", "bearing_temp") == (95.0, BAD_SENSOR_FAILURE)
    assert (await client.delete("/plant/tags/conveyor-01/bearing_temp/force")).status_code == 200
    plc.scan()
    assert plc.image.lookup("conveyor-01", "bearing_temp")[1] == GOOD


async def test_schedule_list_and_clear_faults(client: httpx.AsyncClient, plant: Plant) -> None:
    plc = plant.plcs[0].plc
    scheduled = await client.post("/plant/scenarios", json={"kind": "motor_failure", "asset": "conveyor-01",
                                                             "after": "1s"})
    assert scheduled.status_code == 201, scheduled.text
    assert scheduled.json()["event"]["at_s"] == pytest.approx(plc.scan_count * plc.scan_period_s + 1)
    drift = await client.post("/plant/scenarios", json={"kind": "sensor_drift", "asset": "conveyor-02",
                                                         "tag": "bearing_temp", "at": 0, "rate": 3600})
    assert drift.status_code == 201
    listed = (await client.get("/plant/scenarios")).json()[0]
    assert [e["kind"] for e in listed["scheduled"]] == ["sensor_drift", "motor_failure"]
    for _ in range(12):
        plc.scan()
    listed = (await client.get("/plant/scenarios")).json()[0]
    assert {e["kind"] for e in listed["active"]} == {"sensor_drift", "motor_failure"}
    assert plc.image is not None
    assert plc.image.lookup("conveyor-02", "bearing_temp")[1] == BAD_SENSOR_FAILURE
    cleared = (await client.delete("/plant/scenarios")).json()
    assert cleared == {"dropped": 0, "ended": 2}
    plc.scan()
    assert plc.image.lookup("conveyor-02", "bearing_temp")[1] == GOOD
    assert (await client.get("/plant/scenarios")).json()[0]["active"] == []


async def test_bad_fault_requests_change_nothing(client: httpx.AsyncClient) -> None:
    bad = [
        ({"kind": "meteor", "asset": "conveyor-01"}, 422),
        ({"kind": "motor_failure", "asset": "nope"}, 404),
        ({"kind": "sensor_drift", "asset": "conveyor-01"}, 422),  # needs a tag
        ({"kind": "tool_wear", "asset": "conveyor-01"}, 422),  # a conveyor has no tool
        ({"kind": "motor_failure", "asset": "conveyor-01", "at": "soon"}, 422),
        ({"kind": "motor_failure", "asset": "conveyor-01", "at": 5, "after": 5}, 422),
        ({"kind": "plc_offline"}, 422),
    ]
    for body, status in bad:
        response = await client.post("/plant/scenarios", json=body)
        assert response.status_code == status, (body, response.text)
    listed = (await client.get("/plant/scenarios")).json()[0]
    assert listed["scheduled"] == []
    assert listed["active"] == []
    assert (await client.delete("/plant/scenarios?plc=nope")).status_code == 404
