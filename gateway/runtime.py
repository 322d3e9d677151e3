"""Builds the gateway from validated config and runs it: sinks first, sources last; stops in reverse.

Stopping order matters for "losing nothing": polling stops first, then the pipeline's last batches
are in the sinks' durable outboxes, then each sink drains what it can before closing. What it cannot
deliver stays in its outbox for the next start.

Start order: sinks, the alert publisher, the edge services (database, first admin, alert rules,
command recovery), the mine snapshot loop, the API, and the poller last, so the first batch finds
every consumer ready. Each batch goes through the Pipeline (latest values, sinks) and then the
runtime's consumers (see ``_Consumers``): history ring, command read-back, WebSocket hub, alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from gateway.alert_publisher import AlertMqttPublisher
from gateway.alerts.store import AlertRecord
from gateway.api.app import ApiParts, create_app
from gateway.api.edge import EdgeServices
from gateway.api.seed_routes import MineSnapshots
from gateway.api.state import AssetInfo, EdgeState, RecentHistory, SourceStatus
from gateway.api.ws_hub import WsHub
from gateway.catalogue import Catalogue, load_catalogue
from gateway.commands.queue import CommandRejected
from gateway.commands.store import CommandRecord, CommandRequest
from gateway.commands.validation import catalogue_validator
from gateway.common.configfile import ConfigError
from gateway.common.heap import settle_after_startup
from gateway.config import GatewayConfig, SourceConfig
from gateway.encoders.uns_json import format_ts, json_value
from gateway.executor import CommandExecutor
from gateway.history import APP_STATE_KEY, history_reader
from gateway.latest import LatestValues
from gateway.metrics import GatewayMetrics
from gateway.pipeline import BatchFilter, Pipeline
from gateway.poller import Poller
from gateway.processors import Deadband, RepeatedBadFilter, ReportByException
from gateway.readings import Reading
from gateway.sinks.base import Sink
from gateway.sinks.influx import InfluxSink
from gateway.sinks.mqtt import MqttSink
from gateway.sinks.sparkplug import SparkplugSink
from gateway.sources.base import Source
from gateway.sources.config import ModbusSourceConfig
from gateway.sources.modbus import ModbusSource
from gateway.sources.opcua import OpcUaSource
from gateway.storage.db import Database

log = logging.getLogger(__name__)

STOP_STEP_S = 10  # the longest one shutdown step may take (a sink drains for 5 s of it)
STALE_CHECK_S = 1.0  # how often alerts are evaluated without data, so stale-data rules fire


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our own loop: the process's signal handling stays ours, not uvicorn's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Gateway:
    """Everything the runtime built, for the API, the CLI summary and tests."""

    config: GatewayConfig
    catalogue: Catalogue | None
    sinks: list[Sink]
    sources: list[Source]
    pipeline: Pipeline
    poller: Poller
    state: EdgeState
    metrics: GatewayMetrics
    edge: EdgeServices
    hub: WsHub
    executor: CommandExecutor
    snapshots: MineSnapshots
    alert_mqtt: AlertMqttPublisher | None


def _load_catalogue(config: GatewayConfig) -> Catalogue | None:
    path = config.gateway.catalogue_path
    if path is None or not any(source.plc is not None for source in config.sources):
        return None
    return load_catalogue(path)


def _build_source(config: SourceConfig, catalogue: Catalogue | None) -> Source:
    if isinstance(config, ModbusSourceConfig):
        return ModbusSource(config, catalogue)
    return OpcUaSource(config, catalogue)


def _endpoint(config: SourceConfig, catalogue: Catalogue | None) -> str:
    if config.plc is not None and catalogue is not None:
        plc = catalogue.plc(config.plc)
        if isinstance(config, ModbusSourceConfig):
            return f"{plc.modbus.host}:{plc.modbus.port}" if plc.modbus else ""
        return plc.opcua.endpoint if plc.opcua else ""
    if isinstance(config, ModbusSourceConfig):
        return f"{config.host}:{config.port}"
    return config.endpoint or ""


def _assets(config: GatewayConfig, catalogue: Catalogue | None) -> dict[str, AssetInfo]:
    assets: dict[str, AssetInfo] = {}
    for source in config.sources:
        if source.plc is not None and catalogue is not None:
            plc = catalogue.plc(source.plc)
            for asset in plc.assets:
                assets[asset.id] = AssetInfo(asset.id, asset.type, plc.id, plc.site, plc.area)
        else:
            for tag in source.tags:
                assets.setdefault(tag.asset, AssetInfo(tag.asset, "custom", source.name, source.site, source.area))
    return assets


def _command_routes(config: GatewayConfig, assets: dict[str, AssetInfo],
                    catalogue: Catalogue | None) -> dict[str, str]:
    """asset -> the source its commands go through: ``commands.route`` by asset or PLC id, else the
    first source in config order that reads the asset."""
    routes: dict[str, str] = {}
    for source in config.sources:
        if source.plc is not None and catalogue is not None:
            ids = [a.id for a in catalogue.plc(source.plc).assets]
        else:
            ids = [t.asset for t in source.tags]
        for asset in ids:
            routes.setdefault(asset, source.name)
    for asset, info in assets.items():
        chosen = config.commands.route.get(asset) or config.commands.route.get(info.plc)
        if chosen is not None:
            routes[asset] = chosen
    return routes


class _Consumers:
    """What each batch feeds after the Pipeline: kept here, so the Pipeline stays sinks + latest values.
    Each consumer is isolated: one raising must not starve the others or stop polling."""

    def __init__(self, pipeline: Pipeline, history: RecentHistory, hub: WsHub) -> None:
        self.pipeline = pipeline
        self.history = history
        self.hub = hub
        self.executor: CommandExecutor | None = None
        self.edge: EdgeServices | None = None

    async def on_batch(self, readings: list[Reading]) -> None:
        await self.pipeline.on_batch(readings)
        for consume in (self.history.add, self.hub.publish_readings,
                        self.executor.observe if self.executor is not None else None):
            if consume is not None:
                try:
                    consume(readings)
                except Exception:
                    log.exception("batch consumer %s failed", getattr(consume, "__qualname__", consume))
        if self.edge is not None:
            try:
                await self.edge.alerts.process(readings)
            except Exception:
                log.exception("alerts: evaluating a batch of %d readings failed", len(readings))


def _validator(catalogue: Catalogue | None, assets: dict[str, AssetInfo]) -> Callable[[CommandRequest], None]:
    if catalogue is not None:
        return catalogue_validator(catalogue)

    def known_asset(request: CommandRequest) -> None:
        # Hand-listed tags carry no ranges: only the asset is checked; the device judges the value.
        if request.asset not in assets:
            raise CommandRejected(f"unknown asset {request.asset!r}")

    return known_asset


def build_gateway(config: GatewayConfig) -> Gateway:
    """Construct every part (no I/O beyond reading the catalogue file)."""
    try:
        catalogue = _load_catalogue(config)
    except Exception as exc:  # the catalogue's own error names file and key
        raise ConfigError([str(exc)]) from None
    data_dir, outbox = config.gateway.data_dir, config.gateway.outbox
    sinks: list[Sink] = []
    if config.sinks.mqtt.enabled:
        sinks.append(MqttSink(config.sinks.mqtt, config.gateway.id, data_dir, outbox=outbox))
    if config.sinks.influx.enabled:
        sinks.append(InfluxSink(config.sinks.influx, config.gateway.id, data_dir, outbox=outbox))
    if config.sinks.sparkplug.enabled:
        sinks.append(SparkplugSink(config.sinks.sparkplug, config.gateway.id, data_dir, outbox=outbox))
    processing = config.processing
    filter_: BatchFilter | None = None
    if processing.report_by_exception:  # holds back unchanged Bad readings too
        filter_ = ReportByException(
            default=Deadband(absolute=processing.deadband_absolute, percent=processing.deadband_percent),
            max_age_s=processing.max_age_s,
        )
    elif not processing.repeat_bad:
        filter_ = RepeatedBadFilter(processing.max_age_s)
    latest = LatestValues()
    pipeline = Pipeline(sinks, latest, filter_)
    hub = WsHub()
    history = RecentHistory(config.api.history_per_tag)
    consumers = _Consumers(pipeline, history, hub)
    poller = Poller(consumers.on_batch)
    sources = []
    for source_config in config.sources:
        source = _build_source(source_config, catalogue)
        poller.add(source, source_config.interval_ms / 1000.0)
        sources.append(source)
    endpoints = {s.name: (s.protocol, _endpoint(s, catalogue), s.plc) for s in config.sources}

    def source_status() -> list[SourceStatus]:
        stats = poller.stats()
        return [
            SourceStatus(name, protocol, endpoint, stats[name].connected if name in stats else False, plc)
            for name, (protocol, endpoint, plc) in endpoints.items()
        ]

    assets = _assets(config, catalogue)
    state = EdgeState(config.gateway.id, latest, assets, source_status, catalogue, history)
    metrics = GatewayMetrics(CollectorRegistry(), poller, sinks, pipeline)

    commands = config.commands
    routes = _command_routes(config, assets, catalogue)
    # The read-back gives up a little before the queue's own timeout, so FAILED carries its reason.
    readback_s = max(commands.execute_timeout_s * 0.9, commands.execute_timeout_s - 1.0)
    executor = CommandExecutor({s.name: s for s in sources}, routes, poller.refresh, catalogue, latest=latest,
                               rel_tol=commands.readback_rel_tol, timeout_s=readback_s)
    edge = EdgeServices(
        Database.from_config(config.storage, data_dir), data_dir=Path(data_dir), auth=config.api.auth,
        alerts=config.alerts, commands=commands, execute=executor.execute,
        validate=_validator(catalogue, assets),
        # One command at a time per PLC: a PLC applies writes at its scan, in order.
        serial_key=lambda asset: assets[asset].plc if asset in assets else asset,
    )
    consumers.executor, consumers.edge = executor, edge
    for sink in sinks:
        if isinstance(sink, SparkplugSink):  # DCMD writes go through the same queue as REST's
            sink.accept_commands(edge.commands.submit, assets.keys())
    ws = config.api.websocket
    snapshots = MineSnapshots(state, hub, ws.snapshot_period_s, config.api.snapshots_kept)
    alert_mqtt = AlertMqttPublisher(config, assets) if config.sinks.mqtt.enabled else None

    def alert_to_streams(record: AlertRecord) -> None:
        hub.publish("alerts", {"type": "alert", "alert": {
            "id": record.id, "rule": record.rule_id, "asset": record.asset, "tag": record.tag,
            "severity": record.severity, "state": record.state, "message": record.message,
            "value": json_value(record.value), "raised_at": format_ts(record.raised_at),
            "acked_by": record.acked_by, "ack_comment": record.ack_comment}})

    def command_to_stream(record: CommandRecord) -> None:
        hub.publish("commands", {"type": "command", "command": record.as_json()})

    edge.alerts.subscribe(alert_to_streams)
    edge.alerts.subscribe(snapshots.on_alert)
    if alert_mqtt is not None:
        edge.alerts.subscribe(alert_mqtt.on_alert)
    edge.commands.subscribe(command_to_stream)
    return Gateway(config, catalogue, sinks, sources, pipeline, poller, state, metrics, edge, hub, executor,
                   snapshots, alert_mqtt)


def describe(gateway: Gateway) -> Sequence[str]:
    """The endpoints and destinations, one line each, as `twinedge up` prints them."""
    config = gateway.config
    lines = []
    for status in gateway.state.sources():
        lines.append(f"  source {status.name}: {status.protocol} {status.endpoint}")
    if config.sinks.mqtt.enabled:
        lines.append(f"  MQTT: {config.sinks.mqtt.url} topics {config.sinks.mqtt.topic_prefix}/<site>/<area>/<asset>")
    if config.sinks.influx.enabled:
        influx = config.sinks.influx
        target = f"bucket {influx.bucket}" if influx.api == "v2" else f"database {influx.database}"
        lines.append(f"  InfluxDB ({influx.api} API): {influx.url} {target}")
    if config.sinks.sparkplug.enabled:
        spb = config.sinks.sparkplug
        node = spb.edge_node_id or config.gateway.id
        dcmd = " (DCMD writes accepted)" if spb.accept_dcmd else ""
        lines.append(f"  Sparkplug B: {spb.url} spBv1.0/{spb.group_id}/+/{node}/#{dcmd}")
    if config.api.enabled:
        base = f"http://{config.api.host}:{config.api.port}"
        lines.append(f"  API: {base}/api/v1  docs: {base}/docs  metrics: {base}/metrics")
    return lines


async def _check_stale(gateway: Gateway) -> None:
    """Evaluate alerts without data every STALE_CHECK_S, so stale-data rules fire when polls stop."""
    while True:
        await asyncio.sleep(STALE_CHECK_S)
        try:
            await gateway.edge.alerts.process([])
        except Exception:
            log.exception("alerts: the stale-data check failed")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _bounded(stack: AsyncExitStack, what: str, close: Callable[[], Awaitable[None]]) -> None:
    """Register a shutdown step that may take at most STOP_STEP_S, so SIGTERM always ends the
    process; a step that overruns is named in the log instead of hanging the stop."""

    async def step() -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(close(), STOP_STEP_S)
        except TimeoutError:
            log.warning("stop: %s did not finish within %.0f s; abandoned", what, STOP_STEP_S)
        except Exception:
            log.exception("stop: %s failed", what)
        else:
            log.debug("stop: %s took %.2f s", what, time.monotonic() - started)

    stack.push_async_callback(step)


async def run_gateway(gateway: Gateway, stop: asyncio.Event, announce: bool = True) -> None:
    """Run until ``stop`` is set, then stop in reverse order of start."""
    config = gateway.config
    async with AsyncExitStack() as stack:
        for sink in gateway.sinks:
            await sink.start()
            _bounded(stack, f"sink {sink.name}", sink.close)
        if gateway.alert_mqtt is not None:
            await gateway.alert_mqtt.start()
            _bounded(stack, "alert publisher", gateway.alert_mqtt.close)
        _bounded(stack, "edge services", gateway.edge.close)
        admin = await gateway.edge.start()
        if admin is not None and admin.password is not None:
            # Generated once at first start and stored only as a hash: this is the one chance to see it.
            print(f"  first admin: user {admin.username!r} password {admin.password!r} "
                  "(shown once; set TWINEDGE_ADMIN_PASSWORD to choose it)", flush=True)
        gateway.snapshots.start()
        _bounded(stack, "mine snapshots", gateway.snapshots.close)
        stack.push_async_callback(_cancel, asyncio.create_task(_check_stale(gateway), name="alerts-stale"))
        server: uvicorn.Server | None = None
        if config.api.enabled:
            ws = config.api.websocket
            parts = ApiParts(gateway.edge, gateway.hub, gateway.snapshots, ws.queue_size, ws.machine_period_s,
                             ws.allow_query_token)
            app = create_app(gateway.state, gateway.metrics.registry, parts)
            influx_history = history_reader(config.sinks.influx)  # None: history from the local ring
            if influx_history is not None:
                setattr(app.state, APP_STATE_KEY, influx_history)
                _bounded(stack, "history reader", influx_history.close)
            server = _EmbeddedServer(uvicorn.Config(app, host=config.api.host, port=config.api.port,
                                                    log_level="warning", lifespan="off",
                                                    timeout_graceful_shutdown=STOP_STEP_S))
            api_task = asyncio.create_task(server.serve())
            while not server.started and not api_task.done():  # noqa: ASYNC110 - uvicorn has no startup event
                await asyncio.sleep(0.05)
            if api_task.done():
                api_task.result()
                raise OSError(f"the API could not listen on {config.api.host}:{config.api.port}")
        await gateway.poller.start()
        _bounded(stack, "sources", gateway.poller.close)
        # Start-up built the long-lived objects (app, routes, models, clients, catalogue): freezing
        # them keeps the garbage collector from rescanning them at every collection under load.
        settle_after_startup()
        if announce:
            for line in describe(gateway):
                print(line, flush=True)
            print(f"gateway ready: {len(gateway.sources)} source(s), {len(gateway.sinks)} sink(s)", flush=True)
        await stop.wait()
        if server is not None:
            server.should_exit = True
            await api_task


async def serve(config: GatewayConfig) -> None:
    """The `twinedge gateway` process: build, run until SIGINT/SIGTERM, stop cleanly."""
    gateway = build_gateway(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"TwinEdge gateway {config.gateway.id!r} starting", flush=True)
    await run_gateway(gateway, stop)
    print("gateway stopped", flush=True)
