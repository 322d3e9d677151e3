"""DCMD end to end through the runtime's wiring: a Sparkplug host writes a setpoint of a simulated PLC by
alias; the command queue validates, audits and executes it, the read-back completes it, and the new value
comes back to the host in the node's DATA. An out-of-range DCMD is refused and audited, and changes nothing.
The runtime hands the sink the asset ids of hand-listed sources too."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devices.config import PlantConfig
from devices.plant import Plant
from gateway.commands.store import CommandRecord
from gateway.config import GatewayConfig
from gateway.encoders.sparkplug_b import DataType, Metric, Payload, encode_payload
from gateway.runtime import Gateway, build_gateway, run_gateway
from tests.fixtures.plant import PLANT_START
from tests.fixtures.servers import MosquittoServer, free_port
from tests.test_mqtt_sink import wait_for
from tests.test_sparkplug_sink import Recorder, by_name, start_recorder

GROUP, NODE, DEVICE, TAG = "Plant", "gw-dcmd", "conveyor-01", "speed_setpoint"


@dataclass
class Running:
    gateway: Gateway
    plant: Plant
    rec: Recorder
    commands: dict[int, CommandRecord]

    def setpoint(self) -> float:
        image = self.plant.plcs[0].plc.image
        assert image is not None
        return image.lookup(DEVICE, TAG)[0]

    def births(self) -> list[Payload]:
        return self.rec.of("DBIRTH", DEVICE)

    def published(self, value: float) -> bool:
        """Whether the node published ``value`` for the setpoint (in a DBIRTH, or in DDATA by alias)."""
        alias = by_name(self.births()[0])[TAG].alias
        return any(m.value is not None and math.isclose(float(m.value), value, rel_tol=1e-6)
                   and (m.name == TAG or m.alias == alias)
                   for p in self.births() + self.rec.of("DDATA", DEVICE) for m in p.metrics)


@pytest.fixture
async def running(tmp_path: Path, mosquitto_server: MosquittoServer,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    monkeypatch.setenv("TWINEDGE_ADMIN_PASSWORD", "dcmd-admin-pass-1")
    plant = Plant(PlantConfig.model_validate({
        "plant": {"name": "dcmd", "seed": 3, "data_dir": str(tmp_path / "plant"), "api_port": None,
                  "start_time": PLANT_START.isoformat()},
        "sites": [{"id": "factory", "areas": [{"id": "line-1", "plcs": [{
            "id": "plc-1", "scan_period_ms": 100, "opcua": {"port": free_port()}, "modbus": {"port": free_port()},
            "assets": [{"type": "conveyor", "id": DEVICE}],
        }]}]}],
    }), announce=lambda _line: None)
    config = GatewayConfig.model_validate({
        "gateway": {"id": NODE, "data_dir": str(tmp_path / "gateway"),
                    "catalogue": str(tmp_path / "plant" / "catalogue.json")},
        "sources": [{"name": "plc-1", "protocol": "modbus", "plc": "plc-1", "interval_ms": 200}],
        "sinks": {"mqtt": {"enabled": False},
                  "sparkplug": {"enabled": True, "url": mosquitto_server.url, "group_id": GROUP,
                                "accept_dcmd": True}},
        "api": {"enabled": False},
        "commands": {"execute_timeout_s": 5},
    })
    rec = await start_recorder(mosquitto_server)
    stop = asyncio.Event()
    async with plant.serving():
        scanning = asyncio.create_task(plant.plcs[0].plc.run(stop))
        gateway = build_gateway(config)
        commands: dict[int, CommandRecord] = {}
        gateway.edge.commands.subscribe(lambda record: commands.__setitem__(record.id, record))
        runner = asyncio.create_task(run_gateway(gateway, stop, announce=False))
        try:
            state = Running(gateway, plant, rec, commands)
            await wait_for(lambda: bool(state.births()), 15, f"the DBIRTH of {DEVICE}")
            yield state
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)
            await scanning
            rec.close()


async def dcmd(running: Running, value: float) -> None:
    alias = by_name(running.births()[0])[TAG].alias
    payload = encode_payload(int(time.time() * 1000), [Metric(None, value, DataType.DOUBLE, alias=alias)])
    await asyncio.to_thread(running.rec.publish, f"spBv1.0/{GROUP}/DCMD/{NODE}/{DEVICE}", payload)


async def test_dcmd_write_completes_and_comes_back_as_data(running: Running) -> None:
    target = 1.1 if not math.isclose(running.setpoint(), 1.1, rel_tol=1e-6) else 0.7
    await dcmd(running, target)
    await wait_for(lambda: any(c.terminal for c in running.commands.values()), 15, "the command to finish")
    (command,) = running.commands.values()
    assert (command.state, command.asset, command.tag, command.value) == ("COMPLETED", DEVICE, TAG, target)
    assert (command.created_by, command.channel) == ("sparkplug:mqtt", "mqtt")
    assert math.isclose(running.setpoint(), target, rel_tol=1e-6)
    await wait_for(lambda: running.published(target), 10, "the new setpoint in the node's DATA")
    entries = await running.gateway.edge.audit.entries(limit=10, action_prefix="command.")
    # Accepted on the host's behalf; completed by the gateway, which ran it.
    assert {(e.actor, e.result) for e in entries} >= {("sparkplug:mqtt", "accepted"), ("gateway", "completed")}


async def test_dcmd_out_of_range_is_refused_and_audited(running: Running) -> None:
    before = running.setpoint()
    await dcmd(running, 7.5)

    async def rejected() -> bool:
        entries = await running.gateway.edge.audit.entries(limit=10, action_prefix="command.")
        return any(e.result == "rejected" and e.actor == "sparkplug:mqtt" for e in entries)

    deadline = time.monotonic() + 10
    while not await rejected():
        assert time.monotonic() < deadline, "no rejection audited within 10 s"
        await asyncio.sleep(0.05)
    assert running.commands == {}
    assert running.setpoint() == before


def test_runtime_wires_the_assets_of_hand_listed_sources(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Assets with no catalogue (tags listed in the source) reach the DCMD map at build: two whose device ids
    collide are reported then, before any reading exists. Nothing is started."""
    tags = [{"asset": asset, "key": "speed", "table": "holding_register", "address": n, "datatype": "uint16",
             "access": "rw"} for n, asset in enumerate(["pump/1", "pump#1", "pump-2"])]
    config = GatewayConfig.model_validate({
        "gateway": {"id": NODE, "data_dir": str(tmp_path)},
        "sources": [{"name": "hand", "protocol": "modbus", "host": "127.0.0.1", "port": free_port(), "tags": tags}],
        "sinks": {"mqtt": {"enabled": False},
                  "sparkplug": {"enabled": True, "url": "mqtt://127.0.0.1:1883", "accept_dcmd": True}},
        "api": {"enabled": False},
    })
    with caplog.at_level(logging.WARNING, logger="gateway.sinks.sparkplug_commands"):
        build_gateway(config)
    assert [r.getMessage() for r in caplog.records] == [
        "sparkplug: assets pump#1, pump/1 share device id pump_1 (their data merge there); DCMDs for it will be "
        "ignored",
    ]
