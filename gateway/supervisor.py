"""`twinedge up`: run the plant and the gateway as child processes and stop both cleanly.

Children run in their own sessions, so a terminal's Ctrl-C reaches only this supervisor, which then
stops the gateway first (it drains to its outbox) and the plant last, each with SIGTERM and a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

from gateway.common.configfile import ConfigError

STOP_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 120.0
PLANT_READY = "plant ready"
GATEWAY_READY = "gateway ready"


class Child:
    """A child process whose output is relayed line by line with a prefix."""

    def __init__(self, label: str, argv: list[str], ready_marker: str) -> None:
        self.label = label
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True
        )
        self._marker = ready_marker
        self._relay = threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True)
        self._relay.start()

    def _pump(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for line in stream:
            sys.stdout.write(f"[{self.label}] {line}")
            sys.stdout.flush()
            if self._marker in line:
                self.ready.set()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"{self.label} did not stop within {STOP_TIMEOUT_S:g} s; killing it", file=sys.stderr)
                self.process.kill()
                self.process.wait()
        self._relay.join(timeout=5)
        return self.process.returncode


class Supervisor:
    def __init__(self, plant_config: Path, gateway_config: Path, speed: float | None, log_level: str) -> None:
        self.plant_config = plant_config
        self.gateway_config = gateway_config
        self.speed = speed
        self.log_level = log_level
        self._stop = threading.Event()

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self._stop.set()

    def _validate(self) -> int:
        """Validate both configs before anything starts; config errors exit with status 2."""
        from gateway.config import load_gateway_config

        try:
            load_gateway_config(self.gateway_config)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        check = subprocess.run(
            [sys.executable, "-m", "devices", "plant", "--check", "--config", str(self.plant_config)],
            capture_output=True, text=True, check=False,
        )
        if check.returncode != 0:
            sys.stderr.write(check.stderr)
            return check.returncode
        return 0

    def _wait_ready(self, child: Child) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not self._stop.is_set():
            if child.ready.wait(0.1):
                return True
            if not child.alive():
                return False
        return False

    def run(self) -> int:
        status = self._validate()
        if status != 0:
            return status
        plant_argv = [sys.executable, "-m", "devices", "plant", "--config", str(self.plant_config),
                      "--log-level", self.log_level]
        if self.speed is not None:
            plant_argv += ["--speed", str(self.speed)]
        plant = Child("plant", plant_argv, PLANT_READY)
        children = [plant]
        try:
            if not self._wait_ready(plant):
                return 0 if self._stop.is_set() else self._failed(plant)
            gateway = Child("gateway", [sys.executable, "-m", "gateway", "--config", str(self.gateway_config),
                                        "--log-level", self.log_level], GATEWAY_READY)
            children.insert(0, gateway)
            if not self._wait_ready(gateway):
                return 0 if self._stop.is_set() else self._failed(gateway)
            print("twinedge is up; Ctrl-C stops it", flush=True)
            while not self._stop.wait(0.2):
                for child in children:
                    if not child.alive():
                        return self._failed(child)
            return 0
        finally:
            for child in children:
                child.stop()
            if self._stop.is_set():
                print("twinedge stopped", flush=True)

    def _failed(self, child: Child) -> int:
        code = child.process.wait()
        print(f"{child.label} exited with status {code}; stopping", file=sys.stderr)
        return 2 if code == 2 else 1
