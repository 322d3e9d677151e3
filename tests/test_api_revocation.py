"""Token revocation and user management through the real app, on SQLite and PostgreSQL: logout, user
changes revoking tokens, own password change, the last admin, the revocation cache, restarts, and the
watch on open streams' tokens (its WebSocket side is in test_ws_streams.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select

from gateway.api.auth import AuthConfig, Authenticator, load_or_create_secret
from gateway.api.token_guard import EXPIRED, REVOKED, Token
from gateway.storage.audit import Actor
from gateway.storage.db import Database
from gateway.storage.tables import revoked_tokens
from gateway.storage.users import UserChanges, UserStore
from tests.edge_support import FAST_HASH, PASSWORDS, Edge, make_app, make_edge, token

pytest_plugins = ["tests.fixtures.edge"]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def status(edge: Edge, value: str, path: str = "/api/v1/auth/me") -> int:
    return (await edge.client.get(path, headers=bearer(value))).status_code


async def actions(edge: Edge, prefix: str) -> list[tuple[str, str, Any]]:
    return [(e.action, e.result, e.target.get("user")) for e in await edge.services.audit.entries(action_prefix=prefix)]


async def test_logout_revokes_only_the_presented_token(edge: Edge) -> None:
    second = await token(edge.client, "operator", PASSWORDS["operator"])
    response = await edge.client.post("/api/v1/auth/logout", headers=edge.auth("operator"))
    assert response.status_code == 204
    refused = await edge.client.get("/api/v1/auth/me", headers=edge.auth("operator"))
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    assert refused.headers["content-type"] == "application/problem+json"
    assert await status(edge, second) == 200  # another session of the same user goes on
    again = await edge.client.post("/api/v1/auth/logout", headers=edge.auth("operator"))
    assert again.status_code == 401
    assert (await edge.client.post("/api/v1/auth/logout")).status_code == 401  # anonymous: nothing to revoke
    assert ("auth.logout", "ok", "operator") in await actions(edge, "auth.logout")


async def test_revocation_survives_a_restart_and_expired_rows_are_pruned(edge: Edge, tmp_path: Path) -> None:
    await edge.client.post("/api/v1/auth/logout", headers=edge.auth("viewer"))
    # A new gateway process on the same database and secret: nothing cached, storage answers.
    restarted, _, _ = await make_edge(edge.services.db, tmp_path)
    restarted.auth.clock = edge.clock
    async with httpx.AsyncClient(transport=httpx.ASGITransport(make_app(restarted)), base_url="http://gw2") as client:
        assert (await client.get("/api/v1/auth/me", headers=edge.auth("viewer"))).status_code == 401
        assert (await client.get("/api/v1/auth/me", headers=edge.auth("operator"))).status_code == 200

    def revoked(conn: Any) -> list[str]:
        return list(conn.execute(select(revoked_tokens.c.username)).scalars())

    assert await edge.services.db.run(revoked) == ["viewer"]
    edge.clock.now += 901  # the viewer's token has expired: its row is of no use any more
    fresh = await token(edge.client, "operator", PASSWORDS["operator"])
    await edge.client.post("/api/v1/auth/logout", headers=bearer(fresh))
    assert await edge.services.db.run(revoked) == ["operator"]


@pytest.mark.parametrize("change", [{"role": "viewer"}, {"password": "a-new-password-42"}, {"sites": ["mine"]},
                                    {"disabled": True}, "delete"])
async def test_user_changes_revoke_the_users_tokens(edge: Edge, change: dict[str, Any] | str) -> None:
    before = await status(edge, edge.tokens["operator"])
    assert before == 200
    if change == "delete":
        response = await edge.client.delete("/api/v1/users/operator", headers=edge.auth("admin"))
        assert response.status_code == 204
    else:
        response = await edge.client.patch("/api/v1/users/operator", headers=edge.auth("admin"), json=change)
        assert response.status_code == 200, response.text
        assert all(response.json()[k] == v for k, v in change.items() if k != "password")
    assert await status(edge, edge.tokens["operator"]) == 401
    assert await status(edge, edge.tokens["viewer"]) == 200  # other users are not touched
    password = change.get("password", PASSWORDS["operator"]) if isinstance(change, dict) else None
    login = await edge.client.post("/api/v1/auth/token", data={"username": "operator", "password": password or ""})
    if change in ("delete", {"disabled": True}):
        assert login.status_code in (401, 422)
    else:
        assert login.status_code == 200
        me = (await edge.client.get("/api/v1/auth/me", headers=bearer(login.json()["access_token"]))).json()
        assert me["role"] == change.get("role", "operator")
        assert me["sites"] == change.get("sites", [])
    audited = await actions(edge, "user.")
    assert audited[0] == ("user.delete" if change == "delete" else "user.update", "ok", "operator")
    assert "a-new-password" not in str(await edge.services.audit.entries())


async def test_user_routes_answer_problems(edge: Edge) -> None:
    admin = edge.auth("admin")
    got = await edge.client.get("/api/v1/users/viewer", headers=admin)
    assert got.json()["role"] == "viewer"
    assert got.json()["sites"] == []
    for method, body in (("GET", None), ("PATCH", {"role": "admin"}), ("DELETE", None)):
        response = await edge.client.request(method, "/api/v1/users/nobody", headers=admin, json=body)
        assert response.status_code == 404, method
        assert response.headers["content-type"] == "application/problem+json"
    for bad in ({}, {"role": "root"}, {"password": "short"}, {"created_at": "2020-01-01T00:00:00Z"},
                {"sites": ["bad site"]}, {"role": None}):
        response = await edge.client.patch("/api/v1/users/viewer", headers=admin, json=bad)
        assert response.status_code == 422, bad
    created = await edge.client.post("/api/v1/users", headers=admin, json={
        "username": "mine.op", "password": "mine-operator-1", "role": "operator", "sites": ["mine", "mine", "port"]})
    assert created.json()["sites"] == ["mine", "port"]
    for role in ("operator", "viewer"):
        assert (await edge.client.get("/api/v1/users/admin", headers=edge.auth(role))).status_code == 403


async def test_the_last_enabled_admin_stays(edge: Edge) -> None:
    admin = edge.auth("admin")
    for method, body in (("PATCH", {"role": "operator"}), ("PATCH", {"disabled": True}), ("DELETE", None)):
        response = await edge.client.request(method, "/api/v1/users/admin", headers=admin, json=body)
        assert response.status_code == 409, (method, body)
        assert response.headers["content-type"] == "application/problem+json"
        assert "last enabled admin" in response.json()["detail"]
    assert await status(edge, edge.tokens["admin"]) == 200  # a refused change revokes nothing
    assert [r for _, r, _ in await actions(edge, "user.")][:3] == ["rejected"] * 3
    # A disabled admin does not count; an enabled second one does.
    await edge.client.post("/api/v1/users", headers=admin, json={
        "username": "admin2", "password": "second-admin-pw", "role": "admin"})
    assert (await edge.client.patch("/api/v1/users/admin2", headers=admin, json={"disabled": True})).status_code == 200
    assert (await edge.client.delete("/api/v1/users/admin", headers=admin)).status_code == 409
    assert (await edge.client.patch("/api/v1/users/admin2", headers=admin, json={"disabled": False})).status_code == 200
    response = await edge.client.patch("/api/v1/users/admin", headers=admin, json={"role": "operator"})
    assert response.status_code == 200  # demoting yourself is allowed while another admin remains
    assert await status(edge, edge.tokens["admin"]) == 401


async def test_own_password_change(edge: Edge) -> None:
    url, headers = "/api/v1/auth/password", edge.auth("viewer")
    other_session = await token(edge.client, "viewer", PASSWORDS["viewer"])
    wrong = await edge.client.post(url, headers=headers, json={"current_password": "nope",
                                                               "new_password": "viewer-new-pass-1"})
    assert wrong.status_code == 403
    short = await edge.client.post(url, headers=headers, json={"current_password": PASSWORDS["viewer"],
                                                               "new_password": "short"})
    assert short.status_code == 422
    changed = await edge.client.post(url, headers=headers, json={"current_password": PASSWORDS["viewer"],
                                                                 "new_password": "viewer-new-pass-1"})
    assert changed.status_code == 200
    assert await status(edge, changed.json()["access_token"]) == 200
    assert await status(edge, edge.tokens["viewer"]) == 401  # every earlier session ends
    assert await status(edge, other_session) == 401
    assert await token(edge.client, "viewer", "viewer-new-pass-1")
    assert (await edge.client.post(url, json={"current_password": "x", "new_password": "y" * 12})).status_code == 401
    assert [r for a, r, _ in await actions(edge, "auth.password")] == ["ok", "denied"]
    fresh = bearer(changed.json()["access_token"])
    for _ in range(5):  # wrong current passwords count against the login rate limit
        await edge.client.post(url, headers=fresh, json={"current_password": "nope", "new_password": "new-pass-2-abc"})
    limited = await edge.client.post(url, headers=fresh, json={"current_password": "viewer-new-pass-1",
                                                               "new_password": "new-pass-2-abc"})
    assert limited.status_code == 429


async def test_one_lookup_per_token_while_cached(edge: Edge) -> None:
    guard = edge.services.auth.guard
    await status(edge, edge.tokens["viewer"])
    before = guard.lookups
    for _ in range(20):
        assert await status(edge, edge.tokens["viewer"]) == 200
    assert guard.lookups == before  # answered from the cache
    await edge.client.post("/api/v1/auth/logout", headers=edge.auth("viewer"))
    assert await status(edge, edge.tokens["viewer"]) == 401  # a local logout applies at once
    guard.clock = lambda: float("inf")  # the cached answers have aged out
    assert await status(edge, edge.tokens["operator"]) == 200
    assert guard.lookups == before + 2  # the logout's own check, then the operator's re-check


async def test_another_gateway_sees_a_revocation_within_the_check_interval(
    database: Database, tmp_path: Path
) -> None:
    """Two gateways on one database: a change through one reaches the other when its cache ages."""
    services, _, clock = await make_edge(database, tmp_path)
    await services.start()
    config = AuthConfig(revocation_check_s=0)  # no cache: every request asks storage
    other = Authenticator(config, UserStore(database), load_or_create_secret(config, tmp_path), clock=clock,
                          hasher=FAST_HASH)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(make_app(services)), base_url="http://gw1") as client:
        value = await token(client, "admin", PASSWORDS["admin"])
        assert (await other.principal_of(value)).sub == "admin"
        await client.post("/api/v1/auth/logout", headers=bearer(value))
        with pytest.raises(Exception, match="revoked"):
            await other.principal_of(value)
    await services.commands.close()


async def test_open_streams_tokens_are_swept_in_one_query(edge: Edge, tmp_path: Path) -> None:
    """Another gateway logs a token out and disables a user; this one was not told. Its sweep over the
    tokens of open streams finds both revoked tokens in its first query, and leaves the others alone."""
    auth, guard = edge.services.auth, edge.services.auth.guard
    guard.ttl_s = 1.0  # api.auth.revocation_check_s: the sweep's period
    config = AuthConfig()
    other = Authenticator(config, UserStore(edge.services.db), load_or_create_secret(config, tmp_path),
                          clock=edge.clock, hasher=FAST_HASH)
    await other.logout(other.decode(edge.tokens["operator"]), "192.0.2.2")
    await other.change_user("viewer", UserChanges(disabled=True), Actor("admin", ("admin",)))
    ended: dict[str, asyncio.Future[tuple[str, int]]] = {}  # name -> (reason, lookups so far)

    def watch(value: str, name: str, lifetime_s: float = 900) -> Callable[[], None]:
        caller = auth.decode(value)
        assert caller.jti is not None
        ended[name] = asyncio.get_running_loop().create_future()
        return guard.watch(Token(caller.sub, caller.jti, caller.stamp), lifetime_s,
                           lambda reason: ended[name].set_result((reason, guard.lookups)))

    stops = [watch(edge.tokens[name], name) for name in ("operator", "viewer", "admin")]
    stops.append(watch(await token(edge.client, "operator", PASSWORDS["operator"]), "operator's other session"))
    before = guard.lookups
    revoked = await asyncio.wait_for(asyncio.gather(ended["operator"], ended["viewer"]), 5)
    assert revoked == [(REVOKED, before + 1)] * 2
    stops.append(watch(edge.tokens["admin"], "admin, short-lived", lifetime_s=0.01))
    assert (await asyncio.wait_for(ended["admin, short-lived"], 5))[0] == EXPIRED
    for stop in stops:
        stop()
    assert not ended["admin"].done()
    assert not ended["operator's other session"].done()


def test_token_carries_sites_and_stamp(edge: Edge) -> None:
    claims = jwt.decode(edge.tokens["viewer"], options={"verify_signature": False})
    assert claims["sites"] == []
    assert len(claims["stamp"]) == 32
    assert datetime.fromtimestamp(claims["exp"], UTC) - datetime.fromtimestamp(claims["iat"], UTC) == timedelta(
        seconds=900)
