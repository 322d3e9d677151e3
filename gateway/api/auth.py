"""Authentication and authorisation of the edge API (conventions §6.3).

- OAuth2 password flow issuing short-lived JWTs: HS256 only (an explicit allow-list on decode, so a
  token cannot pick its own algorithm), with ``aud``, ``iss`` and a unique ``jti`` (RFC 8725); 15
  minutes by default because the template's 8 days is far too long for a control API.
- Passwords hashed with Argon2 (pwdlib's recommended parameters).
- Roles are ordered viewer < operator < admin; ``require(role)`` is the route dependency.
- Anonymous callers get viewer rights when ``anonymous_read`` is on, nothing else.
- Login attempts are limited per username and client address (OWASP API2, IEC 62443-3-3 SR 1.11).
- Revocation: a token carries its user's token stamp; logout revokes its ``jti``, and any change of
  the user's password, role, sites or disabled flag (or deleting the user) changes the stamp, revoking
  every token issued before. Checked on every request and WebSocket handshake, and open streams close
  when their token is revoked or expires (api/token_guard.py).
- A token carries the user's sites (OWASP API1: empty means every site); it is revoked when they change.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import OAuth2PasswordBearer
from pwdlib import PasswordHash
from pydantic import Field, SecretStr

from gateway.api.token_guard import TokenGuard
from gateway.common.configfile import StrictModel
from gateway.storage.audit import Actor
from gateway.storage.revocations import TokenRevocations
from gateway.storage.users import UserChanges, UserRecord, UserStore

Role = Literal["viewer", "operator", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}
ALGORITHM = "HS256"
SECRET_FILE = "jwt_secret"
ADMIN_PASSWORD_ENV = "TWINEDGE_ADMIN_PASSWORD"
TOKEN_URL = "/api/v1/auth/token"


class AuthConfig(StrictModel):
    """``api.auth`` in gateway.yaml."""

    anonymous_read: bool = Field(default=True, description="callers without a token may read (viewer)")
    token_ttl_s: int = Field(default=900, ge=60, le=86_400)
    # None: generated once and kept in <data_dir>/jwt_secret (mode 0600), so tokens survive restarts.
    secret: SecretStr | None = Field(default=None, min_length=32)
    issuer: str = "twinedge"
    audience: str = "twinedge-edge-api"
    login_attempts_per_minute: int = Field(default=5, ge=1)
    revocation_check_s: float = Field(
        default=5.0, ge=0, le=300,
        description="how long a token found good (or revoked) is trusted before storage is asked again; "
                    "0: every request. Revocations through this gateway apply at once; through another "
                    "gateway sharing the database, within this time")


def load_or_create_secret(config: AuthConfig, data_dir: Path) -> str:
    if config.secret is not None:
        return config.secret.get_secret_value()
    path = data_dir / SECRET_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # O_EXCL: when two processes race at first start, one wins and the other reads its secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret)
    return secret


@dataclass(frozen=True)
class Principal:
    """The caller of a request, as established by its token (or anonymous)."""

    sub: str
    role: Role
    jti: str | None = None
    anonymous: bool = False
    sites: frozenset[str] = frozenset()  # the sites whose assets the caller may see; empty: every site
    expires_at: float | None = None  # Unix seconds
    stamp: str = ""  # the user's token stamp when the token was issued

    def has(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def actor(self, ip: str | None) -> Actor:
        """The caller as the audit log records it, on the REST channel."""
        return Actor(self.sub, (self.role,), ip, "rest")


ANONYMOUS = Principal(sub="anonymous", role="viewer", anonymous=True)


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    jti: str


@dataclass(frozen=True)
class BootstrapAdmin:
    """The first admin created at first start; ``password`` is set only when it was generated, and
    the caller prints it once (it is stored nowhere in clear)."""

    username: str
    password: str | None


class LoginRateLimiter:
    """Failed logins per key (username + client address) in a sliding window, in memory.

    Only failures count, so a script that logs in correctly every few minutes is never blocked;
    once ``limit`` failures fall in the window every attempt is refused, the right password too,
    until the oldest failure leaves the window. In memory is enough for one gateway process; the
    table is pruned when it grows, so a flood of distinct usernames cannot exhaust memory.
    """

    def __init__(
        self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> float | None:
        """None when an attempt is allowed now, else the seconds to wait."""
        failures = self._failures.get(key)
        if not failures:
            return None
        now = self.clock()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if len(failures) < self.limit:
            return None
        return failures[0] + self.window_s - now

    def failed(self, key: str) -> None:
        now = self.clock()
        if len(self._failures) > 10_000:
            for stale in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window_s]:
                del self._failures[stale]
        self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


class Authenticator:
    """Issues and checks tokens, verifies passwords, and builds the ``require(role)`` dependencies."""

    def __init__(
        self,
        config: AuthConfig,
        users: UserStore,
        secret: str | Callable[[], str],
        *,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHash | None = None,
    ) -> None:
        self.config = config
        self.users = users
        # A callable is resolved at first use, so building the app does no file I/O (habit 3).
        self._secret_source = secret
        self._secret_value: str | None = None
        self.clock = clock
        self.hasher = hasher or PasswordHash.recommended()
        self.limiter = LoginRateLimiter(config.login_attempts_per_minute, clock=clock)
        self._dummy_hash: str | None = None
        self._bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
        self.revocations = TokenRevocations(users.db)
        self.guard = TokenGuard(self.revocations, config.revocation_check_s)

    @property
    def _secret(self) -> str:
        if self._secret_value is None:
            source = self._secret_source
            secret = source if isinstance(source, str) else source()
            if len(secret) < 32:
                raise ValueError("the JWT secret must be at least 32 characters (HS256 needs >= 256 bits)")
            self._secret_value = secret
        return self._secret_value

    def load_secret(self) -> None:
        """Resolve the signing key now (at start) so a bad secret fails the start, not a login."""
        _ = self._secret

    async def hash_password(self, password: str) -> str:
        # Argon2 is deliberately slow (tens of ms): off the event loop, so logins don't stall streams.
        return await asyncio.to_thread(self.hasher.hash, password)

    async def bootstrap(self, env: Mapping[str, str] = os.environ) -> BootstrapAdmin | None:
        """Create the first admin when there are no users; None when users already exist."""
        if await self.users.count():
            return None
        given = env.get(ADMIN_PASSWORD_ENV)
        password = given or secrets.token_urlsafe(18)
        hashed = await self.hash_password(password)
        created = await self.users.create("admin", hashed, "admin", only_if_empty=True)
        if created is None:
            return None
        return BootstrapAdmin("admin", None if given else password)

    async def authenticate(self, username: str, password: str) -> UserRecord | None:
        user = await self.users.get(username)
        if user is None or user.disabled:
            # Verify against a throw-away hash anyway, so the response time does not tell which
            # usernames exist.
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash_password(secrets.token_urlsafe(16))
            await asyncio.to_thread(self.hasher.verify, password, self._dummy_hash)
            return None
        valid = await asyncio.to_thread(self.hasher.verify, password, user.password_hash)
        return user if valid else None

    def issue(self, user: UserRecord) -> IssuedToken:
        now = int(self.clock())
        jti = uuid.uuid4().hex
        claims = {
            "sub": user.username, "role": user.role, "iat": now, "nbf": now,
            "exp": now + self.config.token_ttl_s, "iss": self.config.issuer, "aud": self.config.audience,
            "jti": jti, "sites": list(user.sites), "stamp": user.token_stamp,
        }
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return IssuedToken(token, self.config.token_ttl_s, jti)

    def decode(self, token: str) -> Principal:
        """Principal of a valid token; HTTP 401 with the reason otherwise."""
        try:
            # Signature, algorithm, audience, issuer and claim presence are PyJWT's; expiry is checked
            # here against self.clock, because PyJWT only knows the wall clock and tests move time.
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": ["exp", "iat", "sub", "jti", "aud", "iss", "stamp"], "verify_exp": False,
                         "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        exp, role, sites = claims["exp"], claims.get("role"), claims.get("sites", [])
        if not isinstance(exp, int | float) or self.clock() >= exp:
            raise _unauthorized("the token has expired; request a new one")
        if role not in ROLE_RANK:
            raise _unauthorized("invalid token: unknown role")
        if not isinstance(sites, list) or not all(isinstance(site, str) for site in sites):
            raise _unauthorized("invalid token: sites must be a list of names")
        return Principal(sub=str(claims["sub"]), role=role, jti=str(claims["jti"]), sites=frozenset(sites),
                         expires_at=float(exp), stamp=str(claims["stamp"]))

    async def principal_of(self, token: str | None) -> Principal:
        """The caller: from the bearer token unless revoked, else anonymous when allowed, else 401."""
        if token:
            caller = self.decode(token)
            assert caller.jti is not None
            if not await self.guard.valid(caller.sub, caller.jti, caller.stamp):
                raise _unauthorized("the token has been revoked; request a new one")
            return caller
        if self.config.anonymous_read:
            return ANONYMOUS
        raise _unauthorized("authentication required: send 'Authorization: Bearer <token>'")

    def require(self, role: Role, *, all_sites: bool = False) -> Callable[..., Awaitable[Principal]]:
        """Route dependency: the caller if it has ``role`` or more; else 401 (no identity) or 403.
        ``all_sites``: the route acts on the whole gateway (users, rules, audit log), so a caller
        restricted to some sites may not use it, whatever its role."""

        # The bearer scheme as a sub-dependency puts the OAuth2 password flow into OpenAPI, so the
        # docs' Authorize button works.
        async def dependency(token: str | None = Depends(self._bearer)) -> Principal:
            caller = await self.principal_of(token)
            if not caller.has(role):
                if caller.anonymous:
                    raise _unauthorized(f"authentication required: this needs the {role} role")
                raise HTTPException(403, f"this needs the {role} role; {caller.sub!r} is {caller.role}")
            if all_sites and caller.sites:
                raise HTTPException(403, f"this acts on every site; {caller.sub!r} is limited to some")
            return caller

        dependency.__name__ = f"require_{role}{'_all_sites' if all_sites else ''}"
        return dependency

    async def logout(self, caller: Principal, ip: str | None) -> None:
        """Revoke the caller's token until it expires."""
        assert caller.jti is not None
        assert caller.expires_at is not None
        expires = datetime.fromtimestamp(caller.expires_at, UTC)
        await self.revocations.revoke(caller.jti, caller.sub, expires, caller.actor(ip),
                                      datetime.fromtimestamp(self.clock(), UTC))
        self.guard.forget_token(caller.jti)

    async def change_user(
        self, username: str, changes: UserChanges, actor: Actor, action: str = "user.update"
    ) -> UserRecord:
        """Change a user (a new token stamp revokes their tokens); UserNotFound, LastAdmin."""
        try:
            return await self.users.update(username, changes, actor, action)
        finally:
            self.guard.forget_user(username)

    async def delete_user(self, username: str, actor: Actor) -> None:
        try:
            await self.users.delete(username, actor)
        finally:
            self.guard.forget_user(username)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def client_ip(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"
