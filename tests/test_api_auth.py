"""Authentication and authorisation through the real app: tokens, roles, anonymous reads, users,
login rate limiting, and the first admin."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
import pytest
from jwt.utils import base64url_encode

from gateway.api.auth import AuthConfig, Authenticator, load_or_create_secret
from gateway.storage.audit import AuditLog
from gateway.storage.db import Database
from gateway.storage.users import UserStore
from tests.edge_support import PASSWORDS, Edge, make_app, make_edge

pytest_plugins = ["tests.fixtures.edge"]

RULE = {"id": "r1", "type": "high", "tag": "motor_temp", "threshold": 90}
WRITE = {"asset": "conveyor-01", "command": "write", "tag": "speed_setpoint", "value": 1.0}

# (method, path, body, minimum role); anonymous callers read as viewer (anonymous_read default).
ROUTES = [
    ("GET", "/api/v1/auth/me", None, "viewer"),
    ("GET", "/api/v1/alerts", None, "viewer"),
    ("GET", "/api/v1/alert-rules", None, "viewer"),
    ("GET", "/api/v1/commands", None, "viewer"),
    ("GET", "/commands/pending", None, "viewer"),
    ("POST", "/api/v1/commands", WRITE, "operator"),
    ("POST", "/api/v1/alerts/999/ack", {"comment": "x"}, "operator"),
    ("PUT", "/api/v1/alert-rules/r1", RULE, "admin"),
    ("GET", "/api/v1/users", None, "admin"),
    ("POST", "/api/v1/users", {"username": "new", "password": "long-enough-pw", "role": "viewer"}, "admin"),
    ("GET", "/api/v1/audit", None, "admin"),
    ("GET", "/api/v1/audit/verify", None, "admin"),
    ("GET", "/api/v1/users/viewer", None, "admin"),
    ("PATCH", "/api/v1/users/nobody", {"role": "viewer"}, "admin"),
    ("DELETE", "/api/v1/users/nobody", None, "admin"),
]
RANK = {None: -1, "viewer": 0, "operator": 1, "admin": 2}


@pytest.mark.parametrize("role", ["admin", "operator", "viewer", None])
async def test_every_route_enforces_its_role(edge: Edge, role: str | None) -> None:
    for method, path, body, needed in ROUTES:
        response = await edge.client.request(method, path, json=body, headers=edge.auth(role))
        anonymous_allowed = role is None and needed == "viewer"
        if RANK[role] >= RANK[needed] or anonymous_allowed:
            assert response.status_code not in (401, 403), (method, path, role, response.text)
        elif role is None:
            assert response.status_code == 401, (method, path)
            assert response.headers["content-type"] == "application/problem+json"
        else:
            assert response.status_code == 403, (method, path, role)
            assert f"needs the {needed} role" in response.json()["detail"]


async def test_token_is_a_short_lived_hs256_jwt_with_aud_iss_jti(edge: Edge) -> None:
    header = jwt.get_unverified_header(edge.tokens["operator"])
    claims = jwt.decode(edge.tokens["operator"], options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert claims["sub"] == "operator"
    assert claims["role"] == "operator"
    assert claims["aud"] == "twinedge-edge-api"
    assert claims["iss"] == "twinedge"
    assert claims["exp"] - claims["iat"] == 900
    assert len(claims["jti"]) == 32
    me = await edge.client.get("/api/v1/auth/me", headers=edge.auth("operator"))
    assert me.json() == {"sub": "operator", "role": "operator", "anonymous": False, "sites": []}


async def test_expired_token_is_refused_with_the_reason(edge: Edge) -> None:
    edge.clock.now += 900
    response = await edge.client.get("/api/v1/users", headers=edge.auth("admin"))
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]
    # anonymous reads stay possible, but an expired token is not silently downgraded to them
    response = await edge.client.get("/api/v1/alerts", headers=edge.auth("viewer"))
    assert response.status_code == 401


@pytest.mark.parametrize("forge", ["none-alg", "wrong-secret", "wrong-audience", "wrong-issuer", "garbage"])
async def test_forged_tokens_are_refused(edge: Edge, forge: str, tmp_path: Path) -> None:
    secret = (tmp_path / "jwt_secret").read_text()  # the real key: only the forged claim is wrong
    claims = jwt.decode(edge.tokens["viewer"], options={"verify_signature": False})
    claims["role"] = "admin"
    unsigned = b".".join(base64url_encode(json.dumps(part).encode())
                         for part in ({"alg": "none", "typ": "JWT"}, claims)) + b"."
    forgers: dict[str, Callable[[], str]] = {
        "none-alg": lambda: unsigned.decode(),
        "wrong-secret": lambda: jwt.encode(claims, "x" * 40, algorithm="HS256"),
        "wrong-audience": lambda: jwt.encode({**claims, "aud": "other"}, secret, algorithm="HS256"),
        "wrong-issuer": lambda: jwt.encode({**claims, "iss": "other"}, secret, algorithm="HS256"),
        "garbage": lambda: "not.a.token",
    }
    token = forgers[forge]()
    response = await edge.client.get("/api/v1/users", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "invalid token" in response.json()["detail"]


async def test_wrong_credentials_are_401_and_audited(edge: Edge) -> None:
    for username in ("operator", "nobody"):
        response = await edge.client.post("/api/v1/auth/token",
                                          data={"username": username, "password": "wrong-password"})
        assert response.status_code == 401
        assert response.json()["detail"] == "wrong username or password"
    entries = await edge.services.audit.entries(action_prefix="auth.")
    assert [(e.actor, e.result) for e in entries[:2]] == [("nobody", "denied"), ("operator", "denied")]


async def test_token_route_input_errors(edge: Edge) -> None:
    response = await edge.client.post("/api/v1/auth/token", json={"username": "a", "password": "b"})
    assert response.status_code == 415
    response = await edge.client.post("/api/v1/auth/token", data={"username": "admin"})
    assert response.status_code == 422
    form = {"username": "a", "password": "b", "grant_type": "client_credentials"}
    response = await edge.client.post("/api/v1/auth/token", data=form)
    assert response.status_code == 400


async def test_login_attempts_are_rate_limited_per_username_and_address(edge: Edge) -> None:
    for _ in range(5):
        response = await edge.client.post("/api/v1/auth/token",
                                          data={"username": "viewer", "password": "wrong-password"})
        assert response.status_code == 401
    # the right password does not help while limited: that is the point
    response = await edge.client.post("/api/v1/auth/token",
                                      data={"username": "viewer", "password": PASSWORDS["viewer"]})
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["content-type"] == "application/problem+json"
    # another user from the same address is not affected
    other = await edge.client.post("/api/v1/auth/token",
                                   data={"username": "operator", "password": PASSWORDS["operator"]})
    assert other.status_code == 200
    edge.clock.now += 61
    response = await edge.client.post("/api/v1/auth/token",
                                      data={"username": "viewer", "password": PASSWORDS["viewer"]})
    assert response.status_code == 200
    results = [e.result for e in await edge.services.audit.entries(action_prefix="auth.")]
    assert "rate_limited" in results


async def test_users_admin(edge: Edge) -> None:
    admin = edge.auth("admin")
    listed = await edge.client.get("/api/v1/users", headers=admin)
    assert [(u["username"], u["role"]) for u in listed.json()] == [
        ("admin", "admin"), ("operator", "operator"), ("viewer", "viewer")]
    assert "password" not in listed.text
    assert "argon2" not in listed.text
    body = {"username": "viewer", "password": "another-password", "role": "admin"}
    duplicate = await edge.client.post("/api/v1/users", headers=admin, json=body)
    assert duplicate.status_code == 409
    for bad in ({"username": "x", "password": "short", "role": "viewer"},
                {"username": "x", "password": "long-enough-pw", "role": "root"},
                {"username": "bad name", "password": "long-enough-pw"},
                {"username": "x", "password": "long-enough-pw", "disabled": True}):
        response = await edge.client.post("/api/v1/users", headers=admin, json=bad)
        assert response.status_code == 422, bad
    listed_again = await edge.client.get("/api/v1/users", headers=admin)
    assert listed_again.json() == listed.json()  # nothing changed


async def test_anonymous_read_can_be_switched_off(database: Database, tmp_path: Path) -> None:
    services, _, _ = await make_edge(database, tmp_path, anonymous_read=False)
    await services.start()
    try:
        transport = httpx.ASGITransport(make_app(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            response = await client.get("/api/v1/alerts")
            assert response.status_code == 401
            assert "authentication required" in response.json()["detail"]
    finally:
        await services.commands.close()


async def test_first_admin_from_env_or_generated_once(database: Database, tmp_path: Path) -> None:
    auth = Authenticator(AuthConfig(), UserStore(database), "s" * 32)  # production hasher: Argon2
    admin = await auth.bootstrap({})
    assert admin is not None
    assert admin.username == "admin"
    assert admin.password is not None
    assert len(admin.password) >= 20
    stored = await auth.users.get("admin")
    assert stored is not None
    assert stored.password_hash.startswith("$argon2id$")
    assert await auth.authenticate("admin", admin.password) is not None
    assert await auth.bootstrap({}) is None  # printed once: later starts create nothing
    await AuditLog(database).entries()


async def test_first_admin_password_from_environment_is_not_returned(database: Database) -> None:
    auth = Authenticator(AuthConfig(), UserStore(database), "s" * 32)
    admin = await auth.bootstrap({"TWINEDGE_ADMIN_PASSWORD": "from-the-environment"})
    assert admin is not None
    assert admin.password is None
    assert await auth.authenticate("admin", "from-the-environment") is not None


def test_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    first = load_or_create_secret(AuthConfig(), tmp_path)
    assert load_or_create_secret(AuthConfig(), tmp_path) == first
    assert len(first) >= 32
    assert stat.S_IMODE((tmp_path / "jwt_secret").stat().st_mode) == 0o600
    configured = AuthConfig.model_validate({"secret": "c" * 40})
    assert load_or_create_secret(configured, tmp_path) == "c" * 40
    with pytest.raises(ValueError, match="at least 32"):
        AuthConfig.model_validate({"secret": "short"})
