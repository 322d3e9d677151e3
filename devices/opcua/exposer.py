"""One PLC's OPC UA server: the address space from its tag tables, values from its scans, writes and
commands back into it.

Endpoint: ``opc.tcp://<settings.endpoint_host>:<port>`` (no path: one server per PLC port, so the
port alone names the PLC). The socket is bound on ``settings.bind_host``; the advertised endpoint
uses ``endpoint_host`` so a server bound on 0.0.0.0 still hands clients a reachable URL.

Start: nodesets/ in manifest order (TwinEdge types; companion nodesets if present), then the
instances, built straight into the address space (nodes.py); 10,000 variables serve within ~3-4 s on
the two-core reference host (bench/opcua_bench.py). After each scan the publisher writes values,
appends history (history.py) and looks for alarm transitions (alarms.py).

Usage::

    async with OpcUaExposer(plc, site, area, plc_config, settings) as exposer:
        ...  # serving until the block exits
"""

from __future__ import annotations

import logging
import time

from asyncua.common.callback import CallbackType

from devices.config import AreaConfig, PlantSettings, PlcConfig, SiteConfig
from devices.opcua import INSTANCE_NAMESPACE_URI, TYPES_NAMESPACE_URI, values
from devices.opcua._ua import Server
from devices.opcua.address_space import AssetGroupView, PlantNodes, build_plant_nodes
from devices.opcua.alarms import AlarmMonitor
from devices.opcua.config import OpcUaServerConfig
from devices.opcua.history import PlantHistory
from devices.opcua.methods import CommandMethods
from devices.opcua.nodesets import import_nodesets
from devices.opcua.notification_encoding import install_pre_encoding
from devices.opcua.publisher import ValuePublisher
from devices.opcua.security import (
    POLICY_TYPES,
    ClientCertificateValidator,
    PlantRuleset,
    PlantUserManager,
    RoleResolver,
    identity_tokens,
    pki_layout,
    setup_certificate,
)
from devices.opcua.writes import PlcAttributeService
from devices.plc import Plc
from devices.process_image import ProcessImage
from gateway.common.lifecycle import Service

log = logging.getLogger(__name__)

REFRESH_EVENT_SEVERITY = 1


class OpcUaExposer(Service):
    """Serves one PLC over OPC UA. The constructor does no I/O; ``close()`` is idempotent."""

    def __init__(
        self,
        plc: Plc,
        site: SiteConfig,
        area: AreaConfig,
        plc_config: PlcConfig,
        settings: PlantSettings,
    ) -> None:
        self._plc = plc
        self._site = site
        self._area = area
        self._plc_config = plc_config
        self._settings = settings
        self._config: OpcUaServerConfig = plc_config.opcua
        self._server: Server | None = None
        self._nodes: PlantNodes | None = None
        self._publisher: ValuePublisher | None = None
        self._alarms: AlarmMonitor | None = None
        self._methods: CommandMethods | None = None
        self._writes: PlcAttributeService | None = None
        self._listening = False
        self.startup_s: float | None = None

    # --- public surface --------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"opc.tcp://{self._settings.endpoint_host}:{self._config.port}"

    @property
    def application_uri(self) -> str:
        return f"{INSTANCE_NAMESPACE_URI}:{self._plc_config.id}"

    @property
    def config(self) -> OpcUaServerConfig:
        return self._config

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def server(self) -> Server:
        """The underlying asyncua server (for tests and diagnostics); only while running."""
        if self._server is None:
            raise RuntimeError("the OPC UA server is not running")
        return self._server

    @property
    def nodes(self) -> PlantNodes:
        if self._nodes is None:
            raise RuntimeError("the OPC UA server is not running")
        return self._nodes

    @property
    def alarms(self) -> AlarmMonitor:
        if self._alarms is None:
            raise RuntimeError("the OPC UA server is not running")
        return self._alarms

    @property
    def publisher(self) -> ValuePublisher:
        if self._publisher is None:
            raise RuntimeError("the OPC UA server is not running")
        return self._publisher

    async def start(self) -> None:
        if self._server is not None:
            return
        began = time.perf_counter()
        server = await self._create_server()
        try:
            await self._build(server)
            await server.start()
        except BaseException:
            await self._teardown(server)
            raise
        self._server = server
        self.startup_s = time.perf_counter() - began
        assert self._nodes is not None
        log.info(
            "OPC UA server for PLC %s at %s: %d nodes in %.2f s",
            self._plc_config.id,
            self.endpoint_url,
            self._nodes.node_count,
            self.startup_s,
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await self._teardown(server)

    # --- building ----------------------------------------------------------------------------------

    async def _create_server(self) -> Server:
        config = self._config
        roles = RoleResolver(config)
        server = Server(user_manager=PlantUserManager(config))
        # Binds ConditionRefresh/ConditionRefresh2 (alarms.py); the int is the Severity of the
        # RefreshStart/RefreshEnd events that bracket a refresh.
        server.iserver.bind_condition_methods = REFRESH_EVENT_SEVERITY
        await server.init()
        # Client subscriptions publish DataChangeNotifications encoded by notification_encoding.py:
        # asyncua's generic encoder was ~23% of the plant's CPU under a 25,000 values/s subscription.
        install_pre_encoding(server.iserver.subscription_service)
        server.set_endpoint(self.endpoint_url)
        server.socket_address = (self._settings.bind_host, config.port)
        server.set_server_name(f"TwinEdge PLC {self._plc_config.id}")
        await server.set_application_uri(self.application_uri)
        server.set_security_policy([POLICY_TYPES[p] for p in config.security_policies], PlantRuleset(roles))
        server.set_identity_tokens(identity_tokens(config))
        if config.needs_certificate:
            pki = pki_layout(config, self._settings.data_dir, self._plc_config.id)
            await setup_certificate(server, pki, self.application_uri, self._plc_config.id)
            server.set_certificate_validator(ClientCertificateValidator(pki, config.auto_accept))
        return server

    async def _build(self, server: Server) -> None:
        await import_nodesets(server)
        ns = await server.register_namespace(INSTANCE_NAMESPACE_URI)
        types_ns = await server.register_namespace(TYPES_NAMESPACE_URI)
        iserver = server.iserver
        nodes = build_plant_nodes(
            iserver.aspace,
            ns,
            types_ns,
            (self._site.id, self._site.name or self._site.id),
            (self._area.id, self._area.name or self._area.id),
            self._plc_config.id,
            [AssetGroupView(group.model, group.asset_ids) for group in self._plc.groups],
            historizing=self._config.history_window_s > 0,
        )
        self._writes = PlcAttributeService(
            iserver.aspace, self._plc, nodes.tags, {ns, types_ns}, RoleResolver(self._config)
        )
        iserver.attribute_service = self._writes
        self._writes.set_methods(set(nodes.commands))
        server.subscribe_server_callback(CallbackType.PostRead, self._writes.user_access_after_read)
        self._methods = CommandMethods(self._plc)
        for nodeid, ref in nodes.commands.items():
            iserver.aspace.add_method_callback(nodeid, self._methods.handler(ref))
        history = self._history_storage(server, nodes)
        alarms = AlarmMonitor(nodes.groups, iserver.subscription_service, ns)
        publisher = ValuePublisher(nodes.groups, history, alarms)
        if self._plc.image is not None:  # the PLC is already scanning: show its latest image now
            publisher.on_scan(self._plc.image)
        publisher.start()
        alarms.start()
        self._nodes, self._publisher, self._alarms = nodes, publisher, alarms
        if not self._listening:  # Plc has no remove_listener: register once, forward while running
            self._plc.add_listener(self._on_scan)
            self._listening = True

    def _history_storage(self, server: Server, nodes: PlantNodes) -> PlantHistory | None:
        """Analog variables keep ``history_window_s`` of values (history.py: why not asyncua's own
        historize_node_data_change, and what it costs)."""
        if self._config.history_window_s <= 0:
            return None
        storage = PlantHistory(self._config.history_window_s)
        server.iserver.history_manager.set_storage(storage)
        for group in nodes.groups:
            for slot in group.tags:
                if values.variable_type(slot.spec) is values.VariableType.ANALOG_ITEM:
                    slot.history = storage.track(slot.nodeids)
        return storage

    def _on_scan(self, image: ProcessImage) -> None:
        publisher = self._publisher
        if publisher is not None:
            publisher.on_scan(image)

    async def _teardown(self, server: Server) -> None:
        publisher, self._publisher = self._publisher, None
        alarms, self._alarms = self._alarms, None
        self._nodes = None
        if publisher is not None:
            await publisher.stop()
        if alarms is not None:
            await alarms.stop()
        try:
            await server.stop()
        except Exception:  # a half-started server: nothing left worth reporting to the caller
            log.debug("OPC UA server stop failed", exc_info=True)
