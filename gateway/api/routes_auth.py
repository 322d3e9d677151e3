"""Routes of authentication: token issue, who-am-I, logout (revokes the token), own password change."""

# No `from __future__ import annotations`: FastAPI must evaluate the Annotated[..., Depends(auth...)]
# parameter types, which refer to closure variables a string annotation cannot see.

from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import Authenticator, Principal, Role, client_ip
from gateway.api.problems import problem
from gateway.storage.audit import Actor, AuditLog
from gateway.storage.users import UserChanges

MAX_CREDENTIAL = 256  # bound Argon2's input so a huge password cannot be used to burn CPU
MIN_PASSWORD = 12


class Token(BaseModel):
    access_token: str
    token_type: str = Field(default="bearer", examples=["bearer"])
    expires_in: int = Field(description="seconds", examples=[900])


class Me(BaseModel):
    sub: str = Field(examples=["op.smith"])
    role: Role
    anonymous: bool
    sites: list[str] = Field(description="the sites whose assets the caller sees; empty: every site")


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=MAX_CREDENTIAL)
    new_password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_CREDENTIAL)


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
        return Me(sub=caller.sub, role=caller.role, anonymous=caller.anonymous, sites=sorted(caller.sites))

    @router.post("/auth/logout", status_code=204, summary="Revoke the presented token until it expires",
                 responses={401: {"description": "no token, or it is already invalid"}})
    async def logout(caller: Annotated[Principal, Depends(auth.require("viewer"))], request: Request) -> Response:
        if caller.anonymous:
            raise HTTPException(401, "send the token to revoke: 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        await auth.logout(caller, client_ip(request))
        return Response(status_code=204)

    @router.post(
        "/auth/password", response_model=Token,
        summary="Change your own password; every token issued before is revoked, a new one is returned",
        responses={401: {"description": "not authenticated"}, 403: {"description": "wrong current password"},
                   429: {"description": "too many wrong passwords; see Retry-After"}},
    )
    async def change_password(
        body: PasswordChange, caller: Annotated[Principal, Depends(auth.require("viewer"))], request: Request
    ) -> Response | Token:
        if caller.anonymous:
            raise HTTPException(401, "authentication required: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        ip = client_ip(request)
        actor, key = caller.actor(ip), f"{caller.sub}\0{ip}"
        # The same limiter as logins: a stolen token must not become a password-guessing oracle.
        wait = auth.limiter.retry_after(key)
        if wait is not None:
            await audit.append(actor.entry("auth.password", "rate_limited", target={"user": caller.sub}))
            retry = max(1, int(wait + 0.999))
            response = problem(429, "Too Many Requests", f"too many attempts; retry in {retry} s", request.url.path)
            response.headers["Retry-After"] = str(retry)
            return response
        if await auth.authenticate(caller.sub, body.current_password) is None:
            auth.limiter.failed(key)
            await audit.append(actor.entry("auth.password", "denied", target={"user": caller.sub},
                                           detail="wrong current password"))
            raise HTTPException(403, "the current password is wrong")
        auth.limiter.succeeded(key)
        changes = UserChanges(password_hash=await auth.hash_password(body.new_password))
        user = await auth.change_user(caller.sub, changes, actor, action="auth.password")
        issued = auth.issue(user)
        return Token(access_token=issued.access_token, expires_in=issued.expires_in)

    return router
