"""REST reads under /api/v1: PLCs, assets with their tag tables, latest values, history, and the views
of the mine, the lathes and the warehouse. Everything comes from the catalogue, LatestValues and the
local history ring (EdgeState); nothing here talks to a PLC.

History: from the time-series database the Influx sink writes to, when ``gateway.history`` has a reader for it
(InfluxQL on InfluxDB 1.x/2.x/3.x, or VictoriaMetrics), else, or when that query fails, from the in-memory ring of
recent readings (``api.history_per_tag`` samples per tag). The response says which store answered (``store:
"influx"``, ``"victoriametrics"`` or ``"local"``).

Per-site scope (OWASP API1): a caller limited to some sites sees the PLCs and assets of those sites
only; every other asset answers 404 exactly like an unknown one, history and latest values included.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the Annotated[..., Depends(auth...)]
# parameter types, which refer to closure variables a string annotation cannot see.

import logging
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from gateway.api.auth import Authenticator, Principal
from gateway.api.state import AssetInfo, EdgeState
from gateway.api.values_json import ValuesJson
from gateway.history import APP_STATE_KEY, HistoryReader, HistoryUnavailable
from gateway.readings import TagValue

log = logging.getLogger(__name__)

MAX_POINTS = 10_000


class TagReading(BaseModel):
    value: TagValue | None = Field(examples=[1.48])
    unit: str | None = Field(description="UNECE Rec. 20 code", examples=["MTS"])
    quality: str = Field(description="Good, Uncertain or Bad", examples=["Good"])
    status_code: int = Field(description="OPC UA StatusCode", examples=[0])
    status: str = Field(description="StatusCode name", examples=["Good"])
    source_ts: datetime
    source: str = Field(description="the gateway source that read it", examples=["plc-shop-1-opcua"])


class SourceOut(BaseModel):
    name: str
    protocol: str
    endpoint: str
    connected: bool


class PlcOut(BaseModel):
    id: str = Field(examples=["plc-shop-1"])
    site: str
    area: str
    endpoints: dict[str, str] = Field(description="protocol -> endpoint the catalogue advertises",
                                      examples=[{"opcua": "opc.tcp://127.0.0.1:4840", "modbus": "127.0.0.1:5020"}])
    sources: list[SourceOut] = Field(description="the gateway sources reading this PLC")
    connected: bool = Field(description="at least one source is connected")
    assets: list[str]


class AssetOut(BaseModel):
    id: str = Field(examples=["conveyor-01"])
    type: str = Field(examples=["conveyor"])
    plc: str
    site: str
    area: str


class TagOut(BaseModel):
    key: str
    datatype: str
    unit: str | None
    eu_range: tuple[float, float] | None
    access: str
    description: str
    enum_strings: list[str]


class CommandSpecOut(BaseModel):
    name: str
    description: str
    args: list[Any]


class AssetDetail(AssetOut):
    hierarchy: list[str] = Field(description="site / area / PLC / asset", examples=[["factory", "shop", "plc-1",
                                                                                      "conveyor-01"]])
    tags: list[TagOut]
    commands: list[CommandSpecOut]


class AssetValues(AssetOut):
    values: dict[str, TagReading]


class HistoryPoint(BaseModel):
    ts: datetime = Field(description="source timestamp, or the bucket start with step")
    value: Any
    count: int = Field(default=1, description="samples in the bucket")


class History(BaseModel):
    asset: str
    tag: str
    store: str = Field(description="which store answered: influx (InfluxQL on InfluxDB 1.x/2.x/3.x), "
                       "victoriametrics, or local (in-memory ring, also the fallback when those fail)",
                       examples=["local"])
    step_s: float | None
    points: list[HistoryPoint]


def build_assets_router(state: EdgeState, auth: Authenticator, values_json: ValuesJson) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["assets"])
    Viewer = Annotated[Principal, Depends(auth.require("viewer"))]
    not_found: dict[int | str, dict[str, Any]] = {404: {"description": "unknown asset"}}

    def info_or_404(caller: Principal, asset_id: str) -> AssetInfo:
        info = state.visible(caller.sites, asset_id)
        if info is None:
            raise HTTPException(404, f"no asset {asset_id!r}")
        return info

    def asset_or_404(caller: Principal, asset_id: str) -> AssetOut:
        return AssetOut(**vars(info_or_404(caller, asset_id)))

    @router.get("/plcs", response_model=list[PlcOut], summary="PLCs with their endpoints and connection state")
    async def plcs(caller: Viewer) -> list[PlcOut]:
        sources = state.sources()
        out: list[PlcOut] = []
        by_plc: dict[str, list[SourceOut]] = {}
        for s in sources:
            by_plc.setdefault(s.plc or s.name, []).append(SourceOut(name=s.name, protocol=s.protocol,
                                                                     endpoint=s.endpoint, connected=s.connected))
        catalogue_plcs = {p.id: p for p in state.catalogue.plcs} if state.catalogue is not None else {}
        for plc_id in sorted(by_plc):
            read_by = by_plc[plc_id]
            assets = sorted(a.id for a in state.assets.values() if a.plc == plc_id)
            plc = catalogue_plcs.get(plc_id)
            endpoints: dict[str, str] = {}
            if plc is not None:
                if plc.opcua is not None:
                    endpoints["opcua"] = plc.opcua.endpoint
                if plc.modbus is not None:
                    endpoints["modbus"] = f"{plc.modbus.host}:{plc.modbus.port}"
            else:
                endpoints = {s.protocol: s.endpoint for s in read_by}
            first = state.assets.get(assets[0]) if assets else None
            site = plc.site if plc else (first.site if first else "")
            if caller.sites and site not in caller.sites:
                continue
            out.append(PlcOut(
                id=plc_id, site=site,
                area=plc.area if plc else (first.area if first else ""), endpoints=endpoints, sources=read_by,
                connected=any(s.connected for s in read_by), assets=assets))
        return out

    @router.get("/assets", response_model=list[AssetOut], summary="Every asset the gateway reads")
    async def assets(caller: Viewer, type: str | None = None) -> list[AssetOut]:
        return [AssetOut(**vars(a)) for a in state.visible_assets(caller.sites) if type is None or a.type == type]

    @router.get("/assets/{asset_id}", response_model=AssetDetail, responses=not_found,
                summary="An asset's type, place in the hierarchy and tag table")
    async def asset(asset_id: str, caller: Viewer) -> AssetDetail:
        info = asset_or_404(caller, asset_id)
        spec = state.catalogue_asset(asset_id)
        tags: list[TagOut] = []
        commands: list[CommandSpecOut] = []
        if spec is not None:
            tags = [TagOut(key=t.key, datatype=t.datatype, unit=t.unit, eu_range=t.eu_range, access=t.access,
                           description=t.description, enum_strings=list(t.enum_strings)) for t in spec.tags]
            commands = [CommandSpecOut(name=c.name, description=c.description, args=list(c.args))
                        for c in spec.commands]
        else:  # hand-listed tags: what the readings show is all the gateway knows
            readings = state.latest.asset(asset_id) or {}
            tags = [TagOut(key=k, datatype=type(r.value).__name__ if r.value is not None else "unknown",
                           unit=r.unit, eu_range=None, access="ro", description="", enum_strings=[])
                    for k, r in sorted(readings.items())]
        return AssetDetail(**info.model_dump(), hierarchy=[info.site, info.area, info.plc, info.id], tags=tags,
                           commands=commands)

    @router.get("/assets/{asset_id}/values", response_model=AssetValues, responses=not_found,
                summary="Latest value of every tag with unit, quality and source timestamp")
    async def values(asset_id: str, caller: Viewer) -> Response:
        body = values_json.body(info_or_404(caller, asset_id))
        return Response(body, media_type="application/json")  # shaped as AssetValues

    @router.get("/assets/{asset_id}/history", response_model=History, responses=not_found,
                summary="History of one tag from InfluxDB or the local store, optionally aggregated per step")
    async def history(
        asset_id: str, caller: Viewer, request: Request,
        tag: Annotated[str, Query(min_length=1, examples=["belt_speed"])],
        start: datetime | None = None, end: datetime | None = None,
        step: Annotated[float | None, Query(gt=0, le=86_400, description="bucket width in seconds: mean of "
                                                                         "numbers, last of others")] = None,
    ) -> History:
        asset_or_404(caller, asset_id)
        spec = state.catalogue_asset(asset_id)
        known = {t.key for t in spec.tags} if spec is not None else set(state.history.tags(asset_id))
        if tag not in known:
            raise HTTPException(422, f"{asset_id} has no tag {tag!r}")
        if start is not None and end is not None and start > end:
            raise HTTPException(422, "start is after end")
        if (start is not None and start.tzinfo is None) or (end is not None and end.tzinfo is None):
            raise HTTPException(422, "start and end need a UTC offset, e.g. 2026-01-01T06:00:00Z")
        reader: HistoryReader | None = getattr(request.app.state, APP_STATE_KEY, None)
        if reader is not None:
            try:
                rows = await reader.query(asset_id, tag, start, end, step, MAX_POINTS)
            except HistoryUnavailable as exc:
                log.warning("history of %s.%s from the local ring: %s", asset_id, tag, exc)
            else:
                return History(asset=asset_id, tag=tag, store=reader.store, step_s=step,
                               points=[HistoryPoint(ts=r.ts, value=r.value, count=r.count) for r in rows])
        samples = state.history.query(asset_id, tag, start, end)
        if step is None:
            points = [HistoryPoint(ts=s.ts, value=s.value) for s in samples[-MAX_POINTS:]]
        else:
            buckets = state.history.aggregate(samples, timedelta(seconds=step))
            points = [HistoryPoint(ts=b.start, value=b.value, count=b.count) for b in buckets[-MAX_POINTS:]]
        return History(asset=asset_id, tag=tag, store="local", step_s=step, points=points)

    def by_type(caller: Principal, type_name: str, keys: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        out = []
        for info in state.assets_of_type(type_name, caller.sites):
            values = state.values(info.id)
            chosen = values if keys is None else {k: values.get(k) for k in keys}
            out.append({"asset": info.id, "plc": info.plc, "site": info.site, "area": info.area, **chosen})
        return out

    @router.get("/mine/kpis", summary="Mine KPIs: utilisation, availability, throughput, inventory")
    async def mine_kpis(caller: Viewer) -> list[dict[str, Any]]:
        return by_type(caller, "mine")

    @router.get("/lathes/jobs", summary="The current or last job of every lathe")
    async def lathe_jobs(caller: Viewer) -> list[dict[str, Any]]:
        return by_type(caller, "lathe", LATHE_JOB_TAGS)

    @router.get("/warehouse/inventory", summary="Rack slots of every warehouse and their content")
    async def inventory(caller: Viewer) -> list[dict[str, Any]]:
        return [warehouse_inventory(state, info.id) for info in state.assets_of_type("warehouse", caller.sites)]

    return router


LATHE_JOB_TAGS = ("state", "job_id", "job_status", "material", "operation", "tool_no", "job_start",
                  "estimated_duration", "actual_duration", "jobs_completed", "tool_wear")


def warehouse_inventory(state: EdgeState, asset_id: str) -> dict[str, Any]:
    """Slots 1..n (tags ``slot_<n>``) with their content, counts per content, and the cell state."""
    values = state.values(asset_id)
    slots = {int(k.split("_", 1)[1]): v for k, v in values.items()
             if k.startswith("slot_") and k.split("_", 1)[1].isdigit()}
    counts: dict[str, int] = {}
    for content in slots.values():
        counts[str(content)] = counts.get(str(content), 0) + 1
    return {"asset": asset_id, "slots": {str(n): slots[n] for n in sorted(slots)}, "counts": counts,
            "state": values.get("state"), "order": values.get("order"),
            "orders_completed": values.get("orders_completed")}
