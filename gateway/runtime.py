"""Builds the gateway from validated config and runs it: sinks first, sources last; stops in reverse.

Stopping order matters for "losing nothing": polling stops first, then the pipeline's last batches
are in the sinks' durable outboxes, then each sink drains what it can before closing. What it cannot
deliver stays in its outbox for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import uvicorn
from prometheus_client import CollectorRegistry

from gateway.api.app import create_app
from gateway.api.state import AssetInfo, EdgeState, SourceStatus
from gateway.catalogue import Catalogue, load_catalogue
from gateway.common.configfile import ConfigError
from gateway.config import GatewayConfig, SourceConfig
from gateway.latest import LatestValues
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.poller import Poller
from gateway.processors import Deadband, ReportByException
from gateway.sinks.base import Sink
from gateway.sinks.influx import InfluxSink
from gateway.sinks.mqtt import MqttSink
from gateway.sources.base import Source
from gateway.sources.config import ModbusSourceConfig
from gateway.sources.modbus import ModbusSource
from gateway.sources.opcua import OpcUaSource

log = logging.getLogger(__name__)


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


def build_gateway(config: GatewayConfig) -> Gateway:
    """Construct every part (no I/O beyond reading the catalogue file)."""
    try:
        catalogue = _load_catalogue(config)
    except Exception as exc:  # the catalogue's own error names file and key
        raise ConfigError([str(exc)]) from None
    data_dir = config.gateway.data_dir
    sinks: list[Sink] = []
    if config.sinks.mqtt.enabled:
        sinks.append(MqttSink(config.sinks.mqtt, config.gateway.id, data_dir))
    if config.sinks.influx.enabled:
        sinks.append(InfluxSink(config.sinks.influx, config.gateway.id, data_dir))
    processing = config.processing
    filter_ = None
    if processing.report_by_exception:
        filter_ = ReportByException(
            default=Deadband(absolute=processing.deadband_absolute, percent=processing.deadband_percent),
            max_age_s=processing.max_age_s,
        )
    latest = LatestValues()
    pipeline = Pipeline(sinks, latest, filter_)
    poller = Poller(pipeline.on_batch)
    sources = []
    for source_config in config.sources:
        source = _build_source(source_config, catalogue)
        poller.add(source, source_config.interval_ms / 1000.0)
        sources.append(source)
    endpoints = {s.name: (s.protocol, _endpoint(s, catalogue)) for s in config.sources}

    def source_status() -> list[SourceStatus]:
        stats = poller.stats()
        return [
            SourceStatus(name, protocol, endpoint, stats[name].connected if name in stats else False)
            for name, (protocol, endpoint) in endpoints.items()
        ]

    state = EdgeState(config.gateway.id, latest, _assets(config, catalogue), source_status)
    metrics = GatewayMetrics(CollectorRegistry(), poller, sinks, pipeline)
    return Gateway(config, catalogue, sinks, sources, pipeline, poller, state, metrics)


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
    if config.api.enabled:
        base = f"http://{config.api.host}:{config.api.port}"
        lines.append(f"  API: {base}/api/v1  docs: {base}/docs  metrics: {base}/metrics")
    return lines


async def run_gateway(gateway: Gateway, stop: asyncio.Event, announce: bool = True) -> None:
    """Run until ``stop`` is set, then stop in reverse order of start."""
    config = gateway.config
    async with AsyncExitStack() as stack:
        for sink in gateway.sinks:
            await sink.start()
            stack.push_async_callback(sink.close)
        server: uvicorn.Server | None = None
        if config.api.enabled:
            app = create_app(gateway.state, gateway.metrics.registry)
            server = _EmbeddedServer(uvicorn.Config(app, host=config.api.host, port=config.api.port,
                                                    log_level="warning", lifespan="off"))
            api_task = asyncio.create_task(server.serve())
            while not server.started and not api_task.done():  # noqa: ASYNC110 - uvicorn has no startup event
                await asyncio.sleep(0.05)
            if api_task.done():
                api_task.result()
                raise OSError(f"the API could not listen on {config.api.host}:{config.api.port}")
        await stack.enter_async_context(gateway.poller)
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
