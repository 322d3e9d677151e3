"""User management (admin over every site): list, create, read, change, delete.

Changing a user's password, role, sites or disabled flag, or deleting the user, revokes every token
the user holds (api/auth.py). The last enabled admin can be neither demoted, disabled nor deleted
(409). Every change, and every refused one, goes to the audit log.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the Annotated[..., Depends(auth...)]
# parameter types, which refer to closure variables a string annotation cannot see.

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from gateway.api.auth import Authenticator, Principal, Role, client_ip
from gateway.api.routes_auth import MAX_CREDENTIAL, MIN_PASSWORD
from gateway.storage.audit import AuditLog
from gateway.storage.users import LastAdmin, UserChanges, UserExists, UserNotFound, UserRecord

USERNAME = r"^[A-Za-z0-9_.@-]{1,64}$"
Site = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", examples=["mine"])]
Sites = Annotated[list[Site], Field(max_length=100, description="sites whose assets the user sees; [] = every site"),
                  AfterValidator(lambda sites: sorted(set(sites)))]


class UserOut(BaseModel):
    username: str
    role: Role
    disabled: bool
    sites: list[str] = Field(description="empty: every site")
    created_at: datetime

    @classmethod
    def of(cls, user: UserRecord) -> "UserOut":
        return cls(username=user.username, role=user.role, disabled=user.disabled,  # type: ignore[arg-type]
                   sites=list(user.sites), created_at=user.created_at)


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=USERNAME, examples=["op.smith"])
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_CREDENTIAL)
    role: Role = "viewer"
    sites: Sites = []


class UserPatch(BaseModel):
    """Only the fields present change; status fields like created_at cannot be set (OWASP API3)."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    password: str | None = Field(default=None, min_length=MIN_PASSWORD, max_length=MAX_CREDENTIAL)
    disabled: bool | None = None
    sites: Sites | None = None

    @model_validator(mode="after")
    def _something(self) -> "UserPatch":
        if not self.model_fields_set:
            raise ValueError("nothing to change: give role, password, disabled or sites")
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


def _no_user(username: str) -> HTTPException:
    return HTTPException(404, f"no user {username!r}")


def _last_admin(username: str) -> HTTPException:
    return HTTPException(409, f"{username!r} is the last enabled admin; make another admin first")


def build_users_router(auth: Authenticator, audit: AuditLog) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["users"])
    Admin = Annotated[Principal, Depends(auth.require("admin", all_sites=True))]
    not_found: dict[int | str, dict[str, Any]] = {404: {"description": "no such user"}}
    last_admin: dict[int | str, dict[str, Any]] = {409: {"description": "the last enabled admin"}}

    @router.get("/users", response_model=list[UserOut], summary="Every user (admin)")
    async def list_users(_: Admin) -> list[UserOut]:
        return [UserOut.of(user) for user in await auth.users.all()]

    @router.post("/users", response_model=UserOut, status_code=201, summary="Create a user (admin)",
                 responses={409: {"description": "the username is taken"}})
    async def create_user(body: UserCreate, request: Request, caller: Admin) -> UserOut:
        actor = caller.actor(client_ip(request))
        requested = {"role": body.role, "sites": body.sites}
        try:
            user = await auth.users.create(body.username, await auth.hash_password(body.password), body.role,
                                           sites=body.sites)
        except UserExists:
            await audit.append(actor.entry("user.create", "rejected", target={"user": body.username},
                                           requested=requested, detail="username taken"))
            raise HTTPException(409, f"user {body.username!r} already exists") from None
        assert user is not None
        await audit.append(actor.entry("user.create", "ok", target={"user": body.username}, requested=requested))
        return UserOut.of(user)

    @router.get("/users/{username}", response_model=UserOut, responses=not_found, summary="One user (admin)")
    async def get_user(username: str, _: Admin) -> UserOut:
        user = await auth.users.get(username)
        if user is None:
            raise _no_user(username)
        return UserOut.of(user)

    @router.patch("/users/{username}", response_model=UserOut, responses={**not_found, **last_admin},
                  summary="Change role, password, disabled or sites (admin); revokes the user's tokens")
    async def patch_user(username: str, body: UserPatch, request: Request, caller: Admin) -> UserOut:
        password_hash = await auth.hash_password(body.password) if body.password is not None else None
        changes = UserChanges(role=body.role, password_hash=password_hash, disabled=body.disabled, sites=body.sites)
        try:
            user = await auth.change_user(username, changes, caller.actor(client_ip(request)))
        except UserNotFound:
            raise _no_user(username) from None
        except LastAdmin:
            raise _last_admin(username) from None
        return UserOut.of(user)

    @router.delete("/users/{username}", status_code=204, responses={**not_found, **last_admin},
                   summary="Delete a user (admin); their tokens stop working at once")
    async def delete_user(username: str, request: Request, caller: Admin) -> Response:
        try:
            await auth.delete_user(username, caller.actor(client_ip(request)))
        except UserNotFound:
            raise _no_user(username) from None
        except LastAdmin:
            raise _last_admin(username) from None
        return Response(status_code=204)

    return router
