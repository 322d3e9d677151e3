"""The MQTT sink's publisher in a worker process (:mod:`gateway.sinks.mqtt_worker`), on another core.

The sink keeps the outbox, the cursor and every count; the worker only runs paho. Records go to it over
a pipe, framed (:mod:`gateway.sinks.mqtt_frames`), and acknowledgements come back as contiguous prefixes
(``acked`` up to an id), so the outbox still removes only what the broker confirmed.

A worker that dies (crash, OOM kill) takes paho's unacknowledged messages with it. The sink hears a
link loss and a resend from the last acknowledged id, and a new worker is started with the same
backoff as a broker reconnect: nothing acknowledged is lost, and what was in flight is published again
(at-least-once, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from gateway.sinks.mqtt_frames import WorkerHello, batch_frame, close_frame
from gateway.sinks.mqtt_link import RECONNECT_MAX_S, RECONNECT_MIN_S
from gateway.sinks.mqtt_publisher import DEFAULT_INFLIGHT_311, LinkState, MqttPublishConfig, PublisherListener
from gateway.sinks.outbox_common import OutboxRecord

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0  # a worker disconnecting from a broker that stopped reading is killed after this


class ProcessPublisher(LinkState):
    """Same face as :class:`~gateway.sinks.mqtt_publisher.LoopPublisher`, with paho in a child process."""

    def __init__(
        self, config: MqttPublishConfig, client_id: str, status_topic: str, listener: PublisherListener
    ) -> None:
        self.config = config
        self._hello = WorkerHello(config=config, client_id=client_id, status_topic=status_topic,
                                  log_level=logging.getLogger().getEffectiveLevel()).model_dump_json()
        self._listener = listener
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._window = DEFAULT_INFLIGHT_311
        self._handed: deque[int] = deque()  # ids handed to the worker and not yet acknowledged, oldest first
        self._acked_id = 0
        self._generation = 0
        self._closing = False
        self._worker_up = False  # the current worker has connected at least once

    @property
    def pid(self) -> int | None:
        """The worker's process id, while one runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="mqtt-worker")

    def room(self, batch_max: int) -> int:
        """Up to a batch beyond the window: the worker holds those and publishes each the moment a
        PUBACK frees a slot, so refilling the window costs its own round trip to the broker, not one
        through our busier loop as well (with Mosquitto's default window of 20 that round trip is the
        whole throughput: 20 messages per trip)."""
        if not self._connected:
            return 0
        window = batch_max if self.config.qos == 0 else self._window
        return min(batch_max, window + batch_max - len(self._handed))

    def publish(self, records: Sequence[OutboxRecord]) -> int:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return 0
        # No drain: at most a window of records is outstanding, so the pipe's buffer stays bounded.
        proc.stdin.write(batch_frame(self._generation, records))
        self._handed.extend(rec.id for rec in records)
        return len(records)

    async def close(self) -> None:
        """Have the worker say offline and disconnect, then wait for it (killing it after a timeout)."""
        self._closing = True
        task, proc = self._task, self._proc
        if task is None:
            return
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            task.cancel()  # between workers: nothing to say offline with
        else:
            proc.stdin.write(close_frame())
            try:
                await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("mqtt: publisher process did not exit in %.0f s; killed", CLOSE_TIMEOUT_S)
                proc.kill()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._connected = False

    # -- the worker's life ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = RECONNECT_MIN_S
        while not self._closing:
            ever_up = await self._run_worker()
            if self._closing:
                return
            delay = RECONNECT_MIN_S if ever_up else min(2 * delay, RECONNECT_MAX_S)
            await asyncio.sleep(delay)

    async def _run_worker(self) -> bool:
        """Start a worker and relay its events until it ends; whether it ever connected."""
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.sinks.mqtt_worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=_worker_env(),
            )
        except OSError as exc:
            self._worker_lost(f"could not be started: {exc}")
            return False
        self._proc = proc
        self._worker_up = False
        assert proc.stdin is not None
        assert proc.stdout is not None
        _widen_pipe(proc.stdin)
        proc.stdin.write(self._hello.encode() + b"\n")
        try:
            await self._relay(proc.stdout)
        except (ValueError, LookupError, TypeError) as exc:  # not one of our events: stop that worker
            log.error("mqtt: publisher process sent a garbled event (%s)", exc)
        finally:
            if proc.returncode is None and not self._closing:
                proc.kill()  # cancelled, or its output was garbage: it must not outlive us
            returncode = await proc.wait()
        if not self._closing:
            self._worker_lost(f"exited with code {returncode}")
        return self._worker_up

    async def _relay(self, stdout: asyncio.StreamReader) -> None:
        """Hand the worker's events to the listener until its stdout ends."""
        listener = self._listener
        while line := await stdout.readline():
            event = json.loads(line)
            kind = event["e"]
            if kind == "acked":
                upto, handed = event["upto"], self._handed
                while handed and handed[0] <= upto:
                    handed.popleft()
                self._acked_id = upto
                listener.acked(upto, event["published"], event["rejected"])
            elif kind == "up":
                self._worker_up = True
                self._connected = True
                self._window = event["window"]
                listener.link_up(self._window)
            elif kind == "down":
                self._connected = False
                listener.link_down(event["why"])
            elif kind == "resend":
                self._generation = event["generation"]
                self._handed.clear()
                listener.resend_after(event["after"])
            elif kind == "closed":
                self._connected = False

    def _worker_lost(self, why: str) -> None:
        """Everything the worker held unacknowledged is published again by the next one."""
        self._connected = False
        self._handed.clear()
        self._generation = 0
        self._proc = None
        log.error("mqtt: publisher process %s; starting another", why)
        self._listener.link_down(f"publisher process {why}")
        self._listener.resend_after(self._acked_id)


PIPE_BYTES = 4 << 20


def _widen_pipe(stream: asyncio.StreamWriter) -> None:
    """Make the pipe to the worker hold a whole window of records (Linux: F_SETPIPE_SZ, within
    ``/proc/sys/fs/pipe-max-size``, 1 MiB by default). With the default 64 KiB, a frame of 500 records of
    400 bytes was written 64 KiB per turn of our loop, and on a busy gateway the worker sat idle with
    1,500 records on their way to it: MQTT delivery fell to two thirds of what the sources read."""
    pipe = stream.transport.get_extra_info("pipe")
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if pipe is None or set_size is None:
        return
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        limit = 1 << 20
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe.fileno(), set_size, min(PIPE_BYTES, limit))


def _worker_env() -> dict[str, str]:
    """The gateway's environment, with the directory holding the ``gateway`` package first on the path,
    so the worker imports the same code even when the gateway runs from a checkout it was not started in."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
