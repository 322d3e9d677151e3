"""The gateway end to end (issue 6): plant -> OPC UA + Modbus -> gateway -> MQTT subscriber and VictoriaMetrics.

    .venv/bin/python bench/gateway_bench.py [--rate 50000] [--duration 300] [--warmup 30]
    .venv/bin/python bench/gateway_bench.py --protocol opcua|modbus ...   # one protocol at the full rate
    .venv/bin/python bench/gateway_bench.py --sweep [--duration 30]       # 1k, 10k, 50k, 100k values/s

What runs, each in its own process, all on 127.0.0.1 free ports, all stopped when the bench ends
(try/finally, atexit, and PR_SET_PDEATHSIG so even a SIGKILLed bench leaves nothing behind):

1. mosquitto (no persistence, no per-client queue limit) and victoria-metrics (fresh data dir).
2. A subscriber, Mosquitto's C client ``mosquitto_sub`` (QoS 1 on ``bench/#``, subscribed before the
   gateway starts), writing every message with its arrival time to a file, which the bench tallies
   after the window (so the instrument costs the shared cores little): every value of every
   per-asset message (the tags in ``values``) and the latency arrival time - ``source_ts`` per
   protocol, as a 1 ms histogram. Modbus readings are stamped with the gateway's
   poll time, OPC UA ones with the plant's scan time, so the two latencies measure different spans.
3. ``python -m devices plant`` with a generated config: conveyors (11 tags each) on several PLCs
   scanning every 100 ms. Half the target rate comes from PLCs read over Modbus (every tag every
   ``--interval-ms``), half from PLCs read over OPC UA subscriptions (sampling = publishing =
   ``--interval-ms``; only changes are notified, ``OPCUA_CHANGE_FRACTION`` of conveyor tags per scan).
   A PLC serves only the protocol it is read by; security policy None.
4. ``python -m gateway`` with a generated config: one source per PLC, MQTT QoS 1 (defaults: per-asset
   messages, retained), Influx v2 API to victoria-metrics, API (``/metrics``) on a free port.

After ``--warmup`` seconds the measurement window of ``--duration`` seconds starts: gateway counters,
CPU of every process (``/proc``) and the subscriber's window are taken at both ends. Then the plant is
stopped, so no further Good value can be read (the gateway keeps publishing Bad ``no communication``
readings, as it must), and the bench waits until the outboxes are empty and every Good value the
gateway read has reached the subscriber and the database (bounded by ``--drain``). Loss is Good
values read by the gateway (``twinedge_source_values - twinedge_source_bad_values``) minus distinct
Good values delivered; duplicates are repeats of a (series, source_ts) seen at the subscriber.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from _procs import (
    HOST,
    Child,
    ProcSample,
    descendants,
    free_port,
    http_get,
    http_ok,
    start_mosquitto,
    start_victoria_metrics,
    stop_all,
    tree_sample,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "bench"
TAGS_PER_CONVEYOR = 11
# Share of conveyor tags whose value, as the plant exposes it, changes in a scan once the belts run;
# OPC UA subscriptions notify only those. Measured on the model over scans 100-1,200 of 100 conveyors:
# 0.565, with each float32 tag compared as float32 (0.641 on the model's float64 state, which
# overstated the OPC UA load by 13%: some changes are below a float32's resolution and never notified).
OPCUA_CHANGE_FRACTION = 0.565
# Per PLC, so one source's poll stays well inside the interval: a conveyor costs the Modbus source three
# requests (input registers, discrete input, holding registers: the planner never bridges the unmapped
# gap between two assets' blocks) and requests of one source are sequential.
MAX_CONVEYORS_PER_PLC = {"opcua": 100, "modbus": 40}
SWEEP_RATES = (1_000, 10_000, 50_000, 100_000)
PROTOCOLS = ("opcua", "modbus")
HISTOGRAM_MS = 60_000  # latency histogram: 1 ms bins up to 60 s, the last bin holds the overflow
STARTUP_S = 300.0  # plant (OPC UA address spaces) + gateway start-up budget


# --- the MQTT subscriber -------------------------------------------------------------------------------


@dataclass
class _Counts:
    values: int = 0  # every value in a per-asset message
    good: int = 0  # Good quality
    duplicates: int = 0  # Good values whose (series, source_ts) is not newer than the last seen
    window_good: int = 0  # Good values arriving inside the measurement window
    negative: int = 0  # arrivals stamped before their source_ts (clock steps); counted in bin 0
    histogram: list[int] = field(default_factory=lambda: [0] * (HISTOGRAM_MS + 1))


class _Collector:
    """Tallies messages as ``(arrival epoch s, payload)``."""

    def __init__(self) -> None:
        self.counts = {p: _Counts() for p in PROTOCOLS}
        self.messages = 0
        self.window = (math.inf, math.inf)  # wall-clock [start, end) of the measurement window
        self.last_ts: dict[tuple[str, str, str], float] = {}
        self._ts_ms: dict[str, float] = {}

    def ts_ms(self, text: str) -> float:
        value = self._ts_ms.get(text)
        if value is None:
            if len(self._ts_ms) > 200_000:
                self._ts_ms.clear()
            value = self._ts_ms[text] = datetime.fromisoformat(text).timestamp() * 1000.0
        return value

    def on_message(self, arrival: float, payload: bytes) -> None:
        if not payload:
            return
        body = orjson.loads(payload)
        values = body.get("values") if isinstance(body, dict) else None
        if not isinstance(values, dict):
            return  # status messages and the start-up probe
        device, asset = str(body.get("device")), str(body.get("asset"))
        counts = self.counts["opcua" if device.endswith("-opcua") else "modbus"]
        arrival_ms = arrival * 1000.0
        in_window = self.window[0] <= arrival < self.window[1]
        self.messages += 1
        counts.values += len(values)
        for tag, sample in values.items():
            if sample.get("quality") != "Good":
                continue
            counts.good += 1
            ts = self.ts_ms(sample["source_ts"])
            key = (device, asset, tag)
            if ts <= self.last_ts.get(key, -math.inf):
                counts.duplicates += 1
                continue
            self.last_ts[key] = ts
            if in_window:
                counts.window_good += 1
                latency = int(arrival_ms - ts)
                if latency < 0:
                    counts.negative += 1
                    latency = 0
                counts.histogram[min(latency, HISTOGRAM_MS)] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"messages": self.messages,
                "protocols": {p: {"values": c.values, "good": c.good, "duplicates": c.duplicates,
                                  "window_good": c.window_good, "negative": c.negative,
                                  "histogram": {i: n for i, n in enumerate(c.histogram) if n}}
                              for p, c in self.counts.items()}}


class Subscriber:
    """Mosquitto's own C client, ``mosquitto_sub`` (QoS 1 on ``bench/#``), writes every message with its
    arrival time to a file, and the bench tallies the file when it asks for stats. The instrument
    shares the two cores with what it measures, so it must cost little while the window runs: a paho
    subscriber decoding in Python took 31% of a core at 37,000 values/s, this one takes a few percent
    and the decoding happens during the drain."""

    def __init__(self, port: int, directory: Path) -> None:
        self.path = directory / "subscriber.txt"
        self.child = Child("subscriber", [
            "mosquitto_sub", "-h", HOST, "-p", str(port), "-V", "mqttv311", "-q", "1",
            "-i", "gateway-bench-subscriber", "-t", f"{PREFIX}/#", "-F", "%U %p"], self.path)
        self.collector = _Collector()
        self.unparsed = 0  # lines that are not "<arrival> <payload>" (mosquitto_sub's own messages)
        self._offset = 0
        # Subscribed once a probe published after the start comes back (mosquitto_sub prints no SUBACK).
        probe = f"probe-{os.getpid()}-{time.time_ns()}"

        def probe_seen() -> bool:
            subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(port), "-q", "1", "-t", f"{PREFIX}/probe",
                            "-m", orjson.dumps({"probe": probe}).decode()], check=True, timeout=10)
            return probe in self.path.read_text(errors="replace")
        wait_until(probe_seen, "the MQTT subscriber receiving", 20, [self.child], 0.2)

    @property
    def pid(self) -> int:
        return self.child.pid

    def window(self, start: float, end: float) -> None:
        self.collector.window = (start, end)

    def stats(self) -> dict[str, Any]:
        """Tally the lines written since the last call, then the counts so far."""
        with self.path.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        complete = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self._offset += complete
        for line in data[:complete].splitlines():
            arrival, _, payload = line.partition(b" ")
            try:
                when = float(arrival)
            except ValueError:
                self.unparsed += 1
                continue
            self.collector.on_message(when, payload)
        return self.collector.snapshot() | {"unparsed": self.unparsed}

    def stop(self) -> None:
        self.child.stop()


# --- configs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How many conveyors each protocol needs for its share of the target rate, split over PLCs."""

    rate: int
    interval_ms: int
    protocols: tuple[str, ...]
    modbus_connections: int = 1  # the Modbus sources' `connections`
    modbus_pipeline: int = 1  # and their `pipeline`

    def conveyors(self, protocol: str) -> int:
        if protocol not in self.protocols:
            return 0
        share = self.rate / len(self.protocols)
        per_conveyor = TAGS_PER_CONVEYOR * 1000.0 / self.interval_ms
        if protocol == "opcua":
            per_conveyor *= OPCUA_CHANGE_FRACTION
        return max(1, round(share / per_conveyor))

    def plcs(self, protocol: str) -> list[tuple[str, int]]:
        total = self.conveyors(protocol)
        if total == 0:
            return []
        count = math.ceil(total / MAX_CONVEYORS_PER_PLC[protocol])
        short = "ua" if protocol == "opcua" else "mb"
        return [(f"{short}-{n + 1:02d}", total // count + (1 if n < total % count else 0)) for n in range(count)]

    def expected_rate(self, protocol: str) -> float:
        per = TAGS_PER_CONVEYOR * 1000.0 / self.interval_ms * (OPCUA_CHANGE_FRACTION if protocol == "opcua" else 1)
        return self.conveyors(protocol) * per


def plant_config(layout: Layout, data_dir: Path) -> dict[str, Any]:
    plcs = []
    for protocol in PROTOCOLS:
        for plc_id, conveyors in layout.plcs(protocol):
            plcs.append({
                "id": plc_id,
                "scan_period_ms": 100,
                "opcua": {"enabled": protocol == "opcua", "port": free_port(), "security_policies": ["None"]},
                "modbus": {"enabled": protocol == "modbus", "port": free_port()},
                "assets": [{"type": "conveyor", "id": f"{plc_id}-conveyor", "count": conveyors}],
            })
    return {"plant": {"name": "gateway-bench", "seed": 1, "data_dir": str(data_dir), "bind_host": HOST,
                      "api_port": None},
            "sites": [{"id": "bench", "areas": [{"id": "line", "plcs": plcs}]}]}


def gateway_config(layout: Layout, data_dir: Path, catalogue: Path, mqtt_port: int, influx_url: str,
                   api_port: int, mqtt_publisher: str, outbox: str = "sqlite") -> dict[str, Any]:
    sources = [{"name": f"{plc_id}-{protocol}", "protocol": protocol, "plc": plc_id, "interval_ms": layout.interval_ms}
               | ({"connections": layout.modbus_connections, "pipeline": layout.modbus_pipeline}
                  if protocol == "modbus" else {})
               for protocol in PROTOCOLS for plc_id, _ in layout.plcs(protocol)]
    return {"gateway": {"id": "gw-bench", "data_dir": str(data_dir), "catalogue": str(catalogue), "outbox": outbox},
            "sources": sources,
            "sinks": {"mqtt": {"url": f"mqtt://{HOST}:{mqtt_port}", "topic_prefix": PREFIX, "qos": 1,
                               "publisher": mqtt_publisher},
                      "influx": {"enabled": True, "api": "v2", "url": influx_url, "token": "bench"}},
            "api": {"host": HOST, "port": api_port}}


# --- gateway metrics and the database count -----------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)$')


def scrape(api_port: int) -> dict[tuple[str, str], float]:
    """``/metrics`` as {(name, label string): value}."""
    out: dict[tuple[str, str], float] = {}
    for line in http_get(f"http://{HOST}:{api_port}/metrics").splitlines():
        match = _SAMPLE.match(line)
        if match:
            out[(match[1], match[2] or "")] = float(match[3])
    return out


def metric(samples: dict[tuple[str, str], float], name: str, contains: str = "") -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and contains in labels)


def good_read(samples: dict[tuple[str, str], float], protocol: str) -> float:
    tail = f'-{protocol}"'
    return metric(samples, "twinedge_source_values_total", tail) - metric(samples, "twinedge_source_bad_values_total",
                                                                          tail)


def db_count(url: str, selector: str, since: float) -> int:
    """Samples stored since ``since`` (epoch s), after a flush of VictoriaMetrics' in-memory parts."""
    http_get(f"{url}/internal/force_flush")
    window = math.ceil(time.time() - since) + 120
    query = urllib.parse.urlencode({"query": f"sum(count_over_time({selector}[{window}s]))",
                                    "time": f"{time.time() + 60:.3f}", "nocache": "1"})
    body = json.loads(http_get(f"{url}/api/v1/query?{query}", 120))
    result = body["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


# --- one run -------------------------------------------------------------------------------------------


def percentile(histogram: dict[int, int], q: float) -> float | None:
    total = sum(histogram.values())
    if total == 0:
        return None
    rank, seen = q * total, 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= rank:
            return float(ms)
    return float(max(histogram))


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound a run: SIGALRM raises TimeoutError in the main thread; the caller's finally cleans up."""
    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"run exceeded its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(math.ceil(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def watch(children: list[Child], seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        for child in children:
            child.check()
        time.sleep(min(1.0, left))


def run_once(rate: int, duration: float, warmup: float, interval_ms: int, protocols: tuple[str, ...],
             drain_s: float, keep: bool, modbus_connections: int = 1, modbus_pipeline: int = 1,
             mqtt_publisher: str = "process", outbox: str = "sqlite") -> dict[str, Any]:
    layout = Layout(rate, interval_ms, protocols, modbus_connections, modbus_pipeline)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    result: dict[str, Any] = {"rate_target": rate, "duration_s": duration, "warmup_s": warmup,
                              "interval_ms": interval_ms, "mqtt_publisher": mqtt_publisher, "outbox": outbox,
                              "load_before": os.getloadavg(),
                              "plcs": {p: layout.plcs(p) for p in protocols},
                              "expected_rate": {p: round(layout.expected_rate(p)) for p in protocols}}
    subscriber: Subscriber | None = None
    try:
        with deadline(STARTUP_S + warmup + duration + drain_s + 120):
            mosquitto, mqtt_port = start_mosquitto(tmp / "mosquitto")
            vm, vm_url = start_victoria_metrics(tmp / "victoria-metrics")
            subscriber = Subscriber(mqtt_port, tmp)
            plant_dir = tmp / "plant"
            plant_dir.mkdir()
            (tmp / "plant.yaml").write_text(json.dumps(plant_config(layout, plant_dir), indent=1))
            plant = Child("plant", [sys.executable, "-m", "devices", "plant", "--config", str(tmp / "plant.yaml")],
                          tmp / "plant.log", cwd=ROOT)
            wait_until(lambda: "plant ready" in plant.log_tail(), "plant ready", STARTUP_S, [plant], 0.5)
            api_port = free_port()
            (tmp / "gateway.yaml").write_text(json.dumps(gateway_config(
                layout, tmp / "gateway", plant_dir / "catalogue.json", mqtt_port, vm_url, api_port, mqtt_publisher,
                outbox),
                indent=1))
            gateway = Child("gateway", [sys.executable, "-m", "gateway", "--config", str(tmp / "gateway.yaml")],
                            tmp / "gateway.log", cwd=ROOT)
            sources = sum(len(layout.plcs(p)) for p in protocols)
            wait_until(lambda: http_ok(f"http://{HOST}:{api_port}/metrics")
                       and metric(scrape(api_port), "twinedge_source_connected") == sources,
                       "every gateway source connected", 120, [plant, gateway], 0.5)
            children = [mosquitto, vm, plant, gateway]
            pids = {c.name: c.pid for c in children} | {"subscriber": subscriber.pid}
            watch(children, warmup)
            # The gateway row counts its MQTT publisher process too; this row shows that part alone.
            for worker in descendants(gateway.pid)[:1]:
                pids["of which mqtt worker"] = worker

            before = {n: tree_sample(p) for n, p in pids.items()}
            m0, t0 = scrape(api_port), time.time()
            subscriber.window(t0, t0 + duration)
            depth_max = 0.0
            end = time.monotonic() + duration
            while time.monotonic() < end:
                watch(children, min(5.0, max(0.0, end - time.monotonic())))
                depth_max = max(depth_max, metric(scrape(api_port), "twinedge_outbox_depth"))
            m1, t1 = scrape(api_port), time.time()
            after = {n: tree_sample(p) for n, p in pids.items()}
            result["load_end"] = os.getloadavg()
            elapsed = t1 - t0

            plant.stop()  # no Good value can be read from here on
            state: dict[str, Any] = {}

            listener = subscriber

            def drained() -> bool:
                # Counts, not outbox depth: the Bad readings the gateway keeps producing for the
                # stopped plant keep the outboxes busy, but no Good value is read after the stop.
                samples, sub = scrape(api_port), listener.stats()
                state.update(samples=samples, sub=sub)
                read = sum(good_read(samples, p) for p in protocols)
                got: int = sum(c["good"] - c["duplicates"] for c in sub["protocols"].values())
                return got >= read

            drain_start = time.monotonic()
            with contextlib.suppress(TimeoutError):
                wait_until(drained, "outboxes drained and every Good value at the subscriber", drain_s,
                           [gateway], 1.0)
            read_total = sum(good_read(state["samples"], p) for p in protocols)
            db_good = 0
            with contextlib.suppress(TimeoutError):
                def in_db() -> bool:
                    nonlocal db_good
                    db_good = db_count(vm_url, 'telemetry_value{quality="Good"}', t0 - warmup - STARTUP_S)
                    return db_good >= read_total
                wait_until(in_db, "every Good value in VictoriaMetrics",
                           max(10.0, drain_s - (time.monotonic() - drain_start)), [gateway], 2.0)
            result["drain_s"] = round(time.monotonic() - drain_start, 1)
            final, sub = scrape(api_port), subscriber.stats()
            finals = {n: tree_sample(p) for n, p in pids.items()}

            result["protocols"] = {}
            for p in protocols:
                counts = sub["protocols"][p]
                read = good_read(final, p)
                delivered = counts["good"] - counts["duplicates"]
                hist = {int(k): v for k, v in counts["histogram"].items()}
                result["protocols"][p] = {
                    "read_per_s": round((good_read(m1, p) - good_read(m0, p)) / elapsed),
                    "delivered_per_s": round(counts["window_good"] / elapsed),
                    "read": int(read), "delivered": int(delivered), "loss": int(read - delivered),
                    "duplicates": counts["duplicates"], "bad_values": counts["values"] - counts["good"],
                    "p50_ms": percentile(hist, 0.50), "p99_ms": percentile(hist, 0.99),
                    "max_ms": float(max(hist)) if hist else None, "negative": counts["negative"]}
            result["db_good"] = db_good
            result["db_loss"] = int(read_total - db_good)
            result["subscriber_unparsed"] = sub["unparsed"]  # mosquitto_sub's own messages in its output
            result["gateway"] = {
                "pipeline_out": int(metric(final, "twinedge_pipeline_readings_out_total")),
                "source_values": int(metric(final, "twinedge_source_values_total")),
                "overruns": int(metric(final, "twinedge_source_overruns_total")),
                "source_errors": int(metric(final, "twinedge_source_errors_total")),
                "sink_errors": int(metric(final, "twinedge_sink_errors_total")),
                "dropped": int(metric(final, "twinedge_sink_dropped_total")),
                "outbox_depth_max": int(depth_max)}
            result["processes"] = {}
            for name in pids:
                a, b, f = before[name], after[name], finals[name]
                last: ProcSample | None = f or b
                result["processes"][name] = {
                    "cpu_pct": round(100 * (b.cpu_s - a.cpu_s) / elapsed, 1) if a and b else None,
                    "rss_mb": round(b.rss_kb / 1024) if b else None,
                    "peak_rss_mb": round(last.hwm_kb / 1024) if last else None}
            gw_cpu = (after["gateway"].cpu_s - before["gateway"].cpu_s) if after["gateway"] and before["gateway"] else 0
            window_read = sum(good_read(m1, p) - good_read(m0, p) for p in protocols)
            result["gateway_values_per_cpu_s"] = round(window_read / gw_cpu) if gw_cpu else None
            gateway.stop()
        return result
    finally:
        if subscriber is not None:
            subscriber.stop()
        stop_all()
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --- reporting -----------------------------------------------------------------------------------------


def _fmt(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{suffix}"


def report(r: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in r["load_before"])
    plcs = "; ".join(f"{p}: {len(v)} PLC(s), {sum(n for _, n in v)} conveyors" for p, v in r["plcs"].items())
    lines = [f"target {r['rate_target']:,} values/s, window {r['duration_s']:g} s after {r['warmup_s']:g} s warm-up, "
             f"interval {r['interval_ms']} ms; {plcs}; outbox {r['outbox']}, MQTT publisher {r['mqtt_publisher']}; "
             f"load average before {load}", "",
             "| protocol | expected/s | read/s | delivered/s (MQTT) | read | delivered | loss | duplicates "
             "| p50 ms | p99 ms | max ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p, s in r["protocols"].items():
        lines.append(f"| {p} | {_fmt(r['expected_rate'][p])} | {_fmt(s['read_per_s'])} | {_fmt(s['delivered_per_s'])} "
                     f"| {_fmt(s['read'])} | {_fmt(s['delivered'])} | {s['loss']} | {s['duplicates']} "
                     f"| {_fmt(s['p50_ms'])} | {_fmt(s['p99_ms'])} | {_fmt(s['max_ms'])} |")
    g = r["gateway"]
    lines += ["", f"database: {r['db_good']:,} Good points, loss {r['db_loss']}; gateway: pipeline out "
              f"{g['pipeline_out']:,}, overruns {g['overruns']}, source errors {g['source_errors']}, sink errors "
              f"{g['sink_errors']}, dropped {g['dropped']}, max outbox depth {g['outbox_depth_max']:,}; drained in "
              f"{r['drain_s']} s; gateway {_fmt(r['gateway_values_per_cpu_s'])} values per CPU-second; "
              f"{r['subscriber_unparsed']} subscriber lines not messages", "",
              "| process | CPU % of one core | RSS MB (end of window) | peak RSS MB |", "|---|---:|---:|---:|"]
    for name, s in r["processes"].items():
        lines.append(f"| {name} | {s['cpu_pct'] if s['cpu_pct'] is not None else '-'} | {_fmt(s['rss_mb'])} "
                     f"| {_fmt(s['peak_rss_mb'])} |")
    return "\n".join(lines)


def sweep_report(runs: list[dict[str, Any]]) -> str:
    names = ("gateway", "plant", "mosquitto", "victoria-metrics", "subscriber")
    head = "| target/s | read/s | delivered/s | loss | p99 ms (opcua / modbus) | values per gateway CPU-s | " + \
        " | ".join(f"{n} CPU % / peak MB" for n in names) + " |"
    lines = [head, "|" + "---:|" * (6 + len(names))]
    for r in runs:
        ps = r["protocols"].values()
        p99 = " / ".join(_fmt(r["protocols"][p]["p99_ms"]) if p in r["protocols"] else "-" for p in PROTOCOLS)
        cells = [f"{r['processes'][n]['cpu_pct']} / {_fmt(r['processes'][n]['peak_rss_mb'])}" for n in names]
        lines.append(f"| {r['rate_target']:,} | {_fmt(sum(s['read_per_s'] for s in ps))} "
                     f"| {_fmt(sum(s['delivered_per_s'] for s in ps))} | {sum(s['loss'] for s in ps)} | {p99} "
                     f"| {_fmt(r['gateway_values_per_cpu_s'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=50_000, help="target values/s (default: %(default)s)")
    parser.add_argument("--duration", type=float, help="measurement window, s (default: 300, 30 with --sweep)")
    parser.add_argument("--warmup", type=float, help="s before the window (default: 30, 10 with --sweep)")
    parser.add_argument("--interval-ms", type=int, default=100, help="source interval (default: %(default)s)")
    parser.add_argument("--protocol", choices=("both", *PROTOCOLS), default="both")
    parser.add_argument("--modbus-connections", type=int, default=1,
                        help="TCP connections per Modbus source (the source's `connections` key)")
    parser.add_argument("--modbus-pipeline", type=int, default=1,
                        help="requests outstanding per Modbus connection (the source's `pipeline` key)")
    parser.add_argument("--drain", type=float, default=300.0, help="max s to wait for the outboxes (%(default)s)")
    parser.add_argument("--sweep", action="store_true", help="short runs at " + ", ".join(map(str, SWEEP_RATES)))
    parser.add_argument("--mqtt-publisher", choices=("process", "loop"), default="process",
                        help="where the gateway runs paho (sinks.mqtt.publisher; default: %(default)s)")
    parser.add_argument("--outbox", choices=("sqlite", "log"), default="sqlite",
                        help="the gateway's outbox store (gateway.outbox; default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so finally blocks stop the children
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    duration = args.duration if args.duration is not None else (30.0 if args.sweep else 300.0)
    warmup = args.warmup if args.warmup is not None else (10.0 if args.sweep else 30.0)
    runs = []
    failed = 0
    for rate in (SWEEP_RATES if args.sweep else (args.rate,)):
        try:
            result = run_once(rate, duration, warmup, args.interval_ms, protocols, args.drain, args.keep,
                              args.modbus_connections, args.modbus_pipeline, args.mqtt_publisher, args.outbox)
        except (RuntimeError, TimeoutError, OSError) as exc:
            if not args.sweep:
                raise
            print(f"run at {rate:,} values/s failed: {exc}\n", flush=True)  # the sweep goes on
            failed += 1
            continue
        print(report(result) + "\n", flush=True)
        runs.append(result)
    if args.sweep:
        print(sweep_report(runs))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1, default=str) + "\n")
    losses = sum(s["loss"] for r in runs for s in r["protocols"].values()) + sum(r["db_loss"] for r in runs)
    return 0 if losses == 0 and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
