"""The edge API application: versioned REST under /api/v1, Prometheus metrics, OpenAPI docs."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from gateway.api.problems import install_problem_handlers
from gateway.api.state import EdgeState
from gateway.common.status import status_name
from gateway.readings import TagValue


class TagReading(BaseModel):
    value: TagValue | None = Field(examples=[1.48])
    unit: str | None = Field(description="UNECE Rec. 20 code", examples=["MTS"])
    quality: str = Field(description="Good, Uncertain or Bad", examples=["Good"])
    status_code: int = Field(description="OPC UA StatusCode", examples=[0])
    status: str = Field(description="StatusCode name", examples=["Good"])
    source_ts: datetime
    source: str = Field(description="the gateway source that read it", examples=["plc-shop-1-opcua"])


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


def create_app(state: EdgeState, registry: CollectorRegistry | None = None) -> FastAPI:
    app = FastAPI(
        title="TwinEdge edge API",
        version="1",
        description="Latest values, health and metrics of the TwinEdge gateway. Errors are RFC 9457 problem+json.",
    )
    install_problem_handlers(app)
    api = APIRouter(prefix="/api/v1")

    @api.get("/health", response_model=Health, summary="Gateway and source health")
    async def health() -> Health:
        sources = [SourceHealth(**vars(s)) for s in state.sources()]
        status = "ok" if all(s.connected for s in sources) else "degraded"
        return Health(status=status, gateway=state.gateway_id, sources=sources)

    @api.get("/devices", response_model=list[DeviceSummary], summary="Every asset the gateway reads")
    async def devices() -> list[DeviceSummary]:
        return [DeviceSummary(**vars(info)) for info in sorted(state.assets.values(), key=lambda a: a.id)]

    @api.get(
        "/devices/{device_id}",
        response_model=DeviceValues,
        summary="Latest values of one asset",
        responses={404: {"description": "unknown asset", "content": {"application/problem+json": {}}}},
    )
    async def device(device_id: str) -> DeviceValues:
        info = state.assets.get(device_id)
        if info is None:
            raise HTTPException(404, f"no device {device_id!r}")
        readings = state.latest.asset(device_id) or {}
        values = {
            tag: TagReading(
                value=r.value, unit=r.unit, quality=r.quality_name, status_code=r.quality,
                status=status_name(r.quality), source_ts=r.source_ts, source=r.device,
            )
            for tag, r in sorted(readings.items())
        }
        return DeviceValues(**vars(info), values=values)

    app.include_router(api)

    if registry is not None:
        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
