"""InfluxDB sink: forwards the durable outbox as line protocol (conventions §4.1-§4.4).

Two write paths (§4.3): ``api="v2"`` goes through influxdb-client's ``WriteApi`` in SYNCHRONOUS
mode (its batching mode buffers in memory only and loses data on crash, §4.4, so batching and
retries are ours); ``api="v1"`` POSTs to ``/write?db=...&precision=ns`` with httpx.

Delivery (§5.1, "gateway -> Influx"): at-least-once. A batch leaves the outbox only on success
(HTTP 204). Retries follow the influxdb-client rules of §4.4: 429 and 503 honour Retry-After; other
5xx and connection errors back off exponentially (1 s doubling to 30 s, the gateway's cap, §5.2);
any other 4xx is a poison batch (bad line, unknown database, auth): retrying cannot help, so it is
dead-lettered - removed, counted in ``dropped`` and logged with the server's message - instead of
blocking the outbox forever. Resent duplicates are harmless: same series + timestamp overwrites.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from gateway.encoders.line_protocol import LineProtocolEncoder
from gateway.readings import Reading
from gateway.sinks.base import OutboxForwarding, SinkStats, open_outbox
from gateway.sinks.outbox_common import OutboxBackend

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 300.0  # never trust a server to park the sink for longer than this


class InfluxSinkConfig(BaseModel):
    """``[sinks.influx]``. Unknown keys are errors (ARCHITECTURE.md habit 2)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    api: Literal["v2", "v1"] = "v2"
    url: str = "http://127.0.0.1:8086"
    org: str = "twinedge"  # v2
    bucket: str = "twinedge"  # v2
    token: str = ""  # v2; on 1.8 compat: "user:password" (§4.3)
    database: str = "twinedge"  # v1
    username: str | None = None  # v1
    password: str | None = None  # v1
    batch_size: int = Field(default=5000, ge=1)  # §4.1: ~5 000 lines per write
    flush_interval_ms: int = Field(default=1000, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)
    outbox_max_rows: int = Field(default=1_000_000, ge=1)
    # Where GET /api/v1/assets/{id}/history reads (gateway.history): auto = InfluxQL on /query with either API;
    # VictoriaMetrics answers no InfluxQL, so it is named; off = the local ring only.
    history: Literal["auto", "influxql", "victoriametrics", "off"] = "auto"


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of one HTTP write: ``ok``, ``retry`` after ``delay_s`` (None: use backoff), or
    ``poison`` (rejected for good)."""

    outcome: Literal["ok", "retry", "poison"]
    status: int | None = None
    message: str = ""
    delay_s: float | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delay-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, when.timestamp() - time.time()))


def classify(status: int, message: str, retry_after: str | None) -> WriteResult:
    """Map an HTTP status to what the sink does next (§4.3, §4.4)."""
    if 200 <= status < 300:
        return WriteResult("ok", status)
    if status in (429, 503):
        return WriteResult("retry", status, message, parse_retry_after(retry_after))
    if 400 <= status < 500:
        return WriteResult("poison", status, message)
    return WriteResult("retry", status, message)


class InfluxSink(OutboxForwarding):
    """Writes readings to InfluxDB (v2 API or v1 ``/write``) from a durable outbox."""

    name = "influx"
    backoff_min_s = 1.0
    backoff_max_s = 30.0

    def __init__(
        self,
        config: InfluxSinkConfig,
        gateway_id: str,
        data_dir: str | Path,
        *,
        close_timeout_s: float = 5.0,
        outbox: OutboxBackend = "sqlite",
    ) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self.data_dir = Path(data_dir)
        self.outbox_backend = outbox  # gateway.outbox: which store holds the outbox
        self.close_timeout_s = close_timeout_s
        self.encoder = LineProtocolEncoder()
        self._init_forwarding()
        self._http: httpx.AsyncClient | None = None
        self._v2_client: Any = None
        self._v2_write: Any = None
        self._flush_now = False

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None or self._closed:
            return
        cfg = self.config
        # A record is a chunk of lines (one pipeline batch, at most batch_size lines), so the
        # outbox's bound and counters are in lines while SQLite sees a row per poll. No memory tail:
        # a flush selects a few chunk rows back (0.26 ms for 5,000 lines), less than keeping a
        # flush interval of lines in memory would cost.
        self._outbox = await open_outbox(self.data_dir, self.name, cfg.outbox_max_rows,
                                         backend=self.outbox_backend, tail_max=0)
        if cfg.api == "v1":
            auth = (cfg.username, cfg.password or "") if cfg.username else None
            self._http = httpx.AsyncClient(base_url=cfg.url, timeout=cfg.timeout_s, auth=auth)
        else:
            # Imported here: the v1 path must not pay for (or depend on) the v2 client.
            from influxdb_client.client.influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS

            # retries=False: urllib3 must not retry behind our back; the outbox loop owns retries.
            self._v2_client = InfluxDBClient(
                url=cfg.url, token=cfg.token, org=cfg.org, timeout=int(cfg.timeout_s * 1000), retries=False
            )
            self._v2_write = self._v2_client.write_api(write_options=SYNCHRONOUS)
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    async def write(self, batch: Sequence[Reading]) -> None:
        if self._outbox is None:
            raise RuntimeError("InfluxSink.write() before start()")
        if not batch:
            return
        lines = self.encoder.encode(batch)
        size = self.config.batch_size
        chunks = [lines[i : i + size] for i in range(0, len(lines), size)]
        await self._outbox.append([("", "\n".join(chunk).encode()) for chunk in chunks], [len(c) for c in chunks])
        # Wake the task: it starts the flush-interval timer or, when a full batch is ready,
        # writes at once.
        self._wake.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._flush_now = True
        self._wake.set()
        await self._stop_forwarding(drain=True, only_while_connected=False)
        if self._http is not None:
            await self._http.aclose()
        if self._v2_client is not None:
            await asyncio.to_thread(self._v2_client.close)
        if self._outbox is not None:
            await self._outbox.close()

    def stats(self) -> SinkStats:
        return self._stats()

    # -- forwarding task --------------------------------------------------------------------------

    async def _sleep_or_wake(self, delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay_s)

    async def _run(self) -> None:
        assert self._outbox is not None
        outbox, cfg = self._outbox, self.config
        interval_s = cfg.flush_interval_ms / 1000
        backoff = self.backoff_min_s
        while True:
            self._wake.clear()
            depth = outbox.depth()
            if depth == 0:
                await self._wake.wait()
                continue
            # Batch by size or by age of the oldest line, whichever comes first.
            wait_s = interval_s - outbox.oldest_age_s()
            if depth < cfg.batch_size and wait_s > 0 and not self._flush_now:
                await self._sleep_or_wake(wait_s)
                continue
            records = await outbox.peek(cfg.batch_size)
            if not records:
                continue
            body = b"\n".join(r.payload for r in records)
            result = await self._send(body)
            last_id = records[-1].id
            if result.outcome == "ok":
                self._published += await outbox.ack(last_id)
                self._link_up()
                backoff = self.backoff_min_s
                self._acked.set()
            elif result.outcome == "poison":
                await outbox.discard(last_id)
                self._errors += 1
                self._link_up()  # the server answered: it is up, the data is bad
                log.error(
                    "influx: server rejected a batch of %d lines with HTTP %s: %s; dead-lettered",
                    sum(r.items for r in records),
                    result.status,
                    result.message[:500],
                )
                self._acked.set()
            else:
                self._errors += 1
                self._link_down(result)
                delay = result.delay_s if result.delay_s is not None else backoff
                backoff = min(self.backoff_max_s, backoff * 2)
                if self._closed:
                    return  # closing: the outbox keeps the batch for the next run
                await asyncio.sleep(delay)  # not interruptible by writes: that is the point

    async def _send(self, body: bytes) -> WriteResult:
        if self.config.api == "v1":
            return await self._send_v1(body)
        return await asyncio.to_thread(self._send_v2, body)

    async def _send_v1(self, body: bytes) -> WriteResult:
        assert self._http is not None
        try:
            resp = await self._http.post(
                "/write", params={"db": self.config.database, "precision": "ns"}, content=body
            )
        except httpx.HTTPError as exc:
            return WriteResult("retry", None, f"{type(exc).__name__}: {exc}")
        return classify(resp.status_code, resp.text, resp.headers.get("Retry-After"))

    def _send_v2(self, body: bytes) -> WriteResult:
        """Runs on a worker thread: influxdb-client is blocking."""
        from influxdb_client.rest import ApiException

        try:
            self._v2_write.write(bucket=self.config.bucket, org=self.config.org, record=body)
        except ApiException as exc:
            headers: Any = exc.headers or {}
            return classify(int(exc.status or 0), str(exc.body or exc.reason), headers.get("Retry-After"))
        except Exception as exc:  # urllib3 connection errors and timeouts: transient
            return WriteResult("retry", None, f"{type(exc).__name__}: {exc}")
        return WriteResult("ok", 204)

    # -- outage logging (once per outage) ---------------------------------------------------------

    def _link_up(self) -> None:
        outage_s = self._came_up()
        if outage_s is not None:
            log.info("influx: %s reachable again after %.1f s", self.config.url, outage_s)

    def _link_down(self, result: WriteResult) -> None:
        if self._went_down():
            log.warning(
                "influx: write to %s failed (%s %s); buffering in the outbox and retrying",
                self.config.url,
                result.status or "",
                result.message[:200],
            )
