"""Routes the seed systems' dashboards call, mapped onto the gateway's data (issue 7, "keep working").

| seed route | served from |
|---|---|
| ``GET /machines`` | every asset (id, type, PLC, state tag, online = its source is connected) |
| ``GET /machines/{id}/data`` | the asset's latest values (enums as names) with the newest source timestamp |
| ``WS /ws/machines/{id}`` | the same document every ``api.websocket.machine_period_s`` (0.1 s: about 10 Hz) |
| ``GET /api/status`` | gateway health: sources connected, stream clients |
| ``GET /api/streaming-status`` | the mine snapshot loop: period, snapshots kept, last one, clients |
| ``GET /api/current-data`` | the mine snapshot, built now from assets of type mine_truck, crusher, stockpile, mine |
| ``GET /api/historical-data`` | the ring of recent snapshots (``api.snapshots_kept``), oldest first |
| ``POST /order/process`` | command ``process(slot)`` of a ``warehouse`` asset; slot = first slot holding Raw |
| ``GET /api/sensor-data/{lathe_id}`` | a lathe's latest values |
| ``POST /simulator/start`` | command ``start_job(material, operation, tool_no, estimated_min)`` of a lathe |
| ``GET /commands/pending`` | in routes_commands.py |

Per-site scope (OWASP API1) holds here too: a caller limited to some sites sees only the machines of
its sites (any other one is "not found", like an unknown one), orders only those, and gets the mine
snapshots cut to them (``visibility.snapshot_in_scope``).

The snapshot's ``zones`` group trucks by where their haul-cycle state puts them (pit, haul road,
crusher, workshop); ``recommendations`` are simple rules over the latest values, for the dashboard's
advice panel, not a planner.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the Annotated[..., Depends(auth...)]
# parameter types, which refer to closure variables a string annotation cannot see.

import asyncio
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, WebSocket
from pydantic import BaseModel, ConfigDict, Field

from gateway.alerts.store import AlertRecord
from gateway.api.auth import Authenticator, Principal, client_ip
from gateway.api.state import EdgeState
from gateway.api.visibility import snapshot_in_scope
from gateway.api.ws import accept, every, periodic, serve_client
from gateway.api.ws_hub import WsClient, WsHub
from gateway.commands.queue import CommandQueue, CommandRejected
from gateway.commands.store import CommandRecord, CommandRequest, IdempotencyConflict
from gateway.encoders.uns_json import format_ts, json_value
from gateway.storage.audit import Actor

ZONES = {"Loading": "pit", "Hauling": "haul road", "Returning": "haul road", "Dumping": "crusher",
         "Refuelling": "workshop", "Broken down": "workshop", "Parked": "workshop", "Out of fuel": "haul road"}


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class MineSnapshots:
    """Builds the mine snapshot, keeps a ring of recent ones, and publishes each on the hub's "mine"
    topic at a fixed period (absolute deadlines: no drift). Also tracks open alerts for it."""

    def __init__(self, state: EdgeState, hub: WsHub, period_s: float = 5.0, kept: int = 720) -> None:
        self.state = state
        self.hub = hub
        self.period_s = period_s
        self.ring: deque[dict[str, Any]] = deque(maxlen=kept)
        self.open_alerts: dict[int, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None

    def on_alert(self, record: AlertRecord) -> None:
        if record.state == "cleared":
            self.open_alerts.pop(record.id, None)
        else:
            self.open_alerts[record.id] = {"id": record.id, "rule": record.rule_id, "asset": record.asset,
                                           "severity": record.severity, "state": record.state,
                                           "message": record.message, "raised_at": format_ts(record.raised_at)}

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mine-snapshots")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async for _ in every(self.period_s):
            snapshot = self.build()
            self.ring.append(snapshot)
            self.hub.publish("mine", {"type": "mine_snapshot", **snapshot})

    def _group(self, type_name: str) -> list[dict[str, Any]]:
        return [{"id": a.id, **{k: json_value(v) for k, v in self.state.values(a.id).items()}}
                for a in self.state.assets_of_type(type_name)]

    def build(self) -> dict[str, Any]:
        trucks, crushers = self._group("mine_truck"), self._group("crusher")
        stockpiles, mines = self._group("stockpile"), self._group("mine")
        zones: dict[str, list[str]] = {}
        for truck in trucks:
            zones.setdefault(ZONES.get(str(truck.get("state")), "unknown"), []).append(truck["id"])
        kpis = {k: v for k, v in mines[0].items() if k != "id"} if mines else {}
        return {
            "timestamp": format_ts(datetime.now(UTC)),
            "trucks": trucks, "crushers": crushers, "stockpiles": stockpiles,
            "zones": [{"zone": z, "trucks": ids, "count": len(ids)} for z, ids in sorted(zones.items())],
            # Which asset the KPIs are read from: callers limited to some sites see them only with it.
            "kpis": kpis, "kpis_asset": mines[0]["id"] if mines else None, "alerts": list(self.open_alerts.values()),
            "recommendations": recommendations(trucks, crushers, stockpiles),
        }


def recommendations(trucks: list[dict[str, Any]], crushers: list[dict[str, Any]],
                    stockpiles: list[dict[str, Any]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for t in trucks:
        if t.get("state") == "Broken down":
            out.append({"asset": t["id"], "action": "repair", "reason": "truck broken down"})
        elif (fuel := _num(t.get("fuel_level"))) is not None and fuel < 15:
            out.append({"asset": t["id"], "action": "refuel", "reason": f"fuel at {fuel:.0f} %"})
    for c in crushers:
        if (wear := _num(c.get("liner_wear"))) is not None and wear > 70:
            out.append({"asset": c["id"], "action": "reline", "reason": f"liner wear {wear:.0f} %"})
        if c.get("state") == "Fault":
            out.append({"asset": c["id"], "action": "reset", "reason": "crusher tripped"})
    for s in stockpiles:
        if (pct := _num(s.get("level_pct"))) is not None and pct > 85 and not s.get("reclaiming"):
            out.append({"asset": s["id"], "action": "start_reclaim", "reason": f"stockpile at {pct:.0f} %"})
    return out


class ProcessOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warehouse: str | None = Field(default=None, description="warehouse asset; default: the first one")
    slot: int | None = Field(default=None, ge=1, le=9, description="default: the first slot holding Raw")


class StartJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lathe_id: str | None = Field(default=None, description="default: the first lathe")
    material: str = Field(examples=["Aluminium"])
    operation: str = Field(examples=["Turning"])
    tool: int = Field(examples=[3], description="turret tool number")
    estimated_min: float = Field(default=30.0, examples=[30.0])


def build_seed_router(
    state: EdgeState, hub: WsHub, auth: Authenticator, queue: CommandQueue, snapshots: MineSnapshots, *,
    queue_size: int = 256, machine_period_s: float = 0.1, allow_query_token: bool = True,
    started: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    router = APIRouter(tags=["seed routes"])
    Viewer = Annotated[Principal, Depends(auth.require("viewer"))]
    Operator = Annotated[Principal, Depends(auth.require("operator"))]

    def connected(plc: str) -> bool:
        return any(s.connected for s in state.sources() if (s.plc or s.name) == plc)

    def machine_data(asset_id: str) -> dict[str, Any]:
        readings = state.latest.asset(asset_id) or {}
        newest = max((r.source_ts for r in readings.values()), default=None)
        return {"id": asset_id, "type": state.assets[asset_id].type,
                "timestamp": format_ts(newest) if newest else None,
                "data": {k: json_value(v) for k, v in sorted(state.values(asset_id).items())}}

    def known(caller: Principal, asset_id: str, type_name: str | None = None) -> None:
        """404 unless the asset exists, is of ``type_name`` and is in the caller's scope."""
        info = state.visible(caller.sites, asset_id)
        if info is None or (type_name is not None and info.type != type_name):
            raise HTTPException(404, f"no {type_name or 'machine'} {asset_id!r}")

    def target(caller: Principal, type_name: str, given: str | None) -> str:
        """The asset a seed order names, else the caller's first asset of its type (the seed systems had one)."""
        if given is not None:
            known(caller, given, type_name)
            return given
        assets = state.assets_of_type(type_name, caller.sites)
        if not assets:
            raise HTTPException(404, f"no {type_name} asset")
        return assets[0].id

    def snapshot_for(caller: Principal, snapshot: dict[str, Any]) -> dict[str, Any]:
        visible = state.visible_ids(caller.sites)
        return snapshot if visible is None else snapshot_in_scope(snapshot, visible)

    async def submit(request: CommandRequest, caller: Principal, http: Request) -> CommandRecord:
        actor = Actor(caller.sub, (caller.role,), client_ip(http), "rest")
        try:
            record, _ = await queue.submit(request, actor)
        except CommandRejected as exc:
            raise HTTPException(exc.status, exc.reason) from None
        except IdempotencyConflict as exc:  # pragma: no cover - no key on these routes
            raise HTTPException(409, str(exc)) from None
        return record

    @router.get("/machines", summary="Seed: every machine with its state and whether it is online")
    async def machines(caller: Viewer) -> list[dict[str, Any]]:
        return [{"id": a.id, "type": a.type, "plc": a.plc, "site": a.site, "area": a.area,
                 "state": json_value(state.values(a.id).get("state")), "online": connected(a.plc)}
                for a in state.visible_assets(caller.sites)]

    @router.get("/machines/{machine_id}/data", summary="Seed: a machine's latest values")
    async def machine(machine_id: str, caller: Viewer) -> dict[str, Any]:
        known(caller, machine_id)
        return machine_data(machine_id)

    @router.websocket("/ws/machines/{machine_id}")
    async def machine_stream(ws: WebSocket, machine_id: str) -> None:
        principal = await accept(ws, auth, allow_query_token)
        if principal is None:
            return
        if state.visible(principal.sites, machine_id) is None:
            await ws.close(code=1008, reason=f"no machine {machine_id!r}")
            return
        client = WsClient(ws, queue_size, principal, pacer=hub.pacer)
        await serve_client(ws, client, producers=[periodic(client, machine_period_s,
                                                           lambda: machine_data(machine_id))])

    @router.get("/api/status", summary="Seed: gateway status")
    async def status(caller: Viewer) -> dict[str, Any]:
        sources = state.sources()
        up = sum(1 for s in sources if s.connected)
        return {"status": "ok" if up == len(sources) else "degraded", "gateway": state.gateway_id,
                "started_at": format_ts(started()), "sources": {"total": len(sources), "connected": up},
                "assets": len(state.visible_assets(caller.sites)),
                "stream_clients": {t: hub.clients(t) for t in ("readings", "alerts", "commands", "mine")}}

    @router.get("/api/streaming-status", summary="Seed: the mine snapshot stream")
    async def streaming_status(_: Viewer) -> dict[str, Any]:
        last = snapshots.ring[-1]["timestamp"] if snapshots.ring else None
        return {"streaming": snapshots.running, "period_s": snapshots.period_s, "websocket": "/ws/mine",
                "clients": hub.clients("mine"), "snapshots_kept": len(snapshots.ring), "last_snapshot": last}

    @router.get("/api/current-data", summary="Seed: the mine snapshot, built now")
    async def current_data(caller: Viewer) -> dict[str, Any]:
        return snapshot_for(caller, snapshots.build())

    @router.get("/api/historical-data", summary="Seed: recent mine snapshots, oldest first")
    async def historical_data(
        caller: Viewer, limit: Annotated[int, Query(ge=1, le=100_000)] = 100
    ) -> dict[str, Any]:
        items = [snapshot_for(caller, snapshot) for snapshot in list(snapshots.ring)[-limit:]]
        return {"count": len(items), "period_s": snapshots.period_s, "snapshots": items}

    @router.post("/order/process", status_code=202, response_model=CommandRecord,
                 summary="Seed: a warehouse process order (operator); picks a Raw slot when none is given")
    async def process_order(body: ProcessOrder, caller: Operator, http: Request) -> CommandRecord:
        warehouse = target(caller, "warehouse", body.warehouse)
        slot = body.slot
        if slot is None:
            values = state.values(warehouse)
            raw = sorted(int(k[5:]) for k, v in values.items() if k.startswith("slot_") and v == "Raw")
            if not raw:
                raise HTTPException(409, f"{warehouse} holds no raw workpiece")
            slot = raw[0]
        return await submit(CommandRequest(asset=warehouse, command="process", args=(slot,)), caller, http)

    @router.get("/api/sensor-data/{lathe_id}", summary="Seed: a lathe's latest sensor values")
    async def sensor_data(lathe_id: str, caller: Viewer) -> dict[str, Any]:
        known(caller, lathe_id, "lathe")
        return machine_data(lathe_id)

    @router.post("/simulator/start", status_code=202, response_model=CommandRecord,
                 summary="Seed: start a lathe job (operator): command start_job")
    async def start_job(body: StartJob, caller: Operator, http: Request) -> CommandRecord:
        lathe = target(caller, "lathe", body.lathe_id)
        args = (body.material, body.operation, body.tool, body.estimated_min)
        return await submit(CommandRequest(asset=lathe, command="start_job", args=args), caller, http)

    return router
