"""Prometheus metrics of sources, sinks and the pipeline, read from their stats at scrape time.

A custom collector instead of counters updated inline: the hot path keeps plain integer counters
and nothing in it knows about Prometheus.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.pipeline import Pipeline
from gateway.poller import Poller
from gateway.sinks.base import Sink


class GatewayMetrics(Collector):
    def __init__(
        self, registry: CollectorRegistry, poller: Poller, sinks: Sequence[Sink], pipeline: Pipeline
    ) -> None:
        self.registry = registry
        self._poller = poller
        self._sinks = tuple(sinks)
        self._pipeline = pipeline
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily("twinedge_source_connected", "1 when the source is connected", labels=["source"])
        reads = CounterMetricFamily("twinedge_source_reads", "Completed polls", labels=["source"])
        values = CounterMetricFamily("twinedge_source_values", "Readings read (any quality)", labels=["source"])
        bad = CounterMetricFamily(
            "twinedge_source_bad_values", "Readings read with non-Good quality", labels=["source"]
        )
        errors = CounterMetricFamily("twinedge_source_errors", "Polls that failed", labels=["source"])
        overruns = CounterMetricFamily("twinedge_source_overruns", "Polls that overran their interval",
                                       labels=["source"])
        source_dropped = CounterMetricFamily(
            "twinedge_source_dropped", "Values dropped by the source (OPC UA notifications it fell behind on)",
            labels=["source"],
        )
        sources = self._poller.sources()
        for name, stats in self._poller.stats().items():
            connected.add_metric([name], 1.0 if stats.connected else 0.0)
            source_dropped.add_metric([name], int(getattr(sources.get(name), "dropped", 0)))
            reads.add_metric([name], stats.reads)
            values.add_metric([name], stats.values)
            bad.add_metric([name], stats.bad_values)
            errors.add_metric([name], stats.errors)
            overruns.add_metric([name], stats.overruns)
        yield from (connected, reads, values, bad, errors, overruns, source_dropped)

        sink_connected = GaugeMetricFamily("twinedge_sink_connected", "1 when the sink reaches its server",
                                           labels=["sink"])
        published = CounterMetricFamily("twinedge_sink_published", "Records delivered and acknowledged",
                                        labels=["sink"])
        sink_errors = CounterMetricFamily("twinedge_sink_errors", "Failed deliveries", labels=["sink"])
        dropped = CounterMetricFamily("twinedge_sink_dropped", "Records dropped (outbox full or rejected)",
                                      labels=["sink"])
        depth = GaugeMetricFamily("twinedge_outbox_depth", "Records waiting in the outbox", labels=["sink"])
        age = GaugeMetricFamily("twinedge_outbox_oldest_age_seconds", "Age of the oldest waiting record",
                                labels=["sink"])
        for sink in self._sinks:
            sink_stats = sink.stats()
            sink_connected.add_metric([sink.name], 1.0 if sink_stats.connected else 0.0)
            published.add_metric([sink.name], sink_stats.published)
            sink_errors.add_metric([sink.name], sink_stats.errors)
            dropped.add_metric([sink.name], sink_stats.dropped)
            depth.add_metric([sink.name], sink_stats.outbox_depth)
            age.add_metric([sink.name], sink_stats.outbox_oldest_age_s)
        yield from (sink_connected, published, sink_errors, dropped, depth, age)

        pipeline_in = CounterMetricFamily("twinedge_pipeline_readings_in", "Readings into the pipeline")
        pipeline_in.add_metric([], self._pipeline.readings_in)
        pipeline_out = CounterMetricFamily("twinedge_pipeline_readings_out", "Readings passed on to the sinks")
        pipeline_out.add_metric([], self._pipeline.readings_out)
        yield from (pipeline_in, pipeline_out)
