"""Routes of the command queue, the audit log, and the seed route ``GET /commands/pending``.

Seed mapping: the warehouse twin's controller polled ``GET /commands/pending`` for the commands it
had to execute. Here the gateway executes them itself, so the route is read-only: it lists the
commands still waiting (state PENDING, oldest first) in the same shape as ``/api/v1/commands``.
Its ``POST /commands/{id}/status`` has no equivalent: only the executor moves a command's state.

Per-site scope (OWASP API1): a caller limited to some sites sees, cancels and submits commands only
for the assets of its sites. To it any other asset or command does not exist: 404, whether unknown or
out of scope, so the answer does not tell which. The audit log and its verification are gateway-wide:
admin over every site.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the Annotated[..., Depends(auth...)]
# parameter types, which refer to closure variables a string annotation cannot see.

import logging
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from gateway.api.auth import Authenticator, Principal, client_ip
from gateway.api.params import PageBefore, RowId
from gateway.api.state import AssetScope, no_assets_known
from gateway.commands.queue import CommandConflict, CommandQueue, CommandRejected
from gateway.commands.store import CommandRecord, CommandRequest, CommandState, IdempotencyConflict
from gateway.storage.audit import AuditLog

log = logging.getLogger(__name__)

MAX_PAGE = 500


class AuditOut(BaseModel):
    id: int | None
    ts: datetime
    actor: str
    roles: list[str]
    ip: str | None
    action: str
    target: dict[str, Any]
    requested: Any
    result: str
    detail: str | None
    correlation_id: str | None
    channel: str


class AuditVerification(BaseModel):
    intact: bool
    rows: int = Field(description="rows checked")
    first_broken_id: int | None = Field(description="the first row found changed, removed or out of order")
    reason: str | None


def build_commands_router(
    queue: CommandQueue, auth: Authenticator, audit: AuditLog, *, scope: AssetScope = no_assets_known
) -> APIRouter:
    router = APIRouter(tags=["commands"])
    Viewer = Annotated[Principal, Depends(auth.require("viewer"))]
    Operator = Annotated[Principal, Depends(auth.require("operator"))]
    Admin = Annotated[Principal, Depends(auth.require("admin", all_sites=True))]

    async def command_in_scope(command_id: int, caller: Principal) -> CommandRecord:
        """The command; 404 when it does not exist or its asset is out of the caller's scope."""
        record = await queue.get(command_id)
        visible = scope(caller.sites)
        if record is None or (visible is not None and record.asset not in visible):
            raise HTTPException(404, f"no command {command_id}")
        return record

    errors: dict[int | str, dict[str, Any]] = {
        404: {"description": "the asset is out of the caller's sites (or unknown, for such a caller)"},
        409: {"description": "Idempotency-Key reused with a different body"},
        422: {"description": "unknown asset or tag, read-only, out of range, wrong type"},
        428: {"description": "Idempotency-Key required by configuration"},
        429: {"description": "too many pending commands for the asset"},
    }

    @router.post(
        "/api/v1/commands", response_model=CommandRecord, status_code=201, responses=errors,
        summary="Queue a tag write or a named command (operator)",
        description="Validated against the tag catalogue before it is accepted. Repeating a request with "
                    "the same Idempotency-Key returns the original command (200, Idempotent-Replayed: true).",
    )
    async def submit(
        body: CommandRequest, caller: Operator, request: Request, response: Response,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)]
        = None,
    ) -> CommandRecord:
        actor = caller.actor(client_ip(request))
        visible = scope(caller.sites)
        if visible is not None and body.asset not in visible:
            await audit.append(actor.entry(f"command.{body.command}", "rejected", target={"asset": body.asset},
                                           detail="asset not in the caller's sites", correlation_id=idempotency_key))
            raise HTTPException(404, f"no asset {body.asset!r}")
        try:
            record, replayed = await queue.submit(body, actor, idempotency_key)
        except CommandRejected as exc:
            raise HTTPException(exc.status, exc.reason) from None
        except IdempotencyConflict as exc:
            raise HTTPException(409, str(exc)) from None
        if replayed:
            response.status_code = 200
            response.headers["Idempotent-Replayed"] = "true"
        response.headers["Location"] = f"/api/v1/commands/{record.id}"
        return record

    @router.get("/api/v1/commands", response_model=list[CommandRecord], summary="Commands, newest first")
    async def list_commands(
        caller: Viewer,
        state: Annotated[list[CommandState] | None, Query(description="repeat for several")] = None,
        asset: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        before_id: PageBefore = None,
    ) -> list[CommandRecord]:
        records = await queue.list_commands(states=tuple(state or ()), asset=asset, limit=limit,
                                            before_id=before_id, assets=scope(caller.sites))
        return records

    @router.get("/api/v1/commands/{command_id}", response_model=CommandRecord,
                responses={404: {"description": "no such command"}})
    async def get_command(command_id: RowId, caller: Viewer) -> CommandRecord:
        return await command_in_scope(command_id, caller)

    @router.post("/api/v1/commands/{command_id}/cancel", response_model=CommandRecord,
                 summary="Cancel a command still PENDING (operator)",
                 responses={404: {"description": "no such command"}, 409: {"description": "not pending"}})
    async def cancel(command_id: RowId, caller: Operator, request: Request) -> CommandRecord:
        if caller.sites:
            await command_in_scope(command_id, caller)
        try:
            record = await queue.cancel(command_id, caller.actor(client_ip(request)))
        except KeyError:
            raise HTTPException(404, f"no command {command_id}") from None
        except CommandConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return record

    @router.get("/commands/pending", response_model=list[CommandRecord], tags=["seed routes"],
                summary="Seed route: commands waiting to execute, oldest first")
    async def pending(caller: Viewer) -> list[CommandRecord]:
        records = await queue.list_commands(states=("PENDING",), limit=MAX_PAGE, assets=scope(caller.sites))
        return records[::-1]

    @router.get("/api/v1/audit", response_model=list[AuditOut], tags=["audit"],
                summary="The audit log, newest first (admin)")
    async def audit_log(
        _: Admin,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        before_id: PageBefore = None,
        action: Annotated[str | None, Query(description="prefix, e.g. command. or auth.")] = None,
    ) -> list[AuditOut]:
        entries = await audit.entries(limit=limit, before_id=before_id, action_prefix=action)
        return [AuditOut(**{**asdict(e), "roles": list(e.roles)}) for e in entries]

    @router.get("/api/v1/audit/verify", response_model=AuditVerification, tags=["audit"],
                summary="Recompute the audit log's hash chain (admin): intact, or the first broken row")
    async def verify_audit(_: Admin) -> AuditVerification:
        report = await audit.verify()
        if not report.intact:
            log.error("audit log: hash chain broken at row %s: %s", report.first_broken_id, report.reason)
        return AuditVerification(**asdict(report))

    return router
