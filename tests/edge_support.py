"""Helpers of the edge API tests: a small catalogue, a fake PLC executor, app and client builders."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from gateway.api.app import create_app
from gateway.api.auth import AuthConfig, Authenticator, load_or_create_secret
from gateway.api.edge import EdgeServices
from gateway.api.state import AssetInfo, EdgeState
from gateway.catalogue import parse_catalogue
from gateway.commands.store import CommandRecord
from gateway.commands.validation import catalogue_validator
from gateway.latest import LatestValues
from gateway.storage.db import Database
from gateway.storage.users import UserStore

PASSWORDS = {"admin": "admin-password-123", "operator": "operator-pass-123", "viewer": "viewer-pass-1234"}

# Cheap Argon2 parameters: tests create many users; production uses pwdlib's recommended ones.
FAST_HASH = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))

CATALOGUE: dict[str, Any] = {
    "format": "twinedge-catalogue", "version": 1, "plant": "test",
    "plcs": [
        {"id": "plc-1", "site": "factory", "area": "shop", "assets": [{
            "id": "conveyor-01", "type": "conveyor",
            "tags": [
                {"key": "speed_setpoint", "datatype": "float32", "eu_range": [0, 2], "access": "rw"},
                {"key": "motor_temp", "datatype": "float32", "unit": "CEL", "eu_range": [0, 150]},
                {"key": "mode", "datatype": "enum", "access": "rw", "enum_strings": ["Auto", "Manual"]},
                {"key": "batch", "datatype": "int16", "access": "rw"},
                {"key": "running", "datatype": "bool", "access": "rw"},
            ],
            "commands": [
                {"name": "start"},
                {"name": "set_speed", "args": [{"name": "speed", "datatype": "float32", "eu_range": [0, 2]}]},
            ],
        }]},
        {"id": "plc-2", "site": "mine", "area": "pit", "assets": [{
            "id": "crusher-01", "type": "crusher",
            "tags": [{"key": "feed_rate", "datatype": "float32", "eu_range": [0, 100], "access": "rw"}],
        }]},
    ],
}


def postgres_wanted() -> bool:
    return os.environ.get("TWINEDGE_TEST_POSTGRES", "1") != "0"


def external_postgres_url() -> str | None:
    """TWINEDGE_TEST_POSTGRES_URL: an external PostgreSQL to use instead of the private one."""
    return os.environ.get("TWINEDGE_TEST_POSTGRES_URL") or None


class FakeClock:
    """Wall-clock seconds the test moves by hand (token expiry, login rate window)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class FakePlc:
    """The runtime's ``execute`` callback: records calls; per asset it succeeds, fails or hangs.

    ``gate`` holds every execution until set, so a test can look at a command while it is running.
    """

    fail: dict[str, str] = field(default_factory=dict)  # asset -> reason
    hang: set[str] = field(default_factory=set)
    executed: list[int] = field(default_factory=list)
    gate: Any = None  # asyncio.Event | None

    async def execute(self, command: CommandRecord) -> None:
        import asyncio

        if self.gate is not None:
            await self.gate.wait()
        if command.asset in self.hang:
            await asyncio.Event().wait()  # never set: the queue's timeout must end it
        if command.asset in self.fail:
            raise RuntimeError(self.fail[command.asset])
        self.executed.append(command.id)


@dataclass
class Edge:
    services: EdgeServices
    client: httpx.AsyncClient
    plc: FakePlc
    clock: FakeClock
    tokens: dict[str, str]

    def auth(self, role: str | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}


async def make_edge(database: Database, tmp_path: Path, *, anonymous_read: bool = True,
                    **commands: Any) -> tuple[EdgeServices, FakePlc, FakeClock]:
    from gateway.commands.queue import CommandQueueConfig

    plc, clock = FakePlc(), FakeClock()
    config = AuthConfig(anonymous_read=anonymous_read)
    authenticator = Authenticator(config, UserStore(database), load_or_create_secret(config, tmp_path),
                                  clock=clock, hasher=FAST_HASH)
    services = EdgeServices(
        database, data_dir=tmp_path, execute=plc.execute,
        validate=catalogue_validator(parse_catalogue(CATALOGUE)),
        commands=CommandQueueConfig(**commands), authenticator=authenticator,
        env={"TWINEDGE_ADMIN_PASSWORD": PASSWORDS["admin"]},
    )
    return services, plc, clock


def make_app(services: EdgeServices) -> Any:
    state = EdgeState(gateway_id="gw-test", latest=LatestValues(), assets={
        "conveyor-01": AssetInfo("conveyor-01", "conveyor", "plc-1", "factory", "shop"),
        "crusher-01": AssetInfo("crusher-01", "crusher", "plc-2", "mine", "pit"),
    })
    app = create_app(state)
    for router in services.routers(asset_exists=state.assets.__contains__, scope=state.visible_ids):
        app.include_router(router)
    return app


async def token(client: httpx.AsyncClient, username: str, password: str) -> str:
    response = await client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


