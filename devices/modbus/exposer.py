"""ModbusExposer: serves one PLC's process image over Modbus TCP and feeds client writes back to it."""

from __future__ import annotations

from importlib import metadata

from devices.config import PlantSettings, PlcConfig
from devices.modbus.config import ModbusOptions
from devices.modbus.faults import FaultInjector
from devices.modbus.image import RegisterImage
from devices.modbus.protocol import DeviceIdentity, RequestHandler
from devices.modbus.register_map import RegisterMap, register_map_for
from devices.modbus.server import ModbusTcpServer
from devices.plc import Plc
from devices.process_image import ProcessImage
from gateway.common.lifecycle import Service


def _revision() -> str:
    try:
        return metadata.version("twinedge")
    except metadata.PackageNotFoundError:
        return "0.0"


class ModbusExposer(Service):
    """Publish ``plc``'s process image after each scan; turn client writes into ``plc`` writes.

    The constructor only builds the register map (pure); ``start()`` binds
    ``settings.bind_host:plc_config.modbus.port`` (``port`` overrides it; 0 picks a free port, see
    ``address``). Accepted writes are queued with ``plc.submit_write``/``submit_command`` and take
    effect at the PLC's next scan, after which a read shows them. ``faults`` makes the endpoint
    misbehave on demand (see FaultInjector.inject).
    """

    def __init__(
        self,
        plc: Plc,
        site: str,
        area: str,
        plc_config: PlcConfig,
        settings: PlantSettings,
        *,
        port: int | None = None,
        max_connections: int = 256,
    ) -> None:
        self.plc = plc
        self.site = site
        self.area = area
        self.options = ModbusOptions.from_endpoint(plc_config.modbus)
        self.register_map: RegisterMap = register_map_for(plc_config, settings.scale)
        self.image = RegisterImage(self.register_map, self.options.fault_value)
        self.faults = FaultInjector()
        identity = DeviceIdentity(
            revision=_revision(),
            model_name=f"{plc_config.id}",
            application_name=f"{site}/{area}/{plc_config.id}",
        )
        self._handler = RequestHandler(lambda: self.image, plc, identity)
        self._server = ModbusTcpServer(
            self._handler,
            settings.bind_host,
            self.options.port if port is None else port,
            self.faults,
            max_connections=max_connections,
            name=f"modbus {plc_config.id}",
        )
        self._listening = False
        self._subscribed = False

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound once started."""
        return self._server.address

    @property
    def server(self) -> ModbusTcpServer:
        return self._server

    async def start(self) -> None:
        if self._listening:
            return
        if not self._subscribed:
            # Plc has no remove_listener: subscribe once and ignore scans while closed.
            self.plc.add_listener(self._on_scan)
            self._subscribed = True
        if self.plc.image is not None:
            self.image.update(self.plc.image)
        await self._server.start()
        self._listening = True

    async def close(self) -> None:
        self._listening = False
        await self._server.close()

    def _on_scan(self, image: ProcessImage) -> None:
        if self._listening:
            self.image.update(image)
