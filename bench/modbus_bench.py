"""Modbus exposer benchmark: scan encoding cost at scale, and request throughput/latency.

    .venv/bin/python bench/modbus_bench.py [--tags 100000] [--seconds 5] [--connections 50]

1. encode: RegisterImage.update for a PLC holding ~``--tags`` conveyor tags (spread over as many
   units as needed), ms per scan; 10 Hz needs < 100 ms, and the PLC's own step shares the budget.
2. serve: a server process (real parallelism, as `twinedge up` runs the plant) with dense assets
   whose blocks are fully mapped, so 125-register FC04 reads are valid; the client sends raw MBAP
   frames, one request in flight per connection: req/s, registers/s, p50/p99 latency, on 1
   connection and on ``--connections`` concurrent ones.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import statistics
import struct
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devices.assets.base import Array, AssetModel, State
from devices.assets.conveyor import Conveyor
from devices.assets.registry import ASSET_TYPES
from devices.clock import VirtualClock
from devices.config import PlantSettings, PlcConfig
from devices.modbus import ModbusExposer
from devices.modbus.image import RegisterImage
from devices.modbus.register_map import build_register_map
from devices.plc import AssetGroup, Plc
from devices.tags import DataType, TagKind, TagSpec


class Dense(AssetModel):
    """48 float32 measurements + 4 status registers = a fully mapped 100-register block."""

    type_name: ClassVar[str] = "bench-dense"
    tags: ClassVar[tuple[TagSpec, ...]] = tuple(
        TagSpec(f"m{i:02d}", DataType.FLOAT32, TagKind.MEASUREMENT, "bench") for i in range(48)
    )

    def initial_state(self, count: int, rng: np.random.Generator) -> State:
        return {spec.key: rng.random(count) for spec in self.tags}

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        return state

    def outputs(self, state: State) -> Mapping[str, Array]:
        return state


def bench_encode(tags: int, scans: int) -> None:
    count = max(1, tags // len(Conveyor.tags))
    ids = tuple(f"c{i:06d}" for i in range(count))
    plc = Plc("bench", [AssetGroup(Conveyor(), ids)], VirtualClock())
    image = RegisterImage(build_register_map("bench", [(i, Conveyor) for i in ids]))
    scan_times, encode_times = [], []
    for _ in range(scans):
        started = time.perf_counter()
        process_image = plc.scan()
        scanned = time.perf_counter()
        image.update(process_image)
        scan_times.append(scanned - started)
        encode_times.append(time.perf_counter() - scanned)
    units = len(image.map.unit_ids)
    print(
        f"encode: {count} conveyors = {count * len(Conveyor.tags)} tags on {units} unit(s): "
        f"update p50 {statistics.median(encode_times) * 1e3:.1f} ms, max {max(encode_times) * 1e3:.1f} ms; "
        f"(plc.scan itself p50 {statistics.median(scan_times) * 1e3:.1f} ms)"
    )


def _serve(port_out: multiprocessing.connection.Connection, assets: int) -> None:
    async def main() -> None:
        ASSET_TYPES[Dense.type_name] = Dense
        config = PlcConfig.model_validate(
            {
                "id": "bench",
                "opcua": {"port": 1},
                "modbus": {"port": 2},
                "assets": [{"type": Dense.type_name, "id": "d", "count": assets}],
            }
        )
        ids = tuple(config.assets[0].instance_ids(1))
        plc = Plc("bench", [AssetGroup(Dense(), ids)], VirtualClock())
        exposer = ModbusExposer(plc, "s", "a", config, PlantSettings(), port=0, max_connections=1024)
        async with exposer:
            plc.scan()
            port_out.send(exposer.address[1])
            await asyncio.Event().wait()

    asyncio.run(main())


async def _client(port: int, deadline: float, latencies: list[float], start: int, span: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    tid = 0
    try:
        while time.perf_counter() < deadline:
            tid = (tid + 1) & 0xFFFF
            address = 100 + (tid * 125) % span
            started = time.perf_counter()
            writer.write(struct.pack(">HHHBBHH", tid, 0, 6, 1, 4, address, 125))
            header = await reader.readexactly(7)
            body = await reader.readexactly(struct.unpack(">H", header[4:6])[0] - 1)
            latencies.append(time.perf_counter() - started)
            if body[0] != 4:
                raise RuntimeError(f"exception {body.hex()} at {address}")
    finally:
        writer.close()


async def bench_serve(port: int, connections: int, seconds: float, span: int) -> None:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(_client(port, deadline, latencies, i, span) for i in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1e3
    p99 = latencies[int(len(latencies) * 0.99)] * 1e3
    rate = len(latencies) / elapsed
    print(
        f"serve: {connections:3d} connection(s): {rate:8.0f} req/s, {rate * 125:10.0f} registers/s, "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    bench_encode(args.tags, args.scans)

    assets = 600  # 600 fully mapped blocks: addresses 100..60099 on one unit
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(child, assets), daemon=True)
    server.start()
    try:
        if not parent.poll(30):
            raise SystemExit("server did not start")
        port = parent.recv()
        span = assets * 100 - 125
        asyncio.run(bench_serve(port, 1, args.seconds, span))
        asyncio.run(bench_serve(port, args.connections, args.seconds, span))
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
