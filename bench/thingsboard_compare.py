"""TwinEdge gateway vs ThingsBoard IoT Gateway: delivered values per gateway CPU-second, per protocol (issue 6).

    .venv/bin/python bench/thingsboard_compare.py --window 40 --warmup 10 --repeat 3 --json /tmp/tb-compare.json

One run, one plant, one broker, gateways one at a time (never two gateways competing for the two cores):

1. ThingsBoard IoT Gateway gets its own virtual environment (``bench/.tb-venv``, created once): its
   connectors pin pymodbus 3.9.2 and asyncua 1.1.5, which the TwinEdge venv does not have.
2. mosquitto on a free 127.0.0.1 port, and a TwinEdge plant (``python -m devices plant``) with two PLCs:
   ``plc-ua`` serving ``--variables`` OPC UA variables (conveyors, 11 tags each; Modbus off) and
   ``plc-mb`` serving ``--modbus-tags`` Modbus tags (OPC UA off), both scanning every 100 ms.
   Both gateways' configs are generated from the catalogue the plant writes.
3. Cases: ``opcua-poll`` (read every tag every 100 ms), ``opcua-sub`` (subscriptions, 100 ms) and
   ``modbus`` (every tag every 100 ms). For each case ThingsBoard runs with only that connector, then
   TwinEdge with only that source. ThingsBoard is pointed at mosquitto as if it were the ThingsBoard
   MQTT transport; the bench plays the server's part it cannot do without: it answers the
   ``getSessionLimits`` RPC (``v1/devices/me/rpc/request/<id>`` -> ``v1/devices/me/rpc/response/<id>``)
   with no rate limits, so the gateway starts publishing. ThingsBoard maps the PLC as one device by default
   (``--tb-layout plc``: its cheapest configuration; ``asset`` makes one device per asset, as TwinEdge publishes).
4. A subscriber in the bench counts every value delivered to the broker (ThingsBoard:
   ``v1/gateway/telemetry`` ``{device: [{ts, values: {..}}]}``; TwinEdge: ``<prefix>/<site>/<area>/<asset>``
   ``{.., values: {..}}``) over the window, after the first value plus ``--warmup`` seconds; CPU is
   user + system time of the gateway process and its descendants from ``/proc``.

Prints a table per case and, with ``--json``, one JSON document. Everything listens on 127.0.0.1 and every
child is killed on exit (also when the bench itself is killed: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from _procs import tree_sample
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TB_VENV = ROOT / "bench" / ".tb-venv"
# The newest release on PyPI that runs on Python 3.11, and the library versions its connectors check for
# (connectors/modbus/modbus_connector.py and connectors/opcua/opcua_connector.py: a mismatch makes the
# connector pip-install the pin at start-up).
TB_REQUIREMENTS = (
    "thingsboard-gateway==3.8.5",
    "pymodbus==3.9.2",
    "asyncua==1.1.5",
    "pyserial",
    "pyserial-asyncio",
)
TB_TELEMETRY_TOPIC = "v1/gateway/telemetry"
TB_RPC_REQUEST = "v1/devices/me/rpc/request/"
TB_RPC_RESPONSE = "v1/devices/me/rpc/response/"
TE_PREFIX = "tebench"
CONVEYOR_TAGS = 11  # devices/assets/conveyor.py
CASES = ("opcua-poll", "opcua-sub", "modbus")
_PR_SET_PDEATHSIG = 1

# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    def preexec() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

    return preexec


# mosquitto calls prctl itself and outlives a SIGKILLed bench: it runs under this watchdog, which gets
# SIGTERM when the bench dies and then stops it.
_WATCHDOG = """
import os, signal, subprocess, sys, time
parent = os.getppid()
child = subprocess.Popen(sys.argv[1:])
def stop(*_):
    child.terminate()
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        child.kill()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while child.poll() is None:
    if os.getppid() != parent:
        stop()
    time.sleep(0.5)
sys.exit(child.returncode)
"""


class Child:
    """A subprocess in its own process group, output to a log file; stop() is idempotent."""

    running: list[Child] = []  # noqa: RUF012 - the registry atexit stops

    def __init__(self, name: str, argv: Sequence[str], log: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None, watchdog: bool = False) -> None:
        self.name = name
        self.log = log
        if watchdog:
            argv = [sys.executable, "-c", _WATCHDOG, *argv]
        preexec = _die_with_parent(signal.SIGTERM if watchdog else signal.SIGKILL)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=cwd, env=env, start_new_session=True, preexec_fn=preexec)
        Child.running.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers of the group (the leader is gone)
        if self in Child.running:
            Child.running.remove(self)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all() -> None:
    for child in reversed(list(Child.running)):
        child.stop(grace_s=5.0)


def cpu_seconds(pid: int) -> float:
    """User + system time of ``pid`` and its live descendants (all threads); 0 once it is gone."""
    sample = tree_sample(pid)
    return sample.cpu_s if sample is not None else 0.0


def rss_mb(pid: int) -> float:
    sample = tree_sample(pid)
    return sample.rss_kb / 1024 if sample is not None else 0.0


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if child is not None and not child.alive():
            code = child.proc.returncode
            raise RuntimeError(f"{child.name} exited (code {code}) waiting for {what}:\n{child.tail()}")
        time.sleep(0.2)
    tail = f"\n{child.name} log:\n{child.tail()}" if child is not None else ""
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")


# ------------------------------------------------------------------------------------ ThingsBoard's venv


def ensure_tb_venv(venv: Path) -> Path:
    """Create (once) ThingsBoard IoT Gateway's virtual environment; returns its python."""
    python = venv / "bin" / "python"
    marker = venv / ".bench-requirements"
    wanted = "\n".join(TB_REQUIREMENTS)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    print(f"creating {venv} for ThingsBoard IoT Gateway ({', '.join(TB_REQUIREMENTS)})", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *TB_REQUIREMENTS],
                   check=True, timeout=1200)
    marker.write_text(wanted)
    return python


def tb_version(python: Path) -> str:
    out = subprocess.run([str(python), "-c", "from importlib.metadata import version as v; "
                          "print(v('thingsboard-gateway'), v('pymodbus'), v('asyncua'))"],
                         capture_output=True, text=True, timeout=60, check=True)
    tb, pymodbus, asyncua = out.stdout.split()
    return f"thingsboard-gateway {tb} (pymodbus {pymodbus}, asyncua {asyncua})"


# ----------------------------------------------------------------------------------------------- the plant


def plant_config(data_dir: Path, ua_port: int, mb_port: int, variables: int, modbus_tags: int) -> dict[str, Any]:
    def plc(plc_id: str, asset: str, tags: int, ua: dict[str, Any], mb: dict[str, Any]) -> dict[str, Any]:
        count = max(1, round(tags / CONVEYOR_TAGS))
        return {"id": plc_id, "scan_period_ms": 100, "opcua": ua, "modbus": mb,
                "assets": [{"type": "conveyor", "id": asset, "count": count}]}

    return {
        "plant": {"name": "tbcompare", "data_dir": str(data_dir), "bind_host": HOST, "api_port": None},
        "sites": [{"id": "site", "areas": [{"id": "area", "plcs": [
            plc("plc-ua", "conveyor", variables, {"port": ua_port, "security_policies": ["None"]},
                {"port": free_port(), "enabled": False}),
            plc("plc-mb", "belt", modbus_tags, {"port": free_port(), "enabled": False},
                {"port": mb_port, "unit_id": 1, "word_order": "ABCD"}),
        ]}]}],
    }


def catalogue_plc(catalogue: dict[str, Any], plc_id: str) -> dict[str, Any]:
    for plc in catalogue["plcs"]:
        if plc["id"] == plc_id:
            return dict(plc)
    raise KeyError(plc_id)


# ------------------------------------------------------------------------------ ThingsBoard configuration

_TB_FUNCTION = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}
_TB_TYPE = {"float32": "32float", "float64": "64float", "uint16": "16uint", "int16": "16int", "uint32": "32uint",
            "int32": "32int", "uint64": "64uint", "int64": "64int", "bool": "bits"}
_TB_WORD_ORDER = {"ABCD": ("BIG", "BIG"), "CDAB": ("BIG", "LITTLE"), "BADC": ("LITTLE", "BIG"),
                  "DCBA": ("LITTLE", "LITTLE")}


def _tb_device(node_path: list[str], name: str, timeseries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "deviceNodeSource": "path",
        "deviceNodePattern": "Root\\.Objects\\." + "\\.".join(node_path),
        "deviceInfo": {"deviceNameExpression": name, "deviceNameExpressionSource": "constant",
                       "deviceProfileExpression": "default", "deviceProfileExpressionSource": "constant"},
        "attributes": [],
        "timeseries": timeseries,
        "rpc_methods": [],
        "attributes_updates": [],
    }


def tb_opcua_connector(plc: dict[str, Any], subscribe: bool, layout: str) -> dict[str, Any]:
    """layout "asset": one ThingsBoard device per asset, its tags as browse paths relative to the asset node
    (ThingsBoard then keeps one subscription per device); "plc": one device for the whole PLC."""
    if layout == "asset":
        mapping = [
            _tb_device(asset["tags"][0]["opcua"]["browse_path"][:-1], asset["id"],
                       [{"key": t["key"], "type": "path", "value": "${" + t["key"] + "}"} for t in asset["tags"]])
            for asset in plc["assets"]
        ]
    else:
        plc_path = plc["assets"][0]["tags"][0]["opcua"]["browse_path"][:-2]
        mapping = [_tb_device(plc_path, plc["id"], [
            {"key": f"{a['id']}.{t['key']}", "type": "path", "value": "${" + a["id"] + "\\." + t["key"] + "}"}
            for a in plc["assets"] for t in a["tags"]
        ])]
    return {
        "logLevel": "WARNING",  # the default INFO logs a line per poll
        "server": {
            "url": plc["opcua"]["endpoint"],
            "timeoutInMillis": 5000,
            "scanPeriodInMillis": 3_600_000,
            # ThingsBoard takes int(pollPeriodInMillis / 1000) seconds: 100 ms becomes 0, i.e. it reads again as
            # soon as a read completes (what 3.8 does with any period under a second).
            "pollPeriodInMillis": 100,
            "enableSubscriptions": subscribe,
            "subCheckPeriodInMillis": 100,  # the subscriptions' publishing interval
            "subDataMaxBatchSize": 1000,
            "subDataMinBatchCreationTimeMs": 200,
            "subscriptionProcessBatchSize": 2000,
            "sessionTimeoutInMillis": 120_000,
            "showMap": False,
            "security": "None",
            "identity": {"type": "anonymous"},
        },
        "mapping": mapping,
    }


def tb_modbus_connector(plc: dict[str, Any], layout: str) -> dict[str, Any]:
    """layout "asset": one ThingsBoard slave (device) per asset, all sharing the PLC's one TCP connection;
    "plc": one slave for the whole PLC. Every tag is a timeseries."""
    mb = plc["modbus"]
    byte_order, word_order = _TB_WORD_ORDER[mb["word_order"]]
    groups = ([(a["id"], a["unit_id"], [(t["key"], t) for t in a["tags"]]) for a in plc["assets"]]
              if layout == "asset" else
              [(plc["id"], mb["unit_id"], [(f"{a['id']}.{t['key']}", t) for a in plc["assets"] for t in a["tags"]])])
    slaves = []
    for device, unit_id, tags in groups:
        timeseries = []
        for key, tag in tags:
            reg = tag["modbus"]
            entry: dict[str, Any] = {"tag": key, "type": _TB_TYPE[tag["datatype"]],
                                     "functionCode": _TB_FUNCTION[reg["table"]], "objectsCount": reg["count"],
                                     "address": reg["address"]}
            if tag["datatype"] == "bool":
                entry["bitTargetType"] = "bool"
            if reg["scale"] != 1.0:
                entry["multiplier"] = reg["scale"]
            timeseries.append(entry)
        slaves.append({
            "host": mb["host"], "port": mb["port"], "type": "tcp", "method": "socket",
            "unitId": unit_id, "deviceName": device, "deviceType": "default",
            "timeout": 3, "byteOrder": byte_order, "wordOrder": word_order, "retries": 1,
            "retryOnEmpty": True, "retryOnInvalid": True, "pollPeriod": 100,
            "connectAttemptTimeMs": 5000, "connectAttemptCount": 5, "waitAfterFailedAttemptsMs": 30000,
            "attributes": [], "timeseries": timeseries, "attributeUpdates": [], "rpc": [],
        })
    return {"logLevel": "WARNING", "master": {"slaves": slaves}}


def tb_gateway_config(broker_port: int, connector_type: str) -> dict[str, Any]:
    return {
        "thingsboard": {
            "host": HOST,
            "port": broker_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600, "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False, "filterFile": "list.json"},
            "maxPayloadSizeBytes": 65_536,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 3600,
            "handleDeviceRenaming": False,
            "security": {"type": "accessToken", "accessToken": "bench-token"},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},  # every value read is sent
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 1_000_000},
        "grpc": {"enabled": False},
        "connectors": [{"type": connector_type, "name": f"bench-{connector_type}",
                        "configuration": f"{connector_type}.json"}],
    }


def tb_logs_config(log_dir: Path) -> dict[str, Any]:
    """Every ThingsBoard logger at WARNING into one file (its shipped logs.json logs INFO to six files)."""
    names = ("database", "service", "connector", "converter", "tb_connection", "storage", "extension")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"f": {"format": "%(asctime)s %(levelname)s [%(name)s] %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "f", "filename": str(log_dir / "tb.log")}},
        "loggers": {name: {"handlers": ["file"], "level": "WARNING", "propagate": False} for name in names},
        # ERROR as in the shipped logs.json: pymodbus 3.9 warns "BinaryPayloadDecoder is deprecated" on every
        # decode through the root logger, which at WARNING costs ThingsBoard more CPU than the polling.
        "root": {"level": "ERROR", "handlers": ["file"]},
    }


def write_tb_config(config_dir: Path, package_config: Path, broker_port: int, connector_type: str,
                    connector: dict[str, Any]) -> None:
    if config_dir.exists():
        shutil.rmtree(config_dir)
    shutil.copytree(package_config, config_dir)  # list.json, statistics/, ... that the service may open
    for name in ("tb_gateway.json", "tb_gateway.yaml"):
        (config_dir / name).unlink(missing_ok=True)
    (config_dir / "tb_gateway.json").write_text(json.dumps(tb_gateway_config(broker_port, connector_type), indent=1))
    (config_dir / f"{connector_type}.json").write_text(json.dumps(connector, indent=1))
    (config_dir / "logs.json").write_text(json.dumps(tb_logs_config(config_dir.parent), indent=1))


# --------------------------------------------------------------------------------- TwinEdge configuration


def te_gateway_config(data_dir: Path, catalogue: Path, broker_port: int, api_port: int, case: str) -> dict[str, Any]:
    source: dict[str, Any]
    if case == "modbus":
        source = {"name": "plc-mb", "protocol": "modbus", "plc": "plc-mb", "interval_ms": 100}
    else:
        source = {"name": "plc-ua", "protocol": "opcua", "plc": "plc-ua", "interval_ms": 100,
                  "mode": "poll" if case == "opcua-poll" else "subscribe"}
    return {
        "gateway": {"id": "tebench", "data_dir": str(data_dir), "catalogue": str(catalogue)},
        "sources": [source],
        "processing": {"report_by_exception": False},
        "sinks": {
            "mqtt": {"enabled": True, "url": f"mqtt://{HOST}:{broker_port}", "qos": 1, "topic_prefix": TE_PREFIX,
                     "layout": "asset"},
            "influx": {"enabled": False},
        },
        "api": {"enabled": True, "host": HOST, "port": api_port},
    }


# -------------------------------------------------------------------------------- broker-side subscriber


class Counter:
    """Counts values delivered to the broker and plays ThingsBoard's getSessionLimits part."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.values = {"tb": 0, "te": 0}
        self.messages = {"tb": 0, "te": 0}
        self.session_limit_requests = 0
        self.errors = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tbcompare-counter")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.max_queued_messages_set(0)
        self.client.connect(HOST, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, _reason: Any, _props: Any) -> None:
        client.subscribe([(TB_TELEMETRY_TOPIC, 0), (TB_RPC_REQUEST + "+", 1), (f"{TE_PREFIX}/#", 0)])
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        try:
            if topic == TB_TELEMETRY_TOPIC:
                payload = json.loads(msg.payload)
                n = 0
                for entries in payload.values():
                    for entry in entries if isinstance(entries, list) else [entries]:
                        values = entry.get("values") if "values" in entry else entry
                        n += len(values) - (1 if "ts" in values else 0)
                with self.lock:
                    self.values["tb"] += n
                    self.messages["tb"] += 1
            elif topic.startswith(TB_RPC_REQUEST):
                request = json.loads(msg.payload)
                if request.get("method") == "getSessionLimits":
                    # What a ThingsBoard server answers, with no rate limits: 1 MiB payloads (the gateway
                    # uses 80%), 10,000 messages in flight.
                    limits = {"maxPayloadSize": 1_048_576, "maxInflightMessages": 10_000,
                              "rateLimits": {}, "gatewayRateLimits": {}}
                    client.publish(TB_RPC_RESPONSE + topic[len(TB_RPC_REQUEST):], json.dumps(limits), qos=1)
                    with self.lock:
                        self.session_limit_requests += 1
            elif topic.startswith(TE_PREFIX + "/") and not topic.startswith(TE_PREFIX + "/_"):
                payload = json.loads(msg.payload)
                values = payload.get("values") if isinstance(payload, dict) else None
                if isinstance(values, dict):
                    with self.lock:
                        self.values["te"] += len(values)
                        self.messages["te"] += 1
        except (ValueError, AttributeError, TypeError):
            with self.lock:
                self.errors += 1

    def snapshot(self, key: str) -> tuple[int, int]:
        with self.lock:
            return self.values[key], self.messages[key]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ----------------------------------------------------------------------------------------------- the run


@dataclass
class Result:
    case: str
    gateway: str
    repeat: int
    tags: int
    window_s: float
    values: int
    messages: int
    values_per_s: float
    cpu_s: float
    cpu_pct: float  # of one core
    values_per_cpu_s: float
    rss_mb: float
    plant_cpu_pct: float
    broker_cpu_pct: float
    startup_s: float  # gateway start to its first delivered value
    gateway_metrics: dict[str, float]  # TwinEdge's own /metrics over the window (a cross-check of the count)


@dataclass
class Env:
    work: Path
    counter: Counter
    plant: Child
    broker: Child
    broker_port: int
    catalogue_path: Path
    catalogue: dict[str, Any]
    tb_python: Path
    tb_package_config: Path
    window_s: float
    warmup_s: float
    start_timeout_s: float
    tb_layout: str


def scrape(api_port: int | None) -> dict[str, float]:
    """TwinEdge's Prometheus metrics as {"name{labels}": value}; empty without an API or on error."""
    if api_port is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://{HOST}:{api_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


_CROSS_CHECK = {  # metric -> short name in the results
    'twinedge_source_values_total{source="plc-ua"}': "source_values",
    'twinedge_source_values_total{source="plc-mb"}': "source_values",
    'twinedge_source_overruns_total{source="plc-ua"}': "overruns",
    'twinedge_source_overruns_total{source="plc-mb"}': "overruns",
    'twinedge_source_dropped_total{source="plc-ua"}': "source_dropped",
    'twinedge_sink_published_total{sink="mqtt"}': "published",
    'twinedge_outbox_depth{sink="mqtt"}': "outbox_depth_end",
}


def _cross_check(m0: dict[str, float], m1: dict[str, float], elapsed: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric, short in _CROSS_CHECK.items():
        if metric in m1:
            if short.endswith("_end"):
                out[short] = m1[metric]
            else:
                out[short + "_per_s"] = round((m1[metric] - m0.get(metric, 0.0)) / elapsed, 1)
    return out


def measure(env: Env, case: str, gateway: str, key: str, child: Child, tags: int, started: float,
            repeat: int, api_port: int | None = None) -> Result:
    before = env.counter.snapshot(key)[0]  # cumulative over the run: earlier cases delivered these
    wait_for(lambda: env.counter.snapshot(key)[0] > before, env.start_timeout_s, f"{gateway} to deliver values",
             child)
    startup = time.monotonic() - started
    time.sleep(env.warmup_s)
    if not child.alive():
        raise RuntimeError(f"{gateway} exited during warm-up:\n{child.tail()}")
    metrics0 = scrape(api_port)
    v0, m0 = env.counter.snapshot(key)
    c0, p0, b0 = cpu_seconds(child.pid), cpu_seconds(env.plant.pid), cpu_seconds(env.broker.pid)
    t0 = time.monotonic()
    time.sleep(env.window_s)
    v1, m1 = env.counter.snapshot(key)
    c1, p1, b1 = cpu_seconds(child.pid), cpu_seconds(env.plant.pid), cpu_seconds(env.broker.pid)
    elapsed = time.monotonic() - t0
    metrics = _cross_check(metrics0, scrape(api_port), elapsed)
    rss = rss_mb(child.pid)
    if not child.alive():
        raise RuntimeError(f"{gateway} exited during the window:\n{child.tail()}")
    values, cpu = v1 - v0, c1 - c0
    return Result(case=case, gateway=gateway, repeat=repeat, tags=tags, window_s=round(elapsed, 2), values=values,
                  messages=m1 - m0, values_per_s=round(values / elapsed, 1), cpu_s=round(cpu, 2),
                  cpu_pct=round(100 * cpu / elapsed, 1), values_per_cpu_s=round(values / cpu, 1) if cpu > 0 else 0.0,
                  rss_mb=round(rss, 1), plant_cpu_pct=round(100 * (p1 - p0) / elapsed, 1),
                  broker_cpu_pct=round(100 * (b1 - b0) / elapsed, 1), startup_s=round(startup, 1),
                  gateway_metrics=metrics)


def settle(env: Env, key: str) -> None:
    """After a gateway stops: wait until its last messages have drained through the broker."""
    last = env.counter.snapshot(key)[0]
    for _ in range(50):
        time.sleep(0.2)
        now = env.counter.snapshot(key)[0]
        if now == last:
            return
        last = now


def run_tb(env: Env, case: str, repeat: int) -> Result:
    connector_type = "modbus" if case == "modbus" else "opcua"
    plc = catalogue_plc(env.catalogue, "plc-mb" if case == "modbus" else "plc-ua")
    connector = (tb_modbus_connector(plc, env.tb_layout) if case == "modbus"
                 else tb_opcua_connector(plc, case == "opcua-sub", env.tb_layout))
    tags = sum(len(a["tags"]) for a in plc["assets"])
    run_dir = env.work / f"tb-{case}-{repeat}"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_tb_config(run_dir / "config", env.tb_package_config, env.broker_port, connector_type, connector)
    # Its TBUpdater posts to https://updates.thingsboard.io at start-up, unconditionally: send it to a closed
    # loopback proxy so nothing leaves 127.0.0.1 (it logs "Cannot connect to the update service" and goes on).
    closed = f"http://{HOST}:{free_port()}"
    envvars = {**os.environ, "TB_GW_CONFIG_DIR": str(run_dir / "config"), "PYTHONUNBUFFERED": "1",
               "HTTPS_PROXY": closed, "HTTP_PROXY": closed, "https_proxy": closed, "http_proxy": closed}
    envvars.pop("NO_PROXY", None)
    envvars.pop("no_proxy", None)
    started = time.monotonic()
    child = Child(f"thingsboard-{case}", [str(env.tb_python), "-m", "thingsboard_gateway.tb_gateway"],
                  run_dir / "stdout.log", cwd=run_dir, env=envvars)
    try:
        return measure(env, case, "ThingsBoard IoT GW", "tb", child, tags, started, repeat)
    finally:
        child.stop()
        settle(env, "tb")


def run_te(env: Env, case: str, repeat: int) -> Result:
    plc = catalogue_plc(env.catalogue, "plc-mb" if case == "modbus" else "plc-ua")
    tags = sum(len(a["tags"]) for a in plc["assets"])
    run_dir = env.work / f"te-{case}-{repeat}"
    (run_dir / "data").mkdir(parents=True, exist_ok=True)  # fresh outbox: nothing replayed from a former run
    api_port = free_port()
    config = te_gateway_config(run_dir / "data", env.catalogue_path, env.broker_port, api_port, case)
    config_path = run_dir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.monotonic()
    child = Child(f"twinedge-{case}", [sys.executable, "-m", "gateway", "--config", str(config_path)],
                  run_dir / "stdout.log", cwd=ROOT)
    try:
        return measure(env, case, "TwinEdge", "te", child, tags, started, repeat, api_port)
    finally:
        child.stop()
        settle(env, "te")


def start_env(args: argparse.Namespace, work: Path, tb_python: Path) -> Env:
    broker_port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {broker_port} {HOST}\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 1000000\nmax_inflight_messages 0\nlog_dest none\n")
    broker = Child("mosquitto", [args.mosquitto, "-c", str(conf)], work / "mosquitto.log", watchdog=True)
    wait_for(lambda: _port_open(broker_port), 10, "mosquitto", broker)

    ua_port, mb_port = free_port(), free_port()
    data_dir = work / "plant-data"
    plant_yaml = work / "plant.yaml"
    plant_yaml.write_text(yaml.safe_dump(plant_config(data_dir, ua_port, mb_port, args.variables, args.modbus_tags),
                                         sort_keys=False))
    plant = Child("plant", [sys.executable, "-m", "devices", "plant", "--config", str(plant_yaml)],
                  work / "plant.log", cwd=ROOT)
    catalogue_path = data_dir / "catalogue.json"
    wait_for(lambda: catalogue_path.exists() and _port_open(ua_port) and _port_open(mb_port), 60, "the plant", plant)
    catalogue = json.loads(catalogue_path.read_text())

    counter = Counter(broker_port)
    if not counter.subscribed.wait(10):
        raise RuntimeError("counter could not subscribe to mosquitto")
    site_packages = next((tb_python.parent.parent / "lib").glob("python*/site-packages"))
    return Env(work=work, counter=counter, plant=plant, broker=broker, broker_port=broker_port,
               catalogue_path=catalogue_path, catalogue=catalogue, tb_python=tb_python,
               tb_package_config=site_packages / "thingsboard_gateway" / "config", window_s=args.window,
               warmup_s=args.warmup, start_timeout_s=args.start_timeout, tb_layout=args.tb_layout)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def print_table(results: list[Result]) -> None:
    """One row per case and gateway: medians over the repeats (each repeat's values/CPU-s, then the median)."""
    print("| case | gateway | tags | runs | values/s | gateway CPU % | values/CPU-s | ratio TE/TB | RSS MB | "
          "plant CPU % | broker CPU % | start s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in CASES:
        tb_rate = 0.0
        for gateway in ("ThingsBoard IoT GW", "TwinEdge"):
            rows = [r for r in results if r.case == case and r.gateway == gateway]
            if not rows:
                continue

            def med(field: str, rows: list[Result] = rows) -> float:
                return float(statistics.median(float(getattr(r, field)) for r in rows))

            rate = med("values_per_cpu_s")
            ratio = ""
            if gateway == "TwinEdge" and tb_rate > 0:
                ratio = f"**{rate / tb_rate:.2f}**"
            else:
                tb_rate = rate
            print(f"| {case} | {gateway} | {rows[0].tags:,} | {len(rows)} | {med('values_per_s'):,.0f} | "
                  f"{med('cpu_pct'):.0f} | {rate:,.0f} | {ratio} | {med('rss_mb'):.0f} | {med('plant_cpu_pct'):.0f} | "
                  f"{med('broker_cpu_pct'):.0f} | {med('startup_s'):.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=60.0, help="measured seconds per gateway and case")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after the first value before measuring")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds for a gateway's first value")
    parser.add_argument("--variables", type=int, default=1000, help="OPC UA variables (rounded to 11 per conveyor)")
    parser.add_argument("--modbus-tags", type=int, default=1000, help="Modbus tags (rounded to 11 per conveyor)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--gateways", default="tb,te", help="tb, te or both (default)")
    parser.add_argument("--repeat", type=int, default=1, help="run every case this many times (table: medians)")
    parser.add_argument("--tb-layout", choices=("plc", "asset"), default="plc",
                        help="ThingsBoard devices: one per PLC (default: its cheapest, as in the issue's figures) "
                             "or one per asset (as TwinEdge publishes; costs ThingsBoard 1.5-3x more CPU per value)")
    parser.add_argument("--mosquitto", default="/usr/sbin/mosquitto")
    parser.add_argument("--tb-venv", type=Path, default=TB_VENV)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs and logs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    gateways = [g.strip() for g in args.gateways.split(",") if g.strip()]

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(stop_all)
    tb_python = ensure_tb_venv(args.tb_venv)
    work = Path(tempfile.mkdtemp(prefix="tbcompare-"))
    results: list[Result] = []
    env: Env | None = None
    try:
        env = start_env(args, work, tb_python)
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"{tb_version(tb_python)}, one device per {args.tb_layout}; "
              f"plant: {args.variables} OPC UA variables, {args.modbus_tags} Modbus tags; "
              f"window {args.window:.0f} s after {args.warmup:.0f} s warm-up; load average {load}; work dir {work}",
              flush=True)
        for repeat, case, gw in ((r, c, g) for r in range(1, args.repeat + 1) for c in cases for g in gateways):
            runner = run_tb if gw == "tb" else run_te
            try:
                result = runner(env, case, repeat)
            except RuntimeError as exc:
                print(f"{case} {gw}: FAILED: {exc}", file=sys.stderr, flush=True)
                continue
            results.append(result)
            extra = "  " + json.dumps(result.gateway_metrics) if result.gateway_metrics else ""
            print(f"  #{repeat} {case:10s} {result.gateway:18s} {result.values_per_s:9,.0f} values/s  "
                  f"{result.cpu_pct:5.1f}% CPU  {result.values_per_cpu_s:9,.0f} values/CPU-s{extra}", flush=True)
        print()
        print_table(results)
        if env.counter.errors:
            print(f"(undecodable messages: {env.counter.errors})")
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
        return 0 if results else 1
    finally:
        if env is not None:
            env.counter.close()
        stop_all()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
