"""Routes of authentication and user management: token issue, who-am-I, users (admin)."""

# No `from __future__ import annotations`: FastAPI must evaluate the Annotated[..., Depends(auth...)]
# parameter types, which refer to closure variables a string annotation cannot see.

from datetime import datetime
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import Authenticator, Principal, Role, client_ip
from gateway.api.problems import problem
from gateway.storage.audit import Actor, AuditLog
from gateway.storage.users import UserExists, UserRecord

MAX_CREDENTIAL = 256  # bound Argon2's input so a huge password cannot be used to burn CPU


class Token(BaseModel):
    access_token: str
    token_type: str = Field(default="bearer", examples=["bearer"])
    expires_in: int = Field(description="seconds", examples=[900])


class Me(BaseModel):
    sub: str = Field(examples=["op.smith"])
    role: Role
    anonymous: bool


class UserOut(BaseModel):
    username: str
    role: Role
    disabled: bool
    created_at: datetime

    @classmethod
    def of(cls, user: UserRecord) -> "UserOut":
        return cls(username=user.username, role=user.role, disabled=user.disabled,  # type: ignore[arg-type]
                   created_at=user.created_at)


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$", examples=["op.smith"])
    password: str = Field(min_length=12, max_length=MAX_CREDENTIAL)
    role: Role = "viewer"


# The token route reads the form itself (no python-multipart dependency), so OpenAPI is told here.
_TOKEN_FORM = {
    "requestBody": {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "required": ["username", "password"],
            "properties": {
                "grant_type": {"type": "string", "enum": ["password"]},
                "username": {"type": "string"},
                "password": {"type": "string", "format": "password"},
            },
        }}},
    }
}


def build_auth_router(auth: Authenticator, audit: AuditLog) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["auth"])
    admin = Depends(auth.require("admin"))

    @router.post(
        "/auth/token", response_model=Token, openapi_extra=_TOKEN_FORM,
        summary="OAuth2 password flow: a short-lived bearer token",
        responses={401: {"description": "wrong username or password"},
                   429: {"description": "too many attempts; see Retry-After"}},
    )
    async def token(request: Request) -> Response | Token:
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise HTTPException(415, "send the credentials as application/x-www-form-urlencoded")
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        username, password = form.get("username", ""), form.get("password", "")
        if form.get("grant_type", "password") != "password":
            raise HTTPException(400, "grant_type must be 'password'")
        if not username or not password or len(username) > MAX_CREDENTIAL or len(password) > MAX_CREDENTIAL:
            raise HTTPException(422, "username and password are required (at most 256 characters each)")
        ip = client_ip(request)
        caller = Actor(username, (), ip, "rest")
        key = f"{username}\0{ip}"
        wait = auth.limiter.retry_after(key)
        if wait is not None:
            await audit.append(caller.entry("auth.login", "rate_limited", target={"user": username}))
            retry = max(1, int(wait + 0.999))
            response = problem(429, "Too Many Requests", f"too many login attempts; retry in {retry} s",
                               request.url.path)
            response.headers["Retry-After"] = str(retry)
            return response
        user = await auth.authenticate(username, password)
        if user is None:
            auth.limiter.failed(key)
            await audit.append(caller.entry("auth.login", "denied", target={"user": username}))
            raise HTTPException(401, "wrong username or password", headers={"WWW-Authenticate": "Bearer"})
        auth.limiter.succeeded(key)
        issued = auth.issue(user)
        await audit.append(Actor(username, (user.role,), ip).entry(
            "auth.login", "ok", target={"user": username}, correlation_id=issued.jti))
        return Token(access_token=issued.access_token, expires_in=issued.expires_in)

    @router.get("/auth/me", response_model=Me, summary="Who the token says the caller is")
    async def me(caller: Annotated[Principal, Depends(auth.require("viewer"))]) -> Me:
        return Me(sub=caller.sub, role=caller.role, anonymous=caller.anonymous)

    @router.get("/users", response_model=list[UserOut], summary="Every user (admin)", dependencies=[admin])
    async def list_users() -> list[UserOut]:
        return [UserOut.of(user) for user in await auth.users.all()]

    @router.post("/users", response_model=UserOut, status_code=201, summary="Create a user (admin)",
                 responses={409: {"description": "the username is taken"}})
    async def create_user(
        body: UserCreate, request: Request, caller: Annotated[Principal, Depends(auth.require("admin"))]
    ) -> UserOut:
        actor = Actor(caller.sub, (caller.role,), client_ip(request))
        try:
            user = await auth.users.create(body.username, await auth.hash_password(body.password), body.role)
        except UserExists:
            await audit.append(actor.entry("user.create", "rejected", target={"user": body.username},
                                           detail="username taken"))
            raise HTTPException(409, f"user {body.username!r} already exists") from None
        assert user is not None
        await audit.append(actor.entry("user.create", "ok", target={"user": body.username},
                                       requested={"role": body.role}))
        return UserOut.of(user)

    return router
