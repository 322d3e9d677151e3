"""OPC UA exposer benchmark: time from ``start()`` to serving N variables, and the cost of a scan.

    .venv/bin/python -m bench.opcua_bench --variables 10000

Goal from the issue: 10,000 variables serving within 5 s of start (plain asyncua took 60 s with one
parent, 2 s of node creation with parents of 100). Includes importing nodesets/ and, with
``--history-window 60``, history for every analog variable. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import time
from pathlib import Path

from asyncua.client.client import Client

from devices.assets.conveyor import Conveyor
from devices.clock import VirtualClock
from devices.config import AreaConfig, PlantSettings, PlcConfig, SiteConfig
from devices.opcua import INSTANCE_NAMESPACE_URI, OpcUaExposer, OpcUaServerConfig
from devices.opcua.config import SecurityPolicy
from devices.plc import AssetGroup, Plc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(variables: int, scans: int, history_window_s: float = 0.0) -> dict[str, float | int]:
    count = max(1, variables // len(Conveyor.tags))
    ids = tuple(f"conveyor-{n:05d}" for n in range(1, count + 1))
    plc = Plc("plc-bench", [AssetGroup(Conveyor(), ids)], VirtualClock())
    opcua = OpcUaServerConfig(port=free_port(), security_policies=(SecurityPolicy.NONE,),
                              history_window_s=history_window_s)
    plc_config = PlcConfig.model_validate({
        "id": "plc-bench",
        "opcua": {"port": opcua.port},
        "modbus": {"port": free_port()},
        "assets": [{"type": "conveyor", "id": "conveyor"}],
    }).model_copy(update={"opcua": opcua})  # until PlcConfig.opcua is typed OpcUaServerConfig
    area = AreaConfig(id="area", plcs=[plc_config])
    site = SiteConfig(id="site", areas=[area])
    with tempfile.TemporaryDirectory() as data_dir:
        settings = PlantSettings(data_dir=Path(data_dir))
        began = time.perf_counter()
        async with OpcUaExposer(plc, site, area, plc_config, settings) as exposer:
            plc.scan()
            async with Client(exposer.endpoint_url) as client:
                ns = await client.get_namespace_index(INSTANCE_NAMESPACE_URI)
                node = await client.nodes.objects.get_child(
                    [f"{ns}:site", f"{ns}:area", f"{ns}:plc-bench", f"{ns}:{ids[-1]}", f"{ns}:belt_speed"]
                )
                await node.read_value()
                serving_s = time.perf_counter() - began
            scan_began = time.perf_counter()
            for _ in range(scans):
                plc.scan()
            scan_s = (time.perf_counter() - scan_began) / scans
            return {
                "variables": count * len(Conveyor.tags),
                "nodes": exposer.nodes.node_count,
                "start_s": round(exposer.startup_s or 0.0, 3),
                "serving_s": round(serving_s, 3),
                "scan_ms": round(scan_s * 1000, 2),
                "writes_per_scan": exposer.publisher.writes // exposer.publisher.scans,
                "alarm_events": exposer.alarms.sent,
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variables", type=int, default=10_000)
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--history-window", type=float, default=0.0, help="history_window_s (0: off)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.variables, args.scans, args.history_window))))


if __name__ == "__main__":
    main()
