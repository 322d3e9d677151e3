"""WebSocket streams: readings, alerts, command states and fixed-period snapshots, fanned out by a WsHub.

Fan-out to the clients, with a bounded queue per client, is ``ws_hub.py``'s.

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
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from fastapi import APIRouter, HTTPException, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from gateway.api.auth import Authenticator, Principal
from gateway.api.state import AssetScope, no_assets_known
from gateway.api.ws_hub import ReadingFilter, WsClient, WsHub, dumps
from gateway.storage.revocations import Token

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
MAX_FILTER_ITEMS = 1000


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
        client = WsClient(ws, queue_size, principal, ReadingFilter(assets, tags, interval_ms / 1000.0), visible,
                          hub.pacer)
        # A client whose scope holds no asset at all is served nothing, rather than everything.
        await serve_client(ws, client, [hub.add("readings", client)] if visible is None or assets else [])

    def topic_route(path: str, topic: str) -> None:
        @router.websocket(path)
        async def topic_stream(ws: WebSocket) -> None:
            principal = await accept(ws, auth, allow_query_token)
            if principal is None:
                return
            client = WsClient(ws, queue_size, principal, visible=scope(principal.sites), pacer=hub.pacer)
            await serve_client(ws, client, [hub.add(topic, client)])

        topic_stream.__name__ = f"ws_{topic}"

    topic_route("/ws/alerts", "alerts")  # every alert transition: raised, acknowledged, cleared
    topic_route("/ws/commands", "commands")  # every command state change
    topic_route("/ws/mine", "mine")  # the mine snapshot at a fixed period (api.websocket.snapshot_period_s)
    return router
