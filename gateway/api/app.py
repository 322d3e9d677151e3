"""The edge API application: versioned REST under /api/v1, WebSocket streams, seed routes, Prometheus
metrics, OpenAPI docs.

Without ``edge`` (the storage-backed services) the app serves only health, devices and metrics,
unauthenticated: that is the read-only API of a gateway whose storage is not wired (and of tests).
With it, every route but health and metrics needs a viewer token, unless anonymous read is on.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from gateway.api.auth import ANONYMOUS, Principal
from gateway.api.edge import EdgeServices
from gateway.api.problems import install_problem_handlers
from gateway.api.routes_assets import TagReading, build_assets_router
from gateway.api.seed_routes import MineSnapshots, build_seed_router
from gateway.api.state import EdgeState
from gateway.api.values_json import ValuesJson
from gateway.api.ws import build_ws_router
from gateway.api.ws_hub import WsHub

__all__ = ["ApiParts", "TagReading", "create_app"]


@dataclass
class ApiParts:
    """The storage-backed services and the stream hub the full API needs (built by the runtime)."""

    edge: EdgeServices
    hub: WsHub
    snapshots: MineSnapshots
    queue_size: int = 256
    machine_period_s: float = 0.1
    allow_query_token: bool = True


class DeviceSummary(BaseModel):
    id: str = Field(examples=["conveyor-01"])
    type: str = Field(examples=["conveyor"])
    plc: str = Field(examples=["plc-shop-1"])
    site: str = Field(examples=["factory"])
    area: str = Field(examples=["machine-shop"])


class DeviceValues(DeviceSummary):
    values: dict[str, TagReading]


class SourceHealth(BaseModel):
    name: str
    protocol: str
    endpoint: str
    connected: bool


class Health(BaseModel):
    status: str = Field(examples=["ok"], description="ok when every source is connected, else degraded")
    gateway: str
    sources: list[SourceHealth]


async def _everyone() -> Principal:
    return ANONYMOUS


def create_app(state: EdgeState, registry: CollectorRegistry | None = None, parts: ApiParts | None = None) -> FastAPI:
    app = FastAPI(
        title="TwinEdge edge API",
        version="1",
        description="Latest values, health and metrics of the TwinEdge gateway. Errors are RFC 9457 problem+json.",
    )
    install_problem_handlers(app)
    # Without the edge services there is no auth: every caller reads everything.
    reader = Depends(parts.edge.auth.require("viewer") if parts is not None else _everyone)
    values_json = ValuesJson(state.latest)  # shared by the two latest-values routes
    api = APIRouter(prefix="/api/v1")
    devices_api = APIRouter(prefix="/api/v1")

    @api.get("/health", response_model=Health, summary="Gateway and source health")
    async def health() -> Health:
        sources = [SourceHealth(name=s.name, protocol=s.protocol, endpoint=s.endpoint, connected=s.connected)
                   for s in state.sources()]
        status = "ok" if all(s.connected for s in sources) else "degraded"
        return Health(status=status, gateway=state.gateway_id, sources=sources)

    @devices_api.get("/devices", response_model=list[DeviceSummary], summary="Every asset the gateway reads")
    async def devices(caller: Principal = reader) -> list[DeviceSummary]:
        return [DeviceSummary(**vars(info)) for info in state.visible_assets(caller.sites)]

    @devices_api.get(
        "/devices/{device_id}",
        response_model=DeviceValues,
        summary="Latest values of one asset",
        responses={404: {"description": "unknown asset", "content": {"application/problem+json": {}}}},
    )
    async def device(device_id: str, caller: Principal = reader) -> Response:
        info = state.visible(caller.sites, device_id)
        if info is None:
            raise HTTPException(404, f"no device {device_id!r}")
        return Response(values_json.body(info), media_type="application/json")  # shaped as DeviceValues

    app.include_router(api)
    app.include_router(devices_api)
    if parts is not None:
        edge = parts.edge
        # Routes are matched in order: the assets router, which holds the routes dashboards poll, first.
        app.include_router(build_assets_router(state, edge.auth, values_json))
        for router in edge.routers(asset_exists=state.assets.__contains__, scope=state.visible_ids):
            app.include_router(router)
        app.include_router(build_ws_router(parts.hub, edge.auth, queue_size=parts.queue_size,
                                           allow_query_token=parts.allow_query_token,
                                           asset_exists=state.assets.__contains__, scope=state.visible_ids))
        app.include_router(build_seed_router(state, parts.hub, edge.auth, edge.commands, parts.snapshots,
                                             queue_size=parts.queue_size, machine_period_s=parts.machine_period_s,
                                             allow_query_token=parts.allow_query_token))

    if registry is not None:
        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
