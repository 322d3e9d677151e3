"""The plant's own control API: faults, scenarios, the clock, and register-level access for tests.

Served by the plant process (``plant.api_port``, 8090 by default; ``null`` turns it off), never by
the gateway: it changes the simulation, which no real PLC lets a gateway do.

| route | what |
|---|---|
| ``GET /plant/clock`` / ``PUT /plant/clock`` | plant time and speed factor; ``{"speed": 60}`` |
| ``GET /plant/plcs`` | PLCs, their assets and scan counts |
| ``GET /plant/scenarios`` | per PLC: scheduled, active and fired events |
| ``POST /plant/scenarios`` | schedule a fault: ``{kind, asset, tag?, at?, after?, duration?, rate?, probability?}`` |
| ``DELETE /plant/scenarios`` | drop scheduled events and end active ones (``?plc=`` for one PLC) |
| ``GET /plant/tags/{asset}/{tag}`` | value and StatusCode from the PLC's process image |
| ``PUT /plant/tags/{asset}/{tag}`` | force a tag: ``{"value": 1.2}`` |
| ``DELETE /plant/tags/{asset}/{tag}/force`` | end a forced measurement |
| ``GET /plant/plcs/{plc}/modbus/faults`` | the PLC's active Modbus fault, config-scheduled ones and their trail |
| ``POST /plant/plcs/{plc}/modbus/faults`` | make its Modbus server misbehave (delay, no response, exception, drops) |
| ``DELETE /plant/plcs/{plc}/modbus/faults`` | end the active Modbus fault and drop the scheduled ones |

Forcing: a setpoint (access rw) is written as a client write would be (``Plc.submit_write``: validated
against the tag table, applied at the next scan), so it stays until changed. A measurement cannot be
written, so it is overridden the way a sensor fault is (``Plc.set_sensor_fault``): it reads the
forced value, with quality BadSensorFailure, until the force is removed. A forced reading must not
pass for a real one, and this is the PLC's only override path.
"""

# No `from __future__ import annotations`: FastAPI evaluates the request models' annotations.

import math
import time
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from devices.assets.base import AssetModel
from devices.modbus.config import MAX_FAULT_DELAY_MS, ScheduledModbusFault
from devices.modbus.exposer import ModbusExposer
from devices.modbus.fault_schedule import ModbusFaultSchedule
from devices.modbus.faults import Fault
from devices.plc import Plc
from devices.scenarios import FaultKind, ScenarioEvent, ScenarioRunner, parse_plant_time
from devices.tags import TagSpec

if TYPE_CHECKING:
    from devices.plant import Plant


class ClockBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    speed: float = Field(gt=0, le=10_000, examples=[60.0])


class FaultBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    asset: str = Field(default="", description="empty only for plc_offline")
    plc: str | None = Field(default=None, description="needed for plc_offline; else found from the asset")
    tag: str = ""
    at: float | str | None = Field(default=None, description="plant time since start, e.g. '12d'")
    after: float | str | None = Field(default=None, description="plant time from now, e.g. '30s' (default 0)")
    duration: float | str | None = None
    rate: float = 0.0
    probability: float = Field(default=0.2, ge=0, le=1)


class ForceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: float | int | bool


class ModbusFaultBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delay_ms: float = Field(default=0.0, ge=0, le=MAX_FAULT_DELAY_MS, allow_inf_nan=False,
                            description="added to every response")
    no_response: bool = Field(default=False, description="read requests, never answer (client times out)")
    exception_code: Literal[4, 6] | None = Field(default=None, description="answer every request with "
                                                 "exception 04 (device failure) or 06 (busy)")
    drop_connections: bool = Field(default=False, description="reset open connections and refuse new ones")
    duration_s: float | None = Field(default=None, gt=0, le=7 * 86_400, allow_inf_nan=False,
                                     description="wall-clock seconds; default: until DELETE")


def _modbus_fault_json(fault: Fault, schedule: ModbusFaultSchedule | None, injected_by_config: bool) -> dict[str, Any]:
    remaining = None if fault.until is None else max(0.0, fault.until - time.monotonic())
    active = schedule.active if schedule is not None and injected_by_config else None
    return {"delay_ms": fault.delay_s * 1000.0, "no_response": fault.no_response,
            "exception_code": fault.exception_code, "drop_connections": fault.drop_connections,
            "remaining_s": remaining, "source": "config" if injected_by_config else "api",
            "until_plant_s": None if active is None or active.duration_s is None else active.at_s + active.duration_s}


def _scheduled_fault_json(fault: ScheduledModbusFault) -> dict[str, Any]:
    return {"at_s": fault.at_s, "delay_ms": fault.delay_ms, "no_response": fault.no_response,
            "exception_code": fault.exception_code, "drop_connections": fault.drop_connections,
            "duration_s": fault.duration_s}


def _event_json(event: ScenarioEvent) -> dict[str, Any]:
    return {"at_s": event.at_s, "kind": event.kind.value, "asset": event.asset, "tag": event.tag,
            "duration_s": event.duration_s, "rate": event.rate, "probability": event.probability}


def create_control_app(plant: "Plant") -> FastAPI:
    app = FastAPI(title="TwinEdge plant control", version="1",
                  description="Faults, scenarios, clock and forced tags of the simulated plant.")

    def find(asset: str) -> tuple[Plc, ScenarioRunner, AssetModel]:
        for placed in plant.plcs:
            try:
                group, _ = placed.plc.asset(asset)
            except KeyError:
                continue
            return placed.plc, placed.scenarios, group.model
        raise HTTPException(404, f"no asset {asset!r}")

    def tag_spec(model: AssetModel, tag: str) -> TagSpec:
        try:
            return model.tag(tag)
        except KeyError:
            raise HTTPException(404, f"{model.type_name} has no tag {tag!r}") from None

    def runners(plc_id: str | None) -> list[ScenarioRunner]:
        chosen = [p.scenarios for p in plant.plcs if plc_id is None or p.plc.plc_id == plc_id]
        if not chosen:
            raise HTTPException(404, f"no PLC {plc_id!r}")
        return chosen

    def modbus_of(plc_id: str) -> tuple[ModbusExposer, ModbusFaultSchedule | None]:
        if not any(p.plc.plc_id == plc_id for p in plant.plcs):
            raise HTTPException(404, f"no PLC {plc_id!r}")
        exposer = plant.modbus.get(plc_id)
        if exposer is None:
            raise HTTPException(409, f"PLC {plc_id} does not serve Modbus (disabled, or the plant is not serving)")
        return exposer, plant.modbus_faults.get(plc_id)

    def modbus_faults_json(plc_id: str) -> dict[str, Any]:
        exposer, schedule = modbus_of(plc_id)
        fault = exposer.faults.current()
        by_config = schedule is not None and fault is not None and fault is schedule.injected
        return {"plc": plc_id,
                "active": None if fault is None else _modbus_fault_json(fault, schedule, by_config),
                "scheduled": [] if schedule is None else [_scheduled_fault_json(f) for f in schedule.pending],
                "fired": [] if schedule is None else [{"plant_s": t, "what": w} for t, w in schedule.fired]}

    @app.get("/plant/clock")
    async def clock() -> dict[str, Any]:
        seconds = plant.clock.plant_seconds()
        return {"speed": plant.clock.speed, "plant_seconds": seconds,
                "plant_time": plant.clock.timestamp(seconds).isoformat()}

    @app.put("/plant/clock")
    async def set_clock(body: ClockBody) -> dict[str, Any]:
        plant.clock.set_speed(body.speed)
        return await clock()

    @app.get("/plant/plcs")
    async def plcs() -> list[dict[str, Any]]:
        return [{"id": p.plc.plc_id, "site": p.site.id, "area": p.area.id, "scan_count": p.plc.scan_count,
                 "scan_period_s": p.plc.scan_period_s, "overruns": p.plc.overruns,
                 "assets": [a for g in p.plc.groups for a in g.asset_ids]} for p in plant.plcs]

    @app.get("/plant/scenarios")
    async def scenarios() -> list[dict[str, Any]]:
        # The runner keeps its queues private; this API is its read-only window on them.
        return [{"plc": p.plc.plc_id,
                 "scheduled": [_event_json(e) for e in p.scenarios._pending],
                 "active": [_event_json(e) for e in p.scenarios._active],
                 "fired": [{"plant_s": t, "what": what} for t, what in p.scenarios.fired]} for p in plant.plcs]

    @app.post("/plant/scenarios", status_code=201)
    async def schedule(body: FaultBody) -> dict[str, Any]:
        if body.asset:
            plc, runner, _ = find(body.asset)
        elif body.kind is FaultKind.PLC_OFFLINE and body.plc is not None:
            runner = runners(body.plc)[0]
            plc = runner.plc
        else:
            raise HTTPException(422, "give asset (or plc for plc_offline)")
        now = plc.scan_count * plc.scan_period_s
        try:
            if body.at is not None and body.after is not None:
                raise ValueError("give at or after, not both")
            at = parse_plant_time(body.at) if body.at is not None else now + parse_plant_time(body.after or 0)
            duration = None if body.duration is None else parse_plant_time(body.duration)
            if not math.isfinite(at) or (duration is not None and duration <= 0):
                raise ValueError("at must be finite and duration positive")
            event = ScenarioEvent(at, body.kind, body.asset, body.tag, duration, body.rate, body.probability)
            runner.schedule(event)
        except (ValueError, KeyError) as exc:
            raise HTTPException(422, str(exc).strip('"')) from None
        return {"plc": plc.plc_id, "event": _event_json(event)}

    @app.delete("/plant/scenarios")
    async def clear(plc: str | None = None) -> dict[str, Any]:
        dropped = ended = 0
        for runner in runners(plc):
            dropped += len(runner._pending)
            runner._pending.clear()
            for event in list(runner._active):
                runner._set(event, False)
                runner._active.remove(event)
                ended += 1
        return {"dropped": dropped, "ended": ended}

    @app.get("/plant/tags/{asset}/{tag}")
    async def read_tag(asset: str, tag: str) -> dict[str, Any]:
        plc, _, model = find(asset)
        spec = tag_spec(model, tag)
        if plc.image is None:
            raise HTTPException(409, f"PLC {plc.plc_id} has not scanned yet")
        value, status = plc.image.lookup(asset, tag)
        return {"asset": asset, "tag": tag, "value": value, "status_code": status, "scan": plc.image.scan_count,
                "timestamp": plc.image.timestamp.isoformat(), "access": spec.access.value, "unit": spec.unit}

    @app.put("/plant/tags/{asset}/{tag}", status_code=202)
    async def force_tag(asset: str, tag: str, body: ForceBody) -> dict[str, Any]:
        plc, _, model = find(asset)
        spec = tag_spec(model, tag)
        if spec.writable:
            try:
                plc.submit_write(asset, tag, body.value)
            except (TypeError, ValueError, PermissionError) as exc:
                raise HTTPException(422, str(exc)) from None
            return {"asset": asset, "tag": tag, "forced": "setpoint", "value": body.value}
        if isinstance(body.value, float) and not math.isfinite(body.value):
            raise HTTPException(422, f"{body.value!r} is not a finite number")
        plc.set_sensor_fault(asset, tag, float(body.value))
        return {"asset": asset, "tag": tag, "forced": "measurement", "value": body.value,
                "quality": "BadSensorFailure until DELETE .../force"}

    @app.delete("/plant/tags/{asset}/{tag}/force")
    async def unforce(asset: str, tag: str) -> dict[str, Any]:
        plc, _, model = find(asset)
        tag_spec(model, tag)
        plc.set_sensor_fault(asset, tag, None)
        return {"asset": asset, "tag": tag, "forced": None}

    @app.get("/plant/plcs/{plc}/modbus/faults")
    async def modbus_faults(plc: str) -> dict[str, Any]:
        return modbus_faults_json(plc)

    @app.post("/plant/plcs/{plc}/modbus/faults", status_code=201)
    async def inject_modbus_fault(plc: str, body: ModbusFaultBody) -> dict[str, Any]:
        exposer, _ = modbus_of(plc)
        if not (body.delay_ms or body.no_response or body.exception_code or body.drop_connections):
            raise HTTPException(422, "give delay_ms, no_response, exception_code or drop_connections")
        exposer.faults.inject(delay_ms=body.delay_ms, no_response=body.no_response, exception_code=body.exception_code,
                       drop_connections=body.drop_connections, duration_s=body.duration_s)
        return modbus_faults_json(plc)

    @app.delete("/plant/plcs/{plc}/modbus/faults")
    async def clear_modbus_faults(plc: str) -> dict[str, Any]:
        exposer, schedule = modbus_of(plc)
        cleared = exposer.faults.current() is not None
        exposer.faults.clear()
        dropped = 0 if schedule is None else schedule.clear()
        return {"plc": plc, "cleared": cleared, "dropped": dropped}

    return app
