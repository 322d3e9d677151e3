"""WebSocket streams: readings, alerts, command states and fixed-period snapshots, fanned out by a WsHub.

Fan-out (issue 7, "a slow client never slows the pipeline or other clients"): publishing only puts a
message into each client's bounded queue and returns; every client has its own sender task. When a
queue is full the oldest message goes, the loss is counted, and before its next message the client
gets ``{"type": "dropped", "count": n}``, so a dashboard knows it missed something.

Authentication happens at the handshake. Browsers cannot set an Authorization header on a
WebSocket, so the token travels as a subprotocol, ``Sec-WebSocket-Protocol: bearer, <jwt>`` (the
server answers ``bearer``), or as a ``?token=`` query parameter. The query form is a fallback with a
risk: URLs land in proxy and access logs, so tokens there must be short-lived (they are, 15 min by
default) and ``api.websocket.allow_query_token: false`` turns it off. Without a valid token, and
unless anonymous read is on, the socket is accepted and closed at once with 1008 (policy violation),
which a client can tell apart from a network failure, unlike an HTTP 403 on the upgrade.

A stream lives longer than its handshake, so its token is watched while it runs (api/token_guard.py):
when the token expires, or is revoked (logout, a change of the user, the user deleted), the stream is
closed with 1008 and the reason, ``token expired`` or ``token revoked``. Anonymous streams have no token.

Per-site scope (OWASP API1): a client limited to some sites gets only what concerns the assets of its
sites: ``/ws/stream`` selects only those (asking for another one is refused like an unknown asset),
and the other topics pass each message through its cut in ``visibility.py``.

Fixed-period streams schedule on absolute deadlines of ``loop.time()`` (n x period from the start),
so sleep jitter never accumulates into drift; a missed deadline is skipped, not caught up in a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from gateway.api.auth import Authenticator, Principal
from gateway.api.state import AssetScope, no_assets_known
from gateway.api.visibility import TOPIC_CUTS, Cut
from gateway.common.status import status_name
from gateway.encoders.uns_json import format_ts, json_value
from gateway.readings import Reading
from gateway.storage.revocations import Token

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
MAX_FILTER_ITEMS = 1000


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), default=str)


def reading_json(r: Reading) -> dict[str, Any]:
    return {"device": r.device, "asset": r.asset, "tag": r.tag, "value": json_value(r.value),
            "quality": r.quality_name, "status": status_name(r.quality), "unit": r.unit,
            "source_ts": format_ts(r.source_ts)}


async def every(period_s: float) -> AsyncIterator[float]:
    """Yield at start + n x period (loop time), without drift; skip deadlines already missed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time()
    while True:
        yield deadline
        deadline += period_s
        late = loop.time() - deadline
        if late > 0:  # a stalled loop: drop the missed ticks rather than send a burst
            deadline += math.ceil(late / period_s) * period_s
        await asyncio.sleep(deadline - loop.time())


@dataclass
class ReadingFilter:
    """Which readings a /ws/stream client wants, and how often per tag."""

    assets: frozenset[str] = frozenset()  # empty: all
    tags: frozenset[str] = frozenset()
    min_interval_s: float = 0.0
    _last: dict[tuple[str, str], float] = field(default_factory=dict)

    def select(self, readings: Sequence[Reading], now: float) -> list[Reading]:
        out = []
        for r in readings:
            if (self.assets and r.asset not in self.assets) or (self.tags and r.tag not in self.tags):
                continue
            if self.min_interval_s > 0:
                key = (r.asset, r.tag)
                last = self._last.get(key)
                if last is not None and now - last < self.min_interval_s:
                    continue
                self._last[key] = now
            out.append(r)
        return out


class WsClient:
    """One connected socket: a bounded queue of serialised messages and the task that sends them."""

    def __init__(self, ws: WebSocket, queue_size: int, principal: Principal,
                 readings: ReadingFilter | None = None, visible: frozenset[str] | None = None) -> None:
        self.ws = ws
        self.principal = principal
        self.readings = readings
        self.visible = visible  # the asset ids in the client's scope; None: every asset
        self.queue: deque[str] = deque()
        self.queue_size = queue_size
        self.dropped = 0  # total, for metrics and tests
        self.sent = 0
        self._unreported = 0  # drops the client has not been told about yet
        self._wake = asyncio.Event()

    def offer(self, text: str) -> None:
        """Never blocks: a full queue loses its oldest message."""
        if len(self.queue) >= self.queue_size:
            self.queue.popleft()
            self.dropped += 1
            self._unreported += 1
        self.queue.append(text)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue:
                if self._unreported:
                    count, self._unreported = self._unreported, 0
                    await self.ws.send_text(dumps({"type": "dropped", "count": count}))
                await self.ws.send_text(self.queue.popleft())
                self.sent += 1


class WsHub:
    """Topics ("readings", "alerts", "commands", "mine", ...) to their clients. Publishing is synchronous
    and cheap, so the pipeline and the services' listeners can call it directly."""

    def __init__(self, cuts: Mapping[str, Cut] = TOPIC_CUTS) -> None:
        self._topics: dict[str, set[WsClient]] = {}
        self._loop_time: Callable[[], float] | None = None
        self.cuts = cuts

    def clients(self, topic: str) -> int:
        return len(self._topics.get(topic, ()))

    def add(self, topic: str, client: WsClient) -> Callable[[], None]:
        self._topics.setdefault(topic, set()).add(client)
        return lambda: self._topics.get(topic, set()).discard(client)

    def publish(self, topic: str, message: dict[str, Any]) -> None:
        clients = self._topics.get(topic)
        if clients:
            text = dumps(message)  # serialised once for every client
            cut = self.cuts.get(topic)
            scoped: dict[frozenset[str], str | None] = {}  # once per scope, too
            for client in list(clients):
                if client.visible is None:
                    client.offer(text)
                    continue
                if client.visible not in scoped:
                    shown = cut(message, client.visible) if cut is not None else None
                    scoped[client.visible] = dumps(shown) if shown is not None else None
                if (scoped_text := scoped[client.visible]) is not None:
                    client.offer(scoped_text)

    def publish_readings(self, readings: Sequence[Reading]) -> None:
        """One ``readings`` message per client whose filter selects something from the batch.

        Cost stays near O(batch + clients) rather than O(batch x clients): readings are grouped by asset
        once (asset-filtered clients look only at their assets), each reading is serialised once, and
        clients whose selection is the same (same filter without down-sampling, or the same selected
        readings) share one serialised message. ``sent_ts`` (Unix seconds) is when the hub got the batch,
        so a client can measure fan-out latency; ``source_ts`` per reading is the PLC's (or poll) time.
        """
        clients = self._topics.get("readings")
        if not clients or not readings:
            return
        now = asyncio.get_running_loop().time()
        head = f'{{"type":"readings","sent_ts":{time.time():.6f},"readings":['
        by_asset: dict[str, list[Reading]] | None = None
        fragments: dict[int, str] = {}  # id(reading) -> its JSON, for this batch only
        by_filter: dict[tuple[frozenset[str], frozenset[str]], str] = {}
        by_selection: dict[tuple[int, ...], str] = {}

        def text_of(selected: list[Reading]) -> str:
            parts = []
            for r in selected:
                fragment = fragments.get(id(r))
                if fragment is None:
                    fragment = fragments[id(r)] = dumps(reading_json(r))
                parts.append(fragment)
            return head + ",".join(parts) + "]}"

        for client in list(clients):
            wanted = client.readings
            assert wanted is not None
            candidates: Sequence[Reading] = readings
            if wanted.assets:
                if by_asset is None:
                    by_asset = {}
                    for r in readings:
                        by_asset.setdefault(r.asset, []).append(r)
                candidates = [r for a in wanted.assets for r in by_asset.get(a, ())]
            if wanted.min_interval_s <= 0:  # the selection depends on the filter alone
                key = (wanted.assets, wanted.tags)
                text = by_filter.get(key)
                if text is None:
                    selected = wanted.select(candidates, now)
                    text = by_filter[key] = text_of(selected) if selected else ""
            else:  # down-sampling state is per client
                selected = wanted.select(candidates, now)
                if not selected:
                    continue
                ids = tuple(id(r) for r in selected)
                text = by_selection.get(ids) or by_selection.setdefault(ids, text_of(selected))
            if text:
                client.offer(text)


async def accept(ws: WebSocket, auth: Authenticator, allow_query_token: bool) -> Principal | None:
    """Authenticate at the handshake; on failure accept and close with 1008, returning None."""
    offered = [p.strip() for p in ws.scope.get("subprotocols") or []]
    token: str | None = None
    subprotocol: str | None = None
    if len(offered) >= 2 and offered[0].lower() == "bearer":
        token, subprotocol = offered[1], offered[0]
    elif allow_query_token:
        token = ws.query_params.get("token")
    try:
        principal = await auth.principal_of(token)
    except HTTPException as exc:
        await ws.accept(subprotocol=subprotocol)
        await ws.close(code=POLICY_VIOLATION, reason=str(exc.detail)[:120])
        return None
    await ws.accept(subprotocol=subprotocol)
    # serve_client watches the token through it; the seed routes hand serve_client only the socket.
    ws.state.authenticator = auth
    return principal


async def serve_client(ws: WebSocket, client: WsClient, registrations: Iterable[Callable[[], None]] = (),
                       producers: Iterable[asyncio.Task[None]] = ()) -> None:
    """Run the client's sender until the peer leaves, sending fails or the token stops being good (then
    closed with 1008 and the reason); then undo its registrations. ``ws`` went through ``accept``."""
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    unwatch = _watch_token(ws, client.principal, ended.set_result)
    sender = asyncio.create_task(client.run())
    receiver = asyncio.create_task(_until_disconnect(ws))
    tasks = [sender, receiver, *producers]
    try:
        waited: list[asyncio.Future[Any]] = [ended, *tasks]
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    finally:
        unwatch()
        for unregister in registrations:
            unregister()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if ws.application_state == WebSocketState.CONNECTED and ws.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                if ended.done():
                    await ws.close(code=POLICY_VIOLATION, reason=ended.result())
                else:
                    await ws.close()


def _watch_token(ws: WebSocket, principal: Principal, end: Callable[[str], None]) -> Callable[[], None]:
    """Have ``end(reason)`` called when the caller's token expires or is revoked; returns stop-watching."""
    if principal.jti is None or principal.expires_at is None:
        return lambda: None  # anonymous read: no token to outlive
    auth: Authenticator = ws.state.authenticator
    token = Token(principal.sub, principal.jti, principal.stamp)
    return auth.guard.watch(token, principal.expires_at - auth.clock(), end)


async def _until_disconnect(ws: WebSocket) -> None:
    # Clients only listen; anything they send is ignored. Reading is how a disconnect is noticed.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return


def periodic(client: WsClient, period_s: float, build: Callable[[], dict[str, Any] | None]) -> asyncio.Task[None]:
    """A per-client producer: ``build()`` every period on absolute deadlines (None sends nothing)."""

    async def produce() -> None:
        async for _ in every(period_s):
            message = build()
            if message is not None:
                client.offer(dumps(message))

    return asyncio.create_task(produce())


def _csv(value: str | None, what: str) -> frozenset[str]:
    items = frozenset(v.strip() for v in (value or "").split(",") if v.strip())
    if len(items) > MAX_FILTER_ITEMS:
        raise ValueError(f"at most {MAX_FILTER_ITEMS} {what}")
    return items


def build_ws_router(
    hub: WsHub, auth: Authenticator, *, queue_size: int = 256, allow_query_token: bool = True,
    asset_exists: Callable[[str], bool] | None = None, scope: AssetScope = no_assets_known,
) -> APIRouter:
    router = APIRouter()

    @router.websocket("/ws/stream")
    async def stream(ws: WebSocket) -> None:
        """Readings as the pipeline carries them: ``?assets=a,b&tags=x,y&min_interval_ms=N``."""
        principal = await accept(ws, auth, allow_query_token)
        if principal is None:
            return
        params = ws.query_params
        try:
            assets = _csv(params.get("assets"), "assets")
            tags = _csv(params.get("tags"), "tags")
            interval_ms = float(params.get("min_interval_ms") or 0)
            if not 0 <= interval_ms <= 3_600_000:
                raise ValueError("min_interval_ms must be 0..3600000")
            visible = scope(principal.sites)
            unknown = sorted(a for a in assets if (asset_exists is not None and not asset_exists(a))
                             or (visible is not None and a not in visible))
            if unknown:
                raise ValueError(f"unknown asset(s): {', '.join(unknown)}")
        except ValueError as exc:
            # 1008 again: the request is refused by policy; the reason says what to fix.
            await ws.close(code=POLICY_VIOLATION, reason=str(exc)[:120])
            return
        if visible is not None and not assets:
            assets = visible  # an empty filter means every asset: narrow it to the scope
        client = WsClient(ws, queue_size, principal, ReadingFilter(assets, tags, interval_ms / 1000.0), visible)
        # A client whose scope holds no asset at all is served nothing, rather than everything.
        await serve_client(ws, client, [hub.add("readings", client)] if visible is None or assets else [])

    def topic_route(path: str, topic: str) -> None:
        @router.websocket(path)
        async def topic_stream(ws: WebSocket) -> None:
            principal = await accept(ws, auth, allow_query_token)
            if principal is None:
                return
            client = WsClient(ws, queue_size, principal, visible=scope(principal.sites))
            await serve_client(ws, client, [hub.add(topic, client)])

        topic_stream.__name__ = f"ws_{topic}"

    topic_route("/ws/alerts", "alerts")  # every alert transition: raised, acknowledged, cleared
    topic_route("/ws/commands", "commands")  # every command state change
    topic_route("/ws/mine", "mine")  # the mine snapshot at a fixed period (api.websocket.snapshot_period_s)
    return router
