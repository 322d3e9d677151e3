"""Edge API benchmark (issue 7): WebSocket fan-out and REST latency under pipeline load, command round trips.

Everything runs as separate OS processes on 127.0.0.1, free ports, in a temporary directory:

- Mosquitto (the gateway's MQTT sink, unless ``--no-mqtt``).
- The plant (``python -m devices plant``): ``plc-load`` holding enough conveyors that polling it every
  ``--interval-ms`` over Modbus carries ``--rate`` values/s, plus ``plc-ua`` and ``plc-mb`` (2 conveyors
  each) for commands, the first with an OPC UA operator user.
- The gateway (``python -m gateway``) with its API, anonymous read on, sources ``load`` (Modbus,
  plc-load), ``ua`` (OPC UA, plc-ua, username/password) and ``mb`` (Modbus, plc-mb).
- Load generators (this file run as ``_ws_worker`` / ``_rest_worker``): ``--clients`` WebSocket clients
  (``websockets``, asyncio) spread over ``--workers`` processes, each on ``/ws/stream?assets=<one load
  conveyor>`` (one message per poll, 10 Hz at 100 ms); ``--rest-workers`` plain asyncio HTTP clients sending
  ``--rest-rps`` requests/s together, open-loop, to ``/api/v1/assets/{id}/values``. The load conveyors are
  split over ``--load-plcs`` PLCs, each its own gateway source (``--modbus-connections`` requests in flight each).

``ws``: after ``--ramp-s`` for the clients to connect, a window of ``--seconds`` is measured: messages
delivered per client and in total, "dropped" notices (the hub's per-client queue overflowing), latency
= receive time - the message's ``sent_ts`` (the hub's publish time; same clock, same machine), the age
of the newest reading (receive time - ``source_ts``, the Modbus poll time, sampled), REST p50/p99,
values/s and polls/s the gateway read (its /metrics), and CPU of every process from /proc.

``commands``: ``--count`` setpoint writes per protocol, one at a time (alternating 1.1 and 0.7 m/s on
``speed_setpoint``, so each is a real change): time from sending ``POST /api/v1/commands`` until the
COMPLETED state arrives on ``/ws/commands`` (read-back included), and the server's own
``finished_at - created_at``. Goal: p99 under 2 x scan period + 1 poll interval. ``--rate`` 0 (the
default here) runs them on an otherwise idle gateway; give ``--rate`` to run them under load.

    .venv/bin/python bench/api_bench.py ws --clients 1000 --rate 50000 --seconds 30
    .venv/bin/python bench/api_bench.py commands --count 100
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from _procs import tree_sample

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "bench-admin-password-1"
OPERATOR = {"username": "bench-op", "password": "bench-operator-pass-1", "role": "operator"}
OPCUA_USER = {"name": "gw", "password": "gw-opcua-password", "role": "operator"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (the gateway's MQTT publisher)."""
    sample = tree_sample(pid)
    if sample is None:
        raise ProcessLookupError(pid)
    return sample.cpu_s


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready within {timeout_s:g} s")


def tcp_open(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1):
        return True


def http_json(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


# -- the stack -------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """A running plant + gateway (+ Mosquitto) for one benchmark."""

    tmp: Path
    api: str  # http://host:port
    ws: str  # ws://host:port
    load_source: dict[str, str]  # load asset -> the gateway source (PLC) it is read by
    plant: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes]
    scan_ms: int
    poll_ms: int
    interval_ms: int

    @property
    def load_assets(self) -> list[str]:
        return list(self.load_source)

    def metrics(self) -> dict[str, float]:
        """The gateway's Prometheus samples (name{labels} -> value)."""
        with urllib.request.urlopen(f"{self.api}/metrics", timeout=10) as response:
            text = response.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


def _conveyor_tags() -> int:
    """Tags of one conveyor, from the asset type's tag table."""
    sys.path.insert(0, str(ROOT))
    from devices.assets.conveyor import Conveyor

    return len(Conveyor.tags)


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})})


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def stack(rate: int, interval_ms: int, scan_ms: int, poll_ms: int, mqtt: str | None, queue_size: int,
          keep: bool = False, load_plcs: int = 1, opcua_mode: str = "subscribe",
          modbus_connections: int = 1, modbus_pipeline: int = 1, outbox: str = "sqlite") -> Iterator[Stack]:
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="twinedge-api-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        per_conveyor = _conveyor_tags()
        polls_per_s = 1000 / interval_ms
        conveyors = max(1, round(rate / polls_per_s / per_conveyor)) if rate > 0 else 0
        plcs: list[dict[str, Any]] = []
        for n in range(load_plcs if conveyors else 0):
            share = conveyors // load_plcs + (1 if n < conveyors % load_plcs else 0)
            plcs.append({"id": f"plc-load{n}", "scan_period_ms": 100, "opcua": {"port": free_port()},
                         "modbus": {"port": free_port()}, "assets": [{"type": "conveyor", "id": f"load{n}",
                                                                      "count": share}]})
        plcs.append({"id": "plc-ua", "scan_period_ms": scan_ms, "opcua": {"port": free_port(), "users": [OPCUA_USER]},
                     "modbus": {"port": free_port()}, "assets": [{"type": "conveyor", "id": "ua", "count": 2}]})
        plcs.append({"id": "plc-mb", "scan_period_ms": scan_ms, "opcua": {"port": free_port()},
                     "modbus": {"port": free_port()}, "assets": [{"type": "conveyor", "id": "mb", "count": 2}]})
        plant_config = {"plant": {"name": "api-bench", "seed": 7, "data_dir": str(tmp / "plant"), "api_port": None},
                        "sites": [{"id": "bench", "areas": [{"id": "line", "plcs": plcs}]}]}
        (tmp / "plant.yaml").write_text(yaml.safe_dump(plant_config))
        sources: list[dict[str, Any]] = []
        for n in range(load_plcs if conveyors else 0):
            sources.append({"name": f"load{n}", "protocol": "modbus", "plc": f"plc-load{n}",
                            "interval_ms": interval_ms, "connections": modbus_connections,
                            "pipeline": modbus_pipeline})
        sources.append({"name": "ua", "protocol": "opcua", "plc": "plc-ua", "interval_ms": poll_ms, "mode": opcua_mode,
                        "username": OPCUA_USER["name"], "password": OPCUA_USER["password"]})
        sources.append({"name": "mb", "protocol": "modbus", "plc": "plc-mb", "interval_ms": poll_ms})
        sinks: dict[str, Any] = {"mqtt": {"enabled": False}}
        if mqtt:
            port = free_port()
            (tmp / "mosquitto.conf").write_text(f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n")
            binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            processes.append(_spawn([binary, "-c", str(tmp / "mosquitto.conf")], tmp / "mosquitto.log"))
            wait_until(lambda: tcp_open(port), 10, "mosquitto")
            sinks["mqtt"] = {"enabled": True, "url": f"mqtt://{HOST}:{port}", "publisher": mqtt}
        api_port = free_port()
        gateway_config = {
            "gateway": {"id": "gw-bench", "data_dir": str(tmp / "gateway"),
                        "catalogue": str(tmp / "plant" / "catalogue.json"), "outbox": outbox},
            "sources": sources, "sinks": sinks,
            "api": {"host": HOST, "port": api_port, "auth": {"anonymous_read": True},
                    "websocket": {"queue_size": queue_size}},
            "commands": {"execute_timeout_s": 5},
        }
        (tmp / "gateway.yaml").write_text(yaml.safe_dump(gateway_config))
        plant = _spawn([sys.executable, "-m", "devices", "plant", "--config", str(tmp / "plant.yaml")],
                       tmp / "plant.log")
        processes.append(plant)
        ports = [p[proto]["port"] for p in plcs for proto in ("opcua", "modbus")]
        wait_until(lambda: (tmp / "plant" / "catalogue.json").exists() and all(tcp_open(p) for p in ports),
                   120, "plant")
        catalogue = json.loads((tmp / "plant" / "catalogue.json").read_text())
        load_source = {a["id"]: p["id"].removeprefix("plc-")
                       for p in catalogue["plcs"] if p["id"].startswith("plc-load") for a in p["assets"]}
        gateway = _spawn([sys.executable, "-m", "gateway", "--config", str(tmp / "gateway.yaml")],
                         tmp / "gateway.log", {"TWINEDGE_ADMIN_PASSWORD": ADMIN_PASSWORD})
        processes.append(gateway)
        api = f"http://{HOST}:{api_port}"
        wait_until(lambda: http_json(f"{api}/api/v1/health")["status"] == "ok", 120, "gateway")
        yield Stack(tmp, api, f"ws://{HOST}:{api_port}", load_source, plant, gateway, scan_ms, poll_ms, interval_ms)
    finally:
        for process in reversed(processes):
            _stop(process)
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# -- load generators (child processes) -----------------------------------------------------------------


class _WsTally:
    """What the WebSocket clients of one worker received inside the window [start_at, end_at)."""

    def __init__(self, clients: int, start_at: float, end_at: float) -> None:
        self.start_at, self.end_at = start_at, end_at
        self.latencies = array("d")
        self.ages = array("d")
        self.counts = [0] * clients
        self.dropped = self.errors = self.connected = 0

    def on_message(self, i: int, text: str, now: float) -> None:
        if text.startswith('{"type":"dropped"'):
            if self.start_at <= now < self.end_at:
                self.dropped += json.loads(text)["count"]
            return
        if not self.start_at <= now < self.end_at:
            return
        self.counts[i] += 1
        # {"type":"readings","sent_ts":<float>,...: read the number without parsing the rest
        head = text.find('"sent_ts":') + 10
        self.latencies.append(now - float(text[head:text.index(",", head)]))
        if self.counts[i] % 20 == 0:  # the age of the newest reading, sampled (fromisoformat is not free)
            at = text.rfind('"source_ts":"') + 13
            self.ages.append(now - datetime.fromisoformat(text[at:text.index('"', at)]).timestamp())

    def result(self) -> dict[str, Any]:
        return {"counts": self.counts, "dropped": self.dropped, "errors": self.errors, "connected": self.connected,
                "latencies": list(self.latencies), "ages": list(self.ages)}


async def _ws_worker(url: str, assets: list[str], start_at: float, end_at: float,
                     compression: str | None) -> dict[str, Any]:
    """Clients of the ``websockets`` library (what a Python dashboard would use)."""
    from websockets.asyncio.client import connect

    tally = _WsTally(len(assets), start_at, end_at)

    async def client(i: int, asset: str) -> None:
        try:
            async with connect(f"{url}/ws/stream?assets={asset}", compression=compression, open_timeout=60,
                               max_queue=None) as ws:
                tally.connected += 1
                async for message in ws:
                    now = time.time()
                    if now >= end_at:
                        return
                    tally.on_message(i, message if isinstance(message, str) else message.decode(), now)
        except Exception:
            tally.errors += 1

    await asyncio.gather(*(client(i, a) for i, a in enumerate(assets)))
    return tally.result()


class _RawWsClient(asyncio.Protocol):
    """A WebSocket client that only listens: the upgrade, then the server's unmasked frames (RFC 6455
    §5.2), answering pings. The ``websockets`` library's per-message machinery took most of a core for
    10,000 messages/s on the two cores it was measuring; this keeps the load generator out of the way.
    Offers no extension, so the server sends uncompressed frames."""

    def __init__(self, i: int, host: str, path: str, tally: _WsTally) -> None:
        self.i, self.host, self.path, self.tally = i, host, path, tally
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.fragments: list[bytes] = []
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                        .encode())

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.tally.errors += 1
                self.close()
                return
            self.upgraded = True
            self.tally.connected += 1
            buffer = buffer[end + 4:]
        pos, size = 0, len(buffer)
        while size - pos >= 2:
            first, length = buffer[pos], buffer[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2:pos + 10], "big"), 10
            if size - pos < head + length:
                break
            payload = buffer[pos + head:pos + head + length]
            pos += head + length
            opcode = first & 0x0F
            if opcode == 9:  # ping: answer with a masked pong carrying the same data
                mask = os.urandom(4)
                self._write(bytes((0x8A, 0x80 | len(payload))) + mask
                            + bytes(b ^ mask[k % 4] for k, b in enumerate(payload)))
            elif opcode == 8:
                self.close()
                return
            elif opcode in (0, 1, 2):
                self.fragments.append(payload)
                if first & 0x80:  # FIN: the message is whole
                    message = b"".join(self.fragments)
                    self.fragments.clear()
                    self.tally.on_message(self.i, message.decode(), now)
        self.buffer = buffer[pos:]

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _raw_ws_worker(url: str, assets: list[str], start_at: float, end_at: float) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or HOST, parts.port or 80
    loop = asyncio.get_running_loop()
    tally = _WsTally(len(assets), start_at, end_at)
    clients: list[_RawWsClient] = []
    for i, asset in enumerate(assets):
        client = _RawWsClient(i, f"{host}:{port}", f"/ws/stream?assets={asset}", tally)
        def protocol(c: _RawWsClient = client) -> _RawWsClient:  # this client, not the loop's last
            return c

        try:
            await loop.create_connection(protocol, host, port)
        except OSError:
            tally.errors += 1
            continue
        clients.append(client)
    await asyncio.sleep(max(0.0, end_at - time.time()))
    for client in clients:
        client.close()
    return tally.result()


class _HttpConnection:
    """One keep-alive HTTP/1.1 connection sending GETs one at a time. The load generator is plain
    asyncio streams rather than httpx: at 500 requests/s four httpx processes took 1.2-1.3 cores of
    this two-core machine, starving the gateway they were measuring; this takes a tenth of that."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        if self.writer is not None:
            try:
                return await self._get(path)
            except (OSError, asyncio.IncompleteReadError):
                # The server closed the idle keep-alive connection (uvicorn: after 5 s): as any HTTP
                # client does for an idempotent GET, reconnect and send it again once.
                self.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return await self._get(path)

    async def _get(self, path: str) -> int:
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _rest_worker(api: str, assets: list[str], rps: float, start_at: float, end_at: float) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(api)
    latencies: list[float] = []
    late: list[float] = []
    failures = 0
    idle: asyncio.Queue[_HttpConnection] = asyncio.Queue()
    for _ in range(8):
        idle.put_nowait(_HttpConnection(parts.hostname or "127.0.0.1", parts.port or 80))
    warm = await idle.get()
    await warm.get("/api/v1/health")
    idle.put_nowait(warm)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    tasks: set[asyncio.Task[None]] = set()

    async def one(asset: str, due: float) -> None:
        nonlocal failures
        sent = time.perf_counter()
        late.append(max(0.0, time.time() - due))
        connection = await idle.get()  # waiting for a free connection counts in the latency
        try:
            status = await asyncio.wait_for(connection.get(f"/api/v1/assets/{asset}/values"), 10)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            connection.close()
            idle.put_nowait(_HttpConnection(connection.host, connection.port))
            failures += 1
            return
        idle.put_nowait(connection)
        if status != 200:
            failures += 1
            return
        latencies.append(time.perf_counter() - sent)

    i = 0
    while True:
        due = start_at + i / rps
        if due >= end_at:
            break
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(assets[i % len(assets)], due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().close()
    return {"sent": i, "failures": failures, "latencies": latencies, "late": late}


def mqtt_publisher(args: argparse.Namespace) -> str | None:
    """The MQTT sink's publisher setting, or None to run without MQTT."""
    return None if args.no_mqtt else str(args.mqtt_publisher)


# -- ws + REST ---------------------------------------------------------------------------------------------


def run_ws(args: argparse.Namespace) -> dict[str, Any]:
    with stack(args.rate, args.interval_ms, 100, 200, mqtt_publisher(args), args.queue_size, args.keep,
               args.load_plcs, modbus_connections=args.modbus_connections,
               modbus_pipeline=args.modbus_pipeline, outbox=args.outbox) as s:
        if not s.load_assets:
            raise SystemExit("--rate must be > 0 for the ws benchmark")
        start_at = time.time() + args.ramp_s
        end_at = start_at + args.seconds
        workers: list[tuple[subprocess.Popen[bytes], Path]] = []
        per_worker = [args.clients // args.workers + (1 if w < args.clients % args.workers else 0)
                      for w in range(args.workers)]
        n = 0
        for w, count in enumerate(per_worker):
            assets = [s.load_assets[(n + k) % len(s.load_assets)] for k in range(count)]
            n += count
            out = s.tmp / f"ws-{w}.json"
            workers.append((subprocess.Popen([sys.executable, __file__, "_ws_worker", s.ws, ",".join(assets),
                                              str(start_at), str(end_at), str(out), args.compression,
                                              args.ws_client]), out))
        rests: list[tuple[subprocess.Popen[bytes], Path]] = []
        for w in range(args.rest_workers if args.rest_rps > 0 else 0):
            out = s.tmp / f"rest-{w}.json"
            rests.append((subprocess.Popen([sys.executable, __file__, "_rest_worker", s.api, ",".join(s.load_assets),
                                            str(args.rest_rps / args.rest_workers), str(start_at), str(end_at),
                                            str(out)]), out))
        time.sleep(max(0.0, start_at - time.time()))
        loads = [w for w, _ in workers]
        cpu0 = {"gateway": cpu_seconds(s.gateway.pid), "plant": cpu_seconds(s.plant.pid),
                "ws clients": sum(cpu_seconds(p.pid) for p in loads),
                "rest clients": sum(cpu_seconds(p.pid) for p, _ in rests)}
        m0, t0 = s.metrics(), time.time()
        time.sleep(max(0.0, end_at - time.time()))
        cpu1 = {"gateway": cpu_seconds(s.gateway.pid), "plant": cpu_seconds(s.plant.pid),
                "ws clients": sum(cpu_seconds(p.pid) for p in loads),
                "rest clients": sum(cpu_seconds(p.pid) for p, _ in rests)}
        m1, t1 = s.metrics(), time.time()
        for process, _ in workers + rests:
            process.wait(120)
        results = [json.loads(out.read_text()) for _, out in workers]
        elapsed = t1 - t0
        counts = [c for r in results for c in r["counts"]]
        latencies = [x for r in results for x in r["latencies"]]
        ages = [x for r in results for x in r["ages"]]

        def delta(name: str) -> float:
            return m1.get(name, 0.0) - m0.get(name, 0.0)

        polls_of = {src: delta(f'twinedge_source_reads_total{{source="{src}"}}') for src in set(s.load_source.values())}
        polls = sum(polls_of.values())
        # Client k watches load asset k (mod their number), as the workers were given them; it should
        # get one message per poll of that asset's PLC in the window, give or take one at each edge
        # (the sources poll on their own phases, the window is wall-clock).
        assets = s.load_assets
        expected = [polls_of[s.load_source[assets[k % len(assets)]]] for k in range(len(counts))]
        off = [c - e for c, e in zip(counts, expected, strict=True)]
        values = sum(delta(f'twinedge_source_values_total{{source="load{n}"}}') for n in range(args.load_plcs))
        expected_nominal = args.clients * args.seconds * 1000 / args.interval_ms
        report: dict[str, Any] = {
            "clients": args.clients, "connected": sum(r["connected"] for r in results),
            "client_errors": sum(r["errors"] for r in results), "seconds": args.seconds,
            "load_conveyors": len(s.load_assets), "rate_asked": args.rate,
            "pipeline_values_per_s": round(values / elapsed),
            "polls_per_s_per_plc": round(polls / elapsed / args.load_plcs, 2),
            "delivered": sum(counts), "expected_nominal": round(expected_nominal),
            "expected_from_polls": round(sum(expected)),
            "per_client_minus_its_plcs_polls_min_max": [round(min(off, default=0)), round(max(off, default=0))],
            "dropped_notices": sum(r["dropped"] for r in results),
            "delivered_per_s": round(sum(counts) / args.seconds),
            "per_client_min_max": [min(counts, default=0), max(counts, default=0)],
            "latency_ms": {"p50": round(pct(latencies, 50) * 1000, 1), "p99": round(pct(latencies, 99) * 1000, 1),
                           "max": round(max(latencies, default=float("nan")) * 1000, 1)},
            "reading_age_ms": {"p50": round(pct(ages, 50) * 1000, 1), "p99": round(pct(ages, 99) * 1000, 1)},
            "cpu_pct_of_one_core": {k: round((cpu1[k] - cpu0[k]) / elapsed * 100, 1) for k in cpu0},
            "compression": args.compression, "ws_client": args.ws_client, "mqtt": mqtt_publisher(args),
            "outbox": args.outbox,
        }
        if rests:
            parts = [json.loads(out.read_text()) for _, out in rests]
            lat = [x for r in parts for x in r["latencies"]]
            late = [x for r in parts for x in r["late"]]
            report["rest"] = {"asked_rps": args.rest_rps, "workers": args.rest_workers,
                              "sent": sum(r["sent"] for r in parts), "ok": len(lat),
                              "failures": sum(r["failures"] for r in parts),
                              "p50_ms": round(pct(lat, 50) * 1000, 2), "p99_ms": round(pct(lat, 99) * 1000, 2),
                              "max_ms": round(max(lat, default=float("nan")) * 1000, 1),
                              "client_late_p99_ms": round(pct(late, 99) * 1000, 2)}
        return report


# -- commands --------------------------------------------------------------------------------------------


async def _commands(s: Stack, count: int) -> dict[str, Any]:
    import httpx
    from websockets.asyncio.client import connect

    async with httpx.AsyncClient(base_url=s.api, timeout=10) as http:
        async def token(username: str, password: str) -> str:
            response = await http.post("/api/v1/auth/token", data={"username": username, "password": password})
            response.raise_for_status()
            return str(response.json()["access_token"])

        admin = await token("admin", ADMIN_PASSWORD)
        created = await http.post("/api/v1/users", json=OPERATOR, headers={"Authorization": f"Bearer {admin}"})
        assert created.status_code == 201, created.text
        operator = await token(OPERATOR["username"], OPERATOR["password"])
        headers = {"Authorization": f"Bearer {operator}"}
        async with connect(f"{s.ws}/ws/commands", subprotocols=["bearer", operator],  # type: ignore[list-item]
                           compression=None) as ws:
            await asyncio.sleep(0.2)
            out: dict[str, Any] = {}
            for protocol, asset in (("opcua", "ua-01"), ("modbus", "mb-01")):
                client_ms: list[float] = []
                server_ms: list[float] = []
                failed: list[str] = []
                for i in range(count):
                    value = 1.1 if i % 2 == 0 else 0.7
                    sent = time.perf_counter()
                    response = await http.post("/api/v1/commands", headers=headers, json={
                        "asset": asset, "command": "write", "tag": "speed_setpoint", "value": value})
                    assert response.status_code == 201, response.text
                    command_id = response.json()["id"]
                    while True:
                        message = json.loads(await asyncio.wait_for(ws.recv(), 15))
                        command = message.get("command", {})
                        if command.get("id") == command_id and command["state"] not in ("PENDING", "IN_PROGRESS"):
                            break
                    if command["state"] != "COMPLETED":
                        failed.append(f"{command['state']}: {command.get('reason')}")
                        continue
                    client_ms.append((time.perf_counter() - sent) * 1000)
                    created_at = datetime.fromisoformat(command["created_at"])
                    finished_at = datetime.fromisoformat(command["finished_at"])
                    server_ms.append((finished_at - created_at).total_seconds() * 1000)
                goal = 2 * s.scan_ms + s.poll_ms
                out[protocol] = {
                    "completed": len(client_ms), "failed": len(failed), "first_failures": failed[:3],
                    "client_ms": {"p50": round(pct(client_ms, 50), 1), "p99": round(pct(client_ms, 99), 1),
                                  "max": round(max(client_ms, default=float("nan")), 1),
                                  "mean": round(statistics.fmean(client_ms), 1) if client_ms else None},
                    "server_ms": {"p50": round(pct(server_ms, 50), 1), "p99": round(pct(server_ms, 99), 1)},
                    "goal_p99_ms": goal, "met": bool(client_ms) and not failed and pct(client_ms, 99) < goal,
                }
            return out


def run_commands(args: argparse.Namespace) -> dict[str, Any]:
    with stack(args.rate, args.interval_ms, args.scan_ms, args.poll_ms, mqtt_publisher(args), 256, args.keep,
               args.load_plcs, args.opcua_mode, args.modbus_connections, args.modbus_pipeline, args.outbox) as s:
        cpu0, t0 = cpu_seconds(s.gateway.pid), time.time()
        report = asyncio.run(_commands(s, args.count))
        report["gateway_cpu_pct"] = round((cpu_seconds(s.gateway.pid) - cpu0) / (time.time() - t0) * 100, 1)
        report["scan_ms"], report["poll_ms"], report["rate"] = args.scan_ms, args.poll_ms, args.rate
        report["opcua_mode"] = args.opcua_mode
        return report


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_ws_worker":
        url, assets, start_at, end_at, out, compression, kind = sys.argv[2:9]
        if kind == "raw":
            result = asyncio.run(_raw_ws_worker(url, assets.split(","), float(start_at), float(end_at)))
        else:
            result = asyncio.run(_ws_worker(url, assets.split(","), float(start_at), float(end_at),
                                            None if compression == "none" else compression))
        Path(out).write_text(json.dumps(result))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_rest_worker":
        api, assets, rps, start_at, end_at, out = sys.argv[2:8]
        result = asyncio.run(_rest_worker(api, assets.split(","), float(rps), float(start_at), float(end_at)))
        Path(out).write_text(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    ws = sub.add_parser("ws", help="WebSocket fan-out and REST latency under pipeline load")
    ws.add_argument("--clients", type=int, default=1000)
    ws.add_argument("--workers", type=int, default=2, help="client processes (default: %(default)s)")
    ws.add_argument("--rate", type=int, default=50_000, help="pipeline values/s asked (default: %(default)s)")
    ws.add_argument("--interval-ms", type=int, default=100, help="poll interval of the load source")
    ws.add_argument("--seconds", type=float, default=30)
    ws.add_argument("--ramp-s", type=float, default=15, help="time for the clients to connect before measuring")
    ws.add_argument("--rest-rps", type=float, default=500, help="REST requests/s, all workers together")
    ws.add_argument("--rest-workers", type=int, default=4,
                    help="REST client processes (plain asyncio HTTP/1.1 clients, 8 keep-alive connections each)")
    ws.add_argument("--queue-size", type=int, default=256, help="api.websocket.queue_size")
    ws.add_argument("--compression", choices=("none", "deflate"), default="none",
                    help="permessage-deflate offered by the clients (browsers offer it; websockets clients only)")
    ws.add_argument("--ws-client", choices=("raw", "websockets"), default="raw",
                    help="raw: a minimal listening client (the default, light on the shared cores); "
                         "websockets: the library's client")
    cmd = sub.add_parser("commands", help="command round trips over OPC UA and Modbus")
    cmd.add_argument("--count", type=int, default=100, help="commands per protocol")
    cmd.add_argument("--scan-ms", type=int, default=100, help="PLC scan period of the command PLCs")
    cmd.add_argument("--poll-ms", type=int, default=200, help="gateway poll interval of the command sources")
    cmd.add_argument("--opcua-mode", choices=("subscribe", "poll"), default="subscribe",
                     help="the OPC UA source's mode (default: %(default)s, the gateway's default)")
    cmd.add_argument("--rate", type=int, default=0, help="pipeline load in values/s while commanding")
    cmd.add_argument("--interval-ms", type=int, default=100, help="poll interval of the load source")
    for p in (ws, cmd):
        p.add_argument("--load-plcs", type=int, default=5, help="PLCs (Modbus sources) the load is split over")
        p.add_argument("--modbus-connections", type=int, default=1, help="TCP connections per load source")
        p.add_argument("--modbus-pipeline", type=int, default=1, help="requests outstanding per connection")
        p.add_argument("--no-mqtt", action="store_true", help="run without Mosquitto and the MQTT sink")
        p.add_argument("--mqtt-publisher", choices=("process", "loop"), default="process",
                       help="where the gateway runs paho (sinks.mqtt.publisher; default: %(default)s)")
        p.add_argument("--outbox", choices=("sqlite", "log"), default="sqlite",
                       help="the gateway's outbox store (gateway.outbox; default: %(default)s)")
        p.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    args = parser.parse_args()
    if args.bench == "ws" and args.compression != "none" and args.ws_client == "raw":
        parser.error("--compression needs --ws-client websockets (the raw client offers no extension)")
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    report = run_ws(args) if args.bench == "ws" else run_commands(args)
    print(json.dumps({"bench": args.bench, "loadavg_before": load, **report}, indent=1))


if __name__ == "__main__":
    main()
