"""Routes of alerts (list, detail with history, acknowledge) and alert rules (CRUD, admin)."""

# No `from __future__ import annotations`: FastAPI must evaluate the Annotated[..., Depends(auth...)]
# parameter types, which refer to closure variables a string annotation cannot see.

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.alerts.rules import AlertRuleConfig
from gateway.alerts.service import AlertService, RuleNotFound, RuleReadOnly
from gateway.alerts.store import AlertConflict, AlertNotFound, AlertRecord, AlertTransition
from gateway.api.auth import Authenticator, Principal, client_ip
from gateway.storage.audit import Actor

MAX_PAGE = 500


@dataclass(frozen=True)
class AlertDetail(AlertRecord):
    history: list[AlertTransition]


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(default=None, max_length=1000, examples=["maintenance informed"])


class RuleOut(BaseModel):
    rule: AlertRuleConfig
    origin: Literal["config", "api"] = Field(description="config rules change only in gateway.yaml")


def _read_only(rule_id: str) -> HTTPException:
    return HTTPException(409, f"rule {rule_id!r} is defined in gateway.yaml; change it there")


def actor_of(caller: Principal, request: Request) -> Actor:
    return Actor(caller.sub, (caller.role,), client_ip(request), "rest")


def build_alerts_router(
    service: AlertService, auth: Authenticator, *, asset_exists: Callable[[str], bool] | None = None
) -> APIRouter:
    """``asset_exists`` (from the catalogue) lets rule creation reject unknown assets with 422."""
    router = APIRouter(prefix="/api/v1", tags=["alerts"])
    Viewer = Annotated[Principal, Depends(auth.require("viewer"))]
    Operator = Annotated[Principal, Depends(auth.require("operator"))]
    Admin = Annotated[Principal, Depends(auth.require("admin"))]
    not_found: dict[int | str, dict[str, Any]] = {404: {"description": "no such alert or rule"}}

    @router.get("/alerts", response_model=list[AlertRecord], summary="Open alerts, or the history of all")
    async def list_alerts(
        _: Viewer,
        state: Annotated[Literal["open", "all"], Query(description="open: active + acknowledged")] = "open",
        asset: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        before_id: Annotated[int | None, Query(description="page: smallest id of the previous page")] = None,
    ) -> list[AlertRecord]:
        records = await service.store.list_alerts(open_only=state == "open", asset=asset, limit=limit,
                                                  before_id=before_id)
        return records

    @router.get("/alerts/{alert_id}", response_model=AlertDetail, responses=not_found,
                summary="One alert with its transitions")
    async def get_alert(alert_id: int, _: Viewer) -> AlertDetail:
        try:
            record, history = await service.store.get(alert_id)
        except AlertNotFound:
            raise HTTPException(404, f"no alert {alert_id}") from None
        return AlertDetail(**asdict(record), history=history)

    @router.post("/alerts/{alert_id}/ack", response_model=AlertRecord, summary="Acknowledge (operator)",
                 responses={**not_found, 409: {"description": "not active"}})
    async def acknowledge(alert_id: int, body: AckBody, caller: Operator, request: Request) -> AlertRecord:
        try:
            record = await service.acknowledge(alert_id, actor_of(caller, request), body.comment)
        except AlertNotFound:
            raise HTTPException(404, f"no alert {alert_id}") from None
        except AlertConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return record

    @router.get("/alert-rules", response_model=list[RuleOut], summary="Every rule")
    async def list_rules(_: Viewer) -> list[RuleOut]:
        return [RuleOut(rule=rule, origin=origin) for rule, origin in service.rules()]  # type: ignore[arg-type]

    @router.get("/alert-rules/{rule_id}", response_model=RuleOut, responses=not_found)
    async def get_rule(rule_id: str, _: Viewer) -> RuleOut:
        try:
            rule, origin = service.rule(rule_id)
        except RuleNotFound:
            raise HTTPException(404, f"no rule {rule_id!r}") from None
        return RuleOut(rule=rule, origin=origin)  # type: ignore[arg-type]

    @router.put(
        "/alert-rules/{rule_id}", response_model=RuleOut, summary="Create or replace a rule (admin)",
        responses={201: {"description": "created"}, 409: {"description": "defined in gateway.yaml"}},
    )
    async def put_rule(
        rule_id: str, rule: AlertRuleConfig, caller: Admin, request: Request, response: Response
    ) -> RuleOut:
        if rule.id != rule_id:
            raise HTTPException(422, f"the body's id {rule.id!r} differs from the path's {rule_id!r}")
        unknown = [a for a in rule.assets if asset_exists is not None and not asset_exists(a)]
        if unknown:
            raise HTTPException(422, f"unknown asset(s): {', '.join(unknown)}")
        try:
            created = await service.put_rule(rule, actor_of(caller, request))
        except RuleReadOnly:
            raise _read_only(rule_id) from None
        response.status_code = 201 if created else 200
        return RuleOut(rule=rule, origin="api")

    @router.delete("/alert-rules/{rule_id}", status_code=204, summary="Delete a rule (admin)",
                   responses={**not_found, 409: {"description": "defined in gateway.yaml"}})
    async def delete_rule(rule_id: str, caller: Admin, request: Request) -> Response:
        try:
            await service.delete_rule(rule_id, actor_of(caller, request))
        except RuleNotFound:
            raise HTTPException(404, f"no rule {rule_id!r}") from None
        except RuleReadOnly:
            raise _read_only(rule_id) from None
        return Response(status_code=204)

    return router
