"""Interoperability with an independent OPC UA stack: node-opcua's client (tests/interop/) browses to a
conveyor, reads belt_speed with its EngineeringUnits and EURange, and writes a setpoint.

node-opcua-client is pinned to an exact version in tests/interop/package.json and installed once per
test session into tests/interop/node_modules (``npm ci`` with the lock file, else ``npm install``);
an existing install is reused. Without node/npm, or if the install fails, the test fails with the
reason: interoperability is a requirement of the issue, not an optional extra.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devices.opcua import INSTANCE_NAMESPACE_URI
from devices.units import UNECE_NAMESPACE_URI, unece_unit_id
from tests.test_opcua_server import AREA, DEADLINE_S, PLC_ID, SITE, Rig, open_rig

INTEROP = Path(__file__).resolve().parent / "interop"
CLIENT = INTEROP / "opcua_client.mjs"
INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The node-opcua client script, with its dependencies installed (once per session)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the OPC UA interop test (node >= 18); install Node.js")
    if not (INTEROP / "node_modules" / "node-opcua-client" / "package.json").is_file():
        command = "ci" if (INTEROP / "package-lock.json").is_file() else "install"
        try:
            done = subprocess.run(
                [npm, command, "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=INTEROP,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm {command} in {INTEROP} took more than {INSTALL_TIMEOUT_S} s")
        if done.returncode != 0:
            pytest.fail(f"npm {command} in {INTEROP} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return CLIENT


@pytest.fixture
async def conveyor_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with open_rig(tmp_path) as rig:
        rig.plc.scan()
        yield rig


async def run_client(script: Path, rig: Rig, *args: str) -> dict[str, Any]:
    # A subprocess the event loop awaits: the server under test runs on this same loop.
    process = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        rig.exposer.endpoint_url,
        INSTANCE_NAMESPACE_URI,
        *args,
        cwd=INTEROP,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"the node-opcua client did not finish within {RUN_TIMEOUT_S} s")
    lines = stdout.decode().strip().splitlines()
    assert lines, f"no output from the node-opcua client; stderr:\n{stderr.decode()[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in result, f"{result['error']}\nstderr:\n{stderr.decode()[-2000:]}"
    return result


async def test_node_opcua_client_browses_reads_units_and_writes(node_client: Path, conveyor_rig: Rig) -> None:
    rig = conveyor_rig
    assert rig.plc.image is not None
    expected_speed = rig.plc.image.lookup("conveyor-01", "belt_speed")[0]
    result = await run_client(
        node_client, rig, f"{SITE}/{AREA}/{PLC_ID}/conveyor-01", "belt_speed", "speed_setpoint", "2.5"
    )
    assert result["namespace_index"] == rig.ns
    assert result["type_definition"] == "ConveyorType"
    assert result["status"] == "Good"
    assert result["data_type"] == "Float"
    assert result["value"] == pytest.approx(expected_speed, rel=1e-6)
    assert result["engineering_units"] == {
        "namespace_uri": UNECE_NAMESPACE_URI,
        "unit_id": unece_unit_id("MTS"),
        "display_name": "m/s",
        "description": "metre per second",
    }
    assert result["eu_range"] == [0.0, 3.0]
    assert result["write_good"] == "Good"
    assert result["write_double"] == "BadTypeMismatch"
    assert result["write_out_of_range"] == "BadOutOfRange"

    image = rig.plc.scan()  # the accepted write reaches the model at the next scan
    assert image.lookup("conveyor-01", "speed_setpoint")[0] == 2.5
    node = await rig.tag("conveyor-01", "speed_setpoint")
    assert await asyncio.wait_for(node.read_value(), DEADLINE_S) == 2.5
