"""SparkplugSink against a real Mosquitto, checked by a paho subscriber decoding the protobuf payloads.

Test names follow the Sparkplug TCK assertions they mirror (conventions §3.1, §5.5 #7). Every wait is
on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.common.status import BAD_NO_COMMUNICATION, BAD_SENSOR_FAILURE, BAD_TIMEOUT, GOOD
from gateway.config import GatewayConfig
from gateway.encoders.sparkplug_b import (
    REBIRTH,
    DataType,
    Metric,
    Payload,
    Property,
    decode_payload,
    encode_payload,
)
from gateway.readings import Reading, TagValue
from gateway.runtime import build_gateway
from gateway.sinks.sparkplug import SparkplugSink, SparkplugSinkConfig
from tests.fixtures.servers import MosquittoServer, free_port
from tests.test_mqtt_sink import wait_for

BASE_TS = datetime(2026, 11, 21, 13, 55, 1, 0, tzinfo=UTC)
BASE_MS = 1795269301000
GROUP, NODE = "MineA", "gw1"


def reading(i: int, tag: str = "speed", asset: str = "conveyor-01", value: TagValue | None = None,
            quality: int = GOOD) -> Reading:
    """Sample ``i``: source time BASE_TS + i ms, value ``float(i)`` unless given."""
    ts = BASE_TS + timedelta(milliseconds=i)
    return Reading("plc1", asset, tag, float(i) if value is None and quality == GOOD else value, quality, ts, ts)


@dataclass(frozen=True)
class Received:
    topic: str
    kind: str  # NBIRTH, DBIRTH, DDATA, NDEATH, NCMD, STATE
    device: str | None
    payload: Payload | None  # None for STATE, and for junk a test sends on purpose
    qos: int
    retain: bool


class Recorder:
    """A paho client on its own thread recording, decoded, everything under ``spBv1.0/#`` (QoS 1, so a
    message's recorded QoS is the one it was published with)."""

    def __init__(self, server: MosquittoServer) -> None:
        self._messages: list[Received] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda client, *_: client.subscribe("spBv1.0/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(server.host, server.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(5):
            raise AssertionError("recorder not subscribed within 5 s")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        levels = msg.topic.split("/")
        if levels[1] == "STATE":
            received = Received(msg.topic, "STATE", None, None, msg.qos, bool(msg.retain))
        else:
            device = levels[4] if len(levels) > 4 else None
            try:
                payload: Payload | None = decode_payload(msg.payload)
            except ValueError:
                payload = None
            received = Received(msg.topic, levels[2], device, payload, msg.qos, bool(msg.retain))
        with self._lock:
            self._messages.append(received)

    def all(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def of(self, kind: str, device: str | None = None) -> list[Payload]:
        return [m.payload for m in self.all() if m.kind == kind and (device is None or m.device == device)
                and m.payload is not None]

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_sink(url: str, tmp_path: Path, **cfg: Any) -> SparkplugSink:
    return SparkplugSink(SparkplugSinkConfig(url=url, group_id=GROUP, **cfg), NODE, tmp_path / "data")


def node_seqs(rec: Recorder) -> list[int | None]:
    """``seq`` of every message the node published, in arrival order (NDEATH has none)."""
    return [m.payload.seq for m in rec.all() if m.kind in ("NBIRTH", "DBIRTH", "DDATA", "DDEATH") and m.payload]


def stream(rec: Recorder) -> list[tuple[str, str | None]]:
    """(kind, device) of every message the node published live, in arrival order (no NDEATH)."""
    return [(m.kind, m.device) for m in rec.all() if m.kind in ("NBIRTH", "DBIRTH", "DDATA", "DDEATH")]


def by_name(payload: Payload) -> dict[str | None, Metric]:
    return {m.name: m for m in payload.metrics}


def values(payloads: list[Payload]) -> list[object]:
    return [m.value for p in payloads for m in p.metrics]


def kill_socket(sink: SparkplugSink) -> None:
    """Break the link under paho without a DISCONNECT, as a network failure would."""
    client: Any = sink._client
    client.socket().shutdown(socket.SHUT_RDWR)


def host_state(rec: Recorder, online: bool, ts: int) -> None:
    """The primary host "scada" says it is online or offline (retained, as a host does)."""
    rec.publish("spBv1.0/STATE/scada", json.dumps({"online": online, "timestamp": ts}).encode(), qos=1, retain=True)


async def start_recorder(server: MosquittoServer) -> Recorder:
    return await asyncio.to_thread(Recorder, server)


async def test_nbirth_seq_0_and_bdseq_matches_will(mosquitto_server: MosquittoServer, tmp_path: Path) -> None:
    """NBIRTH: seq 0, bdSeq (Int64) and Node Control/Rebirth false; a DBIRTH per device with every metric,
    name + alias + datatype; aliases unique per node; the NDEATH of a clean close carries the same bdSeq
    (QoS 1, not retained, no seq)."""
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(lambda: len(rec.of("NBIRTH")) == 1, 5, "NBIRTH")
        await sink.write([
            reading(1, "speed", value=3.5), reading(1, "running", value=True), reading(1, "count", value=7),
            reading(1, "mode", value="auto"), reading(2, "speed", asset="Pump/2#", quality=BAD_SENSOR_FAILURE),
        ])
        await wait_for(lambda: len(rec.of("DBIRTH")) == 2, 5, "two DBIRTHs")
    finally:
        await sink.close()
    await wait_for(lambda: bool(rec.of("NDEATH")), 5, "NDEATH of the clean close")
    rec.close()

    nbirth, conveyor, pump = rec.all()[:3]
    assert (nbirth.topic, nbirth.qos, nbirth.retain) == (f"spBv1.0/{GROUP}/NBIRTH/{NODE}", 0, False)
    assert nbirth.payload is not None
    assert nbirth.payload.seq == 0
    assert nbirth.payload.timestamp
    node = by_name(nbirth.payload)
    assert (node["bdSeq"].datatype, node["bdSeq"].value) == (DataType.INT64, 0)
    assert (node["Node Control/Rebirth"].datatype, node["Node Control/Rebirth"].value) == (DataType.BOOLEAN, False)

    assert (conveyor.topic, conveyor.qos, conveyor.retain) == (f"spBv1.0/{GROUP}/DBIRTH/{NODE}/conveyor-01", 0, False)
    assert conveyor.payload is not None
    assert conveyor.payload.seq == 1
    metrics = by_name(conveyor.payload)
    assert {name: (m.datatype, m.value) for name, m in metrics.items()} == {
        "speed": (DataType.DOUBLE, 3.5), "running": (DataType.BOOLEAN, True), "count": (DataType.INT64, 7),
        "mode": (DataType.STRING, "auto"),
    }
    assert all(m.timestamp == BASE_MS + 1 and m.properties == () for m in metrics.values())

    assert pump.topic == f"spBv1.0/{GROUP}/DBIRTH/{NODE}/Pump_2_"  # + # / are not allowed in ids
    assert pump.payload is not None
    assert pump.payload.seq == 2
    (bad,) = pump.payload.metrics
    assert (bad.name, bad.value, bad.datatype) == ("speed", None, DataType.DOUBLE)  # is_null
    assert bad.properties == (Property("Quality", DataType.INT32, 0),
                              Property("StatusCode", DataType.UINT32, BAD_SENSOR_FAILURE))

    aliases = [m.alias for r in (nbirth, conveyor, pump) if r.payload for m in r.payload.metrics]
    assert None not in aliases
    assert len(set(aliases)) == len(aliases)

    death = rec.all()[-1]
    assert (death.kind, death.qos, death.retain) == ("NDEATH", 1, False)
    assert death.payload is not None
    assert death.payload.seq is None
    assert [(m.name, m.value) for m in death.payload.metrics] == [("bdSeq", 0)]


async def test_ndeath_will_on_unclean_loss(mosquitto_server: MosquittoServer, tmp_path: Path) -> None:
    """The link dies without DISCONNECT: the broker publishes the Will, an NDEATH (QoS 1, not retained)
    with the bdSeq of the NBIRTH; the node reconnects with bdSeq + 1 and re-births its known devices."""
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        await sink.write([reading(1, "speed"), reading(1, "load")])
        await wait_for(lambda: bool(rec.of("DBIRTH")), 5, "DBIRTH")
        await sink.write([reading(2, "speed")])
        await wait_for(lambda: bool(rec.of("DDATA")), 5, "DDATA")
        kill_socket(sink)
        await wait_for(lambda: bool(rec.of("NDEATH")), 10, "the Will")
        await wait_for(lambda: len(rec.of("NBIRTH")) == 2 and len(rec.of("DBIRTH")) == 2, 10, "births again")
    finally:
        await sink.close()
        rec.close()
    kinds = [m.kind for m in rec.all()]
    assert kinds[:6] == ["NBIRTH", "DBIRTH", "DDATA", "NDEATH", "NBIRTH", "DBIRTH"]
    will = next(m for m in rec.all() if m.kind == "NDEATH")
    assert (will.qos, will.retain) == (1, False)
    assert will.payload is not None
    assert will.payload.seq is None
    assert by_name(will.payload)["bdSeq"].value == 0 == by_name(rec.of("NBIRTH")[0])["bdSeq"].value
    assert by_name(rec.of("NBIRTH")[1])["bdSeq"].value == 1
    rebirth = rec.of("DBIRTH")[1]
    assert rebirth.seq == 1
    assert {n: m.value for n, m in by_name(rebirth).items()} == {"speed": 2.0, "load": 1.0}  # latest values


async def test_ddata_seq_increments_and_wraps(mosquitto_server: MosquittoServer, tmp_path: Path) -> None:
    """Every message after NBIRTH (seq 0) takes seq + 1, wrapping 255 -> 0. DDATA carries aliases only,
    no names or datatypes, with the source timestamps."""
    n = 300
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        for i in range(n):
            await sink.write([reading(i, "count", value=i)])
        await wait_for(lambda: len(rec.of("DDATA")) == n - 1, 15, "every DDATA")  # sample 0 went in the DBIRTH
        await wait_for(lambda: sink.stats().published == n, 5, "every record counted")
    finally:
        await sink.close()
        rec.close()
    assert node_seqs(rec) == [k % 256 for k in range(n + 1)]
    alias = rec.of("DBIRTH")[0].metrics[0].alias
    ddata = rec.of("DDATA")
    assert [m for p in ddata for m in p.metrics] == [
        Metric(BASE_MS + i, i, None, None, alias) for i in range(1, n)
    ]


async def test_dbirth_before_first_ddata_of_new_device(mosquitto_server: MosquittoServer, tmp_path: Path) -> None:
    """A device first seen after the births, or a new tag of a known one, gets a DBIRTH (with the new
    alias) before DATA uses it."""
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        await sink.write([reading(1, "speed", asset="a")])
        await sink.write([reading(2, "speed", asset="a")])
        await sink.write([reading(3, "temp", asset="b")])
        await sink.write([reading(4, "temp", asset="b"), reading(4, "speed", asset="a")])
        await sink.write([reading(5, "load", asset="a")])
        await sink.write([reading(6, "load", asset="a")])
        await wait_for(lambda: len(rec.of("DDATA", "a")) == 3, 5, "DDATA of a")
    finally:
        await sink.close()
        rec.close()
    stream = [(m.kind, m.device) for m in rec.all() if m.kind != "NDEATH"]
    assert stream == [("NBIRTH", None), ("DBIRTH", "a"), ("DDATA", "a"), ("DBIRTH", "b"), ("DDATA", "b"),
                      ("DDATA", "a"), ("DBIRTH", "a"), ("DDATA", "a")]
    assert node_seqs(rec) == list(range(8))
    rebirth_a = by_name(rec.of("DBIRTH", "a")[1])
    assert set(rebirth_a) == {"speed", "load"}
    assert rec.of("DDATA", "a")[-1].metrics == (Metric(BASE_MS + 6, 6.0, None, None, rebirth_a["load"].alias),)
    assert rebirth_a["load"].alias != rebirth_a["speed"].alias


async def test_ddata_reports_only_changed_metrics_with_quality(
    mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    """Report by exception: an unchanged value and quality is not sent; a quality change is, with the
    Quality (Int32) and StatusCode properties; no value is is_null."""
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        await sink.write([reading(1, value=1.0)])
        await sink.write([reading(2, value=1.0)])  # unchanged: nothing
        await sink.write([reading(3, quality=BAD_SENSOR_FAILURE)])
        await sink.write([reading(4, value=2.0)])
        await wait_for(lambda: len(rec.of("DDATA")) == 2, 5, "two DDATA")
        await wait_for(lambda: sink.stats().outbox_depth == 0, 5, "outbox drained")
    finally:
        await sink.close()
        rec.close()
    bad, good = (p.metrics[0] for p in rec.of("DDATA"))
    assert (bad.value, bad.timestamp) == (None, BASE_MS + 3)
    assert bad.properties == (Property("Quality", DataType.INT32, 0),
                              Property("StatusCode", DataType.UINT32, BAD_SENSOR_FAILURE))
    assert (good.value, good.properties) == (2.0, ())  # back to Good: no Quality property
    assert node_seqs(rec) == [0, 1, 2, 3]


@pytest.mark.parametrize("by", ["name", "alias"])
async def test_rebirth_ncmd_republishes_births_same_bdseq(
    by: str, mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    """NCMD Node Control/Rebirth = true: NBIRTH (seq 0, same bdSeq) and every DBIRTH with the latest
    values again, then DATA resumes from there."""
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        await sink.write([reading(1, asset="a"), reading(1, asset="b")])
        await sink.write([reading(2, asset="a")])
        await wait_for(lambda: bool(rec.of("DDATA")), 5, "DDATA")
        ident = {"name": "Node Control/Rebirth"} if by == "name" else {"alias": by_name(rec.of("NBIRTH")[0])[
            "Node Control/Rebirth"].alias}
        command = encode_payload(int(time.time() * 1000), [Metric(None, True, DataType.BOOLEAN, **ident)])
        await asyncio.to_thread(rec.publish, f"spBv1.0/{GROUP}/NCMD/{NODE}", command)
        await wait_for(lambda: len(rec.of("NBIRTH")) == 2 and len(rec.of("DBIRTH")) == 4, 5, "births again")
        await sink.write([reading(3, asset="b")])
        await wait_for(lambda: len(rec.of("DDATA")) == 2, 5, "DDATA after the rebirth")
    finally:
        await sink.close()
        rec.close()
    first, second = rec.of("NBIRTH")
    assert by_name(first)["bdSeq"].value == by_name(second)["bdSeq"].value == 0
    kinds = [m.kind for m in rec.all() if m.kind not in ("NCMD", "NDEATH")]
    assert kinds == ["NBIRTH", "DBIRTH", "DBIRTH", "DDATA", "NBIRTH", "DBIRTH", "DBIRTH", "DDATA"]
    assert node_seqs(rec) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert values(rec.of("DBIRTH", "a")) == [1.0, 2.0]


def lost(i: int, asset: str, quality: int = BAD_NO_COMMUNICATION) -> list[Reading]:
    """The batch a source yields for an unreachable PLC: every tag of the asset, no value, one code."""
    return [reading(i, tag, asset=asset, quality=quality) for tag in ("speed", "load")]


def good(i: int, asset: str) -> list[Reading]:
    return [reading(i, tag, asset=asset) for tag in ("speed", "load")]


async def test_ddeath_when_device_loses_communication(mosquitto_server: MosquittoServer, tmp_path: Path) -> None:
    """Every tag of an asset BadNoCommunication / BadTimeout in a batch: one DDEATH for it (QoS 0, not
    retained, seq prev + 1, payload timestamp and seq only); no DDATA for it while it stays lost."""
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        await sink.write(good(1, "a") + good(1, "b"))
        await sink.write(good(2, "a"))
        await sink.write(lost(3, "a"))
        await sink.write(lost(4, "a", BAD_TIMEOUT))  # still lost, with another code: nothing
        await sink.write(lost(5, "a"))
        await sink.write(good(6, "b"))  # published after everything above: the end marker
        await wait_for(lambda: len(rec.of("DDATA", "b")) == 1, 5, "DDATA of b")
        await wait_for(lambda: sink.stats().outbox_depth == 0, 5, "outbox drained")
    finally:
        await sink.close()
        rec.close()
    assert stream(rec) == [("NBIRTH", None), ("DBIRTH", "a"), ("DBIRTH", "b"), ("DDATA", "a"), ("DDEATH", "a"),
                           ("DDATA", "b")]
    assert node_seqs(rec) == list(range(6))
    death = next(m for m in rec.all() if m.kind == "DDEATH")
    assert (death.topic, death.qos, death.retain) == (f"spBv1.0/{GROUP}/DDEATH/{NODE}/a", 0, False)
    assert death.payload is not None
    assert death.payload.metrics == ()
    assert death.payload.timestamp is not None
    assert abs(death.payload.timestamp - time.time() * 1000) < 60_000  # the time it was sent


async def test_dbirth_again_when_device_returns_before_its_ddata(
    mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    """The first reading of another quality after a DDEATH brings the device back with a DBIRTH: every
    metric, same names and aliases, the values of that reading (so no DDATA repeats them); DDATA follows."""
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        await sink.write(good(1, "a"))
        await sink.write(lost(2, "a"))
        await sink.write([reading(3, "speed", asset="a", value=7.0), reading(3, "load", asset="a",
                                                                             quality=BAD_SENSOR_FAILURE)])
        await sink.write(good(4, "a"))
        await wait_for(lambda: len(rec.of("DDATA", "a")) == 1, 5, "DDATA after the return")
    finally:
        await sink.close()
        rec.close()
    assert stream(rec) == [("NBIRTH", None), ("DBIRTH", "a"), ("DDEATH", "a"), ("DBIRTH", "a"), ("DDATA", "a")]
    assert node_seqs(rec) == list(range(5))
    first, again = (by_name(p) for p in rec.of("DBIRTH", "a"))
    assert {n: m.alias for n, m in first.items()} == {n: m.alias for n, m in again.items()}
    assert (again["speed"].value, again["speed"].timestamp, again["speed"].properties) == (7.0, BASE_MS + 3, ())
    assert (again["load"].value, again["load"].properties[1].value) == (None, BAD_SENSOR_FAILURE)
    assert values(rec.of("DDATA", "a")) == [4.0, 4.0]


async def test_other_devices_unaffected(mosquitto_server: MosquittoServer, tmp_path: Path) -> None:
    """One asset's lost PLC touches no other asset, and an asset with some tags lost but not all stays
    online: its Bad tags go out in DDATA with their quality."""
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        await sink.write(good(1, "a") + good(1, "b"))
        await sink.write(lost(2, "a") + good(2, "b"))
        partly_lost = [reading(3, "speed", asset="b"), reading(3, "load", asset="b", quality=BAD_NO_COMMUNICATION)]
        await sink.write([*lost(3, "a"), *partly_lost])
        await sink.write(lost(4, "a") + good(4, "b"))
        await wait_for(lambda: len(rec.of("DDATA", "b")) == 3, 5, "DDATA of b")
    finally:
        await sink.close()
        rec.close()
    assert stream(rec) == [("NBIRTH", None), ("DBIRTH", "a"), ("DBIRTH", "b"), ("DDEATH", "a"), ("DDATA", "b"),
                           ("DDATA", "b"), ("DDATA", "b")]
    assert node_seqs(rec) == list(range(7))
    partial = rec.of("DDATA", "b")[1].metrics
    assert [(m.value, [p.value for p in m.properties]) for m in partial] == [
        (3.0, []), (None, [0, BAD_NO_COMMUNICATION])
    ]


async def test_rebirth_skips_offline_device(mosquitto_server: MosquittoServer, tmp_path: Path) -> None:
    """NCMD Rebirth while a device is offline: NBIRTH and the DBIRTHs of the online devices only (a DBIRTH
    would announce the dead device with stale values as current); it is born again when it answers."""
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        await sink.write(good(1, "a") + good(1, "b"))
        await sink.write(lost(2, "a"))
        await wait_for(lambda: bool(rec.of("DDEATH")), 5, "DDEATH")
        command = encode_payload(int(time.time() * 1000), [Metric(None, True, DataType.BOOLEAN, name=REBIRTH)])
        await asyncio.to_thread(rec.publish, f"spBv1.0/{GROUP}/NCMD/{NODE}", command)
        await wait_for(lambda: len(rec.of("NBIRTH")) == 2, 5, "NBIRTH again")
        await sink.write(lost(3, "a"))  # still lost: nothing
        await sink.write(good(4, "a"))
        await wait_for(lambda: len(rec.of("DBIRTH", "a")) == 2, 5, "a born again")
    finally:
        await sink.close()
        rec.close()
    assert stream(rec) == [("NBIRTH", None), ("DBIRTH", "a"), ("DBIRTH", "b"), ("DDEATH", "a"),
                           ("NBIRTH", None), ("DBIRTH", "b"), ("DBIRTH", "a")]
    assert node_seqs(rec) == [0, 1, 2, 3, 0, 1, 2]
    assert values(rec.of("DBIRTH", "a")) == [1.0, 1.0, 4.0, 4.0]


async def test_buffered_offline_and_return_replay_in_order(mosquitto_server: MosquittoServer, tmp_path: Path) -> None:
    """Store and forward: a PLC lost and back while the primary host was offline replays, after the births,
    as DDEATH, then DBIRTH with the returning values and the history as is_historical DDATA, in order."""
    rec = await start_recorder(mosquitto_server)
    await asyncio.to_thread(host_state, rec, True, 1000)
    sink = make_sink(mosquitto_server.url, tmp_path, primary_host_id="scada")
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        await sink.write(good(1, "a"))
        await wait_for(lambda: bool(rec.of("DBIRTH")), 5, "DBIRTH")
        await asyncio.to_thread(host_state, rec, False, 2000)
        await wait_for(lambda: not sink._publishing(), 5, "host offline seen")
        await sink.write(lost(2, "a"))
        await sink.write(lost(3, "a"))
        await sink.write(good(4, "a"))
        await sink.write(good(5, "a"))
        await asyncio.to_thread(host_state, rec, True, 3000)
        await wait_for(lambda: len(rec.of("DDATA", "a")) == 2, 5, "the history")
    finally:
        await sink.close()
        rec.close()
    assert stream(rec) == [("NBIRTH", None), ("DBIRTH", "a"), ("NBIRTH", None), ("DBIRTH", "a"), ("DDEATH", "a"),
                           ("DBIRTH", "a"), ("DDATA", "a"), ("DDATA", "a")]
    assert node_seqs(rec) == [0, 1, 0, 1, 2, 3, 4, 5]
    assert [values(rec.of("DBIRTH", "a")[i:i + 1]) for i in range(3)] == [[1.0, 1.0], [1.0, 1.0], [4.0, 4.0]]
    history = [m for p in rec.of("DDATA", "a") for m in p.metrics]
    assert [(m.value, m.timestamp, m.is_historical) for m in history] == [
        (4.0, BASE_MS + 4, True), (4.0, BASE_MS + 4, True), (5.0, BASE_MS + 5, True), (5.0, BASE_MS + 5, True)
    ]


async def test_bdseq_increments_per_connect_and_survives_restart(
    mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    """bdSeq: 0 on the very first CONNECT, + 1 on each new one, continued by a restarted gateway (it is
    stored in the data dir), wrapping 255 -> 0."""
    rec = await start_recorder(mosquitto_server)

    def bdseqs(kind: str) -> list[object]:
        return [by_name(p)["bdSeq"].value for p in rec.of(kind)]

    try:
        for expected_births in (1, 2):
            sink = make_sink(mosquitto_server.url, tmp_path)
            await sink.start()
            await wait_for(lambda: len(rec.of("NBIRTH")) == expected_births, 5, "NBIRTH")  # noqa: B023
            await sink.close()
        sink = make_sink(mosquitto_server.url, tmp_path)
        await sink.start()
        try:
            await wait_for(lambda: len(rec.of("NBIRTH")) == 3, 5, "NBIRTH")
            kill_socket(sink)
            await wait_for(lambda: len(rec.of("NBIRTH")) == 4, 10, "NBIRTH after the reconnect")
        finally:
            await sink.close()
        assert bdseqs("NBIRTH") == [0, 1, 2, 3]
        await wait_for(lambda: len(rec.of("NDEATH")) == 4, 5, "four NDEATHs")
        assert bdseqs("NDEATH") == [0, 1, 2, 3]  # two clean closes, the Will of the killed link, a clean close
        (tmp_path / "data" / "sparkplug" / "bdseq").write_text("255")
        sink = make_sink(mosquitto_server.url, tmp_path)
        await sink.start()
        try:
            await wait_for(lambda: len(rec.of("NBIRTH")) == 5, 5, "NBIRTH after 255")
        finally:
            await sink.close()
        assert bdseqs("NBIRTH")[-1] == 0
    finally:
        rec.close()


async def test_store_and_forward_is_historical_in_order_after_broker_outage(
    mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    """Readings taken while the broker is down wait in the outbox; after the reconnect and births they
    go out in order as DDATA with is_historical and their source timestamps, then live data follows.
    Failed connection attempts send no CONNECT, so they do not use up bdSeq numbers."""
    rec = await start_recorder(mosquitto_server)
    sink = make_sink(mosquitto_server.url, tmp_path)
    try:
        await sink.start()
        await wait_for(lambda: bool(rec.of("NBIRTH")), 5, "NBIRTH")
        for i in range(5):
            await sink.write([reading(i)])
        await wait_for(lambda: len(rec.of("DDATA")) == 4, 5, "live DDATA")
        rec.close()
        await asyncio.to_thread(mosquitto_server.stop)
        for i in range(5, 15):
            await sink.write([reading(i)])
        # Lost link + two refused attempts: the sink now waits 4 s before the next one, time enough to
        # restart the broker and subscribe before it reconnects.
        await wait_for(lambda: sink.stats().errors >= 3, 10, "two failed reconnects")
        assert sink.stats().outbox_depth == 10
        await asyncio.to_thread(mosquitto_server.start)
        rec = await start_recorder(mosquitto_server)
        assert not sink.stats().connected, "the sink reconnected before the recorder subscribed"
        await wait_for(lambda: len(rec.of("DDATA")) == 10, 15, "historical DDATA")
        await sink.write([reading(15)])
        await wait_for(lambda: len(rec.of("DDATA")) == 11, 5, "live DDATA again")
        assert sink.stats().outbox_depth == 0
        assert sink.stats().dropped == 0
    finally:
        await sink.close()
        rec.close()
    assert [m.kind for m in rec.all()][:2] == ["NBIRTH", "DBIRTH"]
    assert by_name(rec.of("NBIRTH")[0])["bdSeq"].value == 1
    assert values(rec.of("DBIRTH")) == [4.0]  # the latest value published live
    history = [m for p in rec.of("DDATA")[:10] for m in p.metrics]
    assert [(m.value, m.timestamp, m.is_historical) for m in history] == [
        (float(i), BASE_MS + i, True) for i in range(5, 15)
    ]
    live = rec.of("DDATA")[10].metrics[0]
    assert (live.value, live.is_historical) == (15.0, False)
    assert node_seqs(rec) == list(range(13))


async def test_primary_host_offline_buffers(
    mosquitto_server: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With a primary host, nothing is born until its STATE says online; while it says offline DATA is
    withheld and buffered; back online, the node re-births (same bdSeq) and sends the buffer as history.
    A STATE older than the last one seen is ignored."""
    caplog.set_level(logging.DEBUG, logger="gateway.sinks.sparkplug")
    rec = await start_recorder(mosquitto_server)
    await asyncio.to_thread(host_state, rec, False, 1000)
    sink = make_sink(mosquitto_server.url, tmp_path, primary_host_id="scada")
    try:
        await sink.start()
        for i in range(3):
            await sink.write([reading(i)])
        await wait_for(lambda: sink.stats().connected, 5, "sink connected")
        await asyncio.to_thread(host_state, rec, True, 2000)
        await wait_for(lambda: len(rec.of("DDATA")) == 3, 5, "history after the host came online")
        await sink.write([reading(3)])
        await wait_for(lambda: len(rec.of("DDATA")) == 4, 5, "live DDATA")

        await asyncio.to_thread(host_state, rec, False, 3000)
        await wait_for(lambda: "primary host scada offline" in caplog.text, 5, "host offline seen")
        await sink.write([reading(4)])
        await sink.write([reading(5)])
        await asyncio.to_thread(host_state, rec, True, 2500)  # stale: must not end the wait
        await wait_for(lambda: "older than the last seen (2500 < 3000)" in caplog.text, 5, "stale STATE ignored")
        assert sink.stats().outbox_depth == 2
        await asyncio.to_thread(host_state, rec, True, 4000)
        await wait_for(lambda: len(rec.of("DDATA")) == 6, 5, "buffered DDATA")
    finally:
        await sink.close()
        rec.close()
    node_kinds = [m.kind for m in rec.all() if m.kind != "NDEATH"]
    # Sample 0 made the device: its DBIRTH carries it, and as history it is also sent in DDATA.
    assert node_kinds == ["STATE", "STATE", "NBIRTH", "DBIRTH", "DDATA", "DDATA", "DDATA", "DDATA",
                          "STATE", "STATE", "STATE", "NBIRTH", "DBIRTH", "DDATA", "DDATA"]
    first, second = rec.of("NBIRTH")
    assert by_name(first)["bdSeq"].value == by_name(second)["bdSeq"].value == 0
    ddata = [p.metrics[0] for p in rec.of("DDATA")]
    assert [(m.value, m.is_historical) for m in ddata] == [
        (0.0, True), (1.0, True), (2.0, True), (3.0, False), (4.0, True), (5.0, True)
    ]
    assert values(rec.of("DBIRTH")) == [0.0, 3.0]


async def test_outbox_full_drops_oldest_and_counts(tmp_path: Path) -> None:
    sink = make_sink(f"mqtt://127.0.0.1:{free_port()}", tmp_path, outbox_max_rows=3)
    await sink.start()
    try:
        for i in range(5):
            await sink.write([reading(i)])
        stats = sink.stats()
        assert (stats.outbox_depth, stats.dropped, stats.connected) == (3, 2, False)
    finally:
        await sink.close()


def test_runtime_builds_the_sink_only_when_enabled(tmp_path: Path) -> None:
    def sinks(sparkplug: dict[str, Any]) -> list[str]:
        config = GatewayConfig.model_validate({"gateway": {"data_dir": str(tmp_path)}, "api": {"enabled": False},
                                               "sinks": {"mqtt": {"enabled": False}, "sparkplug": sparkplug}})
        return [sink.name for sink in build_gateway(config).sinks]

    assert sinks({}) == []
    assert sinks({"enabled": True, "group_id": GROUP}) == ["sparkplug"]
