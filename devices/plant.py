"""The plant process: builds every PLC from config, serves each over OPC UA and Modbus, scans them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from devices.assets.coupling import PlantCoupling, machine_shop_coupling
from devices.assets.mine import mine_coupling
from devices.assets.registry import asset_type
from devices.catalogue import build_catalogue
from devices.clock import VirtualClock
from devices.config import AreaConfig, PlantConfig, PlcConfig, SiteConfig
from devices.modbus.exposer import ModbusExposer
from devices.modbus.fault_schedule import ModbusFaultSchedule
from devices.opcua.exposer import OpcUaExposer
from devices.plc import AssetGroup, Plc
from devices.scenarios import ScenarioRunner
from gateway.common.heap import settle_after_startup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlacedPlc:
    site: SiteConfig
    area: AreaConfig
    config: PlcConfig
    plc: Plc
    scenarios: ScenarioRunner


COUPLINGS: dict[str, Callable[[], PlantCoupling]] = {"machine_shop": machine_shop_coupling, "mine": mine_coupling}


def _coupling(names: Sequence[str]) -> PlantCoupling | None:
    couplings = [COUPLINGS[name]() for name in names]
    if not couplings:
        return None
    combined = couplings[0]
    for extra in couplings[1:]:
        combined = combined + extra
    return combined


def build_plcs(config: PlantConfig, clock: VirtualClock) -> list[PlacedPlc]:
    """One Plc per configured PLC; each gets its own seed derived from the plant seed and position."""
    placed = []
    for number, (_path, site, area, plc_config) in enumerate(config.placed_plcs()):
        groups: dict[str, list[str]] = {}
        for asset in plc_config.assets:
            groups.setdefault(asset.type, []).extend(asset.instance_ids(config.plant.scale))
        seed = config.plant.seed * 1000 + number
        plc = Plc(
            plc_config.id,
            [AssetGroup(asset_type(type_name)(), tuple(ids)) for type_name, ids in groups.items()],
            clock,
            scan_period_s=plc_config.scan_period_ms / 1000.0,
            seed=seed,
            coupling=_coupling(plc_config.couplings),
        )
        scenarios = ScenarioRunner(plc, [s.event() for s in plc_config.scenarios], seed=seed)
        placed.append(PlacedPlc(site, area, plc_config, plc, scenarios))
    return placed


def write_catalogue(config: PlantConfig) -> Path:
    """Write the tag catalogue the gateway loads, atomically, into the data directory."""
    data_dir = config.plant.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / "catalogue.json"
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(build_catalogue(config), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, target)
    return target


class _QuietServer(uvicorn.Server):
    """uvicorn's Server without its signal handlers: the plant process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Plant:
    """Runs every PLC of the config until stopped. ``announce`` receives human-readable lines."""

    def __init__(self, config: PlantConfig, announce: Callable[[str], None] = print) -> None:
        self.config = config
        self.clock = VirtualClock(config.plant.speed, config.plant.start_time)
        self.plcs = build_plcs(config, self.clock)
        self._announce = announce
        # PLC id -> its Modbus server and config-scheduled faults, while serving (the control API uses them).
        self.modbus: dict[str, ModbusExposer] = {}
        self.modbus_faults: dict[str, ModbusFaultSchedule] = {}

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Serve every PLC over OPC UA and Modbus and write the catalogue, without scanning.

        Tests drive ``plc.scan()`` themselves inside this context, for deterministic values.
        """
        settings = self.config.plant
        async with AsyncExitStack() as stack:
            for placed in self.plcs:
                if placed.config.opcua.enabled:
                    opcua = OpcUaExposer(placed.plc, placed.site, placed.area, placed.config, settings)
                    await stack.enter_async_context(opcua)
                    self._announce(f"  {placed.plc.plc_id}: OPC UA  {opcua.endpoint_url}")
                if placed.config.modbus.enabled:
                    modbus = ModbusExposer(placed.plc, placed.site.id, placed.area.id, placed.config, settings)
                    await stack.enter_async_context(modbus)
                    plc_id = placed.plc.plc_id
                    schedule = ModbusFaultSchedule(placed.plc, modbus.faults,
                                                   [f.fault() for f in placed.config.modbus.faults])
                    self.modbus[plc_id], self.modbus_faults[plc_id] = modbus, schedule
                    stack.callback(self.modbus.pop, plc_id, None)
                    stack.callback(self.modbus_faults.pop, plc_id, None)
                    stack.callback(schedule.close)
                    host, port = modbus.address
                    unit = placed.config.modbus.unit_id
                    self._announce(f"  {placed.plc.plc_id}: Modbus  {host}:{port} (unit {unit})")
            catalogue = write_catalogue(self.config)
            self._announce(f"  tag catalogue: {catalogue}")
            yield

    async def run(self, stop: asyncio.Event) -> None:
        """Serve and scan every PLC on the virtual clock until ``stop`` is set."""
        async with self.serving(), self.control_api():
            self._announce(f"plant ready: {len(self.plcs)} PLC(s), clock speed {self.clock.speed:g}x")
            # Startup built tens of thousands of long-lived objects (address space, register map);
            # freezing them keeps the garbage collector from rescanning them on every scan.
            settle_after_startup()
            self.clock.begin()
            async with asyncio.TaskGroup() as group:
                for placed in self.plcs:
                    group.create_task(placed.plc.run(stop))

    @contextlib.asynccontextmanager
    async def control_api(self) -> AsyncIterator[None]:
        """Serve devices/control_api.py on ``plant.api_port`` while the plant runs.

        The socket is bound here, not by uvicorn, so a port in use costs a warning instead of
        uvicorn's sys.exit, which would take the plant down with it.
        """
        settings = self.config.plant
        if settings.api_port is None:
            yield
            return
        from devices.control_api import create_control_app  # FastAPI only when the API is on

        sock = socket.socket(socket.AF_INET6 if ":" in settings.bind_host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.bind_host, settings.api_port))
        except OSError as exc:
            sock.close()
            log.warning("plant control API not started: %s:%d: %s", settings.bind_host, settings.api_port, exc)
            yield
            return
        server = _QuietServer(uvicorn.Config(create_control_app(self), log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]), name="plant-control-api")
        self._announce(f"  control API: http://{settings.endpoint_host}:{settings.api_port}/docs")
        try:
            yield
        finally:
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
            sock.close()
