"""Routes of alerts (list, detail with history, acknowledge) and alert rules (CRUD, admin).

Per-site scope (OWASP API1): a caller limited to some sites sees only the alerts of its assets; any
other alert is "not found", exactly like a missing one. It sees the rules that apply to its assets
(those naming none apply to all), with the asset list cut to its scope. Rules act on the whole gateway,
so changing them needs an admin over every site.
"""

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
from gateway.api.params import PageBefore, RowId
from gateway.api.state import AssetScope, no_assets_known
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


def _rule_in_scope(rule: AlertRuleConfig, visible: frozenset[str] | None) -> AlertRuleConfig | None:
    """The rule as a caller seeing ``visible`` assets may see it: None when it names none of them."""
    if visible is None or not rule.assets:
        return rule
    mine = [a for a in rule.assets if a in visible]
    return rule.model_copy(update={"assets": tuple(mine)}) if mine else None


def build_alerts_router(
    service: AlertService, auth: Authenticator, *, asset_exists: Callable[[str], bool] | None = None,
    scope: AssetScope = no_assets_known,
) -> APIRouter:
    """``asset_exists`` (from the catalogue) lets rule creation reject unknown assets with 422; ``scope``
    gives the assets a caller limited to some sites may see."""
    router = APIRouter(prefix="/api/v1", tags=["alerts"])
    Viewer = Annotated[Principal, Depends(auth.require("viewer"))]
    Operator = Annotated[Principal, Depends(auth.require("operator"))]
    Admin = Annotated[Principal, Depends(auth.require("admin", all_sites=True))]
    not_found: dict[int | str, dict[str, Any]] = {404: {"description": "no such alert or rule"}}

    async def alert_in_scope(alert_id: int, caller: Principal) -> tuple[AlertRecord, list[AlertTransition]]:
        """The alert and its history; 404 when it does not exist or is out of the caller's scope."""
        try:
            record, history = await service.store.get(alert_id)
        except AlertNotFound:
            record = None
        visible = scope(caller.sites)
        if record is None or (visible is not None and record.asset not in visible):
            raise HTTPException(404, f"no alert {alert_id}")
        return record, history

    @router.get("/alerts", response_model=list[AlertRecord], summary="Open alerts, or the history of all")
    async def list_alerts(
        caller: Viewer,
        state: Annotated[Literal["open", "all"], Query(description="open: active + acknowledged")] = "open",
        asset: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        before_id: PageBefore = None,
    ) -> list[AlertRecord]:
        records = await service.store.list_alerts(open_only=state == "open", asset=asset, limit=limit,
                                                  before_id=before_id, assets=scope(caller.sites))
        return records

    @router.get("/alerts/{alert_id}", response_model=AlertDetail, responses=not_found,
                summary="One alert with its transitions")
    async def get_alert(alert_id: RowId, caller: Viewer) -> AlertDetail:
        record, history = await alert_in_scope(alert_id, caller)
        return AlertDetail(**asdict(record), history=history)

    @router.post("/alerts/{alert_id}/ack", response_model=AlertRecord, summary="Acknowledge (operator)",
                 responses={**not_found, 409: {"description": "not active"}})
    async def acknowledge(alert_id: RowId, body: AckBody, caller: Operator, request: Request) -> AlertRecord:
        if caller.sites:
            await alert_in_scope(alert_id, caller)
        try:
            record = await service.acknowledge(alert_id, actor_of(caller, request), body.comment)
        except AlertNotFound:
            raise HTTPException(404, f"no alert {alert_id}") from None
        except AlertConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return record

    @router.get("/alert-rules", response_model=list[RuleOut], summary="Every rule")
    async def list_rules(caller: Viewer) -> list[RuleOut]:
        visible = scope(caller.sites)
        return [RuleOut(rule=shown, origin=origin)  # type: ignore[arg-type]
                for rule, origin in service.rules() if (shown := _rule_in_scope(rule, visible)) is not None]

    @router.get("/alert-rules/{rule_id}", response_model=RuleOut, responses=not_found)
    async def get_rule(rule_id: str, caller: Viewer) -> RuleOut:
        try:
            rule, origin = service.rule(rule_id)
        except RuleNotFound:
            shown = None
        else:
            shown = _rule_in_scope(rule, scope(caller.sites))
        if shown is None:
            raise HTTPException(404, f"no rule {rule_id!r}")
        return RuleOut(rule=shown, origin=origin)  # type: ignore[arg-type]

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
