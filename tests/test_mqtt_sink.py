"""MqttSink against a real Mosquitto: payloads, retained status, Will, outage and recovery, with paho in
a worker process (the default) and driven from the gateway's own event loop (no paho thread, no
blocking connect)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import getpass
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.common.status import GOOD
from gateway.readings import Reading
from gateway.sinks.mqtt import MqttSink, MqttSinkConfig
from gateway.sinks.mqtt_link import BufferedReadClient
from gateway.sinks.mqtt_publisher import DEFAULT_INFLIGHT_311, inflight_window
from gateway.sinks.outbox_common import OutboxBackend
from tests.fixtures.servers import MOSQUITTO, MosquittoServer, _Process, _tcp_ready, free_port, run_mosquitto

BASE_TS = datetime(2026, 11, 21, 13, 55, 1, 0, tzinfo=UTC)
STATUS_TOPIC = "twinedge/_gateway/gw1/status"
PUBLISHERS = ["process", "loop"]
SEQ_TOPIC = "twinedge/mine-a/level-3/conveyor-01/seq"


def reading(i: int, tag: str = "seq", asset: str = "conveyor-01") -> Reading:
    ts = BASE_TS + timedelta(milliseconds=i)
    return Reading("plc1", asset, tag, float(i), GOOD, ts, ts, "mine-a", "level-3", "MTS")


async def wait_for(cond: Callable[[], bool], within_s: float, what: str) -> None:
    """Poll a condition until a deadline: the tests wait on facts, never on fixed sleeps."""
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.02)


class Subscriber:
    """A paho client on its own thread recording (topic, payload, retain) for a filter."""

    def __init__(self, server: MosquittoServer, topic: str, *, client_id: str = "", persistent: bool = False):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._topic = topic
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(server.host, server.port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self._topic, qos=1)
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def payloads(self, topic: str) -> list[Any]:
        return [json.loads(p) for t, p, _ in self.snapshot() if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_sink(url: str, tmp_path: Path, outbox: OutboxBackend = "sqlite", **cfg: Any) -> MqttSink:
    return MqttSink(MqttSinkConfig(url=url, **cfg), "gw1", tmp_path / "data", outbox=outbox)


def seq_values(sub: Subscriber) -> list[float]:
    """Values on the tag-layout topic of ``reading``, in arrival order, first delivery of each."""
    seen: list[float] = []
    for p in sub.payloads(SEQ_TOPIC):
        if p["value"] not in seen:
            seen.append(p["value"])
    return seen


@contextlib.contextmanager
def blackholed_port() -> Iterator[int]:
    """A loopback port that drops SYNs, like a firewalled broker: a listener that never accepts, its
    accept queue (backlog 0 holds one connection) filled, so a further connect hangs until its timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        fillers = [socket.socket() for _ in range(3)]
        try:
            for s in fillers:
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
            yield port
        finally:
            for s in fillers:
                s.close()


@contextlib.contextmanager
def tls_mosquitto(tmp: Path, user: str, password: str) -> Iterator[tuple[int, Path]]:
    """Mosquitto with only a TLS listener (self-signed certificate for 127.0.0.1, also the CA) and
    password authentication; yields the port and the CA file."""
    tmp.mkdir(parents=True, exist_ok=True)
    cert, key, passwd, conf = tmp / "cert.pem", tmp / "key.pem", tmp / "passwd", tmp / "mosquitto.conf"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), user, password], check=True, capture_output=True)
    port = free_port()
    # user: as root Mosquitto drops to user "mosquitto", which cannot read the files in tmp.
    conf.write_text("\n".join([
        f"listener {port} 127.0.0.1", f"certfile {cert}", f"keyfile {key}", "allow_anonymous false",
        f"password_file {passwd}", f"user {getpass.getuser()}", "log_dest stdout", "persistence false",
    ]) + "\n")
    broker = _Process([MOSQUITTO, "-c", str(conf)], tmp / "mosquitto.log", lambda: _tcp_ready("127.0.0.1", port),
                      "mosquitto-tls")
    broker.start()
    try:
        yield port, cert
    finally:
        broker.stop()


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def paho_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("paho")]


async def test_config_rejects_unknown_keys_and_bad_url() -> None:
    with pytest.raises(ValueError, match="extra"):
        MqttSinkConfig.model_validate({"urll": "mqtt://x"})
    with pytest.raises(ValueError, match="mqtt://"):
        MqttSinkConfig(url="http://x:1883")
    assert MqttSinkConfig(url="mqtts://u:p@broker:8883").qos == 1


@pytest.mark.parametrize("publisher", PUBLISHERS)
async def test_publishes_asset_messages_and_retained_status(
    publisher: str, mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    sub = await asyncio.to_thread(Subscriber, mosquitto_server, "twinedge/#")
    sink = make_sink(mosquitto_server.url, tmp_path, publisher=publisher)
    try:
        await sink.start()
        await wait_for(sub.subscribed.is_set, 5, "subscription")
        await sink.write([reading(1, "belt_speed"), reading(2, "motor_current", asset="Pump 2")])
        topic = "twinedge/mine-a/level-3/conveyor-01"
        await wait_for(lambda: bool(sub.payloads(topic)), 10, "asset message")
        msg = sub.payloads(topic)[0]
        assert msg["asset"] == "conveyor-01"
        assert msg["device"] == "plc1"
        assert msg["ts"] == "2026-11-21T13:55:01.001Z"
        assert msg["values"]["belt_speed"] == {
            "value": 1.0,
            "unit": "MTS",
            "quality": "Good",
            "status_code": 0,
            "source_ts": "2026-11-21T13:55:01.001Z",
        }
        await wait_for(lambda: bool(sub.payloads("twinedge/mine-a/level-3/pump-2")), 5, "second asset")
        await wait_for(lambda: sink.stats().outbox_depth == 0, 5, "outbox drained")
        stats = sink.stats()
        assert stats.connected
        assert stats.published == 2
        assert stats.dropped == 0
    finally:
        await sink.close()
        await sink.close()  # idempotent
        sub.close()
    # A late subscriber sees the retained telemetry and the retained "offline" from close().
    late = await asyncio.to_thread(Subscriber, mosquitto_server, "twinedge/#")
    try:
        await wait_for(lambda: bool(late.payloads(STATUS_TOPIC)), 5, "retained status")
        assert late.payloads(STATUS_TOPIC) == [{"online": False}]
        retained = {t for t, _, r in late.snapshot() if r}
        assert {"twinedge/mine-a/level-3/conveyor-01", STATUS_TOPIC} <= retained
    finally:
        late.close()


@pytest.mark.parametrize("publisher", PUBLISHERS)
async def test_online_status_then_last_will_on_crash(
    publisher: str, mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    """SIGKILL the gateway process: the broker publishes the retained Will {"online": false}. A worker
    process sees its pipe end and drops the link without a DISCONNECT, and does not outlive the gateway."""
    sub = await asyncio.to_thread(Subscriber, mosquitto_server, STATUS_TOPIC)
    await wait_for(sub.subscribed.is_set, 5, "subscription")
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        from gateway.sinks.mqtt import MqttSink, MqttSinkConfig
        async def main():
            cfg = MqttSinkConfig(url={mosquitto_server.url!r}, keepalive_s=2, publisher={publisher!r})
            sink = MqttSink(cfg, "gw1", {str(tmp_path)!r})
            await sink.start()
            while not sink.stats().connected:
                await asyncio.sleep(0.02)
            print("connected", sink._publisher.pid if {publisher!r} == "process" else 0, flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, cwd=os.getcwd()
    )
    try:
        assert proc.stdout is not None
        word, worker_pid = (await asyncio.wait_for(proc.stdout.readline(), 15)).split()
        assert word == b"connected"
        await wait_for(lambda: {"online": True} in sub.payloads(STATUS_TOPIC), 5, "online status")
        proc.send_signal(signal.SIGKILL)
        await wait_for(lambda: sub.payloads(STATUS_TOPIC)[-1] == {"online": False}, 10, "last will")
        if int(worker_pid):
            await wait_for(lambda: not process_exists(int(worker_pid)), 5, "the worker exited")
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 5)
        sub.close()


async def test_outbox_full_drops_oldest_and_counts(tmp_path: Path) -> None:
    sink = make_sink(f"mqtt://127.0.0.1:{free_port()}", tmp_path, layout="tag", outbox_max_rows=5)
    await sink.start()
    try:
        await sink.write([reading(i) for i in range(8)])
        stats = sink.stats()
        assert stats.outbox_depth == 5
        assert stats.dropped == 3
        assert not stats.connected
    finally:
        await sink.close()


@pytest.mark.parametrize("publisher", PUBLISHERS)
async def test_broker_down_at_start_logs_once_then_recovers(
    publisher: str, mosquitto_server: MosquittoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.sinks.mqtt")
    await asyncio.to_thread(mosquitto_server.stop)
    sink = make_sink(mosquitto_server.url, tmp_path, layout="tag", publisher=publisher)
    await sink.start()  # must not raise
    try:
        await sink.write([reading(i) for i in range(3)])
        await wait_for(lambda: sink.stats().errors >= 2, 10, "two failed connection attempts")
        assert sink.stats().outbox_depth == 3
        await asyncio.to_thread(mosquitto_server.start)
        sub = await asyncio.to_thread(Subscriber, mosquitto_server, "twinedge/mine-a/#")
        try:
            await wait_for(lambda: sink.stats().outbox_depth == 0, 15, "outbox drained after recovery")
        finally:
            sub.close()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        recoveries = [r for r in caplog.records if "again after" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert len(recoveries) == 1
    finally:
        await sink.close()


@pytest.mark.parametrize("publisher", PUBLISHERS)
@pytest.mark.parametrize(("protocol", "qos", "outbox"), [("5", 1, "sqlite"), ("3.1.1", 2, "sqlite"), ("5", 1, "log")])
async def test_broker_restart_mid_stream_delivers_everything_in_order(
    protocol: str, qos: int, outbox: OutboxBackend, publisher: str, tmp_path: Path
) -> None:
    """Fault matrix §5.5 #1: stop Mosquitto while writing, restart on the same port; every record
    arrives afterwards, in order, with its original timestamp (duplicates allowed: QoS 1).

    The broker persists sessions so the test's own persistent subscriber misses nothing while
    the broker is down; the sink under test has only its outbox, and the messages paho still held
    unacknowledged when the link dropped, which it resends after the sink's own reconnect."""
    n, per_batch = 200, 10
    with run_mosquitto(tmp_path / "broker", persistence=True) as server:
        sub = await asyncio.to_thread(Subscriber, server, SEQ_TOPIC, client_id="checker", persistent=True)
        await wait_for(sub.subscribed.is_set, 5, "subscription")
        sink = make_sink(server.url, tmp_path, outbox, layout="tag", protocol=protocol, qos=qos, publisher=publisher)
        await sink.start()
        try:
            await wait_for(lambda: sink.stats().connected, 5, "sink connected")
            for b in range(n // per_batch):
                await sink.write([reading(i) for i in range(b * per_batch, (b + 1) * per_batch)])
                if b == 5:
                    await asyncio.to_thread(server.stop)
                    assert sub.snapshot(), "some records were delivered before the outage"
                if b == 15:
                    await asyncio.to_thread(server.start)
                await asyncio.sleep(0.05)  # pacing of the producer, not a wait for a result
            await wait_for(lambda: sink.stats().outbox_depth == 0, 20, "outbox drained")
            await wait_for(lambda: len(seq_values(sub)) == n, 10, "all records")
        finally:
            await sink.close()
            sub.close()
    assert seq_values(sub) == [float(i) for i in range(n)]
    for p in sub.payloads(SEQ_TOPIC):
        ts = BASE_TS + timedelta(milliseconds=int(p["value"]))
        assert p["ts"] == ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    assert sink.stats().dropped == 0


@pytest.mark.parametrize("publisher", PUBLISHERS)
@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_every_qos_and_protocol_delivers_in_order(
    protocol: str, qos: int, publisher: str, mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    n = 300
    sub = await asyncio.to_thread(Subscriber, mosquitto_server, SEQ_TOPIC)
    sink = make_sink(mosquitto_server.url, tmp_path, layout="tag", protocol=protocol, qos=qos, batch_max=50,
                     publisher=publisher)
    try:
        await wait_for(sub.subscribed.is_set, 5, "subscription")
        await sink.start()
        await sink.write([reading(i) for i in range(n)])
        await wait_for(lambda: sink.stats().outbox_depth == 0, 10, "outbox drained")
        await wait_for(lambda: len(seq_values(sub)) == n, 5, "all records")
        assert seq_values(sub) == [float(i) for i in range(n)]
        assert sink.stats().published == n
    finally:
        await sink.close()
        sub.close()


@pytest.mark.parametrize("publisher", PUBLISHERS)
@pytest.mark.parametrize(("protocol", "configured", "window"), [
    ("5", 100, 5), ("5", None, 5), ("3.1.1", 100, 100), ("3.1.1", None, DEFAULT_INFLIGHT_311)])
async def test_inflight_window_honours_the_brokers_receive_maximum(
    protocol: str, configured: int | None, window: int, publisher: str, tmp_path: Path
) -> None:
    """MQTT 5: never more unacknowledged PUBLISHes than the broker's Receive Maximum (Mosquitto sends
    max_inflight_messages), which is also the window when none is configured; 3.1.1 has no such
    property, so the configured window applies, or a conservative default. At QoS 2, which Mosquitto
    holds until PUBREL, it refuses (MQTT 5: PUBREC 0x97) every PUBLISH beyond its limit."""
    with run_mosquitto(tmp_path / "broker", extra=["max_inflight_messages 5"]) as broker:
        sub = await asyncio.to_thread(Subscriber, broker, SEQ_TOPIC)
        qos = 2 if protocol == "5" else 1  # 3.1.1 beyond the limit is disconnected over and over at QoS 2
        sink = make_sink(broker.url, tmp_path, layout="tag", protocol=protocol, max_inflight=configured, qos=qos,
                         publisher=publisher)
        try:
            await wait_for(sub.subscribed.is_set, 5, "subscription")
            await sink.start()
            await sink.write([reading(i) for i in range(300)])
            await wait_for(lambda: len(seq_values(sub)) == 300, 10, "all records")
            assert seq_values(sub) == [float(i) for i in range(300)]
            assert sink.stats().errors == 0  # no disconnect for exceeding the broker's window
            assert sink.inflight_window == window
        finally:
            await sink.close()
            sub.close()


async def test_paho_runs_on_the_event_loop_and_close_leaves_nothing_behind(
    mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    """No paho network thread: the loop's selector watches the socket. close() unregisters it and
    stops every task the sink started."""
    loop = asyncio.get_running_loop()
    watched_before = set(loop._selector.get_map())
    tasks_before = asyncio.all_tasks()
    sink = make_sink(mosquitto_server.url, tmp_path, layout="tag", publisher="loop")
    await sink.start()
    try:
        await wait_for(lambda: sink.stats().connected, 5, "sink connected")
        await sink.write([reading(i) for i in range(20)])
        await wait_for(lambda: sink.stats().outbox_depth == 0, 5, "outbox drained")
        assert paho_threads() == []
        assert set(loop._selector.get_map()) > watched_before
    finally:
        await sink.close()
    assert set(loop._selector.get_map()) == watched_before
    assert asyncio.all_tasks() == tasks_before


@pytest.mark.parametrize("publisher", PUBLISHERS)
async def test_blackholed_broker_does_not_block_the_event_loop(publisher: str, tmp_path: Path) -> None:
    """A connect to a host that drops SYNs blocks for paho's connect timeout (5 s); it runs on a worker
    thread, so the loop keeps ticking, and close() during the attempt waits for it without leaking."""
    tasks_before = asyncio.all_tasks()
    with blackholed_port() as port:
        sink = make_sink(f"mqtt://127.0.0.1:{port}", tmp_path, publisher=publisher)
        await sink.start()
        try:
            started = last = time.monotonic()
            longest_gap = 0.0
            while time.monotonic() - started < 1.5:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                longest_gap, last = max(longest_gap, now - last), now
            assert longest_gap < 0.3
            assert sink.stats().errors == 0, "the connect attempt must still be pending (is the port blackholed?)"
        finally:
            await asyncio.wait_for(sink.close(), 10)
    assert asyncio.all_tasks() == tasks_before


async def test_qos0_records_lost_with_the_link_are_published_again(
    mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    """At QoS 0 paho silently drops the packets it had not written when a link breaks (no on_publish):
    the sink takes those records from the outbox again rather than wait for them forever."""
    n = 10
    sub = await asyncio.to_thread(Subscriber, mosquitto_server, SEQ_TOPIC)
    sink = make_sink(mosquitto_server.url, tmp_path, layout="tag", qos=0, publisher="loop")
    try:
        await wait_for(sub.subscribed.is_set, 5, "subscription")
        await sink.start()
        await wait_for(lambda: sink.stats().connected, 5, "sink connected")
        client: Any = sink._publisher._client  # type: ignore[union-attr]
        publish = client.publish
        calls = 0

        def publish_into_a_dead_socket(*args: Any, **kwargs: Any) -> Any:
            # Mid-burst, the socket dies under paho: this burst is queued, and none of it gets written.
            nonlocal calls
            calls += 1
            if calls == 3:
                client.socket().shutdown(socket.SHUT_RDWR)
            return publish(*args, **kwargs)

        client.publish = publish_into_a_dead_socket
        await sink.write([reading(i) for i in range(n)])
        await wait_for(lambda: sink.stats().outbox_depth == 0, 10, "outbox drained after the reconnect")
        assert calls > n, "the burst was published again after the reconnect"
        await wait_for(lambda: len(seq_values(sub)) == n, 5, "all records")
        assert seq_values(sub) == [float(i) for i in range(n)]
    finally:
        await sink.close()
        sub.close()


async def test_tls_with_password_refused_then_accepted(tmp_path: Path) -> None:
    """mqtts:// with a CA file and user:pass@: a wrong password is refused and retried without a
    crash; the right one delivers over TLS (handshake off the loop, TLS-buffered reads drained)."""
    with tls_mosquitto(tmp_path / "broker", "gw", "s3cret") as (port, ca_file):
        tls = {"ca_file": str(ca_file)}
        wrong = make_sink(f"mqtts://gw:nope@127.0.0.1:{port}", tmp_path / "wrong", layout="tag", tls=tls)
        await wrong.start()
        try:
            await wrong.write([reading(0)])
            await wait_for(lambda: wrong.stats().errors >= 2, 10, "refused connection attempts")
            assert not wrong.stats().connected
            assert wrong.stats().outbox_depth == 1
        finally:
            await wrong.close()
        sink = make_sink(f"mqtts://gw:s3cret@127.0.0.1:{port}", tmp_path / "right", layout="tag", tls=tls)
        await sink.start()
        try:
            await sink.write([reading(i) for i in range(100)])
            await wait_for(lambda: sink.stats().outbox_depth == 0, 10, "outbox drained over TLS")
            assert sink.stats().published == 100
            assert sink.stats().connected
        finally:
            await sink.close()


@pytest.mark.parametrize(("configured", "receive_maximum", "window"), [
    (None, None, DEFAULT_INFLIGHT_311), (None, 1000, 1000), (50, 1000, 50), (50, 20, 20), (50, None, 50)])
def test_inflight_window_rule(configured: int | None, receive_maximum: int | None, window: int) -> None:
    assert inflight_window(configured, receive_maximum) == window



async def test_a_killed_worker_is_replaced_and_nothing_is_lost(
    mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    """The publisher process ignores SIGTERM (the gateway drains first); killed outright, it takes
    paho's unacknowledged messages with it, and the sink starts another that publishes them again from
    the outbox: every record arrives, in order of first delivery, and close() leaves no process behind."""
    n, per_batch = 200, 20
    sub = await asyncio.to_thread(Subscriber, mosquitto_server, SEQ_TOPIC)
    sink = make_sink(mosquitto_server.url, tmp_path, layout="tag")
    await wait_for(sub.subscribed.is_set, 5, "subscription")
    await sink.start()
    publisher: Any = sink._publisher
    try:
        await wait_for(lambda: sink.stats().connected, 10, "sink connected")
        first_pid = publisher.pid
        os.kill(first_pid, signal.SIGTERM)
        for b in range(n // per_batch):
            await sink.write([reading(i) for i in range(b * per_batch, (b + 1) * per_batch)])
            if b == 3:
                await wait_for(lambda: len(seq_values(sub)) >= 3 * per_batch, 10, "some records delivered")
                assert publisher.pid == first_pid, "SIGTERM must not stop the worker"
                os.kill(first_pid, signal.SIGKILL)
        await wait_for(lambda: sink.stats().outbox_depth == 0, 20, "outbox drained by the next worker")
        await wait_for(lambda: len(seq_values(sub)) == n, 10, "all records")
        assert seq_values(sub) == [float(i) for i in range(n)]
        assert publisher.pid not in (None, first_pid)
        assert sink.stats().errors >= 1
        assert sink.stats().dropped == 0
        last_pid = publisher.pid
    finally:
        await sink.close()
        sub.close()
    assert not process_exists(last_pid)


@pytest.mark.parametrize("worker", ["missing", "garbled"])
async def test_a_worker_that_cannot_start_or_speaks_garbage_is_retried_without_loss(
    worker: str, mosquitto_server: MosquittoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No usable publisher process: each attempt is an error, logged, and retried with backoff; the
    records wait in the outbox, and close() stops whatever was started."""
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho 'this is not an event'\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake) if worker == "garbled" else str(tmp_path / "missing"))
    sink = make_sink(mosquitto_server.url, tmp_path, layout="tag")
    await sink.start()
    try:
        await sink.write([reading(i) for i in range(5)])
        await wait_for(lambda: sink.stats().errors >= 2, 10, "two failed publisher processes")
        assert not sink.stats().connected
        assert sink.stats().outbox_depth == 5
        expected = "garbled event" if worker == "garbled" else "could not be started"
        assert any(expected in r.getMessage() for r in caplog.records)
    finally:
        await asyncio.wait_for(sink.close(), 10)


async def test_the_pipe_to_the_worker_holds_a_window_of_records(
    mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    """With a 64 KiB pipe a busy gateway fed its worker 64 KiB per loop turn; the sink widens it."""
    sink = make_sink(mosquitto_server.url, tmp_path, layout="tag")
    await sink.start()
    try:
        await wait_for(lambda: sink.stats().connected, 10, "sink connected")
        publisher: Any = sink._publisher
        pipe = publisher._proc.stdin.transport.get_extra_info("pipe")
        limit = int(await asyncio.to_thread(Path("/proc/sys/fs/pipe-max-size").read_text))
        assert fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) >= min(1 << 20, limit)
    finally:
        await sink.close()


def test_the_buffered_client_serves_small_reads_from_one_recv() -> None:
    """Paho reads a packet byte by byte; the client takes what the socket holds at once and hands it
    out in paho's sizes, and still reports an empty socket (BlockingIOError) and a closed one (b"")."""
    client = BufferedReadClient(CallbackAPIVersion.VERSION2, client_id="t")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        client._sock = ours
        puback = bytes([0x40, 0x02, 0x00, 0x07])
        theirs.sendall(puback * 3)
        pieces = [client._sock_recv(1), client._sock_recv(1), client._sock_recv(2)]
        assert pieces == [b"\x40", b"\x02", b"\x00\x07"]
        assert client.buffered == 8
        assert client._sock_recv(100) == puback * 2
        assert client.buffered == 0
        with pytest.raises(BlockingIOError):
            client._sock_recv(1)
        theirs.shutdown(socket.SHUT_WR)
        assert client._sock_recv(1) == b""
        client._sock = None
