"""`twinedge status` against a gateway run in-process, and the source-dropped metric (issue 6).

The gateway polls a plant served in-process over Modbus and has an MQTT sink whose broker is not
there, so the status shows a connected source with counts and a disconnected sink filling its outbox.
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from devices.config import PlantConfig
from devices.plant import Plant
from gateway.config import GatewayConfig
from gateway.latest import LatestValues
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.poller import Poller
from gateway.readings import Reading
from gateway.runtime import Gateway, build_gateway, run_gateway
from gateway.status import parse_metrics, run_status
from tests.fixtures.plant import small_plant_config
from tests.fixtures.servers import free_port

DEADLINE_S = 30.0
CLI = "import sys; from gateway.cli import main; sys.exit(main())"


@dataclass
class Running:
    gateway: Gateway
    url: str


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    plant_data = small_plant_config(tmp_path / "plant").model_dump(mode="json")
    plant_data["plant"]["api_port"] = None
    plant_data["sites"][0]["areas"][0]["plcs"][0]["opcua"]["enabled"] = False
    plant = Plant(PlantConfig.model_validate(plant_data), announce=lambda _line: None)
    api_port = free_port()
    config = GatewayConfig.model_validate({
        "gateway": {"id": "gw-status", "data_dir": str(tmp_path / "gateway"),
                    "catalogue": str(tmp_path / "plant" / "catalogue.json")},
        "sources": [{"name": "plc-1-modbus", "protocol": "modbus", "plc": "plc-1", "interval_ms": 100}],
        "sinks": {"mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"}},  # nobody listens there
        "api": {"port": api_port},
    })
    stop = asyncio.Event()
    async with plant.serving():
        scanning = asyncio.create_task(plant.plcs[0].plc.run(stop))
        gateway = build_gateway(config)
        runner = asyncio.create_task(run_gateway(gateway, stop, announce=False))
        try:
            deadline = time.monotonic() + DEADLINE_S
            while gateway.poller.stats()["plc-1-modbus"].reads < 3:
                assert not runner.done(), runner
                assert time.monotonic() < deadline, "the gateway never polled"
                await asyncio.sleep(0.1)
            yield Running(gateway, f"http://127.0.0.1:{api_port}")
        finally:
            stop.set()
            await asyncio.wait_for(runner, DEADLINE_S)
            await scanning


async def _status(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLI, "status", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), DEADLINE_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _row(output: str, first: str) -> list[str]:
    rows = [line.split() for line in output.splitlines() if line.split()[:1] == [first]]
    assert len(rows) == 1, output
    return rows[0]


async def test_status_table(running: Running) -> None:
    code, out, err = await _status("--url", running.url + "/")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"gateway gw-status at {running.url}: ok"
    assert _row(out, "source") == ["source", "protocol", "endpoint", "connected", "reads", "values", "bad",
                                   "errors", "overruns", "dropped"]
    source = _row(out, "plc-1-modbus")
    assert source[1] == "modbus"
    assert source[3] == "yes"
    reads, values, bad, errors, overruns, dropped = (int(cell) for cell in source[4:])
    assert reads >= 3
    assert values >= reads  # every poll reads every tag of both conveyors
    assert (bad, errors, dropped) == (0, 0, 0)
    assert overruns >= 0
    assert _row(out, "sink") == ["sink", "connected", "published", "errors", "dropped", "outbox", "oldest"]
    sink = _row(out, "mqtt")
    assert sink[1] == "no"  # no broker
    assert sink[2] == "0"
    assert int(sink[5]) > 0  # what it could not publish waits in the outbox
    assert sink[6].endswith("s")


async def test_status_in_process_matches_the_metrics(running: Running) -> None:
    out = io.StringIO()
    assert await asyncio.to_thread(run_status, running.url, 5.0, out) == 0
    samples, pipeline = parse_metrics(generate_latest(running.gateway.metrics.registry).decode())
    assert samples["twinedge_source_dropped_total"] == {"plc-1-modbus": 0.0}  # no `dropped`: 0
    assert pipeline["readings_in"] > 0
    assert "pipeline: " in out.getvalue()


async def test_unreachable_api_exits_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await _status("--url", url, "--timeout", "2")
    assert code == 1
    assert out == ""
    assert f"cannot read the gateway API at {url}" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


class _SubscribedSource:
    """Enough of a source for the Poller and the metrics: an OPC UA source's ``dropped`` counter."""

    name = "plc-9-opcua"
    connected = True
    dropped = 17

    async def connect(self) -> None:
        pass

    def on_data(self, callback: Callable[[], None]) -> None:
        pass

    async def read(self) -> list[Reading]:
        return []

    async def close(self) -> None:
        pass


async def _discard(_batch: list[Reading]) -> None:
    pass


def test_source_dropped_metric() -> None:
    poller = Poller(_discard)
    source: Any = _SubscribedSource()
    poller.add(source, 1.0)
    metrics = GatewayMetrics(CollectorRegistry(), poller, [], Pipeline([], LatestValues(), None))
    text = generate_latest(metrics.registry).decode()
    assert 'twinedge_source_dropped_total{source="plc-9-opcua"} 17.0' in text
    samples, _ = parse_metrics(text)
    assert samples["twinedge_source_connected"] == {"plc-9-opcua": 1.0}
