"""`twinedge up` as a user runs it: two processes, every endpoint printed, a clean stop on signal."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fixtures.plant import small_plant_config
from tests.fixtures.servers import MosquittoServer, free_port

ROOT = Path(__file__).resolve().parent.parent
START_DEADLINE_S = 90.0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Output:
    """Reads a child's stdout on a thread so the test can wait for a line with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=lambda: [self._queue.put(line) for line in stream], daemon=True).start()

    def wait_for(self, marker: str, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.lines.append(line)
            if marker in line:
                return
        pytest.fail(f"no {marker!r} within {deadline_s} s; output:\n{''.join(self.lines)}")

    def rest(self) -> str:
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return "".join(self.lines)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_up_serves_prints_endpoints_and_stops_cleanly(
    tmp_path: Path, mosquitto_server: MosquittoServer, signum: signal.Signals
) -> None:
    plant = small_plant_config(tmp_path / "data")
    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(yaml.safe_dump(plant.model_dump(mode="json")), encoding="utf-8")
    plc = plant.sites[0].areas[0].plcs[0]
    api_port = free_port()
    gateway_file = tmp_path / "gateway.yaml"
    gateway_file.write_text(yaml.safe_dump({
        "gateway": {"data_dir": str(tmp_path / "data")},
        "sources": [{"name": "plc-1", "protocol": "modbus", "plc": "plc-1", "interval_ms": 500}],
        "sinks": {"mqtt": {"url": mosquitto_server.url}},
        "api": {"port": api_port},
    }), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "up", "--plant-config", str(plant_file),
         "--gateway-config", str(gateway_file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = Output(process)
    try:
        output.wait_for("twinedge is up", START_DEADLINE_S)
        text = output.rest()
        assert f"opc.tcp://127.0.0.1:{plc.opcua.port}" in text
        assert f"127.0.0.1:{plc.modbus.port}" in text
        assert f"http://127.0.0.1:{api_port}/docs" in text
        assert mosquitto_server.url in text
        health = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/health", timeout=10)
        assert health.status_code == 200
    finally:
        process.send_signal(signum)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("twinedge up did not stop within 60 s")
    text = output.rest()
    assert code == 0, text
    assert "Traceback" not in text
    assert "twinedge stopped" in text
    for port in (plc.opcua.port, plc.modbus.port, api_port):
        assert _port_free(port), f"port {port} still in use after stop"


def test_help_explains_each_command() -> None:
    for argv in ([], ["up"], ["gateway"], ["plant"], ["registers"]):
        result = subprocess.run([sys.executable, "-m", "gateway.cli", *argv, "--help"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert "usage: twinedge" in result.stdout
        assert len(result.stdout.splitlines()) > 5
