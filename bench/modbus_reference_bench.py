"""TwinEdge's Modbus TCP face against a libmodbus reference server, measured with one libmodbus C client.

    .venv/bin/python bench/modbus_reference_bench.py [--seconds 10] [--connections 50]

What runs, all on 127.0.0.1 free ports, all stopped and removed when the bench ends:

1. ``bench/libmodbus/server.c`` and ``client.c`` are compiled with gcc and the distribution's
   libmodbus (``pkg-config --cflags --libs libmodbus``) into a temporary directory.
2. TwinEdge server process: a plant config with one PLC, built by ``devices.plant.build_plcs``,
   served by ``ModbusExposer`` while ``Plc.run`` scans it on the virtual clock (speed 1, default
   100 ms period), as ``twinedge up`` runs it minus OPC UA and the control API. The PLC holds
   ``--dense`` assets of a bench type whose 100-register blocks are fully mapped (48 float32 + 4
   status registers, values changing every scan), so 125-register FC04 reads that cross blocks are
   valid; the real asset types leave gaps in their blocks, and a read over a gap is exception 02
   by design. ``--conveyors`` real conveyors ride along (on the following units) so the scan does
   real model work too.
3. Reference server process: the libmodbus server, a 60,100-register mapping, one select() loop.
4. Per server, the C client (one thread per connection, one request in flight per connection)
   reads 125 input registers (FC04) at address 100 + (n * 125) % 59875, first on one connection,
   then on ``--connections`` concurrent ones, for ``--seconds`` each.

Reported per case: req/s, registers/s, p50/p99/max latency, errors, the fewest and most requests
one connection got (starvation), CPU of the server process (share of one core, from /proc). For
TwinEdge, also the scan kept during the load: heartbeat register (input register 0, the scan count
mod 2**16) delta over the wall time vs the configured period, and from inside the server process
the scans done, the worst lateness of a scan against its deadline and ``Plc.overruns``.

Goals (issue 5): TwinEdge >= 0.5 x libmodbus req/s on one connection while the scan keeps its
period; ``--connections`` connections served without errors or starvation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modbus_bench import Dense as StaticDense

from devices.assets.base import State
from devices.assets.registry import ASSET_TYPES
from devices.clock import VirtualClock
from devices.config import PlantConfig
from devices.modbus import ModbusExposer
from devices.plant import build_plcs
from devices.process_image import ProcessImage

HOST = "127.0.0.1"
SOURCES = Path(__file__).resolve().parent / "libmodbus"
READ_START = 100  # block 1 of unit 1: the first dense asset
READ_COUNT = 125
REFERENCE_REGISTERS = 60_100
SLACK_S = 60.0  # how long any child may outlive its planned work before it stops by itself


class Dense(StaticDense):
    """modbus_bench's fully mapped 100-register block, with values changing every scan."""

    def step(self, state: State, dt: float, rng: np.random.Generator) -> State:
        return {key: values + dt for key, values in state.items()}


# --- the TwinEdge server process ---------------------------------------------------------------


@dataclass
class _ScanLog:
    """Scan timing seen from inside the PLC process since the last reset."""

    scans: int = 0
    worst_late_s: float = 0.0
    worst_gap_s: float = 0.0
    last: float | None = None

    def reset(self) -> None:
        self.scans, self.worst_late_s, self.worst_gap_s, self.last = 0, 0.0, 0.0, None


def _plant_config(dense: int, conveyors: int, period_ms: int) -> PlantConfig:
    assets: list[dict[str, object]] = [{"type": Dense.type_name, "id": "dense", "count": dense}]
    if conveyors:
        assets.append({"type": "conveyor", "id": "conveyor", "count": conveyors})
    return PlantConfig.model_validate({
        "plant": {"name": "bench", "seed": 1, "bind_host": HOST, "api_port": None},
        "sites": [{"id": "site", "areas": [{"id": "area", "plcs": [{
            "id": "plc-bench",
            "scan_period_ms": period_ms,
            "opcua": {"port": 1, "enabled": False},
            "modbus": {"port": 1},
            "assets": assets,
        }]}]}],
    })


def _serve_plant(conn: multiprocessing.connection.Connection, dense: int, conveyors: int, period_ms: int,
                 lifetime_s: float) -> None:
    """Child process: serve and scan one PLC until told to stop, the pipe closes or the lifetime ends."""
    ASSET_TYPES[Dense.type_name] = Dense
    config = _plant_config(dense, conveyors, period_ms)

    async def main() -> None:
        clock = VirtualClock(config.plant.speed, config.plant.start_time)
        placed = build_plcs(config, clock)[0]
        plc = placed.plc
        log = _ScanLog()

        def on_scan(image: ProcessImage) -> None:
            now = time.monotonic()
            log.scans += 1
            late = now - clock.real_deadline(image.scan_count * plc.scan_period_s)
            log.worst_late_s = max(log.worst_late_s, late)
            if log.last is not None:
                log.worst_gap_s = max(log.worst_gap_s, now - log.last)
            log.last = now

        plc.add_listener(on_scan)
        exposer = ModbusExposer(plc, placed.site.id, placed.area.id, placed.config, config.plant, port=0,
                                max_connections=256)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_command() -> None:
            try:
                command = conn.recv()
            except EOFError:
                stop.set()
                return
            if command == "stop":
                stop.set()
            elif command == "stats":
                conn.send({"scan_count": plc.scan_count, "overruns": plc.overruns, "scans": log.scans,
                           "worst_late_s": log.worst_late_s, "worst_gap_s": log.worst_gap_s,
                           "requests": exposer.server.requests, "period_s": plc.scan_period_s})
                log.reset()

        async with exposer:
            loop.add_reader(conn.fileno(), on_command)
            clock.begin()
            scanning = asyncio.create_task(plc.run(stop))
            conn.send(exposer.address[1])
            try:
                await asyncio.wait_for(stop.wait(), lifetime_s)
            except TimeoutError:
                stop.set()
            await scanning
            loop.remove_reader(conn.fileno())

    asyncio.run(main())


class PlantServer:
    """The TwinEdge server process and the pipe that asks it for scan statistics."""

    def __init__(self, dense: int, conveyors: int, period_ms: int, lifetime_s: float) -> None:
        self._conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(
            target=_serve_plant, args=(child, dense, conveyors, period_ms, lifetime_s), daemon=True
        )
        self.process.start()
        child.close()
        if not self._conn.poll(120):
            self.stop()
            raise SystemExit("TwinEdge server did not start within 120 s")
        self.port: int = self._conn.recv()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def stats(self) -> dict[str, Any]:
        self._conn.send("stats")
        if not self._conn.poll(30):
            raise RuntimeError("TwinEdge server did not answer a stats request")
        stats: dict[str, Any] = self._conn.recv()
        return stats

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send("stop")
            self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()


# --- the libmodbus reference server and client ---------------------------------------------------


def build_tools(directory: Path) -> tuple[Path, Path]:
    """Compile client.c and server.c against the distribution's libmodbus; returns (client, server)."""
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        raise SystemExit("needs gcc and pkg-config (apt-get install -y gcc pkg-config libmodbus-dev)")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libmodbus"], capture_output=True, text=True)
    if flags.returncode != 0:
        raise SystemExit("libmodbus not found by pkg-config: apt-get install -y libmodbus-dev")
    built = []
    for name in ("client", "server"):
        target = directory / name
        command = ["gcc", "-O2", "-Wall", "-pthread", "-o", str(target), str(SOURCES / f"{name}.c"),
                   *flags.stdout.split()]
        subprocess.run(command, check=True)
        built.append(target)
    return built[0], built[1]


class ReferenceServer:
    def __init__(self, binary: Path, lifetime_s: float) -> None:
        self.process = subprocess.Popen(
            [str(binary), "0", str(REFERENCE_REGISTERS), str(int(lifetime_s))],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            self.stop()
            raise SystemExit(f"libmodbus server did not start: {line}")
        self.port = int(line[1])

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def run_client(client: Path, port: int, seconds: float, connections: int) -> dict[str, Any]:
    span = REFERENCE_REGISTERS - READ_START - READ_COUNT
    command = [str(client), str(port), str(seconds), str(connections), str(READ_START), str(span),
               str(READ_COUNT), "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + SLACK_S, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --- measurements around a case ------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (and its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def heartbeat(port: int) -> int:
    """Input register 0 of unit 1: the PLC's scan count mod 2**16."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, 0, 1))
        reply = b""
        while len(reply) < 11:
            chunk = sock.recv(11 - len(reply))
            if not chunk:
                raise RuntimeError("connection closed while reading the heartbeat")
            reply += chunk
    if reply[7] != 4:
        raise RuntimeError(f"heartbeat read failed: {reply.hex()}")
    return int(struct.unpack(">H", reply[9:11])[0])


@dataclass
class Case:
    server: str
    connections: int
    result: dict[str, Any]
    cpu_share: float
    scan: dict[str, Any] | None = None

    @property
    def rate(self) -> float:
        return float(self.result["requests"]) / float(self.result["elapsed_s"])


def measure(name: str, pid: int, port: int, client: Path, seconds: float, connections: int,
            plant: PlantServer | None) -> Case:
    if plant is not None:
        plant.stats()  # reset the scan log
        beat_before = heartbeat(port)
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    result = run_client(client, port, seconds, connections)
    cpu_share = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
    scan = None
    if plant is not None:
        wall = time.monotonic() - wall_before
        beat_after = heartbeat(port)
        stats = plant.stats()
        beats = (beat_after - beat_before) & 0xFFFF
        scan = {**stats, "wall_s": wall, "heartbeat_delta": beats,
                "heartbeat_rate_hz": beats / wall, "expected_hz": 1.0 / float(stats["period_s"])}
    return Case(name, connections, result, cpu_share, scan)


def idle_scan(plant: PlantServer, seconds: float) -> dict[str, float]:
    """CPU share and scan rate of the TwinEdge process with no client: the scan loop alone."""
    plant.stats()
    cpu_before, wall_before = cpu_seconds(plant.pid), time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - wall_before
    stats = plant.stats()
    return {"cpu_share": (cpu_seconds(plant.pid) - cpu_before) / wall, "scan_hz": stats["scans"] / wall,
            "worst_late_ms": stats["worst_late_s"] * 1e3}


# --- report --------------------------------------------------------------------------------------


def print_report(cases: list[Case], idle: dict[str, float], connections: int) -> None:
    print(f"\nidle TwinEdge process (scan loop only): {idle['cpu_share'] * 100:.1f}% of one core, "
          f"{idle['scan_hz']:.2f} scans/s, worst scan lateness {idle['worst_late_ms']:.1f} ms\n")
    header = ("server", "conns", "req/s", "registers/s", "p50 ms", "p99 ms", "max ms", "errors",
              "min/max per conn", "server CPU")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for case in cases:
        r = case.result
        print(f"| {case.server} | {case.connections} | {case.rate:,.0f} | {case.rate * READ_COUNT:,.0f} | "
              f"{r['p50_us'] / 1e3:.3f} | {r['p99_us'] / 1e3:.3f} | {r['max_us'] / 1e3:.1f} | {r['errors']} | "
              f"{r['min_per_connection']:,} / {r['max_per_connection']:,} | {case.cpu_share * 100:.0f}% |")
    period_ms = next(1e3 * float(case.scan["period_s"]) for case in cases if case.scan is not None)
    print(f"\nTwinEdge scan during each load (configured period {period_ms:.0f} ms):\n")
    print("| conns | heartbeat Hz (expected) | scans in process | worst lateness ms | worst gap ms | overruns |")
    print("|---|---|---|---|---|---|")
    for case in cases:
        if case.scan is None:
            continue
        s = case.scan
        print(f"| {case.connections} | {s['heartbeat_rate_hz']:.2f} ({s['expected_hz']:.0f}) | {s['scans']} | "
              f"{s['worst_late_s'] * 1e3:.1f} | {s['worst_gap_s'] * 1e3:.1f} | {s['overruns']} |")

    by = {(case.server, case.connections): case for case in cases}
    reference, ours = by[("libmodbus", 1)], by[("twinedge", 1)]
    ratio = ours.rate / reference.rate
    scan_one = ours.scan or {}
    kept = scan_one.get("heartbeat_rate_hz", 0.0) >= 0.95 * scan_one.get("expected_hz", 1.0) and \
        scan_one.get("worst_late_s", 1.0) < float(scan_one.get("period_s", 0.0))
    many = by[("twinedge", connections)]
    mean = many.result["requests"] / connections
    fair = many.result["min_per_connection"] >= 0.25 * mean
    clean = many.result["errors"] == 0 and many.result["connected"] == connections
    print(f"\none connection: TwinEdge / libmodbus = {ratio:.2f}x (goal >= 0.5x): "
          f"{'PASS' if ratio >= 0.5 else 'FAIL'}; scan kept its period: {'yes' if kept else 'NO'}")
    print(f"{connections} connections: {many.result['connected']} connected, {many.result['errors']} errors, "
          f"fewest requests on one connection {many.result['min_per_connection']:,} = "
          f"{many.result['min_per_connection'] / mean:.2f} x the mean: "
          f"{'PASS' if clean and fair else 'FAIL'} (no errors, every connection >= 0.25 x the mean)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="per case")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--dense", type=int, default=600, help="fully mapped bench assets (blocks)")
    parser.add_argument("--conveyors", type=int, default=1000, help="real conveyors on the same PLC")
    parser.add_argument("--period-ms", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="also print every case as a JSON line")
    args = parser.parse_args()
    if args.dense * 100 < REFERENCE_REGISTERS - READ_START:
        parser.error(f"--dense must be >= {(REFERENCE_REGISTERS - READ_START) // 100} to map the read range")
    lifetime = 4 * (args.seconds + 5) + 2 * SLACK_S

    with tempfile.TemporaryDirectory(prefix="modbus-reference-bench-") as tmp:
        client, server_binary = build_tools(Path(tmp))
        plant: PlantServer | None = None
        reference: ReferenceServer | None = None
        try:
            plant = PlantServer(args.dense, args.conveyors, args.period_ms, lifetime)
            reference = ReferenceServer(server_binary, lifetime)
            print(f"TwinEdge PLC pid {plant.pid} on {HOST}:{plant.port} ({args.dense} dense blocks + "
                  f"{args.conveyors} conveyors, {args.period_ms} ms scan); libmodbus pid {reference.pid} on "
                  f"{HOST}:{reference.port}; {args.seconds:g} s per case", flush=True)
            time.sleep(1.0)  # let the first scans settle
            idle = idle_scan(plant, 3.0)
            cases = []
            for connections in (1, args.connections):
                for name in ("libmodbus", "twinedge"):
                    if name == "libmodbus":
                        case = measure(name, reference.pid, reference.port, client, args.seconds, connections, None)
                    else:
                        case = measure(name, plant.pid, plant.port, client, args.seconds, connections, plant)
                    print(f"  {name} x{connections}: {case.rate:,.0f} req/s", flush=True)
                    if args.json:
                        print(json.dumps({"server": name, "connections": connections, **case.result,
                                          "cpu_share": case.cpu_share, "scan": case.scan}), flush=True)
                    cases.append(case)
        finally:
            if reference is not None:
                reference.stop()
            if plant is not None:
                plant.stop()
    print_report(cases, idle, args.connections)


if __name__ == "__main__":
    main()
